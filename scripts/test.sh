#!/usr/bin/env bash
# The test command of the README, and what CI runs (.ci/run).
# Run as root on Debian 12: it installs the system packages the tests use
# (real LXC containers, loop devices, file systems, MCollective, RabbitMQ,
# sshd), then runs the whole test suite.
#
# Skips are visible: a test that needs something this machine lacks prints
# "SKIPPED <test>: <reason>" and records, in $GEATS_TEST_SKIP_LOG, the
# precondition that made it skip (tests/common/mod.rs, `Missing`). At the
# end this script lists every skip with its reason and checks each
# precondition itself. When CI is set, a skip whose precondition does not
# hold here (the machine CAN run that test) fails the run, as does a skip
# that names no checkable precondition. There is no list of allowed names:
# on a machine without device-mapper the LVM test's skip is accepted
# because /dev/mapper/control is really absent, and on any other machine
# the same skip fails CI.
#
#   scripts/test.sh                      install packages, clippy, all tests
#   scripts/test.sh --check-skips LOG    only list and check a skip log
set -euo pipefail
cd "$(dirname "$0")/.."

# Does the precondition of a skip hold on this machine? (see `Missing`)
precondition_holds() {
  local check=$1 d
  case "$check" in
    not-root) [ "$(id -u)" -ne 0 ] ;;
    absent:/*) [ ! -e "${check#absent:}" ] ;;
    no-command:*)
      # The directories geats itself searches (src/sys/exec.rs CHILD_PATH).
      for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        [ -f "$d/${check#no-command:}" ] && return 1
      done
      return 0 ;;
    no-ruby-lib:*)
      ! ruby -e "require '${check#no-ruby-lib:}'" >/dev/null 2>&1 ;;
    *) return 1 ;;   # unverifiable, or unknown: never accepted under CI
  esac
}

# List every skip of the log with its reason; under CI fail on a skip this
# machine could have run. Returns 0 or 1.
report_skips() {
  local log=$1 test check why bad=0 n=0
  [ -s "$log" ] || { echo "scripts/test.sh: no test skipped"; return 0; }
  echo
  echo "scripts/test.sh: skipped tests:"
  while IFS=$'\t' read -r test check why; do
    n=$((n + 1))
    if precondition_holds "$check"; then
      echo "  SKIPPED $test: $why   [$check: holds here]"
    else
      echo "  SKIPPED $test: $why   [$check: DOES NOT HOLD here, this machine can run it]"
      bad=$((bad + 1))
    fi
  done < <(sort -u "$log")
  if [ "$bad" -gt 0 ] && [ -n "${CI:-}" ]; then
    echo "scripts/test.sh: $bad of $n skips are not justified on this machine (CI is set): failing" >&2
    return 1
  fi
  return 0
}

if [ "${1:-}" = "--check-skips" ]; then
  report_skips "${2:?usage: scripts/test.sh --check-skips LOG}"
  exit $?
fi

packages=(
  lxc busybox-static iproute2            # the LXC VM type and its tests
  uidmap                                 # newuidmap: LXC's path where Debian's lxc pulls in its recommends
  btrfs-progs xfsprogs lvm2 qemu-utils   # storage drivers and adapters
  ruby mcollective mcollective-client rabbitmq-server  # MCollective contract tests
  openssh-server openssh-client          # Vagoth over SSH
  sqlite3 groff-base                     # docs examples (backup), man page check
  python3 e2fsprogs                      # exec plugins: the test plugins and examples/plugins
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing packages ${missing[*]}; run as root so they can be installed" >&2
    exit 1
  fi
  echo "scripts/test.sh: installing ${missing[*]}" >&2
  apt-get update -qq
  # Debian starts services on install; the tests start their own instances.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# With newuidmap installed, root must hold the default id map's range.
bash scripts/delegate-idmap.sh

# The architecture invariants are lints (clippy.toml: one process runner,
# stdout only from the renderers; Cargo.toml: no unwrap, no exit).
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --all-targets --quiet -- -D warnings
fi

skip_log=$(mktemp "${TMPDIR:-/tmp}/geats-skips.XXXXXX")
trap 'rm -f "$skip_log"' EXIT
status=0
GEATS_TEST_SKIP_LOG=$skip_log cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}" || status=$?
report_skips "$skip_log" || status=1
exit "$status"
