#!/usr/bin/python3
"""geats exec storage plugin: one ZFS dataset per volume.

Each volume is the dataset PARENT/VM/VOLUME (created with `zfs create -p`,
so PARENT/VM appears on the way), mounted at MOUNT_BASE/VM/VOLUME only
while the volume is active (`canmount=noauto`), with the definition's
`size` as its quota. It provides a directory, so LXC and the manager's
template installation use it as they use a `dir` volume; no adapters.

Configuration (/etc/geats/geats.toml):

    [storage_types.zfs]
    driver = "exec"
    command = ["/usr/local/lib/geats/plugins/zfs_dataset.py"]
    provides = "directory"          # the default
    timeout = 120
    parent = "tank/geats"           # required: an existing dataset
    mount_base = "/srv/geats/zfs"   # default: /PARENT's mountpoint is not used
    # zfs = "/sbin/zfs"             # default: zfs on geats's PATH

Definition options (per volume): `compression` (on, off, lz4, zstd,
gzip), `recordsize` (a power of two from 512 to 1M, like "16K").

    {"storage": [{"name": "root", "type": "zfs", "size": "10G", "compression": "lz4"}]}

Operations (docs/plugins.md, "Exec plugins"): create -> `zfs create -p
-o canmount=noauto -o mountpoint=... [-o quota=...] [-o compression=...]
DATASET`; activate -> `zfs mount DATASET` unless mounted; deactivate ->
`zfs unmount DATASET` if mounted; destroy -> `zfs destroy -r DATASET`,
then PARENT/VM if it has no other child; usage -> `zfs get -Hp used,quota`.
Every command is an argument vector (no shell). On failure the last line
of stderr says what went wrong, and geats puts it into its reply.
"""

import json
import os
import re
import shutil
import subprocess
import sys

DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.:-]*)*$")
COMPRESSION = {"on", "off", "lz4", "zstd", "gzip"}
RECORDSIZE = re.compile(r"^(512|1K|2K|4K|8K|16K|32K|64K|128K|256K|512K|1M)$")


class Fail(Exception):
    pass


def zfs_binary(settings):
    zfs = settings.get("zfs") or shutil.which("zfs")
    if not zfs or not os.access(zfs, os.X_OK):
        raise Fail("zfs is not installed (apt-get install zfsutils-linux, with the zfs kernel module loaded)"
                   if not settings.get("zfs") else f"zfs binary {zfs} is not executable")
    return zfs


def run(zfs, *args, check=True):
    p = subprocess.run([zfs, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if check and p.returncode != 0:
        last = [l for l in p.stderr.splitlines() if l.strip()]
        raise Fail(f"zfs {args[0]} failed: {last[-1] if last else 'exit status %d' % p.returncode}")
    return p


def settings_of(req):
    s = req["settings"]
    parent = s.get("parent")
    if not isinstance(parent, str) or not DATASET.match(parent):
        raise Fail("setting parent must name an existing dataset, like \"tank/geats\"")
    base = s.get("mount_base", "/srv/geats/zfs")
    if not isinstance(base, str) or not base.startswith("/"):
        raise Fail("setting mount_base must be an absolute path")
    unknown = set(s) - {"parent", "mount_base", "zfs"}
    if unknown:
        raise Fail(f"unknown setting {sorted(unknown)[0]} (known: parent, mount_base, zfs)")
    return parent, base


def names(req):
    parent, base = settings_of(req)
    dataset = f"{parent}/{req['vm']}/{req['volume']}"
    mountpoint = os.path.join(base, req["vm"], req["volume"])
    return parent, dataset, mountpoint


def create_options(req):
    opts = []
    o = req.get("options") or {}
    unknown = set(o) - {"compression", "recordsize"}
    if unknown:
        raise Fail(f"unknown option {sorted(unknown)[0]} (zfs volumes take compression, recordsize)")
    if "compression" in o:
        if o["compression"] not in COMPRESSION:
            raise Fail(f"compression {o['compression']!r} is not one of {', '.join(sorted(COMPRESSION))}")
        opts += ["-o", f"compression={o['compression']}"]
    if "recordsize" in o:
        if not isinstance(o["recordsize"], str) or not RECORDSIZE.match(o["recordsize"]):
            raise Fail(f"recordsize {o['recordsize']!r} is not a power of two from 512 to 1M, like \"16K\"")
        opts += ["-o", f"recordsize={o['recordsize']}"]
    if req.get("size_bytes"):
        opts += ["-o", f"quota={int(req['size_bytes'])}"]
    return opts


def exists(zfs, dataset):
    return run(zfs, "list", "-H", "-o", "name", dataset, check=False).returncode == 0


def mounted(zfs, dataset):
    return run(zfs, "get", "-H", "-o", "value", "mounted", dataset).stdout.strip() == "yes"


def create(req):
    _, dataset, mountpoint = names(req)
    opts = create_options(req)  # check everything before touching anything
    zfs = zfs_binary(req["settings"])
    if not exists(zfs, dataset):
        run(zfs, "create", "-p", "-o", "canmount=noauto", "-o", f"mountpoint={mountpoint}", *opts, dataset)
    return {"record": {"dataset": dataset, "mountpoint": mountpoint}, "provides": {"directory": mountpoint}}


def activate(req):
    rec = req["record"]
    zfs = zfs_binary(req["settings"])
    if not mounted(zfs, rec["dataset"]):
        run(zfs, "mount", rec["dataset"])
    return {"provides": {"directory": rec["mountpoint"]}}


def deactivate(req):
    rec = req["record"]
    zfs = zfs_binary(req["settings"])
    if exists(zfs, rec["dataset"]) and mounted(zfs, rec["dataset"]):
        run(zfs, "unmount", rec["dataset"])
    return {}


def destroy(req):
    rec = req["record"]
    parent, _, _ = names(req)
    zfs = zfs_binary(req["settings"])
    if exists(zfs, rec["dataset"]):
        run(zfs, "destroy", "-r", rec["dataset"])
    vm_dataset = f"{parent}/{req['vm']}"
    children = run(zfs, "list", "-H", "-r", "-d", "1", "-o", "name", vm_dataset, check=False).stdout.split()
    if children == [vm_dataset]:
        run(zfs, "destroy", vm_dataset)
    return {}


def usage(req):
    zfs = zfs_binary(req["settings"])
    out = run(zfs, "get", "-Hp", "-o", "value", "used,quota", req["record"]["dataset"]).stdout.split()
    used, quota = int(out[0]), int(out[1])
    return {"used_bytes": used, "size_bytes": quota or None}


OPS = {"create": create, "activate": activate, "deactivate": deactivate, "destroy": destroy, "usage": usage}


def main():
    op = sys.argv[-1] if len(sys.argv) > 1 else ""
    try:
        if op not in OPS:
            raise Fail(f"unknown operation {op!r} (this plugin does {', '.join(OPS)})")
        try:
            req = json.load(sys.stdin)
        except ValueError as e:
            raise Fail(f"the request on stdin is not JSON: {e}")
        reply = OPS[op](req)
    except Fail as e:
        print(f"zfs_dataset: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(reply, sys.stdout)


if __name__ == "__main__":
    main()
