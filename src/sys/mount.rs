//! Mounts: reading `/proc/self/mountinfo`; `mount(2)` and `umount(2)`
//! directly where geats writes the whole option string itself (overlay,
//! tmpfs: a `mount` process costs 2-4 ms of start-up and mountinfo parsing
//! per call, issue 15), and `mount(8)` for file systems mounted with an
//! operator's own `mount_options`, which only `mount(8)` parses into flags
//! and data.

use std::path::{Path, PathBuf};

use crate::sys::exec::{Cmd, ExecError};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The file-system type (`ext4`, `overlay`, ...).
    pub fstype: String,
    /// The mount source (`/dev/loop0`, `overlay`, ...).
    pub source: String,
}

/// Undo the kernel's octal escapes (`\040` for a space) in a mountinfo field.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// `cat /proc/self/mountinfo` prints one mount per line:
//
//   42 27 7:0 / /tmp/tm rw,relatime - ext4 /dev/loop0 rw
//   ^id ^parent ^dev ^root ^mount point ^options [optional fields...] - ^fstype ^source ^super options
//
// Fields are separated by single spaces; spaces, tabs, newlines and
// backslashes inside a field are escaped as `\040`, `\011`, `\012`, `\134`.
/// Parse mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("");
            Some(MountEntry { mount_point: PathBuf::from(unescape(mount_point)), fstype: unescape(fstype), source: unescape(source) })
        })
        .collect()
}

/// The mounts of this process's mount namespace (empty if unreadable).
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

/// `path` with symlinks resolved, as the kernel shows it in mountinfo
/// (unchanged if it cannot be resolved, e.g. because it does not exist).
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Is something mounted exactly on `path`? One `statx` where the kernel
/// reports `STATX_ATTR_MOUNT_ROOT` (Linux 5.8+); else the mount points of
/// mountinfo, which costs resolving every component of `path` and
/// reading every mount of the host (a line per running container's root).
pub fn is_mounted(path: &Path) -> bool {
    mount_root(path).unwrap_or_else(|| {
        let p = resolved(path);
        mounts().iter().any(|m| m.mount_point == p)
    })
}

/// Is `path` (symlinks followed) the root of a mount, as `statx` says?
/// `None` where the kernel does not report it or the call fails for a
/// reason other than the path not existing.
fn mount_root(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the size
    // statx(2) writes; the kernel writes nothing else.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), libc::AT_STATX_SYNC_AS_STAT, 0, st.as_mut_ptr()) };
    if r != 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return matches!(e, Some(libc::ENOENT) | Some(libc::ENOTDIR)).then_some(false);
    }
    // SAFETY: statx returned 0, so it filled `st` (zeroed before).
    let st = unsafe { st.assume_init() };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (st.stx_attributes_mask & bit != 0).then_some(st.stx_attributes & bit != 0)
}

/// `mount -t FSTYPE [-o OPTIONS] SOURCE TARGET`.
pub fn mount(source: impl AsRef<std::ffi::OsStr>, target: &Path, fstype: &str, options: Option<&str>) -> Result<(), ExecError> {
    let mut cmd = Cmd::new(["mount", "-t", fstype]);
    if let Some(o) = options.filter(|o| !o.is_empty()) {
        cmd = cmd.arg("-o").arg(o);
    }
    cmd.arg(source).arg(target).run().map(|_| ())
}

/// `mount(2)` of `fstype` from `source` on `target` with `flags` and the
/// file system's own option string `data` (e.g. overlayfs' `lowerdir=...`),
/// without a `mount` process. The error names the call and the kernel's
/// reason ("No such file or directory", "Device or resource busy").
pub fn mount_data(source: &str, target: &Path, fstype: &str, flags: nix::mount::MsFlags, data: &str) -> std::io::Result<()> {
    nix::mount::mount(Some(source), target, Some(fstype), flags, Some(data))
        .map_err(|e| std::io::Error::new(std::io::Error::from(e).kind(), format!("mount -t {fstype} -o {data} {source} {}: {}", target.display(), e.desc())))
}

/// Unmount `target`, only if something is mounted there (idempotent):
/// `umount2(2)`, not following a symlink in its last component. `EINVAL`
/// (not a mount point) and `ENOENT` are "nothing to do".
///
/// `EBUSY` is tried again for a moment: a process forked by any thread of
/// any program holds the files its parent had open until it `exec`s
/// (`O_CLOEXEC` closes them only then), so a mount that is free can read
/// busy for a few milliseconds. One that stays busy (a shell inside it)
/// fails after [`BUSY_FOR`].
pub fn umount(target: &Path) -> std::io::Result<()> {
    use nix::errno::Errno;
    let t = std::time::Instant::now();
    loop {
        match nix::mount::umount2(target, nix::mount::MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) if t.elapsed() < BUSY_FOR => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => return Err(std::io::Error::new(std::io::Error::from(e).kind(), format!("umount {}: {}", target.display(), e.desc()))),
        }
    }
}

/// How long [`umount`] tries again a mount that reads busy.
pub const BUSY_FOR: std::time::Duration = std::time::Duration::from_millis(200);

