//! Shared unpacked templates for drivers that clone or overlay a template
//! instead of copying it into every volume (`btrfs`, `overlay`): the
//! archive is unpacked once into `DIR/NAME` and reused by every volume
//! made from it.
//!
//! Unpacking goes into `DIR/.NAME.PID.partial` which is sealed (e.g. made
//! a read-only subvolume) and renamed into place, so a crash never leaves
//! a half-unpacked template where a volume would use it, and two VMs
//! provisioned at once from the same template both end up using one copy.
//! The next unpack of that template removes the partial entries of
//! processes that are gone.
//!
//! An entry is keyed by the template's name and its archives' modification
//! time and size (`DIR/NAME@MTIME-SIZE`), so replacing an archive makes
//! the next volume use a fresh copy while existing volumes keep the one
//! they were made from. A template unpacked with owners shifted into a
//! container id map is another entry (`NAME@STAMP.shiftUID-GID-RANGE`):
//! one cache per map. The cache directory is mode 0700. Entries no volume uses any more can be removed by
//! hand (for btrfs with `btrfs subvolume delete`; btrfs snapshots do not
//! depend on their source, overlay volumes do).

use std::path::{Path, PathBuf};

use super::{io_err, StorageError};
use crate::template::{self, Template};

/// How a driver makes, seals and discards a cache entry.
pub trait CacheOps {
    /// Create the empty directory (or subvolume) `path`.
    fn create(&self, path: &Path) -> Result<(), StorageError>;
    /// Make the unpacked `path` read-only, if the driver can.
    fn seal(&self, path: &Path) -> Result<(), StorageError>;
    /// Remove `path` and everything in it; absent is fine.
    fn discard(&self, path: &Path) -> Result<(), StorageError>;
}

/// The cache entry name of `t`: `NAME@MTIME-SIZE` of its archive, plus
/// `-MTIME-SIZE` of its overlay archive if it has one.
pub fn key(volume: &str, t: &Template) -> Result<String, StorageError> {
    let stamp = |p: &Path| -> Result<String, StorageError> {
        let m = std::fs::metadata(p).map_err(io_err(volume, "read template", p))?;
        let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
        Ok(format!("{mtime}-{}", m.len()))
    };
    let mut k = format!("{}@{}", t.name, stamp(&t.archive)?);
    if let Some(o) = &t.overlay {
        k.push('-');
        k.push_str(&stamp(o)?);
    }
    if let Some(s) = &t.shift {
        // One cache per id map: its files are owned by the map's ids.
        k.push('.');
        k.push_str(&s.tag());
    }
    Ok(k)
}

/// Is `s` a cache entry name [`key`] could have made (read back from disk)?
pub fn valid_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && !s.starts_with('.') && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-@".contains(c))
}

/// The pid in `entry` if it is a partial entry of the template `name`
/// (`.NAME.PID.partial`).
fn partial_pid(entry: &str, name: &str) -> Option<i64> {
    crate::sys::fsutil::temp_pid(entry, &format!(".{name}"), ".partial").map(i64::from)
}

/// Remove the partial entries of the template `name` whose process is
/// gone: each is a half-unpacked template that a process killed while
/// unpacking left (issue 11). One whose pid is alive may be another
/// process unpacking now, and is kept. Run only on a cache miss.
fn discard_stale(volume: &str, dir: &Path, name: &str, ops: &dyn CacheOps) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for entry in rd.flatten() {
        let file = entry.file_name();
        let Some(pid) = partial_pid(&file.to_string_lossy(), name) else { continue };
        if pid != i64::from(std::process::id()) && !crate::sys::proc::running(pid) {
            if let Err(e) = ops.discard(&entry.path()) {
                tracing::warn!(volume, error = %e, "cannot remove a partly unpacked template a killed process left");
            }
        }
    }
}

/// The unpacked copy of `t` under `dir`, unpacking it first if needed.
/// Returns the entry's path; its file name is [`key`].
pub fn ensure(volume: &str, dir: &Path, t: &Template, ops: &dyn CacheOps) -> Result<PathBuf, StorageError> {
    let target = dir.join(key(volume, t)?);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(io_err(volume, "create template cache", dir))?;
    // Unpacked templates keep their set-id files: no other host user may
    // reach them (a shifted copy's would run as the container's root).
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(io_err(volume, "restrict template cache", dir))?;
    discard_stale(volume, dir, t.name.as_str(), ops);
    let partial = dir.join(format!(".{}.{}.partial", t.name, std::process::id()));
    ops.discard(&partial)?;
    ops.create(&partial)?;
    let result = template::install(t, &partial)
        .map_err(|e| StorageError::State { volume: volume.to_string(), step: "unpack template", problem: e.to_string() })
        .and_then(|_| ops.seal(&partial))
        .and_then(|_| std::fs::rename(&partial, &target).map_err(io_err(volume, "rename unpacked template into", &target)));
    match result {
        Ok(()) => Ok(target),
        // Another process finished first: use its copy.
        Err(_) if target.is_dir() => {
            ops.discard(&partial)?;
            Ok(target)
        }
        Err(e) => {
            if let Err(c) = ops.discard(&partial) {
                tracing::warn!(volume, error = %c, "cannot remove a partly unpacked template");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain;

    impl CacheOps for Plain {
        fn create(&self, path: &Path) -> Result<(), StorageError> {
            std::fs::create_dir(path).map_err(io_err("t", "create", path))
        }
        fn seal(&self, _: &Path) -> Result<(), StorageError> {
            Ok(())
        }
        fn discard(&self, path: &Path) -> Result<(), StorageError> {
            crate::sys::fsutil::remove_tree_if_exists(path).map_err(io_err("t", "remove", path))
        }
    }

    #[test]
    fn partial_names_are_parsed_exactly() {
        assert_eq!(partial_pid(".debian.12.partial", "debian"), Some(12));
        assert_eq!(partial_pid(".debian.12.partial", "debian.12"), None);
        assert_eq!(partial_pid(".deb.12.partial", "debian"), None);
        assert_eq!(partial_pid(".debian.x.partial", "debian"), None);
        assert_eq!(partial_pid(".debian..partial", "debian"), None);
        assert_eq!(partial_pid("debian@1-2", "debian"), None);
    }

    /// A killed unpack's partial entry goes at the next unpack of that
    /// template; a live process's, another template's and the entries stay.
    #[test]
    fn stale_partials_of_dead_processes_are_discarded() {
        let d = tempfile::tempdir().unwrap();
        // Above the largest pid_max Linux allows (2^22): no such process.
        let dead = (1u32 << 22) + 1;
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        for n in [format!(".debian.{dead}.partial"), format!(".debian.{parent}.partial"), format!(".alpine.{dead}.partial"), "debian@1-2".into()] {
            std::fs::create_dir_all(d.path().join(&n).join("etc")).unwrap();
        }
        discard_stale("t", d.path(), "debian", &Plain);
        let mut left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut want = vec![format!(".alpine.{dead}.partial"), format!(".debian.{parent}.partial"), "debian@1-2".to_string()];
        want.sort();
        assert_eq!(left, want, "own pid {me}");
    }
}
