//! The `loop` adapter: turns a volume that provides a file into a block
//! device. `activate` attaches the file to a free loop device (`losetup
//! --find --show`), `deactivate` detaches every device backed by the file.
//! Which device that is, is asked of the kernel (`losetup -j FILE`) each
//! time, so a process can release what an earlier one attached. The file's
//! path is asked of the inner volume each time too: an exec plugin names it
//! only once it has created the volume.
//!
//! Settings: none. Options: none.

use std::path::PathBuf;

use super::{tool_err, Kind, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::names::SnapshotName;
use crate::sys::loopdev;

/// A loop device over an image file.
#[derive(Debug)]
pub struct LoopAdapter {
    inner: Box<dyn Volume>,
    volume: String,
}

impl LoopAdapter {
    /// Wrap `inner`, which must provide a file. `key` names this adapter in
    /// the config, for errors.
    pub fn new(ctx: &VolumeCtx<'_>, key: &str, inner: Box<dyn Volume>) -> Result<LoopAdapter, StorageError> {
        let kind = inner.provides().kind;
        if kind != Kind::File {
            return Err(ctx.config.invalid(key, format!("the loop adapter needs a volume that provides a file; {} provides {}", inner.describe(), kind.as_str())).into());
        }
        Ok(LoopAdapter { inner, volume: ctx.volume_label() })
    }

    /// The inner volume's file, once it has one.
    fn file(&self) -> Option<PathBuf> {
        self.inner.provides().path_of(Kind::File).map(PathBuf::from)
    }

    /// The loop devices now backed by the file.
    fn devices(&self) -> Result<Vec<PathBuf>, StorageError> {
        let Some(file) = self.file() else { return Ok(Vec::new()) };
        loopdev::find(&file).map_err(tool_err(&self.volume, "find loop device"))
    }

    fn device(&self) -> Option<PathBuf> {
        self.devices().ok().and_then(|d| d.into_iter().next())
    }

    fn detach_all(&self) -> Result<(), StorageError> {
        for dev in self.devices()? {
            loopdev::detach(&dev).map_err(tool_err(&self.volume, "detach loop device"))?;
        }
        Ok(())
    }
}

impl Volume for LoopAdapter {
    fn define(&mut self) -> Result<(), StorageError> {
        self.inner.define()
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        let inner_was_active = self.inner.is_active();
        self.inner.activate()?;
        if !self.devices()?.is_empty() {
            return Ok(());
        }
        let Some(file) = self.file() else {
            return Err(StorageError::State { volume: self.volume.clone(), step: "attach loop device", problem: format!("{} names no file", self.inner.describe()) });
        };
        if let Err(e) = loopdev::attach(&file) {
            if !inner_was_active {
                if let Err(c) = self.inner.deactivate() {
                    tracing::warn!(volume = %self.volume, error = %c, "cleanup after a failed attach failed");
                }
            }
            return Err(StorageError::Tool { volume: self.volume.clone(), step: "attach loop device", source: e });
        }
        Ok(())
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        self.detach_all()?;
        self.inner.deactivate()
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        self.deactivate()?;
        self.inner.undefine()
    }

    fn format(&mut self) -> Result<(), StorageError> {
        // Erasing the file under an attached device would leave the old
        // blocks in the device's page cache: detach first.
        let was_active = self.device().is_some();
        self.deactivate()?;
        self.inner.format()?;
        if was_active {
            self.activate()?;
        }
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.device().is_some() || self.inner.is_active()
    }

    fn provides(&self) -> Provides {
        Provides::block_device(self.device())
    }

    fn exists(&self) -> bool {
        self.inner.exists()
    }

    fn record(&self) -> serde_json::Value {
        with_adapter(self.inner.record(), "loop", serde_json::json!({}))
    }

    fn usage(&self) -> VolumeUsage {
        self.inner.usage()
    }

    fn describe(&self) -> String {
        format!("{} on a loop device", self.inner.describe())
    }

    /// The file's snapshot. While a device is attached, what the file
    /// holds is consistent only if whatever uses the device flushed it
    /// and writes nothing (the filesystem adapter freezes its file system
    /// for this; a VM given the bare device must be frozen and its guest
    /// must have synced).
    fn snapshot(&mut self, name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        self.inner.snapshot(name)
    }

    /// Detaches the device first: the file changes under it.
    fn restore(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        self.deactivate()?;
        self.inner.restore(name)
    }

    fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        self.inner.delete_snapshot(name)
    }
}

/// Add an adapter to an inner volume's record: its name is appended to
/// `adapters`, and `extra`'s keys are added under the adapter's name.
pub fn with_adapter(mut record: serde_json::Value, name: &str, extra: serde_json::Value) -> serde_json::Value {
    if let Some(m) = record.as_object_mut() {
        let list = m.entry("adapters").or_insert_with(|| serde_json::json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(name.into());
        }
        if extra.as_object().is_some_and(|o| !o.is_empty()) {
            m.insert(name.to_string(), extra);
        }
    }
    record
}

impl super::Adapter for LoopAdapter {
    const NAME: &'static str = "loop";

    fn wrap(ctx: &VolumeCtx<'_>, key: &str, inner: Box<dyn Volume>) -> Result<Self, StorageError> {
        LoopAdapter::new(ctx, key, inner)
    }
}
