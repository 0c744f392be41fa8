#!/usr/bin/env python3
"""geats against the raw LXC tools doing the same work, in one run (issue 15).

    python3 bench/compare.py GEATS_BIN CACHE_DIR     (bench/compare.sh calls it)

Sets up everything itself under a temp root: a busybox template (built as
tests/common/lxc.rs builds it), N busybox containers on `dir` (half of them
running), a Debian minbase template (debootstrap, cached in CACHE_DIR), and
two roots with 10 and 1000 dummy VMs. Then every row is measured A/B
interleaved: each pair runs geats and the raw tool back to back, which one
goes first alternating, and the row prints the medians and the median of the
per-pair ratios. Create rows tear their container down outside the timed part.

Env: PAIRS (default 15) pairs per row, CREATE_PAIRS (default 5) per create
row, CONTAINERS (default 100, half running), KEEP=1 keeps the temp root,
ONLY=WORD[,WORD] measures only the rows whose label contains one of them,
VERBOSE=1 prints every pair, SETTLE (default 0.1) seconds of quiet after
each untimed setup and teardown (see settle()). NOSYNC=1 runs every geats
process through bench/nosync.c (built with `cc`), under which fsync,
fdatasync, syncfs, sync_file_range and sync return at once without doing
anything: what the rows would read if geats made nothing durable before
its reply. A measurement, never a way to run geats (docs/performance.md).
"""
import atexit, json, os, shutil, signal, statistics, subprocess, sys, tarfile, io, tempfile, time

GEATS, CACHE = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
PAIRS = int(os.environ.get("PAIRS", "15"))
CREATE_PAIRS = int(os.environ.get("CREATE_PAIRS", "5"))
SETTLE = float(os.environ.get("SETTLE", "0.1"))
N = int(os.environ.get("CONTAINERS", "100"))
work = tempfile.mkdtemp(prefix="geats-compare.")
os.chmod(work, 0o755)  # unprivileged containers need x on the way to their rootfs
LP = f"{work}/var/lib/lxc"
TEMPLATES = f"{work}/var/lib/geats/templates"
RAW = f"{work}/raw"
os.makedirs(TEMPLATES), os.makedirs(RAW)
# Run an installed copy, as a host runs geats (`install`, docs/operations.md):
# the file the linker just wrote sits in the page cache in small pieces, and
# each exec of it took ~50 more page faults and ~0.6 ms more than a copy
# (146 against 195 faults for `info`), which made every row right after a
# build read 1.3-1.4x.
subprocess.run(["install", "-m", "755", GEATS, f"{work}/geats"], check=True)
GEATS = f"{work}/geats"
# How a geats process is run: itself, or under bench/nosync.c (NOSYNC=1),
# whose extra exec (a static binary, ~0.3 ms) the geats side pays.
GEATS_RUN = [GEATS]
if os.environ.get("NOSYNC") == "1":
    if not shutil.which("cc"):
        raise SystemExit("compare: NOSYNC=1 builds bench/nosync.c and needs cc (apt-get install gcc libc6-dev)")
    subprocess.run(["cc", "-O2", "-static", "-o", f"{work}/nosync", os.path.join(os.path.dirname(os.path.abspath(__file__)), "nosync.c")], check=True)
    GEATS_RUN = [f"{work}/nosync", GEATS]
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
# Without a config file: GEATS_ROOT only (the embedded defaults: lxc, dir).
ENV_PLAIN = dict(BASE_ENV, GEATS_ROOT=work, GEATS_CONFIG=f"{work}/no-such-config.toml")
# With a config file naming an overlay storage type, on the same root.
CONFIG = f"{work}/geats.toml"
with open(CONFIG, "w") as f:
    f.write(f'root = "{work}"\n[storage_types.overlay]\ndriver = "overlay"\n')
ENV_CONF = dict(BASE_ENV, GEATS_ROOT=work, GEATS_CONFIG=CONFIG)
# The Debian containers live on roots of their own, each with a VM type
# whose init is `sleep` (Debian minbase has no init): one with an overlay
# storage type, one on btrfs subvolume snapshots (on a btrfs file system the
# bench makes on a loop device; skipped where it cannot).
BTRFS = f"{work}/btrfs"


