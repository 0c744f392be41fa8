#!/usr/bin/python3
"""geats exec storage plugin: a volume is a copy of a golden disk image.

`create` copies GOLDEN_DIR/IMAGE to IMAGES_DIR/VM/VOLUME.img (a reflink
where the file system can, so a clone on btrfs or XFS costs nothing; a
sparse copy elsewhere) and, when the definition's `size` is larger than
the golden image, grows the file and, for ext2/3/4, the file system in it
(`resize2fs`). The volume provides that file: wrap it with the `loop` and
`filesystem` adapters and a container boots from a ready-made root with
no template to unpack (the filesystem adapter finds the file system
already there and keeps it).

Configuration (/etc/geats/geats.toml):

    [storage_types.golden]
    driver = "exec"
    command = ["/usr/local/lib/geats/plugins/golden_image.py"]
    provides = "file"
    adapters = ["loop", "filesystem"]
    golden_dir = "/srv/golden"          # required: the golden images, NAME.img
    images_dir = "/srv/geats/golden"    # required: where the copies live
    default_image = "debian12"          # used when a volume names none
    timeout = 600                       # a copy without reflinks takes a while

    [vm_types.lxc]
    driver = "lxc"
    valid_storage_types = ["golden", "dir"]

A definition names the image per volume (and gives no `template`: the
root is the image):

    {"storage": [{"name": "root", "type": "golden", "image": "debian12", "size": "4G"}]}

`provision` of an existing VM leaves an empty file system (the filesystem
adapter formats the device); deprovision and define it to clone afresh.

Operations (docs/plugins.md, "Exec plugins"): create, activate (checks the
copy is there), deactivate (nothing to do), destroy (removes the copy),
usage (allocated bytes and file size). Every command is an argument vector
(no shell); a failure's last stderr line reaches geats's reply.
"""

import json
import os
import re
import subprocess
import sys

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
EXT_MAGIC_OFFSET = 1080  # s_magic of the ext2/3/4 superblock
OWN_SETTINGS = {"golden_dir", "images_dir", "default_image"}
# The filesystem adapter's settings arrive too; they are not ours to judge.
ADAPTER_SETTINGS = {"fstype", "mount_dir", "mount_options"}


class Fail(Exception):
    pass


def directory(settings, key):
    d = settings.get(key)
    if not isinstance(d, str) or not d.startswith("/"):
        raise Fail(f"setting {key} must be an absolute path")
    return d


def settings_of(req):
    s = req["settings"]
    unknown = set(s) - OWN_SETTINGS - ADAPTER_SETTINGS
    if unknown:
        raise Fail(f"unknown setting {sorted(unknown)[0]} (known: {', '.join(sorted(OWN_SETTINGS))})")
    return directory(s, "golden_dir"), directory(s, "images_dir")


def run(argv):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        last = [l for l in p.stderr.splitlines() if l.strip()]
        raise Fail(f"{os.path.basename(argv[0])} failed: {last[-1] if last else 'exit status %d' % p.returncode}")


def is_ext(path):
    with open(path, "rb") as f:
        f.seek(EXT_MAGIC_OFFSET)
        return f.read(2) == b"\x53\xef"


def create(req):
    golden_dir, images_dir = settings_of(req)
    options = req.get("options") or {}
    unknown = set(options) - {"image", "fstype"}
    if unknown:
        raise Fail(f"unknown option {sorted(unknown)[0]} (golden volumes take image)")
    image = options.get("image", req["settings"].get("default_image"))
    if image is None:
        raise Fail("the volume names no image and there is no default_image setting")
    if not isinstance(image, str) or not NAME.match(image):
        raise Fail(f"image {image!r} is not a name like debian12")
    src = os.path.join(golden_dir, image + ".img")
    if not os.path.isfile(src):
        there = sorted(f[:-4] for f in os.listdir(golden_dir) if f.endswith(".img")) if os.path.isdir(golden_dir) else []
        raise Fail(f"golden image {image} not found in {golden_dir} (images there: {', '.join(there) or 'none'})")
    vm_dir = os.path.join(images_dir, req["vm"])
    dst = os.path.join(vm_dir, req["volume"] + ".img")
    if not os.path.exists(dst):
        os.makedirs(vm_dir, exist_ok=True)
        tmp = dst + ".part"
        try:
            run(["cp", "--reflink=auto", "--sparse=always", src, tmp])
            size = req.get("size_bytes") or 0
            if size > os.path.getsize(tmp):
                os.truncate(tmp, size)
                if is_ext(tmp):
                    run(["e2fsck", "-f", "-p", tmp])
                    run(["resize2fs", tmp])
            os.rename(tmp, dst)
        except BaseException:
            # No half-made volume: geats will not call destroy for a failed create.
            if os.path.exists(tmp):
                os.unlink(tmp)
            try:
                os.rmdir(vm_dir)
            except OSError:
                pass
            raise
    return {"record": {"image": dst, "golden": image}, "provides": {"file": dst}}


def activate(req):
    p = req["record"]["image"]
    if not os.path.isfile(p):
        raise Fail(f"the copy {p} is missing")
    return {"provides": {"file": p}}


def deactivate(req):
    return {}


def destroy(req):
    p = req["record"]["image"]
    if os.path.exists(p):
        os.unlink(p)
    try:
        os.rmdir(os.path.dirname(p))
    except OSError:
        pass
    return {}


def usage(req):
    st = os.stat(req["record"]["image"])
    return {"used_bytes": st.st_blocks * 512, "size_bytes": st.st_size}


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
        print(f"golden_image: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"golden_image: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(reply, sys.stdout)


if __name__ == "__main__":
    main()
