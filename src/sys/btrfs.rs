//! btrfs subvolumes through the kernel's ioctls, as `btrfs subvolume
//! create|snapshot|delete` and `btrfs property set -ts PATH ro true` make
//! them, without a `btrfs` process per call (2-4 ms each, three per
//! volume made from a template; issue 15). Layouts are the kernel's
//! `include/uapi/linux/btrfs.h`.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `BTRFS_PATH_NAME_MAX`.
const PATH_NAME_MAX: usize = 4087;
/// `BTRFS_SUBVOL_NAME_MAX`.
const SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`.
const SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the `size`/`qgroup_inherit` union
/// as its `unused[4]`, the name union as `name`).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME_MAX + 1],
}

/// The ioctls (`BTRFS_IOCTL_MAGIC` 0x94).
mod ioc {
    use super::{VolArgs, VolArgsV2};
    nix::ioctl_write_ptr!(subvol_create, 0x94, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, 0x94, 15, VolArgs);
    nix::ioctl_write_ptr!(snap_create_v2, 0x94, 23, VolArgsV2);
    nix::ioctl_read!(subvol_getflags, 0x94, 25, u64);
    nix::ioctl_write_ptr!(subvol_setflags, 0x94, 26, u64);
}

/// The parent directory (opened) and the last component of `path`, which
/// must fit the name field (`max` bytes) and not be `.` or `..`.
fn split(path: &Path, max: usize) -> std::io::Result<(File, &OsStr)> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{}: {why}", path.display()));
    let name = path.file_name().ok_or_else(|| invalid("no last component"))?;
    if name.len() > max || name.as_bytes().contains(&0) {
        return Err(invalid("name too long for a subvolume"));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((File::open(parent)?, name))
}

fn errno<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::errno::Errno) -> std::io::Error + 'a {
    move |e| std::io::Error::new(std::io::Error::from(e).kind(), format!("{what} {}: {}", path.display(), e.desc()))
}

fn vol_args(name: &OsStr, fd: i64) -> Box<VolArgs> {
    let mut a = Box::new(VolArgs { fd, name: [0; PATH_NAME_MAX + 1] });
    a.name[..name.len()].copy_from_slice(name.as_bytes());
    a
}

/// `btrfs subvolume create PATH`: a new empty subvolume.
pub fn create(path: &Path) -> std::io::Result<()> {
    let (parent, name) = split(path, PATH_NAME_MAX)?;
    let args = vol_args(name, 0);
    // SAFETY: the fd is open for the call; the argument is a valid
    // `btrfs_ioctl_vol_args` the kernel only reads.
    unsafe { ioc::subvol_create(parent.as_raw_fd(), &*args) }.map(drop).map_err(errno("create subvolume", path))
}

/// `btrfs subvolume delete PATH`: the subvolume at PATH (the kernel
/// refuses anything else, and one holding other subvolumes).
pub fn delete(path: &Path) -> std::io::Result<()> {
    let (parent, name) = split(path, PATH_NAME_MAX)?;
    let args = vol_args(name, 0);
    // SAFETY: as in `create`.
    unsafe { ioc::snap_destroy(parent.as_raw_fd(), &*args) }.map(drop).map_err(errno("delete subvolume", path))
}

/// `btrfs subvolume snapshot [-r] FROM TO`: TO must not exist.
pub fn snapshot(from: &Path, to: &Path, read_only: bool) -> std::io::Result<()> {
    let source = File::open(from)?;
    let (parent, name) = split(to, SUBVOL_NAME_MAX)?;
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME_MAX + 1],
    });
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: both fds are open for the call; the argument is a valid
    // `btrfs_ioctl_vol_args_v2` the kernel only reads.
    unsafe { ioc::snap_create_v2(parent.as_raw_fd(), &*args) }.map(drop).map_err(errno("snapshot subvolume to", to))
}

/// `btrfs property set -ts PATH ro true`: make the subvolume read-only.
pub fn set_read_only(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    let mut flags: u64 = 0;
    // SAFETY: the fd is open; the kernel writes one u64 through the pointer.
    unsafe { ioc::subvol_getflags(f.as_raw_fd(), &mut flags) }.map_err(errno("read the flags of subvolume", path))?;
    if flags & SUBVOL_RDONLY != 0 {
        return Ok(());
    }
    let flags = flags | SUBVOL_RDONLY;
    // SAFETY: the fd is open; the kernel reads one u64.
    unsafe { ioc::subvol_setflags(f.as_raw_fd(), &flags) }.map(drop).map_err(errno("make read-only subvolume", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        // Both argument structs are 4096 bytes in include/uapi/linux/btrfs.h.
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::offset_of!(VolArgsV2, name), 56);
    }

    #[test]
    fn refuses_names_that_do_not_fit() {
        let long = format!("/tmp/{}", "a".repeat(SUBVOL_NAME_MAX + 1));
        assert_eq!(snapshot(Path::new("/tmp"), Path::new(&long), false).map_err(|e| e.kind()), Err(std::io::ErrorKind::InvalidInput));
        assert_eq!(create(Path::new("/")).map_err(|e| e.kind()), Err(std::io::ErrorKind::InvalidInput));
    }
}
