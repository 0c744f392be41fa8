//! The `qcow2` driver: a qcow2 image `ROOT/VM/VOLUME.qcow2` of the
//! definition's `size` under the storage type's `root` (default
//! `ROOT/var/lib/geats/images`), made with `qemu-img create -f qcow2`.
//! Provides a file, for a VM type that boots images (a future KVM type);
//! activation has nothing to do.
//!
//! Settings: `root`. Options: none (`size` is required).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{io_err, remove_if_empty, tool_err, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::sys::exec::Cmd;

/// A qcow2 image.
#[derive(Debug)]
pub struct Qcow2 {
    volume: String,
    path: PathBuf,
    size: u64,
}

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

impl Qcow2 {
    /// Build from the context; no disk access.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<Qcow2, StorageError> {
        ctx.only_options(&[])?;
        let size = ctx.required_size()?;
        let root = ctx.root_setting("qcow2")?;
        let path = root.join(ctx.vm.as_str()).join(format!("{}.qcow2", ctx.name));
        Ok(Qcow2 { volume: ctx.volume_label(), path, size })
    }

    /// `qemu-img create -q -f qcow2 TMP SIZE`, renamed into place so a
    /// crash leaves no half-made image where `exists` would find it.
    fn create(&self) -> Result<(), StorageError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(&self.volume, "create directory", dir))?;
        }
        let tmp = self.path.with_extension(format!("qcow2.{}.tmp", std::process::id()));
        let made = Cmd::new(["qemu-img".to_string(), "create".into(), "-q".into(), "-f".into(), "qcow2".into(), tmp.to_string_lossy().into_owned(), self.size.to_string()])
            .run()
            .map_err(tool_err(&self.volume, "create qcow2 image"))
            .and_then(|_| std::fs::rename(&tmp, &self.path).map_err(io_err(&self.volume, "rename image into", &self.path)));
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        made
    }

    fn remove(&self) -> Result<(), StorageError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Io { volume: self.volume.clone(), step: "remove", path: self.path.clone(), source }),
        }
    }
}

impl Volume for Qcow2 {
    fn define(&mut self) -> Result<(), StorageError> {
        if self.path.is_file() {
            return Ok(());
        }
        self.create()
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if self.path.is_file() {
            Ok(())
        } else {
            Err(StorageError::State { volume: self.volume.clone(), step: "activate", problem: format!("{} does not exist; define it first", self.path.display()) })
        }
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        self.remove()?;
        if let Some(dir) = self.path.parent() {
            remove_if_empty(dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        // A fresh image is empty; make it beside the old one, then replace.
        self.create()
    }

    fn is_active(&self) -> bool {
        false
    }

    fn provides(&self) -> Provides {
        Provides { file: Some(self.path.clone()), ..Provides::default() }
    }

    fn exists(&self) -> bool {
        self.path.is_file()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": "qcow2", "path": self.path, "size": self.size})
    }

    fn usage(&self) -> VolumeUsage {
        match std::fs::metadata(&self.path) {
            Ok(m) => VolumeUsage { size_bytes: virtual_size(&self.path), used_bytes: Some(m.blocks() * 512) },
            Err(_) => VolumeUsage::default(),
        }
    }

    fn describe(&self) -> String {
        format!("qcow2 image {} of {} bytes", self.path.display(), self.size)
    }
}
