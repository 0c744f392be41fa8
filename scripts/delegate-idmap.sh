#!/usr/bin/env bash
# Delegate geats' default id map (host ids 100000-165535, docs/lxc.md) to
# root in /etc/subuid and /etc/subgid, where newuidmap and newgidmap are
# installed (Debian's `lxc` recommends `uidmap`, which installs them). LXC
# then maps an unprivileged container's ids through them, and they refuse
# a range root does not hold: geats refuses such a start with
# `config_invalid` (docs/lxc.md, "The id map and /etc/subuid"). Without
# them LXC writes the map itself and nothing is changed here.
#
# This is the install step of docs/operations.md; the demo, the tests and
# the benches run it too. `usermod --add-subuids` adds nothing that root
# already holds, so running it again changes nothing.
set -euo pipefail
command -v newuidmap >/dev/null 2>&1 && command -v newgidmap >/dev/null 2>&1 || exit 0
holds() { grep -qxE '(root|0):100000:65536' "$1" 2>/dev/null; }
if holds /etc/subuid && holds /etc/subgid; then
  exit 0
fi
# usermod refuses -v/-w while the files do not exist.
for f in /etc/subuid /etc/subgid; do
  [ -e "$f" ] || install -m 644 /dev/null "$f"
done
echo "$(basename "$0"): newuidmap is installed: delegating host ids 100000-165535 to root in /etc/subuid and /etc/subgid" >&2
usermod --add-subuids 100000-165535 --add-subgids 100000-165535 root
