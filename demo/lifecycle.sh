#!/bin/bash
# A real busybox container through its whole lifecycle, driven through
# `geats agent --stdio` on the embedded defaults, printing each request and
# reply.
#
# Run as root on Debian 12 from the repository: `bash demo/lifecycle.sh`.
# It installs lxc and busybox-static if missing (apt-get), builds geats in
# release mode, and uses GEATS_ROOT=a fresh temp dir, so the embedded
# default paths (ROOT/var/lib/geats/templates, ROOT/var/lib/lxc, ...) live
# there and nothing else under / is touched, except that where newuidmap is
# installed root is given the default id map's range in /etc/subuid and
# /etc/subgid if it lacks it (scripts/delegate-idmap.sh). The temp dir, the
# container and its cgroups are removed at the end, also on failure or
# Ctrl-C. Each request must succeed and leave the container as expected;
# the demo stops with status 1 at the first that does not.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "demo/lifecycle.sh: run me as root (LXC containers need it)" >&2
    exit 1
fi
cd "$(dirname "$0")/.."

# 1. System packages.
need=()
command -v lxc-start >/dev/null 2>&1 || need+=(lxc)
[ -x /bin/busybox ] && /bin/busybox --list-full >/dev/null 2>&1 || need+=(busybox-static)
if ! dpkg -s busybox-static >/dev/null 2>&1; then
    case " ${need[*]:-} " in *" busybox-static "*) ;; *) need+=(busybox-static) ;; esac
