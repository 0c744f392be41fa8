#!/usr/bin/python3
"""Test VM type plugin: the "VM" is a process. `start` runs one, in a
session of its own so it outlives the call, which writes `booted` into the
root volume's directory and then waits; `stop` kills it, `shutdown` asks
it to end with SIGTERM. RUN_DIR/VM.pid says which process it is."""

import json
import os
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plugin_common import Fail, main  # noqa: E402

VM_MARK = "geats-procvm-guest"


def pidfile(req, s):
    return os.path.join(s["run_dir"], req["vm"] + ".pid")


def pid_of(req, s):
    try:
        pid = int(open(pidfile(req, s)).read())
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode()
        stat = open(f"/proc/{pid}/stat").read()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    if VM_MARK not in cmdline or stat.rsplit(")", 1)[1].split()[0] == "Z":
        return None
    return pid


def root_dir(req):
    for v in req["volumes"]:
        if v.get("mountpoint") is None:
            return v["provides"]["path"]
    raise Fail("no root volume")


def define(req, s):
    os.makedirs(s["run_dir"], exist_ok=True)
    for v in req["volumes"]:
        if v["provides"]["kind"] != "directory":
            raise Fail(f"volume {v['name']} is not a directory")
    with open(os.path.join(s["run_dir"], req["vm"] + ".json"), "w") as f:
        json.dump(req["definition"], f)
    return {}


def undefine(req, s):
    for ext in (".json", ".pid"):
        try:
            os.unlink(os.path.join(s["run_dir"], req["vm"] + ext))
        except FileNotFoundError:
            pass
    return {}


def start(req, s):
    if pid_of(req, s):
        return {}
    root = root_dir(req)
    guest = ("import os, signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
             "open(os.path.join(sys.argv[1], 'booted'), 'w').write(str(os.getpid()))\n"
             "while True: time.sleep(1)\n")
    p = subprocess.Popen([sys.executable, "-c", guest, root, VM_MARK, req["vm"]], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(pidfile(req, s), "w") as f:
        f.write(str(p.pid))
    return {}


def _end(req, s, sig, wait):
    pid = pid_of(req, s)
    if pid:
        os.kill(pid, sig)
        deadline = time.time() + wait
        while pid_of(req, s) and time.time() < deadline:
            time.sleep(0.05)
    return {}


def stop(req, s):
    return _end(req, s, signal.SIGKILL, 5)


def shutdown(req, s):
    return _end(req, s, signal.SIGTERM, req["timeout"])


def state(req, s):
    return {"state": ["running", "running"] if pid_of(req, s) else ["stopped", "stopped"]}


def info(req, s):
    return {"pid": pid_of(req, s), "run_dir": s["run_dir"]}


main({"define": define, "undefine": undefine, "start": start, "stop": stop, "shutdown": shutdown,
      "state": state, "info": info})
