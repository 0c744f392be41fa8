//! Small file-system helpers: atomic writes, kernel files, free space.

use std::io::{Read, Write};
use std::path::Path;

/// Read a small kernel file (`/proc`, `/sys`, a pid file) whole, as text.
/// `std::fs::read_to_string` asks `statx` for a size hint, which these
/// files report as 0, and then reads 32, 32, 64, 128... bytes: six
/// syscalls for a 300-byte `/proc/PID/cgroup`, and a `seq_file` such as
/// `fib_trie` formats its text again for every read. One page-sized read
/// instead, and most often no second one ([`read_small_bytes`], issue 15).
pub fn read_small(path: impl AsRef<Path>) -> std::io::Result<String> {
    String::from_utf8(read_small_bytes(path)?).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The first read of [`read_small_bytes`].
const FIRST_READ: usize = 4096;

/// [`read_small`] as bytes (`/proc/PID/cmdline` holds NULs, maybe not UTF-8).
///
/// A first read that returns at most half a page is the whole file, and
/// the read that would see its end is not made: `status` reads six such
/// files per running container, and that read was a sixth of its system
/// calls. Why half a page:
/// - a regular file, a `/sys` or cgroup attribute, `/proc/PID/cmdline`
///   and a `seq_file` of one record (`/proc/PID/cgroup`, `stat`) return
///   everything that fits the buffer, so any short read is the end;
/// - a `seq_file` of many records (`fib_trie`, `/proc/net/unix`, a task's
///   `children`) stops early when its next record would overflow its own
///   page-sized buffer (`/proc/crypto` reads 4021, 4057, 3382 bytes), so a
///   short read is the end only if no record could have followed: with
///   records shorter than half a page, a read of at most half a page.
///
/// A longer first read is followed by reads to the end. The buffer of the
/// first read is zeroed once per thread, not per file (a 4 KiB `memset`
/// per file had been a fifth of `status`'s instructions); the rest is read
/// through `Take`, which hides `File::read_to_end` (that one would `statx`
/// and `lseek` for a size hint first).
pub fn read_small_bytes(path: impl AsRef<Path>) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static FIRST: std::cell::RefCell<[u8; FIRST_READ]> = const { std::cell::RefCell::new([0; FIRST_READ]) };
    }
    let mut f = std::fs::File::open(path)?;
    let mut buf = FIRST.with_borrow_mut(|first| loop {
        match f.read(first) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
            Ok(n) => break Ok(first[..n].to_vec()),
        }
    })?;
    if buf.len() <= FIRST_READ / 2 {
        return Ok(buf);
    }
    f.take(u64::MAX).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Write `data` to `path` atomically and durably: a temp file in the same
/// directory, fsync, then rename over the target. `mode` applies to the new
/// file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_replace(path, data, mode, true)
}

/// As [`write_atomic`], without the fsync: for files read right away and
/// worthless after a crash (the agent's reply file).
pub fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    replace_all(&[(path, data, mode)], durable).map_err(|(_, e)| e)
}

/// [`write_atomic`] of several files at once: every temp file written,
/// then each fsynced, then each renamed over its target, in order. The
/// kernel is asked to start writing every temp file back before the
/// first `fsync` (`sync_file_range`), so that fsync's journal commit
/// carries them all and the later ones find little left to do: on ext4
/// here, three small files cost 1.49 ms against 2.30 ms one after the other
/// (docs/performance.md, ninth pass). On failure, the file it failed on;
/// no temp file is left, and the targets renamed before it keep their
/// new contents.
pub fn write_atomic_all<'a>(files: &[(&'a Path, &[u8], u32)]) -> Result<(), (&'a Path, std::io::Error)> {
    replace_all(files, true)
}