fi
if [ "${#need[@]}" -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
# Debian's lxc recommends uidmap: with its newuidmap installed, LXC maps the
# container's ids through it, and root must hold the range in /etc/subuid
# and /etc/subgid (docs/lxc.md). The one change outside the temp dir, and
# only where it is missing.
bash scripts/delegate-idmap.sh

# 2. geats itself.
echo "== cargo build --release"
cargo build --release --quiet
GEATS="$PWD/target/release/geats"

# 3. A private root on the embedded defaults.
ROOT=$(mktemp -d /tmp/geats-demo.XXXXXX)
# mktemp makes it 0700; LXC's child, as the container's root (host uid
# 100000), must traverse it to reach the lxcpath.
chmod 755 "$ROOT"
export GEATS_ROOT="$ROOT"
unset GEATS_CONFIG
VM="demo$$"
LXCPATH="$ROOT/var/lib/lxc"

cleanup() {
    set +e
    if lxc-info -P "$LXCPATH" -n "$VM" -s 2>/dev/null | grep -q RUNNING; then
        lxc-stop -P "$LXCPATH" -n "$VM" -k
    fi
    printf '%s' "{\"action\": \"deprovision\", \"data\": {\"vm_name\": \"$VM\"}}" | "$GEATS" agent --stdio >/dev/null 2>&1
    rm -rf "$ROOT" "/run/lxc/lock$ROOT"
    rmdir -p "/run/lxc/lock$(dirname "$ROOT")" 2>/dev/null
    return 0
}
trap cleanup EXIT

# 4. A busybox template: busybox init as PID 1, one symlink per applet,
#    an rcS that applies the /etc/firstboot.config geats writes.
echo "== building the busybox template in $ROOT/var/lib/geats/templates"
RFS="$ROOT/build/rootfs"
mkdir -p "$RFS" "$ROOT/var/lib/geats/templates"
for d in bin sbin usr/bin usr/sbin etc/init.d dev proc sys tmp root run var/log mnt home; do
    mkdir -p "$RFS/$d"
done
chmod 1777 "$RFS/tmp"
chmod 700 "$RFS/root"
cp /bin/busybox "$RFS/bin/busybox"
/bin/busybox --list-full | while read -r p; do
    [ "$p" = bin/busybox ] && continue
    case "$p" in
        bin/*) ln -sf busybox "$RFS/$p" ;;
        *) ln -sf /bin/busybox "$RFS/$p" ;;
    esac
done
[ -e "$RFS/sbin/init" ] || ln -s /bin/busybox "$RFS/sbin/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$RFS/etc/passwd"
printf 'root:x:0:\n' > "$RFS/etc/group"
printf '127.0.0.1 localhost\n' > "$RFS/etc/hosts"
cat > "$RFS/etc/inittab" <<'INITTAB'
::sysinit:/etc/init.d/rcS
::respawn:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
INITTAB
cat > "$RFS/etc/init.d/rcS" <<'RCS'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
grep -q ' /proc ' /proc/mounts 2>/dev/null || mount -t proc proc /proc
grep -q ' /run ' /proc/mounts || mount -t tmpfs run /run
HOSTNAME=; IFACE=eth0; IPV4=; GATEWAY=
[ -f /etc/hostname ] && HOSTNAME=$(cat /etc/hostname)
[ -f /etc/firstboot.config ] && . /etc/firstboot.config
[ -n "$HOSTNAME" ] && hostname "$HOSTNAME"
ip link set lo up
if [ -n "$IPV4" ] && ip link show "$IFACE" >/dev/null 2>&1; then
  ip link set "$IFACE" up; ip addr add "$IPV4" dev "$IFACE" 2>/dev/null
  [ -n "$GATEWAY" ] && ip route replace default via "$GATEWAY" dev "$IFACE"
fi
echo "rcS done: $(hostname)" > /run/rcS.done
RCS
chmod 755 "$RFS/etc/init.d/rcS"
tar -C "$RFS" --numeric-owner -czf "$ROOT/var/lib/geats/templates/busybox.tar.gz" .
rm -rf "$ROOT/build"
"$GEATS" templates

# 5. The lifecycle, one request at a time.
# Each request must succeed and leave the container in the state named
# (if one is); otherwise the demo stops there with status 1.
request() {
    local action=$1 data=$2 want=${3:-} reply state
    local req="{\"action\": \"$action\", \"data\": $data}"
    echo
    echo ">>> $req"
    reply=$(printf '%s' "$req" | "$GEATS" agent --stdio)
    echo "$reply"
    state=$(lxc-info -P "$LXCPATH" -n "$VM" -s -H 2>&1 || true)
    printf '    lxc-info: %s\n' "$state"
    case "$reply" in
        *'"success":true'*) ;;
        *) echo "demo/lifecycle.sh: $action failed (reply above)" >&2; exit 1 ;;
    esac
    if [ -n "$want" ] && [ "$state" != "$want" ]; then
        echo "demo/lifecycle.sh: after $action the container is $state, not $want" >&2
        exit 1
    fi
}

DEF="{\"template\": \"busybox\", \"ram\": 64, \"cpus\": 1, \"storage\": [{\"name\": \"root\", \"type\": \"dir\"}], \"metadata\": {\"ROLE\": \"demo\"}}"
request define "{\"vm_name\": \"$VM\", \"definition\": $DEF}" STOPPED
request start "{\"vm_name\": \"$VM\"}" RUNNING
request info "{\"vm_name\": \"$VM\"}" RUNNING
request shutdown "{\"vm_name\": \"$VM\"}" STOPPED
request start "{\"vm_name\": \"$VM\"}" RUNNING
request stop "{\"vm_name\": \"$VM\"}" STOPPED
echo "precious" > "$ROOT/var/lib/geats/volumes/$VM/root/root/keep.txt"
request undefine "{\"vm_name\": \"$VM\"}"
request define "{\"vm_name\": \"$VM\", \"definition\": $DEF}" STOPPED
echo "    data kept across undefine/define: $(cat "$ROOT/var/lib/geats/volumes/$VM/root/root/keep.txt")"
request deprovision "{\"vm_name\": \"$VM\"}"
echo
echo "== done; the volume is gone: $([ -e "$ROOT/var/lib/geats/volumes/$VM" ] && echo no || echo yes)"