def debian_root(path, storage):
    """A root whose config has the storage type `storage` (TOML) and lxcsleep."""
    os.makedirs(f"{path}/var/lib/geats/templates")
    with open(f"{path}/geats.toml", "w") as f:
        f.write(f'root = "{path}"\n{storage}'
                '[vm_types.lxcsleep]\ndriver = "lxc"\n[vm_types.lxcsleep.config]\n"lxc.init.cmd" = "/bin/sleep infinity"\n')
    return f"{path}/var/lib/lxc", dict(BASE_ENV, GEATS_ROOT=path, GEATS_CONFIG=f"{path}/geats.toml")


DEB, DEBB = f"{work}/deb", f"{work}/debb"
LP_DEB, ENV_DEB = debian_root(DEB, '[storage_types.overlay]\ndriver = "overlay"\n')
LP_DEBB, ENV_DEBB = debian_root(DEBB, f'[storage_types.btrfs]\ndriver = "btrfs"\nroot = "{BTRFS}/geats"\n')
loopdev = [None]
if not os.path.exists(ENV_PLAIN["GEATS_CONFIG"]):
    ENV_PLAIN.pop("GEATS_CONFIG")


def cleanup():
    """Power off every container under the temp root, unmount, remove."""
    for lp in (LP, LP_DEB, LP_DEBB):
        if os.path.isdir(lp):
            for n in os.listdir(lp):
                subprocess.run(["lxc-stop", "-P", lp, "-n", n, "-k"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if os.environ.get("KEEP") == "1":
        log(f"compare: kept {work}")
        return
    with open("/proc/self/mountinfo") as f:
        mounts = [l.split()[4] for l in f if l.split()[4].startswith(work + "/")]
    for m in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
    if loopdev[0]:
        subprocess.run(["losetup", "-d", loopdev[0]], stderr=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
    # LXC's lock directories mirror each lxcpath under /run/lxc/lock:
    # the whole tree of this run, not only the lxcpaths' leaves (which left
    # an empty directory chain per run behind).
    shutil.rmtree("/run/lxc/lock" + work, ignore_errors=True)


atexit.register(cleanup)
# atexit runs on a normal exit and after an exception, not when a signal
# ends the process: a run stopped with SIGTERM or SIGHUP (a timeout, a
# closed terminal) left its containers, mounts and loop device behind.
# Turn those signals into SystemExit, so the cleanup runs.
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda signum, frame: sys.exit(128 + signum))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(argv, env=None, check=True, data=None):
    r = subprocess.run(argv, env=env or BASE_ENV, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise SystemExit(f"compare: {argv} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return r


reqn = [0]


def agent(action, data, env=ENV_PLAIN):
    """One agent call with a request file, as MCollective runs it."""
    reqn[0] += 1
    req, rep = f"{work}/req{reqn[0]}.json", f"{work}/reply.json"
    with open(req, "w") as f:
        json.dump({"action": action, "data": data}, f)
    return [*GEATS_RUN, "agent", req, rep], env


def call(action, data, env=ENV_PLAIN):
    argv, env = agent(action, data, env)
    run(argv, env)
    with open(f"{work}/reply.json") as f:
        return json.load(f)


def busybox_template(path):
    """As tests/common/lxc.rs: busybox init, applet symlinks, an rcS."""
    inittab = "::sysinit:/etc/init.d/rcS\n::respawn:-/bin/sh\n::ctrlaltdel:/sbin/reboot\n::shutdown:/bin/sync\n"
    rcs = "#!/bin/sh\nmount -t proc proc /proc 2>/dev/null\nip link set lo up 2>/dev/null\n"
    with tarfile.open(path, "w:gz", compresslevel=1) as t:
        def add(name, kind, mode, data=b"", link=None):
            i = tarfile.TarInfo(name)
            i.type, i.mode, i.uid, i.gid = kind, mode, 0, 0
            if link:
                i.linkname = link
            i.size = len(data) if kind == tarfile.REGTYPE else 0
            t.addfile(i, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        for d, m in [("bin", 0o755), ("sbin", 0o755), ("usr", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("etc", 0o755),
                     ("etc/init.d", 0o755), ("dev", 0o755), ("proc", 0o755), ("sys", 0o755), ("tmp", 0o1777), ("root", 0o700),
                     ("run", 0o755), ("var", 0o755), ("var/log", 0o755), ("mnt", 0o755), ("home", 0o755)]:
            add(d, tarfile.DIRTYPE, m)
        with open("/bin/busybox", "rb") as f:
            add("bin/busybox", tarfile.REGTYPE, 0o755, f.read())
        for p, m, d in [("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", 0o644, b"root:x:0:\n"),
                        ("etc/inittab", 0o644, inittab.encode()), ("etc/init.d/rcS", 0o755, rcs.encode()), ("etc/hosts", 0o644, b"127.0.0.1 localhost\n")]:
            add(p, tarfile.REGTYPE, m, d)
        seen = set()
        for p in run(["/bin/busybox", "--list-full"]).stdout.decode().split():
            if p in seen or p == "bin/busybox":
                continue
            seen.add(p)
            add(p, tarfile.SYMTYPE, 0o777, link="busybox" if p.startswith("bin/") and "/" not in p[4:] else "/bin/busybox")
        for p, l in [("sbin/init", "/bin/busybox"), ("bin/sh", "busybox")]:
            if p not in seen:
                add(p, tarfile.SYMTYPE, 0o777, link=l)


def debian_template(dest):
    """Debian minbase, debootstrapped once and cached as an archive."""
    archive = f"{CACHE}/debian-minbase.tar.gz"
    if not os.path.exists(archive):
        tree = f"{CACHE}/debian-minbase"
        if not os.path.isdir(tree):
            log(f"compare: debootstrap --variant=minbase bookworm {tree} (once; cached)")
            shutil.rmtree(tree + ".tmp", ignore_errors=True)
            run(["debootstrap", "--variant=minbase", "bookworm", tree + ".tmp", "http://deb.debian.org/debian"])
            os.rename(tree + ".tmp", tree)
        run(["tar", "-C", tree, "-czf", archive + ".tmp", "."])
        os.rename(archive + ".tmp", archive)
    try:
        os.link(archive, dest)
    except OSError:
        shutil.copy2(archive, dest)


def fresh_reply(argv):
    """An agent call's reply file as MCollective and Choria hand it over:
    a new, empty file (`Tempfile.new`), made untimed before the call.
    Reusing one full reply file made every long reply's rename free the
    last reply's blocks, which on a file system mounted `discard` without
    a journal (this pass's host) waits for the disk's discard, 0.5 ms of
    a `status`, a cost no agent run pays."""
    if argv[:-2] == [*GEATS_RUN, "agent"]:
        try:
            os.unlink(argv[-1])
        except FileNotFoundError:
            pass
        open(argv[-1], "w").close()


def timed(steps):
    total, parts = 0, []
    for s in steps:
        if not callable(s):
            fresh_reply(s[0])
        t0 = time.perf_counter_ns()
        if callable(s):
            s()
        else:
            argv, env = s
            run(argv, env)
        took = time.perf_counter_ns() - t0
        total += took
        parts.append(f"{took / 1e6:.1f}")
    if os.environ.get("VERBOSE") == "1" and len(steps) > 1:
        log(f"      steps: {' + '.join(parts)} ms")
    return total / 1e6


rows = []


ONLY = [w for w in os.environ.get("ONLY", "").split(",") if w]


def settle():
    """Let the kernel go quiet after an untimed setup or teardown.

    A container's start and stop move LXC's monitor between cgroups, and a
    cgroup migration waits for an RCU grace period unless another ran within
    the last one (docs/performance.md, fourth pass). A timed run starting
    right after a teardown found that wait skipped, about half of the time,
    because the torn-down container's monitor had just migrated: the raw
    side, which reaches `lxc-start` within 3 ms, took that gift far more
    often than geats, which reaches it after a whole `define` (raw
    `lxc-start` 14 ms right after a teardown, 33 ms after 0.1 s of quiet).
    SETTLE seconds (default 0.1) after each setup and teardown give every
    run the kernel a single start on a quiet host meets.
    """
    time.sleep(SETTLE)


def measure(label, a, b, pairs, setup_a=None, setup_b=None, down_a=None, down_b=None, note=""):
    """a, b: functions i -> list of steps; setup/down: untimed, i -> None."""
    if ONLY and not any(w in label for w in ONLY):
        return
    ta, tb, ratios = [], [], []
    for i in range(pairs):
        res = {}
        for which in (("a", "b") if i % 2 == 0 else ("b", "a")):
            steps, setup, down = (a, setup_a, down_a) if which == "a" else (b, setup_b, down_b)
            if setup:
                setup(i)
                settle()
            res[which] = timed(steps(i))
            if down:
                down(i)
                # Write the teardown's deletions back now, untimed: left
                # dirty, they would be paid by whichever run next syncs
                # the file system (an fsync, an unmount), not by the run
                # that made them.
                os.sync()
                settle()
        ta.append(res["a"]), tb.append(res["b"]), ratios.append(res["a"] / res["b"])
        if os.environ.get("VERBOSE") == "1":
            log(f"    pair {i}: geats {res['a']:.1f} ms, raw {res['b']:.1f} ms ({'geats' if i % 2 == 0 else 'raw'} first)")
    row = (label, statistics.median(ta), statistics.median(tb), statistics.median(ratios), note)
    rows.append(row)
    log(f"  {label}: {row[1]:.2f} ms vs {row[2]:.2f} ms, ratio {row[3]:.3f}")


def lxc(tool, name, *args):
    return ([tool, "-P", LP, "-n", name, *args], BASE_ENV)


# ---------------------------------------------------------------- setup
t0 = time.time()
log(f"compare: setting up under {work}")
busybox_template(f"{TEMPLATES}/busybox.tar.gz")
debian_template(f"{DEB}/var/lib/geats/templates/debian.tar.gz")
bb = {"template": "busybox", "ram": 64, "storage": [{"name": "root", "type": "dir"}]}
names = [f"bb{i}" for i in range(N)]
for n in names:
    call("define", {"vm_name": n, "definition": bb})
for n in names[: N // 2]:
    call("start", {"vm_name": n})
log(f"compare: {N} busybox containers, {N // 2} running ({time.time() - t0:.0f} s)")
stopped, running = names[-1], names[0]
assert run(["lxc-info", "-P", LP, "-n", running, "-s", "-H"]).stdout.strip() == b"RUNNING"
assert run(["lxc-info", "-P", LP, "-n", stopped, "-s", "-H"]).stdout.strip() == b"STOPPED"

# Reference containers whose rendered configs the raw side reuses.
call("define", {"vm_name": "refbb", "definition": bb})
deb = {"template": "debian", "vm_type": "lxcsleep", "ram": 128, "storage": [{"name": "root", "type": "overlay"}]}
call("define", {"vm_name": "refdeb", "definition": deb}, ENV_DEB)  # unpacks the template cache once
call("start", {"vm_name": "refdeb"}, ENV_DEB)
call("stop", {"vm_name": "refdeb"}, ENV_DEB)


def ref_config(lp, ref, name, rootfs):
    out = []
    with open(f"{lp}/{ref}/config") as f:
        for line in f:
            if line.startswith("lxc.rootfs.path"):
                line = f"lxc.rootfs.path = dir:{rootfs}\n"
            out.append(line.replace(f"/{ref}/", f"/{name}/").replace(f"= {ref}\n", f"= {name}\n"))
    return "".join(out)


def raw_files(lp, ref, name, rootfs):
    os.makedirs(f"{lp}/{name}", exist_ok=True)
    with open(f"{lp}/{name}/config", "w") as f:
        f.write(ref_config(lp, ref, name, rootfs))
    if os.path.exists(f"{lp}/{ref}/seccomp"):
        shutil.copyfile(f"{lp}/{ref}/seccomp", f"{lp}/{name}/seccomp")


def btrfs_setup():
    """A 4 GB sparse image, btrfs, mounted at BTRFS; False where it cannot."""
    if not shutil.which("mkfs.btrfs"):
        log("compare: no mkfs.btrfs (btrfs-progs): the btrfs row is skipped")
        return False
    img = f"{work}/btrfs.img"
    with open(img, "wb") as f:
        f.truncate(4 << 30)
    r = run(["losetup", "--find", "--show", img], check=False)
    if r.returncode != 0:
        log(f"compare: no loop device ({r.stderr.decode().strip()}): the btrfs row is skipped")
        return False
    loopdev[0] = r.stdout.decode().strip()
    os.makedirs(BTRFS)
    run(["mkfs.btrfs", "-q", loopdev[0]])
    run(["mount", loopdev[0], BTRFS])
    os.makedirs(f"{BTRFS}/raw")
    os.link(f"{DEB}/var/lib/geats/templates/debian.tar.gz", f"{DEBB}/var/lib/geats/templates/debian.tar.gz")
    return True


HAVE_BTRFS = btrfs_setup()
debb = dict(deb, storage=[{"name": "root", "type": "btrfs"}])
if HAVE_BTRFS:
    call("define", {"vm_name": "refdebb", "definition": debb}, ENV_DEBB)  # makes the template subvolume once
    tpl = sorted(d for d in os.listdir(f"{BTRFS}/geats/.templates") if not d.startswith("."))
    deb_subvol = f"{BTRFS}/geats/.templates/{tpl[0]}"

deb_lower = open(f"{DEB}/var/lib/geats/overlay/refdeb/root/lower").read().strip()
if not deb_lower.startswith("/"):
    deb_lower = f"{DEB}/var/lib/geats/overlay/.templates/{deb_lower}"

dummy = {"vm_type": "dummy", "ram": 256, "storage": [{"name": "root", "type": "dir"}]}
dummy_envs = {}
for count in (10, 1000):
    root = f"{work}/dummy{count}"
    os.makedirs(root)
    env = dict(BASE_ENV, GEATS_ROOT=root)
    dummy_envs[count] = env
    for i in range(count):
        run([*GEATS_RUN, "agent", "--stdio"], env, data=json.dumps({"action": "define", "data": {"vm_name": f"d{i}", "definition": dummy}}).encode())
log(f"compare: set up in {time.time() - t0:.0f} s; measuring ({PAIRS} pairs, {CREATE_PAIRS} per create row)")

# ---------------------------------------------------------------- rows
info_stopped, info_running = agent("info", {"vm_name": stopped}), agent("info", {"vm_name": running})
info_stopped_c, info_running_c = agent("info", {"vm_name": stopped}, ENV_CONF), agent("info", {"vm_name": running}, ENV_CONF)
status, status_c = agent("status", {}), agent("status", {}, ENV_CONF)
lxcinfo_s, lxcinfo_r = lxc("lxc-info", stopped, "-s"), lxc("lxc-info", running, "-s")
lxcls = (["lxc-ls", "-P", LP, "-f"], BASE_ENV)
geats_list = ([*GEATS_RUN, "list"], ENV_PLAIN)

measure("info, stopped container (agent, request file) / lxc-info -s", lambda i: [info_stopped], lambda i: [lxcinfo_s], PAIRS)
measure("info, running container / lxc-info -s", lambda i: [info_running], lambda i: [lxcinfo_r], PAIRS)
measure("info, stopped, with a config file / lxc-info -s", lambda i: [info_stopped_c], lambda i: [lxcinfo_s], PAIRS)
measure("info, running, with a config file / lxc-info -s", lambda i: [info_running_c], lambda i: [lxcinfo_r], PAIRS)
measure(f"status, {N} defined / {N // 2} running / lxc-ls -f", lambda i: [status], lambda i: [lxcls], PAIRS)
measure("geats list / lxc-ls -f", lambda i: [geats_list], lambda i: [lxcls], PAIRS)
measure("geats list / status (agent)", lambda i: [geats_list], lambda i: [status], PAIRS)


def geats_create(prefix, definition, env):
    def steps(i):
        return [agent("define", {"vm_name": f"{prefix}{i}", "definition": definition}, env), agent("start", {"vm_name": f"{prefix}{i}"}, env)]
    return steps


def geats_down(prefix, env):
    return lambda i: call("deprovision", {"vm_name": f"{prefix}{i}"}, env)


def raw_bb(i):
    name, root = f"rawbb{i}", f"{RAW}/rawbb{i}/rootfs"
    return [lambda: os.makedirs(root), (["tar", "-xzf", f"{TEMPLATES}/busybox.tar.gz", "-C", root], BASE_ENV),
            lambda: raw_files(LP, "refbb", name, root), lxc("lxc-start", name, "-d")]


def raw_deb(i):
    name, d = f"rawdeb{i}", f"{RAW}/rawdeb{i}"
    def dirs():
        for s in ("upper", "work", "merged"):
            os.makedirs(f"{d}/{s}")
    return [dirs, (["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={deb_lower},upperdir={d}/upper,workdir={d}/work", f"{d}/merged"], BASE_ENV),
            lambda: raw_files(LP_DEB, "refdeb", name, f"{d}/merged"), (["lxc-start", "-P", LP_DEB, "-n", name, "-d"], BASE_ENV)]


def raw_down(prefix, lp, mounted=False):
    def down(i):
        name = f"{prefix}{i}"
        run(["lxc-stop", "-P", lp, "-n", name, "-k"], check=False)
        if mounted:
            run(["umount", f"{RAW}/{name}/merged"], check=False)
        shutil.rmtree(f"{lp}/{name}", ignore_errors=True)
        shutil.rmtree(f"{RAW}/{name}", ignore_errors=True)
    return down


measure("define+start busybox on dir (2 agent calls) / untar + config + lxc-start -d",
        geats_create("cbb", bb, ENV_PLAIN), raw_bb, CREATE_PAIRS, down_a=geats_down("cbb", ENV_PLAIN), down_b=raw_down("rawbb", LP))
measure("define+start Debian minbase on overlay / overlay mount + config + lxc-start -d",
        geats_create("cdeb", deb, ENV_DEB), raw_deb, CREATE_PAIRS, down_a=geats_down("cdeb", ENV_DEB), down_b=raw_down("rawdeb", LP_DEB, True))



def raw_debb(i):
    name, d = f"rawdebb{i}", f"{BTRFS}/raw/rawdebb{i}"
    return [(["btrfs", "subvolume", "snapshot", deb_subvol, d], BASE_ENV),
            lambda: raw_files(LP_DEBB, "refdebb", name, d), (["lxc-start", "-P", LP_DEBB, "-n", name, "-d"], BASE_ENV)]


def raw_down_btrfs(i):
    name = f"rawdebb{i}"
    run(["lxc-stop", "-P", LP_DEBB, "-n", name, "-k"], check=False)
    run(["btrfs", "subvolume", "delete", f"{BTRFS}/raw/{name}"], check=False)
    shutil.rmtree(f"{LP_DEBB}/{name}", ignore_errors=True)


if HAVE_BTRFS:
    measure("define+start Debian minbase on a btrfs snapshot / subvolume snapshot + config + lxc-start -d",
            geats_create("cdebb", debb, ENV_DEBB), raw_debb, CREATE_PAIRS, down_a=geats_down("cdebb", ENV_DEBB), down_b=raw_down_btrfs)

# Stop rows: geats stops container X, the raw tool container X+1 (both started untimed just before).
measure("stop (agent) / lxc-stop -k", lambda i: [agent("stop", {"vm_name": names[N // 2 + (2 * i) % (N // 2)]})],
        lambda i: [lxc("lxc-stop", names[N // 2 + (2 * i + 1) % (N // 2)], "-k")], CREATE_PAIRS,
        setup_a=lambda i: call("start", {"vm_name": names[N // 2 + (2 * i) % (N // 2)]}),
        setup_b=lambda i: call("start", {"vm_name": names[N // 2 + (2 * i + 1) % (N // 2)]}))

measure("shutdown (agent) / lxc-stop (clean)", lambda i: [agent("shutdown", {"vm_name": names[N // 2 + (2 * i) % (N // 2)]})],
        lambda i: [lxc("lxc-stop", names[N // 2 + (2 * i + 1) % (N // 2)])], CREATE_PAIRS,
        setup_a=lambda i: call("start", {"vm_name": names[N // 2 + (2 * i) % (N // 2)]}),
        setup_b=lambda i: call("start", {"vm_name": names[N // 2 + (2 * i + 1) % (N // 2)]}))

s10, s1000 = agent("status", {}, dummy_envs[10]), agent("status", {}, dummy_envs[1000])
measure("status, 1000 dummy VMs / status, 10 dummy VMs", lambda i: [s1000], lambda i: [s10], PAIRS)

# ---------------------------------------------------------------- table
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lxcv = run(["lxc-start", "--version"]).stdout.decode().strip()
print(f"\n{os.cpu_count()} CPUs ({cpu}), kernel {os.uname().release}, LXC {lxcv}")
print(f"medians of {PAIRS} interleaved pairs ({CREATE_PAIRS} for create and stop rows); ratio = median of per-pair ratios\n")
print("| work (geats / raw tool) | geats ms | raw ms | ratio |")
print("|---|---|---|---|")
for label, a, b, r, note in rows:
    print(f"| {label} | {a:.1f} | {b:.1f} | {r:.2f}× |")

# ---------------------------------------------------------------- teardown (atexit: also after a failure)
