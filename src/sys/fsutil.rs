//! Small file-system helpers: atomic writes and free space.

use std::io::Write;
use std::path::Path;

/// Write `data` to `path` atomically and durably: a temp file in the same
/// directory, fsync, then rename over the target. `mode` applies to the new
/// file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_replace(path, data, mode, true)
}

/// As [`write_atomic`], without the fsync: for files read right away and
/// worthless after a crash (the agent's reply file).
pub fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    let res = f
        .write_all(data)
        .and_then(|_| if durable { f.sync_all() } else { Ok(()) })
        .and_then(|_| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
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
    let mut total = 0;
    let Ok(root) = std::fs::symlink_metadata(path) else { return 0 };
    let dev = root.dev();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.dev() != dev || !seen.insert(m.ino()) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
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
