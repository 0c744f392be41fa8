#!/usr/bin/env bash
# Issue 18, acceptance 6: `geats snapshot` of a running busybox container
# on btrfs and on overlay, against doing the same by hand in the same run
# (hyperfine): `lxc-freeze` + the driver's own snapshot command +
# `lxc-unfreeze`. Before each timed run the previous snapshot is removed
# (`--prepare`), so every run takes a fresh one.
#
#   bash bench/snapshot.sh            # builds the release binary first
#   RUNS=30 GEATS_BIN=/path/geats bash bench/snapshot.sh
#   HF_EXTRA=--show-output bash bench/snapshot.sh   # extra hyperfine options
#
# Needs root, lxc, busybox-static, btrfs-progs and hyperfine. Prints the
# mean of each and the ratio geats / by hand (the target is below 2).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: needs root (it starts containers)" >&2; exit 1; }
bash scripts/delegate-idmap.sh   # where newuidmap is installed (docs/lxc.md)
command -v hyperfine >/dev/null || { echo "bench: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
command -v mkfs.btrfs >/dev/null || { echo "bench: needs btrfs-progs" >&2; exit 1; }
RUNS=${RUNS:-20}
if [ -z "${GEATS_BIN:-}" ]; then
  cargo build --release --quiet
  GEATS_BIN=$PWD/target/release/geats
fi
work=$(mktemp -d /tmp/geats-bench-snap.XXXXXX)
chmod 755 "$work"
export GEATS_ROOT=$work GEATS_CONFIG=$work/geats.toml
bt=gbsb$$ ov=gbso$$
lxcpath=$work/var/lib/lxc
cleanup() {
  for n in "$bt" "$ov"; do
    "$GEATS_BIN" stop "$n" >/dev/null 2>&1 || true
    "$GEATS_BIN" deprovision "$n" >/dev/null 2>&1 || true
  done
  btrfs -q subvolume delete "$work/btrfs/hand/bt" 2>/dev/null || true
  umount "$work/btrfs" 2>/dev/null || true
  for d in $(losetup -j "$work/btrfs.img" -O NAME -n 2>/dev/null); do losetup -d "$d"; done
  rm -rf "$work" "/run/lxc/lock/${work#/}"
}
trap cleanup EXIT

# A btrfs file system on a loop-mounted sparse file.
truncate -s 1G "$work/btrfs.img"
mkfs.btrfs -q "$work/btrfs.img"
mkdir -p "$work/btrfs"
mount -o loop "$work/btrfs.img" "$work/btrfs"
cat > "$GEATS_CONFIG" <<TOML
[storage_types.bt]
driver = "btrfs"
root = "$work/btrfs/vols"
[storage_types.ov]
driver = "overlay"
TOML

# The busybox template (as bench/confinement.sh builds it).
rfs=$work/build
mkdir -p "$rfs"/{bin,sbin,etc/init.d,dev,proc,sys,tmp,root,run} "$work/var/lib/geats/templates"
cp /bin/busybox "$rfs/bin/busybox"
/bin/busybox --list-full | while read -r a; do
  [ "$a" = bin/busybox ] && continue
  mkdir -p "$rfs/$(dirname "$a")"
  case "$a" in bin/*) ln -sf busybox "$rfs/$a" ;; *) ln -sf /bin/busybox "$rfs/$a" ;; esac
done
[ -e "$rfs/sbin/init" ] || ln -s /bin/busybox "$rfs/sbin/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rfs/etc/passwd"
printf '::sysinit:/etc/init.d/rcS\n::respawn:-/bin/sh\n' > "$rfs/etc/inittab"
printf '#!/bin/sh\nmount -t proc proc /proc 2>/dev/null\n' > "$rfs/etc/init.d/rcS"
chmod 755 "$rfs/etc/init.d/rcS"
tar -C "$rfs" --numeric-owner -czf "$work/var/lib/geats/templates/busybox.tar.gz" .
rm -rf "$rfs"

for n in "$bt" "$ov"; do
  type=bt; [ "$n" = "$ov" ] && type=ov
  echo "{\"template\":\"busybox\",\"ram\":64,\"storage\":[{\"name\":\"root\",\"type\":\"$type\"}]}" > "$work/$n.json"
  "$GEATS_BIN" define "$n" "$work/$n.json" >/dev/null
  "$GEATS_BIN" start "$n" >/dev/null
  # Some writes of its own, so the overlay's upper layer is not empty.
  lxc-attach -P "$lxcpath" -n "$n" -- sh -c 'mkdir -p /data && for i in $(seq 1 200); do echo "$i" > /data/f$i; done'
done
"$GEATS_BIN" snapshot "$bt" probe >/dev/null && "$GEATS_BIN" snapshot --delete "$bt" probe >/dev/null

btvol=$work/btrfs/vols/$bt/root
ovup=$work/var/lib/geats/overlay/$ov/root/upper
mkdir -p "$work/hand" "$work/btrfs/hand"
hyperfine -N ${HF_EXTRA:-} --warmup 2 --runs "$RUNS" --export-json "$work/snap.json" \
  --prepare "$GEATS_BIN snapshot --delete $bt bench" -n "geats snapshot (btrfs)" "$GEATS_BIN snapshot $bt bench" \
  --prepare "bash -c 'btrfs -q subvolume delete $work/btrfs/hand/bt 2>/dev/null || true'" -n "by hand (btrfs)" \
    "bash -c 'lxc-freeze -P $lxcpath -n $bt && btrfs -q subvolume snapshot -r $btvol $work/btrfs/hand/bt && lxc-unfreeze -P $lxcpath -n $bt'" \
  --prepare "$GEATS_BIN snapshot --delete $ov bench" -n "geats snapshot (overlay)" "$GEATS_BIN snapshot $ov bench" \
  --prepare "rm -rf $work/hand/ov" -n "by hand (overlay)" \
    "bash -c 'lxc-freeze -P $lxcpath -n $ov && mkdir -p $work/hand/ov && cp -a --reflink=auto $ovup $work/hand/ov/upper && lxc-unfreeze -P $lxcpath -n $ov'" \
  >&2
for n in "$bt" "$ov"; do
  [ "$(lxc-info -P "$lxcpath" -n "$n" -s -H)" = RUNNING ] || { echo "bench: $n is not running after the snapshots" >&2; exit 1; }
done
# Means and medians: the machine is shared and a btrfs transaction commit
# now and then makes one run take a second, so the median is the figure
# to compare; both ratios are printed.
jq -r '.results[] | "\(.command)\tmean \(.mean * 1e5 | round / 100) ms\tmedian \(.median * 1e5 | round / 100) ms"' "$work/snap.json"
jq -r '.results | map({(.command): .}) | add as $m
  | ["btrfs", "overlay"][] as $d
  | "ratio geats / by hand, \($d): median \(($m["geats snapshot (\($d))"].median / $m["by hand (\($d))"].median) * 100 | round / 100), mean \(($m["geats snapshot (\($d))"].mean / $m["by hand (\($d))"].mean) * 100 | round / 100) (target: below 2)"' "$work/snap.json"
