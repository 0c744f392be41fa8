//! Confinement of LXC containers: the id map of unprivileged containers,
//! how their files are presented to them (idmapped mounts, or owners
//! shifted while the template is unpacked), and what every container gets
//! whatever its kind (capability drops, a device allow-list, LXC's default
//! seccomp policy, an AppArmor profile where AppArmor is enabled).
//!
//! Facts this builds on (Debian 12, LXC 5.0, kernel 6.x): LXC takes
//! `lxc.rootfs.options = idmap=container` for a `dir:` rootfs and
//! `idmap=container` on `lxc.mount.entry`, both needing `lxc.idmap`. The
//! rootfs is idmapped by LXC's parent process, mount entries by the child,
//! which already runs as the container's root: the mapped root must be
//! able to traverse to every extra volume's directory. The kernel idmaps
//! mounts of ext4, xfs, btrfs and tmpfs (6.3+) but not of a merged
//! overlayfs ("Failed to change mount attributes": EINVAL), so a root on
//! the `overlay` driver gets shifted owners.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::Deserialize;

pub use crate::template::IdShift;

/// The default id map: container ids 0..65536 are host ids
/// 100000..165536 (as Proxmox does).
pub const DEFAULT_MAP: IdShift = IdShift { uid: 100_000, gid: 100_000, range: 65_536 };

/// Capabilities dropped from every container's bounding set, privileged
/// or not (those of Debian's `common.conf`).
pub const CAP_DROP: &str = "mac_admin mac_override sys_module sys_rawio sys_time";

/// The device cgroup allow-list after `deny a`: mknod of any node (using
/// it needs its own line), then null, zero, full, random, urandom, tty,
/// console, ptmx and the pts. As in Debian's `common.conf`, without fuse.
pub const DEVICES: [&str; 11] =
    ["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"];

/// Devices a VM type may add to the allow-list (`allow_devices`).
pub fn optional_device(name: &str) -> Option<&'static str> {
    match name {
        "fuse" => Some("c 10:229 rwm"),
        "tun" => Some("c 10:200 rwm"),
        _ => None,
    }
}

/// LXC's default seccomp policy (`/usr/share/lxc/config/common.seccomp`
/// of LXC 5.0): no kexec, no open_by_handle_at, no kernel modules, no
/// forced umount. Embedded, so a host without LXC's config files gets it
/// too; written to `LXCPATH/NAME/seccomp`.
pub const SECCOMP_POLICY: &str = "2\ndenylist\nreject_force_umount  # comment this to allow umount -f;  not recommended\n[all]\nkexec_load errno 1\nopen_by_handle_at errno 1\ninit_module errno 1\nfinit_module errno 1\ndelete_module errno 1\n";

/// `idmapped_mounts` setting: how an unprivileged container's files are
/// presented to it when its template is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdmappedMounts {
    /// Idmapped mounts where the filesystem supports them, else shifted.
    Auto,
    /// Always idmapped mounts (a start on a filesystem without support fails).
    Always,
    /// Never: unpack templates with owners shifted into the map.
    Never,
}

/// How a container's files are owned on the host and shown to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// No id map: root inside is root on the host.
    Privileged,
    /// Root-owned files on the host, shown through idmapped mounts.
    Idmapped,
    /// Files owned by the map's ids on the host (unpacked shifted).
    Shifted,
}