fn replace_all<'a>(files: &[(&'a Path, &[u8], u32)], durable: bool) -> Result<(), (&'a Path, std::io::Error)> {
    use std::os::unix::fs::OpenOptionsExt;
    // (target, temp file name, open temp file); the name is cleared once renamed.
    let mut temps: Vec<(&'a Path, std::path::PathBuf, std::fs::File)> = Vec::with_capacity(files.len());
    let res = (|| {
        for &(path, data, mode) in files {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(|e| (path, e))?;
            let written = f.write_all(data);
            temps.push((path, tmp, f));
            written.map_err(|e| (path, e))?;
        }
        if durable {
            if temps.len() > 1 {
                temps.iter().for_each(|(_, _, f)| start_writeback(f));
            }
            for (path, _, f) in &temps {
                f.sync_all().map_err(|e| (*path, e))?;
            }
        }
        for (path, tmp, _) in &mut temps {
            std::fs::rename(&*tmp, *path).map_err(|e| (*path, e))?;
            *tmp = std::path::PathBuf::new();
        }
        Ok(())
    })();
    if res.is_err() {
        for (_, tmp, _) in temps.iter().filter(|(_, t, _)| !t.as_os_str().is_empty()) {
            let _ = std::fs::remove_file(tmp);
        }
    }
    res
}

/// Ask the kernel to start writing `f`'s dirty pages back, without
/// waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): done for each of
/// several files before they are fsynced one by one, so that the first
/// `fsync`'s journal commit carries them all ([`write_atomic_all`]). Only
/// a hint; it guarantees nothing, the `fsync`s do.
pub fn start_writeback(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor, no memory passed.
    unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Write `data` into the file at `path` as a shell redirection would,
/// without waiting: a regular file in place (created with `mode` if
/// missing), cutting off what it held beyond; a character device or a
/// FIFO with a reader (`/dev/null`, `/dev/stdout`, a pipe) written to.
/// Symlinks are followed, as by `>` (the kernel's `protected_symlinks`
/// keeps root from following another user's link in a sticky directory
/// such as `/tmp`); a FIFO nobody reads and any other kind of file are
/// errors. Nothing is ever put in the file's place: a temp file renamed
/// over `/dev/stdout` or `/dev/null` would have replaced the host's.
///
/// For a file read after this process exits, where a prefix left by a
/// kill does no harm (a restart's `geats.running.json`, `geats export`
/// into a device); the agent's reply must be whole or absent
/// ([`write_whole_into`]). ext4 writes back at once a file renamed over
/// another (`auto_da_alloc`), and a truncating open does the same at
/// close: temp + rename cost 0.31 ms (p90 0.70) against 0.05 ms in place,
/// on this VM's `/tmp`.
pub fn write_into(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_into_as(path, data, mode, false)
}

/// The largest write that a kill cannot cut short: the kernel checks for
/// a fatal signal between the pages of a buffered write, never within
/// one, so a single `write(2)` of at most a page at offset 0 lands whole
/// or not at all (4096 bytes: the smallest page size Linux has).
const UNCUT_WRITE: usize = 4096;

/// As [`write_into`], but a regular file ends up holding either what it
/// held (the empty file MCollective and Choria create) or the whole of
/// `data`, whenever the process is killed (issue 11: a reply is never
/// left half written). When both the file and `data` are at most a page,
/// `data` is one `write(2)` in place, which a kill cannot cut
/// ([`UNCUT_WRITE`]), padded with spaces to the file's old length when
/// that was longer (the JSON reader skips them). Anything longer goes to
/// a temp file beside the file at the end of the path's symlinks, with
/// its owner and mode, renamed over it (the symlinks themselves stay).
/// Devices and FIFOs are streams and are written as by [`write_into`].
pub fn write_whole_into(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_into_as(path, data, mode, true)
}

fn write_into_as(path: &Path, data: &[u8], mode: u32, whole: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).mode(mode).custom_flags(libc::O_NONBLOCK).open(path)?;
    let m = f.metadata()?;
    if m.is_file() {
        if whole && m.len() > 0 && m.len() <= UNCUT_WRITE as u64 && data.len() < m.len() as usize {
            // A file that held something longer (a caller reusing its
            // reply file): the reply and then spaces up to its length,
            // still one write, so nothing of the old contents is left
            // after the reply's JSON, and no truncate can be cut off by
            // a kill after it. A JSON reader skips the trailing spaces.
            let mut padded = Vec::with_capacity(m.len() as usize);
            padded.extend_from_slice(data);
            padded.resize(m.len() as usize, b' ');
            return f.write_all(&padded);
        }
        if whole && (data.len() > UNCUT_WRITE || m.len() > UNCUT_WRITE as u64) {
            drop(f);
            let target = std::fs::canonicalize(path)?;
            let dir = target.parent().unwrap_or(Path::new("/"));
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
            let mut t = match std::fs::OpenOptions::new().write(true).create_new(true).mode(m.mode() & 0o777).open(&tmp) {
                Ok(t) => t,
                // No temp file possible beside it: in place, as a shell would.
                Err(_) => return write_into_as(path, data, mode, false),
            };
            // Its blocks allocated before the write: ext4 writes back at
            // once a file renamed over another only while it has blocks
            // waiting for delayed allocation (`auto_da_alloc`): the
            // rename of a `status` reply onto the new, empty reply file
            // MCollective hands over took 0.14-0.25 ms, 0.05-0.09 with
            // this. A file system without `fallocate` takes the write as
            // before.
            let _ = nix::fcntl::fallocate(std::os::fd::AsRawFd::as_raw_fd(&t), nix::fcntl::FallocateFlags::empty(), 0, data.len() as libc::off_t);
            let res = t
                .write_all(data)
                .and_then(|_| {
                    // Keep the caller's owner (we may not be allowed to: then the caller is us).
                    let _ = std::os::unix::fs::fchown(&t, Some(m.uid()), Some(m.gid()));
                    use std::os::unix::fs::PermissionsExt;
                    t.set_permissions(std::fs::Permissions::from_mode(m.mode() & 0o7777))
                })
                .and_then(|_| std::fs::rename(&tmp, &target));
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            return res;
        }
        f.write_all(data)?;
        if m.len() > data.len() as u64 {
            f.set_len(data.len() as u64)?;
        }
        Ok(())
    } else if m.file_type().is_char_device() || m.file_type().is_fifo() {
        f.write_all(data)
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file, a character device or a FIFO"))
    }
}

/// Write everything of the file system holding `path` to stable storage
/// (`syncfs(2)`): on some file systems one call costs what a single
/// `fsync` does (storage::Volume::sync_path).
pub fn syncfs(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(std::io::Error::from)
}

/// Give the file `from` the name `to` as well (a hard link, not following
/// a symlink), replacing whatever `to` was atomically: a link under a
/// temp name in `to`'s directory, renamed over it. Fails across file
/// systems (`EXDEV`); the caller then writes a copy.
pub fn link_atomic(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.link", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(from, &tmp)?;
    std::fs::rename(&tmp, to).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The pid in `entry` if it is a per-process temp name `STEM.PID SUFFIX`
/// (e.g. `.config.4242.tmp` for the stem `.config` and suffix `.tmp`).
pub fn temp_pid(entry: &str, stem: &str, suffix: &str) -> Option<u32> {
    let pid = entry.strip_prefix(stem)?.strip_prefix('.')?.strip_suffix(suffix)?;
    pid.bytes().all(|b| b.is_ascii_digit()).then(|| pid.parse().ok()).flatten()
}

/// Is `entry` a temp name [`write_replace`] or [`link_atomic`] makes for
/// the file `name` (`.NAME.PID.tmp`, `.NAME.PID.link`)?
fn is_temp_of(entry: &str, name: &str) -> bool {
    let stem = format!(".{name}");
    temp_pid(entry, &stem, ".tmp").or_else(|| temp_pid(entry, &stem, ".link")).is_some()
}

/// Remove the temp files a process killed half-way through
/// [`write_replace`] or [`link_atomic`] left for the files `names` in
/// `dir`. Only for a caller that holds those files' lease, so that no
/// live writer can own one; run where the files themselves are removed.
pub fn remove_stale_temps(dir: &Path, names: &[&str]) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in rd.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if names.iter().any(|n| is_temp_of(&file, n)) {
            remove_file_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// (total, free) bytes of the file system holding `path`, or `None`.
pub fn space(path: &Path) -> Option<(u64, u64)> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let st = nix::sys::statvfs::statvfs(p).ok()?;
    let frag = st.fragment_size() as u64;
    Some((st.blocks() as u64 * frag, st.blocks_available() as u64 * frag))
}

/// Bytes used by the files under `path` (not following symlinks, staying on
/// one file system), counting each hard-linked inode once.
pub fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let Ok(root) = std::fs::symlink_metadata(path) else { return 0 };
    let dev = root.dev();
    seen.insert(root.ino());
    let mut total = root.blocks() * 512;
    if !root.is_dir() {
        return total;
    }
    // Directories only on the stack; an entry's metadata comes from its
    // directory (`statx` relative to the open directory, no symlink
    // followed, no path built for a file).
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            // Only an inode that can be reached twice needs remembering: a
            // directory (bind mounts) or a file with more than one link.
            if m.dev() != dev || ((m.is_dir() || m.nlink() > 1) && !seen.insert(m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// How long a tree's measured usage is reused by [`du_cached`].
pub const TREE_USAGE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);

/// [`du`] of the tree at `path`, reusing a measurement younger than
/// [`TREE_USAGE_MAX_AGE`] kept in `cache` (one small file per tree, named
/// by the tree's device and inode). The walk costs a `statx` per file
/// (about 10,000 for a Debian root), and `info` is asked often: as with
/// `df`-style monitors, the figure may be that old. A cache that cannot
/// be read or written only costs the walk.
pub fn du_cached(path: &Path, cache: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(path) else { return 0 };
    if !m.is_dir() {
        return m.blocks() * 512;
    }
    let file = cache.join(format!("du-{}-{}", m.dev(), m.ino()));
    let fresh = std::fs::metadata(&file)
        .and_then(|f| f.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < TREE_USAGE_MAX_AGE);
    if fresh {
        if let Some(n) = std::fs::read_to_string(&file).ok().and_then(|t| t.trim().parse().ok()) {
            return n;
        }
    }
    let n = du(path);
    if ensure_private_dir(cache).is_ok() {
        let _ = write_replace(&file, format!("{n}\n").as_bytes(), 0o600, false);
    }
    n
}

/// Create `dir` (and its parents) if missing, the last one mode 0700.
fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Remove a file; one that is already gone is not an error.
pub fn remove_file_if_exists(path: &Path) -> std::io::Result<()> {
    ignore_missing(std::fs::remove_file(path))
}

/// Remove a directory tree; one that is already gone is not an error.
pub fn remove_tree_if_exists(path: &Path) -> std::io::Result<()> {
    ignore_missing(std::fs::remove_dir_all(path))
}

/// Treat "no such file or directory" as done: removal is idempotent.
pub fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A directory held open to read many small files in it by name: each one
/// is opened relative to it (no path built, none walked again), read with
/// one `read` into the caller's buffer and closed; no `statx`, no
/// allocation. Two syscalls fewer per file than `fs::read_to_string`, and
/// a shorter lookup (callgrind and strace, `status` of 1000 dummy VMs).
#[derive(Debug)]
pub struct OpenDir(std::fs::File);

impl OpenDir {
    /// Open `path`, a directory.
    pub fn open(path: &Path) -> std::io::Result<OpenDir> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(path).map(OpenDir)
    }

    /// The first bytes of the file `name` in this directory (a symlink is
    /// followed, as by `File::open`), up to `buf.len()`; returns how many.
    /// One `read` of a regular file returns all it has up to the length
    /// asked for, so fewer than `buf.len()` means the whole file; a full
    /// buffer may be the start of a longer one.
    pub fn read_start(&self, name: &[u8], buf: &mut [u8]) -> std::io::Result<usize> {
        use nix::fcntl::{openat, OFlag};
        use std::os::fd::AsRawFd;
        let fd = openat(Some(self.0.as_raw_fd()), name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
        let n = loop {
            match nix::unistd::read(fd, buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        let _ = nix::unistd::close(fd);
        Ok(n?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In place into an empty or a longer file (the rest cut off), created
    /// 0600 when missing, through a symlink; a FIFO nobody reads is an
    /// error at once, and is left alone.
    #[test]
    fn write_into_writes_in_place() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("reply");
        std::fs::write(&p, "").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        write_into(&p, b"{\"a\":1}", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}");
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino, "the same file, written in place");
        write_into(&p, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}", "what it held beyond is cut off");
        let new = d.path().join("new");
        write_into(&new, b"x", 0o600).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().permissions().mode() & 0o777, 0o600);
        let target = d.path().join("target");
        std::fs::write(&target, "longer than r").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_into(&link, b"r", 0o600).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"r", "a symlink is followed, as by `>`");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "and stays a symlink");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = write_into(&fifo, b"f", 0o600).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "nobody reads: an error at once, not a wait");
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "and the FIFO stays");
        assert!(write_into(d.path(), b"x", 0o600).is_err(), "a directory");
    }

    /// A character device (a copy of `/dev/null`), directly or behind a
    /// symlink (as `/dev/stdout` is), and a FIFO someone reads are written
    /// to, never replaced: `geats agent REQ /dev/stdout` must not put a
    /// file where the host's `/dev/stdout` was.
    #[test]
    fn write_into_writes_to_devices_and_read_fifos() {
        use std::os::unix::fs::FileTypeExt;
        let d = tempfile::tempdir().unwrap();
        let null = d.path().join("null");
        if nix::sys::stat::mknod(&null, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(1, 3)).is_err() {
            eprintln!("SKIPPED write_into_writes_to_devices_and_read_fifos: mknod needs root");
            return;
        }
        write_into(&null, b"{}", 0o600).unwrap();
        assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device(), "the device is still there");
        let link = d.path().join("stdout");
        std::os::unix::fs::symlink(&null, &link).unwrap();
        write_into(&link, b"{}", 0o600).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink is still there");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // The read end, opened first without waiting for a writer.
        let mut reader = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap()
        };
        write_into(&fifo, b"piped", 0o600).unwrap();
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO is still there");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"piped");
    }

    /// A reply of at most a page goes into the caller's file of at most
    /// a page in place (padded with spaces to its old length); a longer
    /// one, or one over a longer file, replaces the file at the end of
    /// the symlinks whole, with its mode and owner; a device stays a
    /// device.
    #[test]
    fn write_whole_into_never_leaves_part_of_a_long_reply() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let rep = d.path().join("reply");
        std::fs::write(&rep, "").unwrap();
        std::fs::set_permissions(&rep, std::fs::Permissions::from_mode(0o640)).unwrap();
        let ino = std::fs::metadata(&rep).unwrap().ino();
        let small = vec![b'a'; UNCUT_WRITE];
        write_whole_into(&rep, &small, 0o600).unwrap();
        assert_eq!(std::fs::read(&rep).unwrap(), small);
        assert_eq!(std::fs::metadata(&rep).unwrap().ino(), ino, "one page into the empty file: in place");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&rep, &link).unwrap();
        let long = vec![b'b'; UNCUT_WRITE + 1];
        write_whole_into(&link, &long, 0o600).unwrap();
        assert_eq!(std::fs::read(&rep).unwrap(), long);
        let m = std::fs::metadata(&rep).unwrap();
        assert_ne!(m.ino(), ino, "a long reply: a new file renamed over the old");
        assert_eq!(m.permissions().mode() & 0o777, 0o640, "with the caller's mode");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink is still there");
        write_whole_into(&rep, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(&rep).unwrap(), b"{}", "over a file longer than a page: replaced, nothing after it");
        let ino = std::fs::metadata(&rep).unwrap().ino();
        write_whole_into(&rep, br#"{"a":1}"#, 0o600).unwrap();
        write_whole_into(&rep, br#"{"b":[]}"#, 0o600).unwrap();
        write_whole_into(&rep, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(&rep).unwrap(), b"{}      ", "over a shorter file within a page: the reply, spaces to the old length");
        assert_eq!(std::fs::metadata(&rep).unwrap().ino(), ino, "within a page: in place");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&rep).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({}));
        let names: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");
        let null = d.path().join("null");
        if nix::sys::stat::mknod(&null, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(1, 3)).is_ok() {
            write_whole_into(&null, &long, 0o600).unwrap();
            assert!(std::fs::symlink_metadata(&null).unwrap().file_type().is_char_device(), "the device is still there");
        }
    }

    #[test]
    fn write_atomic_all_replaces_every_file_or_none() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "old a, longer than the new").unwrap();
        write_atomic_all(&[(&a, b"new a", 0o600), (&b, b"new b", 0o644)]).unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new b");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&a), mode(&b)), (0o600, 0o644));
        // The second cannot be written: the first keeps its contents,
        // and no temp file is left.
        let missing = d.path().join("no/such/dir/c");
        let (failed, _) = write_atomic_all(&[(&a, b"newer a", 0o600), (&missing, b"c", 0o644)]).unwrap_err();
        assert_eq!(failed, missing.as_path());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        let names: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn link_atomic_replaces_the_name_with_the_same_file() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("a.json"), d.path().join("sub/b.json"));
        std::fs::create_dir(d.path().join("sub")).unwrap();
        write_atomic(&from, b"one", 0o600).unwrap();
        std::fs::write(&to, "old").unwrap();
        link_atomic(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "one");
        assert_eq!(std::fs::metadata(&to).unwrap().ino(), std::fs::metadata(&from).unwrap().ino());
        // The next record is a new file under the first name; the second
        // name follows it, and no temp name is left.
        write_atomic(&from, b"two", 0o600).unwrap();
        link_atomic(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "two");
        assert_eq!(std::fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
        assert!(link_atomic(&d.path().join("missing"), &to).is_err());
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "two", "a failed link leaves the name as it was");
    }

    #[test]
    fn stale_temps_of_the_named_files_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let names = [".config.4242.tmp", ".config.7.link", ".a.json.99.tmp", "config", ".config.x.tmp", ".config.tmp", ".other.1.tmp", ".config.1.tmpx"];
        for n in names {
            std::fs::write(d.path().join(n), "x").unwrap();
        }
        remove_stale_temps(d.path(), &["config", "a.json"]).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".config.1.tmpx", ".config.tmp", ".config.x.tmp", ".other.1.tmp", "config"]);
        assert!(remove_stale_temps(&d.path().join("missing"), &["config"]).is_ok(), "no directory, nothing to remove");
    }

    #[test]
    fn open_dir_reads_the_start_of_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.state"), "running\n").unwrap();
        std::fs::write(d.path().join("long"), "x".repeat(100)).unwrap();
        let dir = OpenDir::open(d.path()).unwrap();
        let mut buf = [0u8; 16];
        let n = dir.read_start(b"a.state", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"running\n");
        assert_eq!(dir.read_start(b"long", &mut buf).unwrap(), 16, "a full buffer");
        assert_eq!(dir.read_start(b"missing", &mut buf).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        assert!(OpenDir::open(&d.path().join("a.state")).is_err(), "not a directory");
    }

    #[test]
    fn du_cached_reuses_a_recent_walk() {
        let d = tempfile::tempdir().unwrap();
        let (tree, cache) = (d.path().join("tree"), d.path().join("cache/usage"));
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("f"), vec![1u8; 100_000]).unwrap();
        let first = du_cached(&tree, &cache);
        assert_eq!(first, du(&tree));
        // Within the max age the walk is not repeated...
        std::fs::write(tree.join("g"), vec![1u8; 200_000]).unwrap();
        assert_eq!(du_cached(&tree, &cache), first);
        // ...and without the cache it is.
        std::fs::remove_dir_all(&cache).unwrap();
        assert!(du_cached(&tree, &cache) > first);
        // A cache directory that cannot be made only costs the walk.
        std::fs::write(d.path().join("file"), b"").unwrap();
        assert_eq!(du_cached(&tree, &d.path().join("file/usage")), du(&tree));
    }

    #[test]
    fn du_counts_each_inode_once_and_agrees_with_stat() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(r.join("a/b/f"), r.join("a/g")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("a/l")).unwrap();
        let mut want = 0;
        for p in [r.to_path_buf(), r.join("a"), r.join("a/b"), r.join("a/b/f"), r.join("a/l")] {
            want += std::fs::symlink_metadata(p).unwrap().blocks() * 512;
        }
        assert_eq!(du(r), want);
        assert_eq!(du(&r.join("a/b/f")), std::fs::metadata(r.join("a/b/f")).unwrap().blocks() * 512);
        assert_eq!(du(&r.join("missing")), 0);
    }

    #[test]
    fn read_small_reads_whole_files_of_any_size() {
        let d = tempfile::tempdir().unwrap();
        // Larger than the first buffer, not a multiple of it.
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.path().join("big"), &big).unwrap();
        assert_eq!(read_small_bytes(d.path().join("big")).unwrap(), big);
        std::fs::write(d.path().join("empty"), b"").unwrap();
        assert_eq!(read_small(d.path().join("empty")).unwrap(), "");
        // A kernel file (size 0 in stat) and one with NULs.
        assert!(read_small("/proc/self/status").unwrap().contains("Pid:"));
        assert!(read_small_bytes("/proc/self/cmdline").unwrap().contains(&0));
        // Between half a page and a page, and exactly half a page.
        for len in [3000, FIRST_READ / 2, FIRST_READ, FIRST_READ + 1] {
            let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
            std::fs::write(d.path().join("mid"), &data).unwrap();
            assert_eq!(read_small_bytes(d.path().join("mid")).unwrap(), data, "{len} bytes");
        }
        // A seq_file of many records whose reads stop short of a page
        // before its end (4021, 4057, 3382 bytes here).
        if let Ok(want) = std::fs::read("/proc/crypto") {
            assert!(want.len() > FIRST_READ, "/proc/crypto is {} bytes", want.len());
            assert_eq!(read_small_bytes("/proc/crypto").unwrap(), want);
        }
        assert_eq!(read_small(d.path().join("missing")).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        std::fs::write(d.path().join("bin"), [0xff, 0xfe]).unwrap();
        assert_eq!(read_small(d.path().join("bin")).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
