#!/usr/bin/python3
"""Test storage plugin: a directory BASE/VM/VOLUME per volume."""

import os
import shutil
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plugin_common import Fail, main  # noqa: E402


def path(req, s):
    return os.path.join(s["base"], req["vm"], req["volume"])


def create(req, s):
    p = path(req, s)
    os.makedirs(p, exist_ok=True)
    return {"record": {"path": p, "made_by": "dirstore"}, "provides": {"directory": p}}


def activate(req, s):
    p = req["record"]["path"]
    if not os.path.isdir(p):
        raise Fail(f"{p} is gone")
    return {"provides": {"directory": p}}


def deactivate(req, s):
    return {}


def snapshots_of(req, s):
    return os.path.join(s["base"], ".snapshots", req["vm"], req["volume"])


def destroy(req, s):
    p = req["record"]["path"]
    shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(snapshots_of(req, s), ignore_errors=True)  # and its snapshots
    try:
        os.rmdir(os.path.dirname(snapshots_of(req, s)))  # the VM's, once empty
    except OSError:
        pass
    try:
        os.rmdir(os.path.dirname(p))  # the VM's directory, once empty
    except OSError:
        pass
    return {}


def usage(req, s):
    used = 0
    for root, _, files in os.walk(req["record"]["path"]):
        used += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return {"used_bytes": used}


def snapshot(req, s):
    target = os.path.join(snapshots_of(req, s), req["snapshot"])
    shutil.rmtree(target, ignore_errors=True)  # one of that name is replaced
    shutil.copytree(req["record"]["path"], target, symlinks=True)
    return {}


def restore(req, s):
    source = os.path.join(snapshots_of(req, s), req["snapshot"])
    if not os.path.isdir(source):
        raise Fail(f"no snapshot {req['snapshot']}")
    p = req["record"]["path"]
    shutil.rmtree(p)
    shutil.copytree(source, p, symlinks=True)
    return {}


def delete_snapshot(req, s):
    shutil.rmtree(os.path.join(snapshots_of(req, s), req["snapshot"]), ignore_errors=True)
    return {}


main({"create": create, "activate": activate, "deactivate": deactivate, "destroy": destroy, "usage": usage,
      "snapshot": snapshot, "restore": restore, "delete_snapshot": delete_snapshot})
