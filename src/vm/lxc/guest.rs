//! The guest's own configuration files, written into its root directory
//! without ever following a symlink the template may have planted: every
//! directory is opened with `O_NOFOLLOW` relative to its parent's file
//! descriptor, and every file is written to a fresh temporary name and
//! renamed over the old one (which replaces a symlink instead of writing
//! through it).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{mkdirat, Mode};

use crate::definition::Definition;
use crate::names::VmName;
use crate::storage::RootDirs;
use crate::vm::VmError;

/// Shell variables geats sets in `/etc/firstboot.config` itself, or that
/// would change how a shell sourcing the file behaves; metadata may not use
/// them.
pub fn reserved_metadata_key(k: &str) -> bool {
    const FIXED: [&str; 19] = [
        "NAME", "HOSTNAME", "IFACE", "IPV4", "IPADDRESS", "NETMASK", "GATEWAY", "HWADDR", "DNS", "NIC_COUNT", "PATH", "IFS", "ENV", "BASH_ENV", "CDPATH", "HOME", "SHELL",
        "PS1", "PS4",
    ];
    FIXED.contains(&k) || k.starts_with("LD_") || (k.starts_with("NIC") && k[3..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Single-quote `s` for a POSIX shell: `'` becomes `'\''`.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The text of `/etc/firstboot.config`: shell `KEY='value'` lines with the
/// VM's name, its network settings and its metadata.
pub fn firstboot(vm: &VmName, def: &Definition) -> String {
    let mut s = String::from("# Written by geats at define time; sourced by the guest's boot script.\n");
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(s, "{k}={}", shell_quote(v));
    };
    kv("NAME", vm.as_str());
    kv("HOSTNAME", vm.as_str());
    if let Some(n) = def.network.first() {
        kv("IFACE", n.name.as_str());
        if let Ok(Some(c)) = n.cidr() {
            kv("IPV4", &c.to_string());
            // The original Geats's keys, so guest images made for it
            // keep configuring their network: address and dotted netmask.
            kv("IPADDRESS", &c.addr.to_string());
            kv("NETMASK", &c.netmask().to_string());
        }
        if let Some(g) = n.gateway {
            kv("GATEWAY", &g.to_string());
        }
        if let Some(m) = &n.hwaddr {
            kv("HWADDR", &m.to_string());
        }
    }
    kv("NIC_COUNT", &def.network.len().to_string());
    for (i, n) in def.network.iter().enumerate() {
        kv(&format!("NIC{i}_NAME"), n.name.as_str());
        kv(&format!("NIC{i}_TYPE"), match n.kind() {
            crate::definition::NicType::Veth => "veth",
            crate::definition::NicType::Macvlan => "macvlan",
            crate::definition::NicType::None => "none",
        });
        if let Some(b) = &n.bridge {
            kv(&format!("NIC{i}_BRIDGE"), b.as_str());
        }
        if let Some(m) = &n.hwaddr {
            kv(&format!("NIC{i}_HWADDR"), &m.to_string());
        }
        if let Ok(Some(c)) = n.cidr() {
            kv(&format!("NIC{i}_IPV4"), &c.to_string());
        }
        if let Some(g) = n.gateway {
            kv(&format!("NIC{i}_GATEWAY"), &g.to_string());
        }
    }
    for (k, v) in &def.metadata {
        kv(k, v);
    }
    s
}

fn io_err(step: &'static str, path: &Path, e: impl Into<std::io::Error>) -> VmError {
    VmError::Io { step, path: path.to_path_buf(), source: e.into() }
}

fn not_a_directory(shown: &Path) -> VmError {
    VmError::Invalid {
        pointer: "/definition/template".into(),
        problem: format!("the template's {} is a symlink or not a directory; geats does not write through it", shown.display()),
    }
}

/// Open (creating if missing) the directory `name` under `parent`,
/// refusing a symlink or a non-directory. A missing one is made like
/// `like` (owner, mode, extended attributes: the template's directory of
/// that name, which an overlay written unmounted must show as its own, as
/// overlayfs' copy-up would), else mode 0755 owned by `owner`.
fn open_subdir(parent: &OwnedFd, name: &str, owner: Option<(u32, u32)>, like: Option<&Path>, shown: &Path) -> Result<OwnedFd, VmError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open = || openat(Some(parent.as_raw_fd()), name, flags, Mode::empty());
    let fd = match open() {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            use std::os::unix::fs::MetadataExt;
            let model = like.map(|p| std::fs::symlink_metadata(p).map_err(|e| io_err("read", shown, e))).transpose()?;
            let (mode, owner) = match &model {
                Some(m) => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
                None => (0o755, owner),
            };
            mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(mode)).map_err(|e| io_err("create", shown, e))?;
            if let Some((u, g)) = owner {
                nix::unistd::fchownat(Some(parent.as_raw_fd()), name, Some(u.into()), Some(g.into()), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err("chown", shown, e))?;
            }
            let fd = open().map_err(|e| io_err("open", shown, e))?;
            // SAFETY: openat returned a new descriptor that nothing else owns.
            let made = unsafe { OwnedFd::from_raw_fd(fd) };
            if let Some(from) = like.filter(|_| model.is_some()) {
                // The exact mode (mkdir applies the umask), and the
                // template's attributes.
                nix::sys::stat::fchmod(made.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(|e| io_err("chmod", shown, e))?;
                copy_xattrs(from, &made).map_err(|e| io_err("copy attributes to", shown, e))?;
            }
            return Ok(made);
        }
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(not_a_directory(shown)),
        Err(e) => return Err(io_err("open", shown, e)),
    };
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copy the extended attributes of `from` (not following a symlink) onto
/// the open `to`, but overlayfs' own (`trusted.overlay.*`), as overlayfs'
/// copy-up does. A file system without them has none to copy.
fn copy_xattrs(from: &Path, to: &OwnedFd) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(from.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let last = std::io::Error::last_os_error;
    // SAFETY: `c` is a NUL-terminated path; a null buffer of length 0
    // asks for the size only.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        let e = last();
        return if e.raw_os_error() == Some(libc::ENOTSUP) { Ok(()) } else { Err(e) };
    }
    let mut names = vec![0u8; len.unsigned_abs()];
    // SAFETY: as above, with a buffer of `names.len()` bytes.
    let len = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if len < 0 {
        return Err(last());
    }
    names.truncate(len.unsigned_abs());
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty() && !n.starts_with(b"trusted.overlay.")) {
        let Ok(cname) = std::ffi::CString::new(name) else { continue };
        // SAFETY: NUL-terminated path and name; size query, then a buffer
        // of the size asked for.
        let size = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(last());
        }
        let mut value = vec![0u8; size.unsigned_abs()];
        // SAFETY: as above.
        let size = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if size < 0 {
            return Err(last());
        }
        // SAFETY: an open descriptor, a NUL-terminated name and `size`
        // bytes of `value`.
        if unsafe { libc::fsetxattr(to.as_raw_fd(), cname.as_ptr(), value.as_ptr().cast(), size.unsigned_abs(), 0) } < 0 {
            return Err(last());
        }
    }
    Ok(())
}

