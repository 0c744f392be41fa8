#!/usr/bin/env bash
# The test command of the README, and what CI runs (.ci/run).
# Run as root on Debian 12: it installs the system packages the tests use
# (real LXC containers, loop devices, file systems, MCollective, RabbitMQ,
# sshd), then runs the whole test suite. Tests that need something this
# machine cannot do (device-mapper for LVM, say) print "SKIPPED ...: why".
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  lxc busybox-static iproute2            # the LXC VM type and its tests
  btrfs-progs xfsprogs lvm2 qemu-utils   # storage drivers and adapters
  ruby mcollective mcollective-client rabbitmq-server  # MCollective contract tests
  openssh-server openssh-client          # Vagoth over SSH
  sqlite3 groff-base                     # docs examples (backup), man page check
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

# The architecture invariants are lints (clippy.toml: one process runner,
# stdout only from the renderers; Cargo.toml: no unwrap, no exit).
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --all-targets --quiet -- -D warnings
fi
cargo test --locked --all-targets -- --test-threads="${TEST_THREADS:-2}"
