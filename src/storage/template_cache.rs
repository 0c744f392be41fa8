//! Shared unpacked templates for drivers that clone or overlay a template
//! instead of copying it into every volume (`btrfs`, `overlay`): the
//! archive is unpacked once into `DIR/NAME` and reused by every volume
//! made from it.
//!
//! Unpacking goes into `DIR/.NAME.PID.partial` which is sealed (e.g. made
//! a read-only subvolume) and renamed into place, so a crash never leaves
//! a half-unpacked template where a volume would use it, and two VMs
//! provisioned at once from the same template both end up using one copy.
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
