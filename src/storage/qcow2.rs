//! The `qcow2` driver: a qcow2 image `ROOT/VM/VOLUME.qcow2` of the
//! definition's `size` under the storage type's `root` (default
//! `ROOT/var/lib/geats/images`), made with `qemu-img create -f qcow2`.
//! Provides a file, for a VM type that boots images (a future KVM type);
//! activation has nothing to do. Format makes a fresh image and renames it
//! over the old one.
//!
//! Snapshots are qcow2 internal snapshots (`qemu-img snapshot -c/-a/-d`):
//! they live inside the image, cost only the clusters that diverge, and
//! go with the file.
//!
//! Settings: `root`. Options: none (`size` is required).

use std::io::Read;
use std::path::Path;

use super::image_file::{Format, ImageFile, Internal};
use crate::names::SnapshotName;
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

    fn internal() -> Option<&'static dyn Internal> {
        Some(&QemuImgSnapshots)
    }
}

/// qcow2 internal snapshots through `qemu-img snapshot`.
#[derive(Debug)]
pub struct QemuImgSnapshots;

impl QemuImgSnapshots {
    fn run(volume: &str, flag: &str, path: &Path, name: &SnapshotName, step: &'static str) -> Result<(), StorageError> {
        Cmd::new(["qemu-img", "snapshot", flag]).arg(name.as_str()).arg(path).run().map(|_| ()).map_err(tool_err(volume, step))
    }
}

/// The snapshot tags in `qemu-img snapshot -l IMAGE`'s output:
///
/// ```text
/// Snapshot list:
/// ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT
/// 1         before                0 B 2026-12-01 12:00:00 00:00:00.000          0
/// ```
pub fn parse_snapshot_list(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("ID"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

impl Internal for QemuImgSnapshots {
    fn has(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<bool, StorageError> {
        let out = Cmd::new(["qemu-img", "snapshot", "-l"]).arg(path).run().map_err(tool_err(volume, "list qcow2 snapshots"))?;
        Ok(parse_snapshot_list(&out.stdout).iter().any(|t| t == name.as_str()))
    }
    fn create(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<(), StorageError> {
        Self::run(volume, "-c", path, name, "create qcow2 snapshot")
    }
    fn apply(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<(), StorageError> {
        Self::run(volume, "-a", path, name, "apply qcow2 snapshot")
    }
    fn delete(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<(), StorageError> {
        Self::run(volume, "-d", path, name, "delete qcow2 snapshot")
    }
}

impl Driver for Qcow2 {
    const NAME: &'static str = "qcow2";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/images");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        ImageFile::from_ctx(ctx, Self::NAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_list_tags() {
        let t = "Snapshot list:\nID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n1         before                0 B 2026-12-01 12:00:00 00:00:00.000          0\n2         b.2                   0 B 2026-12-01 12:00:01 00:00:00.000          0\n";
        assert_eq!(parse_snapshot_list(t), vec!["before".to_string(), "b.2".to_string()]);
        assert!(parse_snapshot_list("").is_empty());
    }
}
