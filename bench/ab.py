#!/usr/bin/env python3
"""Wall time of info and status, old binary against new, interleaved.

    python3 bench/ab.py OLD_GEATS NEW_GEATS [PAIRS]

bench/run.sh times each command in a block of its own, so on a shared
machine a change of load between blocks looks like a change of cost.
Here every pair runs old then new (alternating which goes first) on two
roots holding the same 100 dummy VMs, and the medians are compared: load
that drifts hits both alike.
"""
import json, os, statistics, subprocess, sys, tempfile, time

old, new = sys.argv[1], sys.argv[2]
pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 500
work = tempfile.mkdtemp(prefix="geats-ab.")
definition = {"vm_type": "dummy", "ram": 256, "storage": [{"name": "root", "type": "dir"}]}
reqs = {"info": {"action": "info", "data": {"vm_name": "vm1"}}, "status": {"action": "status", "data": {}}}
for name, req in reqs.items():
    with open(f"{work}/{name}.json", "w") as f:
        json.dump(req, f)
envs = {}
for which, binary in (("old", old), ("new", new)):
    root = f"{work}/{which}"
    os.makedirs(root)
    open(f"{root}/geats.toml", "w").close()
    env = {"PATH": "/usr/bin:/bin", "GEATS_ROOT": root, "GEATS_CONFIG": f"{root}/geats.toml"}
    envs[which] = env
    for i in range(1, 101):
        req = {"action": "define", "data": {"vm_name": f"vm{i}", "definition": definition}}
        subprocess.run([binary, "agent", "--stdio"], input=json.dumps(req).encode(), env=env, check=True, stdout=subprocess.DEVNULL)

def once(binary, which, name):
    t = time.perf_counter_ns()
    subprocess.run([binary, "agent", f"{work}/{name}.json", f"{work}/{which}.reply"], env=envs[which], check=True)
    return (time.perf_counter_ns() - t) / 1e6

print(f"{'request':<10}{'old ms':>9}{'new ms':>9}{'new/old':>9}   (medians of {pairs} interleaved pairs)")
for name in reqs:
    times = {"old": [], "new": []}
    for i in range(20):
        once(old, "old", name), once(new, "new", name)
    for i in range(pairs):
        order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
        for which, binary in order:
            times[which].append(once(binary, which, name))
    o, n = statistics.median(times["old"]), statistics.median(times["new"])
    print(f"{name:<10}{o:>9.3f}{n:>9.3f}{n / o:>9.3f}")
subprocess.run(["rm", "-rf", work])
