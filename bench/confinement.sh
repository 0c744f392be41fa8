#!/usr/bin/env bash
# Issue 12: define+start of an unprivileged busybox container on `dir`
# against a privileged one, in the same run (hyperfine). Before each timed
# run the container is stopped and deprovisioned, so every run unpacks the
# template, writes the config and boots a fresh container.
#
#   bash bench/confinement.sh            # builds the release binary first
#   RUNS=30 GEATS_BIN=/path/geats bash bench/confinement.sh
#
# Needs root, lxc, busybox-static and hyperfine. Prints the mean of each
# and the ratio unprivileged / privileged (the target is at most 1.10).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: needs root (it starts containers)" >&2; exit 1; }
bash scripts/delegate-idmap.sh   # where newuidmap is installed (docs/lxc.md)
command -v hyperfine >/dev/null || { echo "bench: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
if [ -z "${GEATS_BIN:-}" ]; then
  cargo build --release --quiet
  GEATS_BIN=$PWD/target/release/geats
fi
work=$(mktemp -d /tmp/geats-bench-confine.XXXXXX)
chmod 755 "$work"
export GEATS_ROOT=$work GEATS_CONFIG=$work/geats.toml
: > "$GEATS_CONFIG"
u=gbu$$ p=gbp$$
cleanup() {
  for n in "$u" "$p"; do
    "$GEATS_BIN" stop "$n" >/dev/null 2>&1 || true
    "$GEATS_BIN" deprovision "$n" >/dev/null 2>&1 || true
  done
  rm -rf "$work" "/run/lxc/lock/${work#/}"
}
trap cleanup EXIT

# The busybox template (as demo/lifecycle.sh builds it).
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

for kind in u p; do
  name=${!kind}
  priv=false; [ "$kind" = p ] && priv=true
  printf '{"action":"define","data":{"vm_name":"%s","definition":{"template":"busybox","ram":64,"privileged":%s,"storage":[{"name":"root","type":"dir"}]}}}' "$name" "$priv" > "$work/define_$kind.json"
  printf '{"action":"start","data":{"vm_name":"%s"}}' "$name" > "$work/start_$kind.json"
done
# Sanity: both really start, of the kind asked for.
for kind in u p; do
  "$GEATS_BIN" agent "$work/define_$kind.json" "$work/r.json"
  "$GEATS_BIN" agent "$work/start_$kind.json" "$work/r.json"
done
grep -q 'lxc.idmap = u 0 100000 65536' "$work/var/lib/lxc/$u/config"
if grep -q 'lxc.idmap' "$work/var/lib/lxc/$p/config"; then echo "bench: $p is not privileged" >&2; exit 1; fi

reset() { echo "$GEATS_BIN stop $1 >/dev/null; $GEATS_BIN deprovision $1 >/dev/null"; }
hyperfine --warmup 2 --runs "${RUNS:-20}" --export-json "$work/h.json" --style basic \
  --prepare "$(reset "$u")" -n 'define+start unprivileged' "$GEATS_BIN agent $work/define_u.json $work/r1.json && $GEATS_BIN agent $work/start_u.json $work/r2.json" \
  --prepare "$(reset "$p")" -n 'define+start privileged' "$GEATS_BIN agent $work/define_p.json $work/r3.json && $GEATS_BIN agent $work/start_p.json $work/r4.json" \
  >/dev/null

python3 - "$work/h.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
u, p = r["define+start unprivileged"], r["define+start privileged"]
for name, x in (("unprivileged", u), ("privileged", p)):
    print(f"define+start {name:13} {x['mean']*1000:7.1f} ms ± {x['stddev']*1000:.1f}  (median {x['median']*1000:.1f}, {len(x['times'])} runs)")
ratio = u["mean"] / p["mean"]
print(f"unprivileged / privileged: {ratio:.3f} (target <= 1.10)")
PY
