//! The `sparsefile` driver: a sparse raw image file `ROOT/VM/VOLUME.img`
//! of the definition's `size` under the storage type's `root` (default
//! `ROOT/var/lib/geats/images`). Provides a file; with the `loop` adapter
//! a block device, and with `loop` + `filesystem` a directory. Format
//! truncates it to nothing and back, freeing every block.
//!
//! Settings: `root`. Options: none (`size` is required).

use std::path::Path;

use super::image_file::{Format, ImageFile};
use super::{io_err, Driver, StorageError, VolumeCtx};

/// A sparse image file.
pub type SparseFile = ImageFile<Raw>;

/// The raw format: the file is the disk.
#[derive(Debug)]
pub struct Raw;

impl Format for Raw {
    const DRIVER: &'static str = "sparsefile";
    const EXT: &'static str = "img";
    const WHAT: &'static str = "sparse image file";

    fn create(volume: &str, tmp: &Path, size: u64) -> Result<(), StorageError> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .and_then(|f| f.set_len(size).and_then(|_| f.sync_all()))
            .map_err(io_err(volume, "create image file", tmp))
    }

    fn virtual_size(path: &Path) -> Option<u64> {
        std::fs::metadata(path).ok().map(|m| m.len())
    }

    /// Make the file `size` bytes long with no blocks allocated.
    fn erase(volume: &str, path: &Path, size: u64) -> Option<Result<(), StorageError>> {
        let punch = || {
            let f = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(volume, "open", path))?;
            f.set_len(0).and_then(|_| f.set_len(size)).map_err(io_err(volume, "truncate", path))
        };
        Some(punch())
    }
}

impl Driver for SparseFile {
    const NAME: &'static str = "sparsefile";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/images");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        ImageFile::from_ctx(ctx, Self::NAME)
    }
}