/// A guest file written under a temp name beside its own, not yet
/// renamed into place ([`write_in`], [`finish`]).
struct Pending<'a> {
    dir: &'a OwnedFd,
    tmp: String,
    name: &'a str,
    shown: &'a Path,
    file: std::fs::File,
}

impl Pending<'_> {
    fn discard(&self) {
        let _ = nix::unistd::unlinkat(Some(self.dir.as_raw_fd()), self.tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
}

/// Write `data` for `name` in the directory `dir` under a temp name,
/// owned and moded as it will be; [`finish`] renames it into place,
/// replacing whatever was there (a symlink is replaced, not followed).
fn write_in<'a>(dir: &'a OwnedFd, name: &'a str, data: &[u8], mode: u32, owner: Option<(u32, u32)>, shown: &'a Path) -> Result<Pending<'a>, VmError> {
    let tmp = format!(".{name}.geats-{}.tmp", std::process::id());
    let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(Some(dir.as_raw_fd()), tmp.as_str(), flags, Mode::from_bits_truncate(mode)).map_err(|e| io_err("create", shown, e))?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let written = file
        .write_all(data)
        .and_then(|_| match owner {
            Some((u, g)) => std::os::unix::fs::fchown(&file, Some(u), Some(g)),
            None => Ok(()),
        })
        .and_then(|_| {
            // After fchown, which clears set-id bits.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
        });
    let pending = Pending { dir, tmp, name, shown, file };
    match written {
        Ok(()) => Ok(pending),
        Err(e) => {
            pending.discard();
            Err(io_err("write", shown, e))
        }
    }
}

/// Rename the written files into place, in order; `durable`: `fsync`
/// each first, all started together (`fsutil::start_writeback`, one
/// journal commit for both on ext4). On failure no temp file is left.
fn finish(files: Vec<Pending<'_>>, durable: bool) -> Result<(), VmError> {
    let synced = if durable {
        if files.len() > 1 {
            files.iter().for_each(|p| crate::sys::fsutil::start_writeback(&p.file));
        }
        files.iter().try_for_each(|p| p.file.sync_all().map_err(|e| io_err("write", p.shown, e)))
    } else {
        Ok(())
    };
    let mut left = files.iter();
    let res = synced.and_then(|_| {
        left.by_ref().try_for_each(|p| {
            renameat(Some(p.dir.as_raw_fd()), p.tmp.as_str(), Some(p.dir.as_raw_fd()), p.name).map_err(|e| {
                p.discard();
                io_err("rename into place", p.shown, e)
            })
        })
    });
    if res.is_err() {
        left.for_each(Pending::discard);
    }
    res
}

