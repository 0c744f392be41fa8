#!/usr/bin/env bash
# Per-request cost of geats, measured against /bin/true in the same run.
#
#   bash bench/run.sh            # builds the release binary first
#   GEATS_BIN=/path/geats bash bench/run.sh
#   STATIC=1 bash bench/run.sh   # also build and measure a static-pie binary
#   BASE_BIN=/path/old-geats bash bench/run.sh  # also time an older build's
#                                # info and status in the same run (before/after)
#
# Prints the mean wall time of each command (hyperfine, no shell) and the
# ratio to /bin/true, plus peak memory. The target for `info` on a dummy VM
# is about 2x (/bin/true + one SQLite read); see docs/architecture.md.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null || { echo "bench: installing hyperfine" >&2; apt-get install -y -qq hyperfine >/dev/null; }
if [ -z "${GEATS_BIN:-}" ]; then
  cargo build --release --quiet
  GEATS_BIN=$PWD/target/release/geats
fi
# The yardstick: a process that opens the database and reads one row.
cargo build --release --quiet --example sqlite_read
READ_BIN=$PWD/target/release/examples/sqlite_read
# A static-pie binary skips the dynamic loader's relocations and symbol
# lookups, about a third of a request's CPU time. It cannot be the default
# build: crt-static in .cargo/config.toml breaks proc-macro crates unless
# the target is named, which would pin the architecture.
STATIC_BIN=
if [ "${STATIC:-0}" = 1 ]; then
  triple=$(rustc -vV | sed -n 's/^host: //p')
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --target "$triple"
  STATIC_BIN=$PWD/target/$triple/release/geats
fi
work=$(mktemp -d /tmp/geats-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export GEATS_ROOT=$work GEATS_CONFIG=$work/geats.toml
: > "$GEATS_CONFIG"
def='{"vm_type":"dummy","ram":256,"storage":[{"name":"root","type":"dir"}]}'
for i in $(seq 1 100); do
  printf '{"action":"define","data":{"vm_name":"vm%d","definition":%s}}' "$i" "$def" | "$GEATS_BIN" agent --stdio >/dev/null
done
printf '{"action":"info","data":{"vm_name":"vm1"}}' > "$work/info.json"
printf '{"action":"status","data":{}}' > "$work/status.json"
printf '{"action":"start","data":{"vm_name":"vm1"}}' > "$work/start.json"
printf '{"action":"define","data":{"vm_name":"vm1","definition":%s}}' "$def" > "$work/define.json"
# Sanity: the requests really succeed.
"$GEATS_BIN" agent "$work/info.json" "$work/reply.json"
grep -q '"vm_type":"dummy"' "$work/reply.json"
"$READ_BIN" "$work/var/lib/geats/geats.db" vm1 >/dev/null

extra=()
[ -n "$STATIC_BIN" ] && extra=(-n 'info (static-pie)' "$STATIC_BIN agent $work/info.json $work/r6.json")
if [ -n "${BASE_BIN:-}" ]; then
  extra+=(-n 'info (BASE_BIN)' "$BASE_BIN agent $work/info.json $work/r7.json"
          -n 'status (BASE_BIN)' "$BASE_BIN agent $work/status.json $work/r8.json"
          -n 'start (BASE_BIN)' "$BASE_BIN agent $work/start.json $work/r9.json")
fi
hyperfine -N --warmup 100 --runs "${RUNS:-1000}" --export-json "$work/h.json" --style basic \
  -n true /bin/true \
  -n 'one SQLite read' "$READ_BIN $work/var/lib/geats/geats.db vm1" \
  -n info "$GEATS_BIN agent $work/info.json $work/r1.json" \
  -n 'status (100 VMs)' "$GEATS_BIN agent $work/status.json $work/r2.json" \
  -n 'start (already running)' "$GEATS_BIN agent $work/start.json $work/r3.json" \
  -n 'define (identical)' "$GEATS_BIN agent $work/define.json $work/r4.json" \
  "${extra[@]}" >/dev/null

python3 - "$work/h.json" "$GEATS_BIN" "$work" <<'PY'
import json, resource, subprocess, sys
res = json.load(open(sys.argv[1]))["results"]
base = next(r for r in res if r["command"] == "true")["mean"]
print(f"{'command':<26}{'mean ms':>9}{'stddev':>9}{'x /bin/true':>13}")
for r in res:
    print(f"{r['command']:<26}{r['mean']*1e3:>9.3f}{r['stddev']*1e3:>9.3f}{r['mean']/base:>13.2f}")
info = next(r for r in res if r["command"] == "info")["mean"]
read = next(r for r in res if r["command"] == "one SQLite read")["mean"]
# "2x a /bin/true process plus one SQLite read": the read's own cost is the
# yardstick process minus a bare process.
target = 2 * base + (read - base)
verdict = "within" if info <= target * 1.1 else "OVER"
print(f"\ninfo: {info*1e3:.2f} ms; target 2x /bin/true + one SQLite read = {target*1e3:.2f} ms: {verdict} (info/target {info/target:.2f})")
before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
subprocess.run([sys.argv[2], "agent", f"{sys.argv[3]}/status.json", f"{sys.argv[3]}/r5.json"], check=True)
print(f"peak RSS of status (100 VMs): {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss} kB")
PY