/// Filesystem magic numbers (`statfs(2)` `f_type`) and names.
const FS_NAMES: [(i64, &str); 8] = [
    (0xEF53, "ext4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0x794C_7630, "overlay"),
    (0x6969, "nfs"),
    (0x6573_5546, "fuse"),
    (0x2FC1_2FC1, "zfs"),
];

fn fs_name(magic: i64) -> String {
    FS_NAMES.iter().find(|(m, _)| *m == magic).map_or_else(|| format!("type {magic:#x}"), |(_, n)| (*n).to_string())
}

/// The running kernel's (major, minor), from `/proc/sys/kernel/osrelease`
/// (`6.1.0-18-amd64`).
pub fn kernel_version() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Can the filesystem holding `dir` be mounted idmapped on this kernel?
/// `Err` says why not (shown in `info --config`).
pub fn idmap_support(dir: &Path) -> Result<(), String> {
    idmap_support_of(dir, None)
}

/// [`idmap_support`] of the file system of type `fs_type` (`statfs`
/// magic) when given, else of the one holding `dir`: a root installed
/// before it is mounted (`storage::RootDirs::fs_type`).
pub fn idmap_support_of(dir: &Path, fs_type: Option<i64>) -> Result<(), String> {
    let k = kernel_version().unwrap_or((0, 0));
    if k < (5, 12) {
        return Err(format!("kernel {}.{} has no idmapped mounts (5.12+)", k.0, k.1));
    }
    let magic = match fs_type {
        Some(m) => m,
        None => {
            let st = nix::sys::statfs::statfs(dir).map_err(|e| format!("cannot statfs {}: {e}", dir.display()))?;
            #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
            let m = st.filesystem_type().0 as i64;
            m
        }
    };
    let min = match magic {
        0xEF53 | 0x5846_5342 => (5, 12),
        0x9123_683E => (5, 15),
        0x0102_1994 => (6, 3),
        _ => return Err(format!("{} filesystems cannot be mounted idmapped", fs_name(magic))),
    };
    if k < min {
        return Err(format!("{} filesystems can be mounted idmapped from kernel {}.{}", fs_name(magic), min.0, min.1));
    }
    Ok(())
}

/// Is AppArmor enabled on this host?
pub fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim_start().starts_with('Y'))
}

/// Does the kernel support seccomp filters?
pub fn seccomp_supported() -> bool {
    Path::new("/proc/sys/kernel/seccomp/actions_avail").exists()
}

/// The owner uid of `p` (not following a symlink).
pub fn owner(p: &Path) -> Option<u32> {
    std::fs::symlink_metadata(p).ok().map(|m| m.uid())
}

/// Make the parent of a container directory `dir` one that no other host
/// user can traverse: owned by `owner` with mode 0100 when the container's
/// mapped root must pass through it (an unprivileged container's extra
/// volumes are mounted by LXC as that user), else root's with mode 0700.
/// Returns the parent it guarded; `/` is never touched.
pub fn guard_parent(dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<Option<std::path::PathBuf>> {
    let Some(parent) = dir.parent().filter(|p| *p != Path::new("/") && !p.as_os_str().is_empty()) else { return Ok(None) };
    std::fs::create_dir_all(parent)?;
    let (uid, gid, mode) = match owner {
        Some((u, g)) => (u, g, 0o100),
        None => (0, 0, 0o700),
    };
    let m = std::fs::symlink_metadata(parent)?;
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::lchown(parent, Some(uid), Some(gid))?;
    }
    if m.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(Some(parent.to_path_buf()))
}

/// The first directory on the way to `dir` that the host user `uid`
/// (who is in no group) cannot traverse, if any.
pub fn blocked_for(dir: &Path, uid: u32, gid: u32) -> Option<std::path::PathBuf> {
    let mut cur = std::path::PathBuf::from("/");
    for c in dir.components().skip(1) {
        let m = std::fs::metadata(&cur).ok()?;
        let bits = m.permissions().mode();
        let ok = if m.uid() == uid {
            bits & 0o100 != 0
        } else if m.gid() == gid {
            bits & 0o010 != 0
        } else {
            bits & 0o001 != 0
        };
        if !ok {
            return Some(cur);
        }
        cur.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_and_filesystems() {
        assert!(kernel_version().is_some());
        assert_eq!(fs_name(0x794C_7630), "overlay");
        assert_eq!(fs_name(0x1234), "type 0x1234");
        assert_eq!(optional_device("tun"), Some("c 10:200 rwm"));
        assert_eq!(optional_device("sda"), None);
        assert!(SECCOMP_POLICY.starts_with("2\ndenylist\n") && SECCOMP_POLICY.contains("init_module errno 1"));
    }

    #[test]
    fn guard_and_blocked() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("SKIPPED guard_and_blocked: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let vol = d.path().join("vm/root");
        std::fs::create_dir_all(&vol).unwrap();
        assert_eq!(blocked_for(&vol, 65534, 65534), None, "{}", d.path().display());
        guard_parent(&vol, Some((100_000, 100_000))).unwrap();
        assert_eq!(blocked_for(&vol, 65534, 65534), Some(d.path().join("vm")));
        assert_eq!(blocked_for(&vol, 100_000, 100_000), None);
        guard_parent(&vol, None).unwrap();
        assert_eq!(blocked_for(&vol, 100_000, 100_000), Some(d.path().join("vm")));
        assert_eq!(guard_parent(Path::new("/x"), None).unwrap(), None);
    }
}
