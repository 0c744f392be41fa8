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
//! The cache is keyed by the template's name: after replacing an archive,
//! remove `DIR/NAME` (for btrfs with `btrfs subvolume delete`) so that the
//! next volume made from it gets the new content; existing volumes keep
//! what they were made from.

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

/// The unpacked copy of `t` under `dir`, unpacking it first if needed.
pub fn ensure(volume: &str, dir: &Path, t: &Template, ops: &dyn CacheOps) -> Result<PathBuf, StorageError> {
    let target = dir.join(t.name.as_str());
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(dir).map_err(io_err(volume, "create template cache", dir))?;
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
