#!/usr/bin/python3
"""Test storage plugin: a sparse image file BASE/VM/VOLUME.img of the
volume's size, for the loop and filesystem adapters to wrap."""

import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plugin_common import Fail, main  # noqa: E402


def create(req, s):
    if not req.get("size_bytes"):
        raise Fail("filestore volumes need a size")
    d = os.path.join(s["base"], req["vm"])
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, req["volume"] + ".img")
    with open(p, "wb") as f:
        f.truncate(req["size_bytes"])
    return {"record": {"image": p, "size": req["size_bytes"]}, "provides": {"file": p}}


def activate(req, s):
    p = req["record"]["image"]
    if not os.path.isfile(p):
        raise Fail(f"{p} is gone")
    return {"provides": {"file": p}}


def deactivate(req, s):
    return {}


def destroy(req, s):
    p = req["record"]["image"]
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(os.path.dirname(p))  # the VM's directory, once empty
    except OSError:
        pass
    return {}


def usage(req, s):
    st = os.stat(req["record"]["image"])
    return {"used_bytes": st.st_blocks * 512, "size_bytes": st.st_size}


def no_snapshots(req, s):
    return {"not_supported": True}  # the optional ops, declined


main({"create": create, "activate": activate, "deactivate": deactivate, "destroy": destroy, "usage": usage,
      "snapshot": no_snapshots, "restore": no_snapshots, "delete_snapshot": no_snapshots})
