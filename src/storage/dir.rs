//! The `dir` driver: a plain directory `ROOT/VM/VOLUME` under the storage
//! type's `root` (default `ROOT/var/lib/geats/volumes`). Provides a
//! directory; activation has nothing to do.

use std::path::PathBuf;

use super::{empty_dir, remove_tree, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};

/// A directory volume.
#[derive(Debug)]
pub struct Dir {
    volume: String,
    path: PathBuf,
}

impl Dir {
    /// Build from the context; no disk access.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<Dir, StorageError> {
        ctx.only_options(&[])?;
        let root = ctx.root_setting("dir")?;
        Ok(Dir { volume: ctx.name.to_string(), path: ctx.path_under(&root) })
    }

    /// A directory volume at a fixed path (a VM type's own root directory,
    /// see `VmType::own_root`); `volume` names it in messages.
    pub fn at(volume: String, path: PathBuf) -> Dir {
        Dir { volume, path }
    }
}

impl Volume for Dir {
    fn define(&mut self) -> Result<(), StorageError> {
        std::fs::create_dir_all(&self.path).map_err(|source| StorageError::Io {
            volume: self.volume.clone(),
            step: "create",
            path: self.path.clone(),
            source,
        })
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if self.path.is_dir() {
            Ok(())
        } else {
            Err(StorageError::State { volume: self.volume.clone(), step: "activate", problem: format!("{} does not exist", self.path.display()) })
        }
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        remove_tree(&self.volume, &self.path)?;
        // Remove the VM's directory once its last volume is gone.
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        empty_dir(&self.volume, &self.path)
    }

    fn is_active(&self) -> bool {
        false
    }

    fn provides(&self) -> Provides {
        Provides::directory(self.path.clone())
    }

    fn exists(&self) -> bool {
        self.path.is_dir()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": "dir", "path": self.path})
    }

    fn usage(&self) -> VolumeUsage {
        VolumeUsage { size_bytes: None, used_bytes: self.exists().then(|| crate::sys::fsutil::du(&self.path)) }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }
}

impl super::Driver for Dir {
    const NAME: &'static str = "dir";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/volumes");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        Dir::new(ctx)
    }
}
