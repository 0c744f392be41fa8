//! The `overlay` driver: a copy-on-write directory over a shared unpacked
//! template. Each volume is `ROOT/VM/VOLUME/` (under the storage type's
//! `root`, default `ROOT/var/lib/geats/overlay`) holding `upper/` (the
//! volume's own changes), `work/` (overlayfs' scratch space), `merged/`
//! (the mount point the VM sees) and `lower` (the template cache entry it
//! was made from). The lower layer is `ROOT/.templates/NAME@STAMP`, unpacked
//! once and shared by every volume made from that template (see
//! [`super::template_cache`]), or the empty `ROOT/.templates/.empty` for a
//! volume made from none.
//!
//! `activate` mounts the overlay on `merged/`, `deactivate` unmounts it
//! (whether it is mounted is read from `/proc/self/mountinfo`).
//!
//! Settings: `root`. Options: none.

use std::path::{Path, PathBuf};

use super::template_cache::{self, CacheOps};
use super::{empty_dir, io_err, remove_if_empty, remove_tree, tool_err, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::sys::mount;
use crate::template::Template;

/// An overlay volume.
#[derive(Debug)]
pub struct Overlay {
    volume: String,
    root: PathBuf,
    dir: PathBuf,
}

impl Overlay {
    /// Build from the context; no disk access. The root may not contain
    /// characters that overlayfs' option string cannot carry.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<Overlay, StorageError> {
        ctx.only_options(&[])?;
        let root = ctx.root_setting("overlay")?;
        let shown = root.to_string_lossy();
        if shown.contains([',', ':', '\\']) || shown.chars().any(char::is_whitespace) {
            return Err(ctx.config.invalid(format!("{}.root", ctx.prefix), format!("{shown} contains a comma, colon, backslash or space, which overlayfs options cannot carry")).into());
        }
        Ok(Overlay { volume: ctx.volume_label(), dir: ctx.path_under(&root), root })
    }

    fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    fn merged(&self) -> PathBuf {
        self.dir.join("merged")
    }
    fn lower_file(&self) -> PathBuf {
        self.dir.join("lower")
    }
    fn templates(&self) -> PathBuf {
        self.root.join(".templates")
    }

    /// The lower directory: the template named in `lower`, or an empty one.
    fn lower(&self) -> Result<PathBuf, StorageError> {
        match std::fs::read_to_string(self.lower_file()) {
            Ok(text) => {
                let name = text.trim();
                if !template_cache::valid_key(name) {
                    return Err(StorageError::State {
                        volume: self.volume.clone(),
                        step: "read lower layer",
                        problem: format!("{} does not name a template cache entry", self.lower_file().display()),
                    });
                }
                let p = self.templates().join(name);
                if !p.is_dir() {
                    return Err(StorageError::State {
                        volume: self.volume.clone(),
                        step: "mount overlay",
                        problem: format!("its template {} is missing from {}", name, self.templates().display()),
                    });
                }
                Ok(p)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let empty = self.templates().join(".empty");
                std::fs::create_dir_all(&empty).map_err(io_err(&self.volume, "create", &empty))?;
                Ok(empty)
            }
            Err(source) => Err(StorageError::Io { volume: self.volume.clone(), step: "read", path: self.lower_file(), source }),
        }
    }

    fn mkdirs(&self) -> Result<(), StorageError> {
        for d in [self.upper(), self.work(), self.merged()] {
            std::fs::create_dir_all(&d).map_err(io_err(&self.volume, "create", &d))?;
        }
        Ok(())
    }
}

struct DirCache<'a>(&'a str);

impl CacheOps for DirCache<'_> {
    fn create(&self, path: &Path) -> Result<(), StorageError> {
        std::fs::create_dir_all(path).map_err(io_err(self.0, "create", path))
    }
    fn seal(&self, _path: &Path) -> Result<(), StorageError> {
        Ok(())
    }
    fn discard(&self, path: &Path) -> Result<(), StorageError> {
        remove_tree(self.0, path)
    }
}

impl Volume for Overlay {
    fn define(&mut self) -> Result<(), StorageError> {
        self.mkdirs()
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if self.is_active() {
            return Ok(());
        }
        if !self.exists() {
            return Err(StorageError::State { volume: self.volume.clone(), step: "activate", problem: format!("{} does not exist; define it first", self.dir.display()) });
        }
        self.mkdirs()?;
        let lower = self.lower()?;
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), self.upper().display(), self.work().display());
        mount::mount("overlay", &self.merged(), "overlay", Some(&opts)).map_err(tool_err(&self.volume, "mount overlay"))
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        mount::umount(&self.merged()).map_err(tool_err(&self.volume, "unmount overlay"))
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        self.deactivate()?;
        remove_tree(&self.volume, &self.dir)?;
        if let Some(vm_dir) = self.dir.parent() {
            remove_if_empty(vm_dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        let was_active = self.is_active();
        self.deactivate()?;
        empty_dir(&self.volume, &self.upper())?;
        empty_dir(&self.volume, &self.work())?;
        let lower = self.lower_file();
        crate::sys::fsutil::remove_file_if_exists(&lower).map_err(io_err(&self.volume, "remove", &lower))?;
        self.mkdirs()?;
        if was_active {
            self.activate()?;
        }
        Ok(())
    }

    fn is_active(&self) -> bool {
        mount::is_mounted(&self.merged())
    }

    fn provides(&self) -> Provides {
        Provides::directory(self.merged())
    }

    fn exists(&self) -> bool {
        self.upper().is_dir()
    }

    fn record(&self) -> serde_json::Value {
        let lower = std::fs::read_to_string(self.lower_file()).ok().map(|s| s.trim().to_string());
        serde_json::json!({"driver": "overlay", "path": self.dir, "template": lower})
    }

    fn usage(&self) -> VolumeUsage {
        VolumeUsage { size_bytes: None, used_bytes: self.exists().then(|| crate::sys::fsutil::du(&self.upper())) }
    }

    fn describe(&self) -> String {
        format!("overlay {}", self.dir.display())
    }

    fn clone_template(&mut self, template: &Template) -> Result<bool, StorageError> {
        let lower = template_cache::ensure(&self.volume, &self.templates(), template, &DirCache(&self.volume))?;
        let entry = lower.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let was_active = self.is_active();
        self.deactivate()?;
        // The volume is empty; start its upper layer afresh over the template.
        empty_dir(&self.volume, &self.upper())?;
        empty_dir(&self.volume, &self.work())?;
        let lf = self.lower_file();
        crate::sys::fsutil::write_atomic(&lf, entry.as_bytes(), 0o644).map_err(io_err(&self.volume, "write", &lf))?;
        if was_active {
            self.activate()?;
        }
        Ok(true)
    }
}

impl super::Driver for Overlay {
    const NAME: &'static str = "overlay";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/overlay");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        Overlay::new(ctx)
    }
}
