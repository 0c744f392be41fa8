#!/usr/bin/env bash
# Instructions executed per request (callgrind), old binary against new:
# unlike wall time, this does not drift with the load of a shared machine.
#
#   bash bench/instructions.sh OLD_GEATS NEW_GEATS
#
# Each binary gets its own root with the 100 dummy VMs of bench/run.sh and
# runs info, status and an idempotent start; prints Ir (instructions) of
# each and new/old.
set -euo pipefail
old=$1 new=$2
command -v valgrind >/dev/null || { echo "bench: installing valgrind" >&2; apt-get install -y -qq valgrind >/dev/null; }
work=$(mktemp -d /tmp/geats-ir.XXXXXX)
trap 'rm -rf "$work"' EXIT
def='{"vm_type":"dummy","ram":256,"storage":[{"name":"root","type":"dir"}]}'
printf '{"action":"info","data":{"vm_name":"vm1"}}' > "$work/info.json"
printf '{"action":"status","data":{}}' > "$work/status.json"
printf '{"action":"start","data":{"vm_name":"vm1"}}' > "$work/start.json"
ir() { # BIN ROOT REQUEST -> instructions of one request
  GEATS_ROOT=$2 GEATS_CONFIG=$2/geats.toml valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$1" agent "$3" "$work/reply.json" 2>/dev/null >/dev/null
  sed -n 's/^summary: //p' "$work/cg.out"
}
declare -A result
for which in old new; do
  bin=${!which}
  root=$work/$which
  mkdir -p "$root"
  : > "$root/geats.toml"
  for i in $(seq 1 100); do
    printf '{"action":"define","data":{"vm_name":"vm%d","definition":%s}}' "$i" "$def" |
      GEATS_ROOT=$root GEATS_CONFIG=$root/geats.toml "$bin" agent --stdio >/dev/null
  done
  GEATS_ROOT=$root GEATS_CONFIG=$root/geats.toml "$bin" agent "$work/start.json" "$work/reply.json"
  for req in info status start; do
    ir "$bin" "$root" "$work/$req.json" >/dev/null   # warm the page cache
    result[$which.$req]=$(ir "$bin" "$root" "$work/$req.json")
  done
done
printf '%-26s%14s%14s%9s\n' request old new new/old
for req in info status start; do
  o=${result[old.$req]} n=${result[new.$req]}
  printf '%-26s%14d%14d%9.3f\n' "$req" "$o" "$n" "$(echo "$n / $o" | bc -l)"
done
