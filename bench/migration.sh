#!/bin/bash
# Issue 16, point 6: streaming a directory volume against `tar | tar`.
#
# Both sides go through one pipe on this machine: `geats export VM - |
# geats import -` (the VM stream: tar of the directory framed with
# lengths and sha256, then unpacked through define's steps) against
# `tar -C SRC -cf - . | tar -C DST -xf -` (GNU tar, numeric owners,
# xattrs, sparse). The tree is a copy of /usr/share and /usr/lib (about
# SIZE_MB, default 400 MB), on the same file system for both. The page
# cache is warm for both (each is run RUNS times, alternating), so the
# figures compare the streaming code, not the disk.
#
# The development VM is shared and has 2 cores: expect ±30% between
# runs; compare within one run. Usage: bash bench/migration.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SIZE_MB=${SIZE_MB:-400}
cargo build --release -q
BIN=$PWD/target/release/geats
WORK=$(mktemp -d /var/tmp/geats-bench-mig.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export GEATS_CONFIG=/dev/null

# The source VM: a dummy VM with one dir volume holding the tree.
export GEATS_ROOT=$WORK/src
echo '{"vm_type": "dummy", "storage": [{"name": "data", "type": "dir"}]}' > "$WORK/def.json"
"$BIN" -q define b1 "$WORK/def.json" >/dev/null
VOL=$WORK/src/var/lib/geats/volumes/b1/data
for d in /usr/share /usr/lib; do
  [ "$(du -sm "$VOL" | cut -f1)" -ge "$SIZE_MB" ] && break
  cp -a "$d" "$VOL/" 2>/dev/null || true
done
echo "tree: $(du -sh "$VOL" | cut -f1), $(find "$VOL" | wc -l) entries"

now() { date +%s.%N; }
geats_once() {
  rm -rf "$WORK/dst"
  local t0; t0=$(now)
  GEATS_ROOT=$WORK/src "$BIN" -q export b1 - 2>/dev/null | GEATS_ROOT=$WORK/dst "$BIN" -q import - >/dev/null
  echo "$(now) - $t0" | bc
}
tar_once() {
  rm -rf "$WORK/tar"; mkdir -p "$WORK/tar"
  local t0; t0=$(now)
  tar --numeric-owner --xattrs --sparse -C "$VOL" -cf - . | tar --numeric-owner --xattrs -C "$WORK/tar" -xpf -
  echo "$(now) - $t0" | bc
}
# Warm the cache once.
tar_once >/dev/null
g_best=999999; t_best=999999
for i in $(seq "$RUNS"); do
  g=$(geats_once); t=$(tar_once)
  echo "run $i: geats export|import ${g}s, tar|tar ${t}s"
  g_best=$(echo "if ($g < $g_best) $g else $g_best" | bc)
  t_best=$(echo "if ($t < $t_best) $t else $t_best" | bc)
done
ratio=$(echo "scale=2; $t_best / $g_best" | bc)
echo "best: geats ${g_best}s, tar|tar ${t_best}s: geats runs at ${ratio}x the rate of tar|tar (target: at least 0.80)"
