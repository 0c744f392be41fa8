#!/usr/bin/env bash
# geats against the raw LXC tools doing the same work (issue 15), one run.
#
#   bash bench/compare.sh                 # builds the release binary, ~3 minutes
#   PAIRS=50 CREATE_PAIRS=15 bash bench/compare.sh   # more repetitions
#   GEATS_BIN=/path/geats CACHE_DIR=/var/cache/geats-bench bash bench/compare.sh
#   NOSYNC=1 ONLY=overlay,btrfs bash bench/compare.sh   # geats with every sync a no-op (bench/nosync.c)
#
# Needs root, lxc, busybox-static, debootstrap, btrfs-progs (installed if
# missing). The Debian minbase template is debootstrapped once into
# CACHE_DIR (default /var/cache/geats-bench) and reused. Prints a markdown
# table: the medians of interleaved pairs and the median of the per-pair
# ratios geats / raw tool.
# See docs/performance.md for how to read it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/compare.sh: needs root (LXC containers, mounts)" >&2; exit 1; }
updated=
for p in lxc-start:lxc busybox:busybox-static debootstrap:debootstrap mkfs.btrfs:btrfs-progs; do
  command -v "${p%%:*}" >/dev/null && continue
  [ -n "$updated" ] || { apt-get update -qq; updated=1; }
  echo "bench: installing ${p#*:}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${p#*:}" >/dev/null
done
bash scripts/delegate-idmap.sh   # where newuidmap is installed (docs/lxc.md)
if [ -z "${GEATS_BIN:-}" ]; then
  bash scripts/build.sh   # the static binary geats ships (docs/operations.md)
  GEATS_BIN=$PWD/target/release/geats
fi
CACHE_DIR=${CACHE_DIR:-/var/cache/geats-bench}
mkdir -p "$CACHE_DIR"
exec python3 bench/compare.py "$GEATS_BIN" "$CACHE_DIR"