/// `fsfreeze --freeze TARGET`: flush the mounted file system to its
/// device and block every write until [`thaw`]; what its device holds is
/// then a consistent file system.
pub fn freeze(target: &Path) -> Result<(), ExecError> {
    Cmd::new(["fsfreeze", "--freeze"]).arg(target).run().map(|_| ())
}

/// `fsfreeze --unfreeze TARGET`.
pub fn thaw(target: &Path) -> Result<(), ExecError> {
    Cmd::new(["fsfreeze", "--unfreeze"]).arg(target).run().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_optional_fields_and_escapes() {
        let t = "42 27 7:0 / /tmp/tm rw,relatime - ext4 /dev/loop0 rw\n\
                 43 27 0:50 / /tmp/a\\040b rw shared:1 master:2 - overlay overlay rw,lowerdir=/x\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], MountEntry { mount_point: "/tmp/tm".into(), fstype: "ext4".into(), source: "/dev/loop0".into() });
        assert_eq!(m[1].mount_point, PathBuf::from("/tmp/a b"));
        assert_eq!(m[1].fstype, "overlay");
    }

    /// The `statx` answer agrees with mountinfo's, also through a symlink
    /// and for paths that are not there.
    #[test]
    fn statx_and_mountinfo_agree_on_what_is_a_mount_point() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("proc-link");
        std::os::unix::fs::symlink("/proc", &link).unwrap();
        if mount_root(Path::new("/")).is_none() {
            eprintln!("statx reports no STATX_ATTR_MOUNT_ROOT on this kernel (before 5.8): only the mountinfo path is checked");
        }
        let by_mountinfo = |p: &Path| {
            let r = resolved(p);
            mounts().iter().any(|m| m.mount_point == r)
        };
        for (p, want) in [(Path::new("/"), true), (Path::new("/proc"), true), (link.as_path(), true), (d.path(), false), (Path::new("/proc/self/fd"), false), (&d.path().join("missing"), false)] {
            assert_eq!(by_mountinfo(p), want, "mountinfo on {}", p.display());
            assert_eq!(is_mounted(p), want, "{}", p.display());
            assert!(mount_root(p).is_none_or(|m| m == want), "statx on {}", p.display());
        }
    }

    /// An empty directory to mount on, in a temp dir; `None` (the test
    /// skips, saying so) unless root.
    fn mount_point(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED {test}: needs root (mount(2))");
            return None;
        }
        let d = tempfile::tempdir().unwrap();
        let at = d.path().join("m");
        std::fs::create_dir(&at).unwrap();
        Some((d, at))
    }

    #[test]
    fn mount_and_umount_through_the_kernel() {
        let Some((d, at)) = mount_point("mount_and_umount_through_the_kernel") else { return };
        // Nothing mounted, or nothing there at all: nothing to do.
        umount(&at).unwrap();
        umount(&d.path().join("missing")).unwrap();
        // A failure names the call and the kernel's reason.
        let e = mount_data("none", &at, "no-such-fs", nix::mount::MsFlags::empty(), "").unwrap_err();
        assert!(e.to_string().contains("mount -t no-such-fs") && e.to_string().contains("No such device"), "{e}");
        // Flags and data both reach the kernel.
        let flags = nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID;
        mount_data("tmpfs", &at, "tmpfs", flags, "size=1m,mode=0710").unwrap();
        assert!(is_mounted(&at));
        let line = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().find(|l| l.contains(&*at.to_string_lossy())).unwrap().to_string();
        assert!(line.contains("nosuid") && line.contains("nodev") && line.contains("size=1024k") && line.contains("mode=710"), "{line}");
        // A symlink to the mount point is not followed.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&at, &link).unwrap();
        umount(&link).unwrap();
        assert!(is_mounted(&at), "umount followed a symlink");
        umount(&at).unwrap();
        assert!(!is_mounted(&at));
    }

    /// A mount that reads busy for a moment is unmounted once it is free;
    /// one that stays busy fails, naming the reason, and stays mounted.
    #[test]
    fn umount_waits_out_a_moment_of_busy() {
        let Some((_d, at)) = mount_point("umount_waits_out_a_moment_of_busy") else { return };
        mount_data("tmpfs", &at, "tmpfs", nix::mount::MsFlags::empty(), "size=1m").unwrap();
        let held = std::fs::File::create(at.join("f")).unwrap();
        let freed = std::thread::spawn(move || {
            std::thread::sleep(BUSY_FOR / 4);
            drop(held);
        });
        umount(&at).unwrap();
        assert!(!is_mounted(&at));
        freed.join().unwrap();

        mount_data("tmpfs", &at, "tmpfs", nix::mount::MsFlags::empty(), "size=1m").unwrap();
        let held = std::fs::File::create(at.join("f")).unwrap();
        let t = std::time::Instant::now();
        let e = umount(&at).unwrap_err();
        assert!(t.elapsed() >= BUSY_FOR && e.to_string().contains("busy"), "{e}");
        assert!(is_mounted(&at));
        drop(held);
        umount(&at).unwrap();
    }
}
