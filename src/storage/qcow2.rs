//! The `qcow2` driver: a qcow2 image `ROOT/VM/VOLUME.qcow2` of the
//! definition's `size` under the storage type's `root` (default
//! `ROOT/var/lib/geats/images`), made with `qemu-img create -f qcow2`.
//! Provides a file, for a VM type that boots images (a future KVM type);
//! activation has nothing to do. Format makes a fresh image and renames it
//! over the old one.
//!
//! Settings: `root`. Options: none (`size` is required).

use std::io::Read;
use std::path::Path;

use super::image_file::{Format, ImageFile};
use super::{tool_err, Driver, StorageError, VolumeCtx};
use crate::sys::exec::Cmd;

/// A qcow2 image.
pub type Qcow2 = ImageFile<Qcow2Format>;

/// The qcow2 format.
#[derive(Debug)]
pub struct Qcow2Format;

/// The virtual size from a qcow2 header: magic `QFI\xfb` at offset 0, the
/// big-endian size in bytes at offset 24 (qemu's docs/interop/qcow2.txt).
pub fn virtual_size(path: &Path) -> Option<u64> {
    let mut head = [0u8; 32];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[0..4] != b"QFI\xfb" {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[24..32]);
    Some(u64::from_be_bytes(size))
}

impl Format for Qcow2Format {
    const DRIVER: &'static str = "qcow2";
    const EXT: &'static str = "qcow2";
    const WHAT: &'static str = "qcow2 image";

    /// `qemu-img create -q -f qcow2 TMP SIZE`.
    fn create(volume: &str, tmp: &Path, size: u64) -> Result<(), StorageError> {
        Cmd::new(["qemu-img", "create", "-q", "-f", "qcow2"])
            .arg(tmp)
            .arg(size.to_string())
            .run()
            .map(|_| ())
            .map_err(tool_err(volume, "create qcow2 image"))
    }

    fn virtual_size(path: &Path) -> Option<u64> {
        virtual_size(path)
    }
}

impl Driver for Qcow2 {
    const NAME: &'static str = "qcow2";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/images");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        ImageFile::from_ctx(ctx, Self::NAME)
    }
}