/// Write `/etc/hostname` and `/etc/firstboot.config` under `root.write`,
/// owned by `owner` (the container's root on the host when its files are
/// shifted into an id map) or by the caller; `durable`: `fsync` each
/// (else the caller syncs the file system). A root read elsewhere (an
/// overlay written unmounted) gets `/etc` as its template has it: a
/// symlink or a non-directory there is refused as it is in place, and a
/// directory is made in `root.write` with its owner, mode and attributes.
pub fn write(vm: &VmName, def: &Definition, root: &RootDirs, owner: Option<(u32, u32)>, durable: bool) -> Result<(), VmError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(&root.write, flags, Mode::empty()).map_err(|e| io_err("open", &root.write, e))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let shown_etc = Path::new("/etc");
    let template_etc = root.read.join("etc");
    let like = match root.is_split().then(|| std::fs::symlink_metadata(&template_etc)) {
        None => None,
        Some(Ok(m)) if m.is_dir() => Some(template_etc.as_path()),
        Some(Ok(_)) => return Err(not_a_directory(shown_etc)),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Some(Err(e)) => return Err(io_err("read", shown_etc, e)),
    };
    let etc = open_subdir(&root_fd, "etc", owner, like, shown_etc)?;
    let hostname = format!("{vm}\n");
    let hostname = write_in(&etc, "hostname", hostname.as_bytes(), 0o644, owner, Path::new("/etc/hostname"))?;
    // 0600: metadata may carry secrets.
    let firstboot = match write_in(&etc, "firstboot.config", firstboot(vm, def).as_bytes(), 0o600, owner, Path::new("/etc/firstboot.config")) {
        Ok(p) => p,
        Err(e) => {
            hostname.discard();
            return Err(e);
        }
    };
    finish(vec![hostname, firstboot], durable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(v: serde_json::Value) -> Definition {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn quoting_survives_a_shell() {
        let d = def(serde_json::json!({
            "network": [{"name": "eth0", "ipaddr": "10.0.0.5/24", "gateway": "10.0.0.1"}],
            "metadata": {"ROLE": "it's $(touch /tmp/pwned) `x`\nrm -rf /;", "EMPTY": ""}
        }));
        let text = firstboot(&VmName::new("web1").unwrap(), &d);
        insta::assert_snapshot!(text);
        // A real shell reads the values back verbatim.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fb");
        std::fs::write(&f, &text).unwrap();
        let script = format!(". {}; printf '%s|%s|%s|%s|%s' \"$ROLE\" \"$IPV4\" \"$NAME\" \"$IPADDRESS\" \"$NETMASK\"", f.display());
        let out = crate::sys::exec::Cmd::new(["sh", "-c", script.as_str()]).run().unwrap();
        assert_eq!(out.stdout, format!("{}|10.0.0.5/24|web1|10.0.0.5|255.255.255.0", d.metadata["ROLE"]));
    }

    #[test]
    fn reserved_keys() {
        for k in ["PATH", "IFS", "NAME", "NIC0_IPV4", "LD_PRELOAD", "IPADDRESS", "NETMASK"] {
            assert!(reserved_metadata_key(k), "{k}");
        }
        for k in ["ROLE", "NICE", "owner"] {
            assert!(!reserved_metadata_key(k), "{k}");
        }
    }

    #[test]
    fn symlinked_files_are_replaced_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("host");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("file"), "host").unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(outside.join("file"), root.join("etc/hostname")).unwrap();
        std::os::unix::fs::symlink(outside.join("fb"), root.join("etc/firstboot.config")).unwrap();
        let vm = VmName::new("web1").unwrap();
        write(&vm, &def(serde_json::json!({})), &RootDirs::active(&root), None, true).unwrap();
        assert_eq!(std::fs::read_to_string(outside.join("file")).unwrap(), "host");
        assert!(!outside.join("fb").exists());
        assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).unwrap(), "web1\n");
        assert!(!std::fs::symlink_metadata(root.join("etc/hostname")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn symlinked_etc_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("host");
        std::fs::create_dir(&outside).unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        let vm = VmName::new("web1").unwrap();
        let e = write(&vm, &def(serde_json::json!({})), &RootDirs::active(&root), None, true).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // An /etc -> / style link made relative is refused too.
        std::fs::remove_file(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("..", root.join("etc")).unwrap();
        assert!(write(&vm, &def(serde_json::json!({})), &RootDirs::active(&root), None, true).is_err());
        assert!(!d.path().join("hostname").exists());
    }

    /// A root read from a template and written into another directory
    /// (an overlay's upper layer, unmounted).
    fn split(d: &Path) -> RootDirs {
        let (read, write) = (d.join("template"), d.join("upper"));
        std::fs::create_dir_all(&read).unwrap();
        std::fs::create_dir_all(&write).unwrap();
        RootDirs { read, write, fs_type: None }
    }

    #[test]
    fn split_root_gets_etc_as_the_template_has_it() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let root = split(d.path());
        let etc = root.read.join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o2751)).unwrap();
        let set = |p: &Path, name: &str, value: &[u8]| {
            let (p, n) = (std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap(), std::ffi::CString::new(name).unwrap());
            // SAFETY: NUL-terminated path and name, `value.len()` bytes.
            unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) == 0 }
        };
        let get = |p: &Path, name: &str| {
            let (p, n) = (std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap(), std::ffi::CString::new(name).unwrap());
            let mut buf = [0u8; 64];
            // SAFETY: as above, into a buffer of its length.
            let n = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            (n >= 0).then(|| buf[..n as usize].to_vec())
        };
        let user_xattrs = set(&etc, "user.geats-test", b"kept");
        // Root can set overlayfs' own attributes; they must not be copied
        // (an opaque /etc would hide the whole of the template's).
        let trusted = set(&etc, "trusted.overlay.opaque", b"y");
        let owner = nix::unistd::geteuid().is_root().then(|| {
            std::os::unix::fs::lchown(&etc, Some(4321), Some(4322)).unwrap();
            (4321, 4322)
        });
        write(&VmName::new("web1").unwrap(), &def(serde_json::json!({})), &root, Some((100000, 100000)), true).unwrap();
        let made = root.write.join("etc");
        let m = std::fs::symlink_metadata(&made).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o2751, "mode of /etc");
        if let Some(o) = owner {
            assert_eq!((m.uid(), m.gid()), o, "owner of /etc");
        }
        if user_xattrs {
            assert_eq!(get(&made, "user.geats-test").as_deref(), Some(&b"kept"[..]), "the template's attribute");
        }
        if trusted {
            assert_eq!(get(&made, "trusted.overlay.opaque"), None, "overlayfs' own attribute was copied");
        }
        assert_eq!(std::fs::read_to_string(made.join("hostname")).unwrap(), "web1\n");
        assert!(made.join("firstboot.config").is_file());
        // Nothing else copied, nothing written into the template.
        let mut names: Vec<_> = std::fs::read_dir(&made).unwrap().flatten().map(|e| e.file_name()).collect();
        names.sort();
        assert_eq!(names, ["firstboot.config", "hostname"]);
        let mut names: Vec<_> = std::fs::read_dir(&etc).unwrap().flatten().map(|e| e.file_name()).collect();
        names.sort();
        assert_eq!(names, ["passwd"], "the template was written to");
    }

    #[test]
    fn split_root_without_etc_gets_the_default() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = split(d.path());
        write(&VmName::new("web1").unwrap(), &def(serde_json::json!({})), &root, None, false).unwrap();
        assert_eq!(std::fs::metadata(root.write.join("etc")).unwrap().mode() & 0o7777, 0o755);
        assert!(root.write.join("etc/hostname").is_file());
        assert!(!root.read.join("etc").exists());
    }

    #[test]
    fn split_root_refuses_a_template_etc_that_is_a_symlink_or_a_file() {
        let d = tempfile::tempdir().unwrap();
        let vm = VmName::new("web1").unwrap();
        let outside = d.path().join("host");
        std::fs::create_dir(&outside).unwrap();
        let root = split(d.path());
        std::os::unix::fs::symlink(&outside, root.read.join("etc")).unwrap();
        let e = write(&vm, &def(serde_json::json!({})), &root, None, true).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        std::fs::remove_file(root.read.join("etc")).unwrap();
        std::fs::write(root.read.join("etc"), "not a directory").unwrap();
        let e = write(&vm, &def(serde_json::json!({})), &root, None, true).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(std::fs::read_dir(&root.write).unwrap().count(), 0, "written despite the refusal");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn missing_etc_is_created() {
        // Durable or left to a sync of the whole file system, the same files.
        for durable in [true, false] {
            let d = tempfile::tempdir().unwrap();
            write(&VmName::new("web1").unwrap(), &def(serde_json::json!({})), &RootDirs::active(d.path()), None, durable).unwrap();
            assert!(d.path().join("etc/firstboot.config").is_file());
            assert_eq!(std::fs::read_to_string(d.path().join("etc/hostname")).unwrap(), "web1\n");
            let left: Vec<_> = std::fs::read_dir(d.path().join("etc")).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
}
