"""Shared by the test plugins of tests/exec_plugins.rs: read the request,
log the call, inject faults, write the reply.

Settings every test plugin understands:
  log     a file: one JSON line per call (argv op, GEATS_PLUGIN_OP, the
          environment's keys, the request, the reply or the failure)
  faults  a file (may be absent): {"OP": "fail" | "garbage" | "hang"}
  marker  a word put on the command line of the process a hung call
          starts, so the test can look for it afterwards
"""

import json
import os
import subprocess
import sys
import time


class Fail(Exception):
    """A failure the plugin reports: its message is the last stderr line."""


def _log(settings, entry):
    path = settings.get("log")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def main(handlers):
    op = sys.argv[-1]
    request = json.load(sys.stdin)
    settings = request.get("settings", {})
    entry = {"argv_op": op, "env_op": os.environ.get("GEATS_PLUGIN_OP"),
             "env": sorted(os.environ.keys()), "request": request}
    fault = None
    try:
        with open(settings.get("faults", "/nonexistent")) as f:
            fault = json.load(f).get(op)
    except FileNotFoundError:
        pass
    if fault == "hang":
        _log(settings, dict(entry, outcome="hang"))
        marker = settings.get("marker", "geats-test-hang")
        # A child in the plugin's process group, then hang ourselves.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", marker])
        time.sleep(1000)
    if fault == "garbage":
        _log(settings, dict(entry, outcome="garbage"))
        print("this is not JSON")
        sys.exit(0)
    try:
        if fault == "fail":
            print("some noise first", file=sys.stderr)
            raise Fail(f"injected failure of {op} for {request.get('vm')}")
        handler = handlers.get(op)
        if handler is None:
            raise Fail(f"unknown operation {op}")
        reply = handler(request, settings)
    except Fail as e:
        _log(settings, dict(entry, outcome="fail", message=str(e)))
        print(str(e), file=sys.stderr)
        sys.exit(1)
    _log(settings, dict(entry, outcome="ok", reply=reply))
    json.dump(reply, sys.stdout)
    sys.exit(0)
