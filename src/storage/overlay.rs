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
//! (whether it is mounted is asked of the kernel, [`mount::is_mounted`]).
//! A fresh install from a template needs no mount at all
//! ([`Volume::offline_root`]): `clone_template` writes `lower`, and the
//! guest files go straight into `upper/`, beside the template they hide
//! files of. One into a volume a killed action left mounted goes through
//! the mount: `activate_to_clone` mounts it read-only before the clone.
//!
//! Snapshots live in the volume's directory, `snapshots/NAME/` holding
//! `upper/` and `lower`: a copy of the volume's own layer (`cp -a
//! --reflink=auto`, so whiteouts and `trusted.overlay.*` attributes come
//! along) and the template it sits on. The template is never copied: a
//! snapshot costs what the VM changed since its template, and nothing
//! more where the file system shares extents. Restore (on an unmounted
//! overlay) swaps a copy of the snapshot's layer in as `upper/`, empties
//! `work/` and points `lower` at the snapshot's template. Freezing the
//! upper layer into a new lower layer would cost no copy at all, but a
//! running container's upper layer cannot be swapped under its mounted
//! overlay, and a snapshot of a running VM must leave it running.
//!
//! Settings: `root`. Options: none.

use std::path::{Path, PathBuf};

use super::template_cache::{self, CacheOps};
use super::{empty_dir, io_err, remove_if_empty, remove_tree, Provides, RootDirs, StorageError, Volume, VolumeCtx, VolumeUsage};
use super::snapshot;
use crate::names::SnapshotName;
use crate::sys::mount;
use crate::template::Template;

/// `statfs` type of an overlayfs mount (`OVERLAYFS_SUPER_MAGIC`).
const OVERLAYFS_SUPER_MAGIC: i64 = 0x794C_7630;

/// An overlay volume.
#[derive(Debug)]
pub struct Overlay {
    volume: String,
    root: PathBuf,
    dir: PathBuf,
    usage_cache: PathBuf,
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
        Ok(Overlay { volume: ctx.volume_label(), dir: ctx.path_under(&root), root, usage_cache: ctx.usage_cache() })
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
    fn snapshot_dir(&self, name: &SnapshotName) -> PathBuf {
        self.dir.join("snapshots").join(name.as_str())
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

    /// Mount the overlay on `merged/` unless it is mounted: over the
    /// template with `upper/` and `work/`, or read-only with `upper/` as
    /// a second lower layer ([`Volume::activate_to_clone`]).
    fn mount(&self, read_only: bool) -> Result<(), StorageError> {
        if self.is_active() {
            // A read-only mount is a clone's probe that a killed action
            // left: it is not the volume a VM may run on.
            let probe = || nix::sys::statvfs::statvfs(&self.merged()).is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
            if read_only || !probe() {
                return Ok(());
            }
            let merged = self.merged();
            mount::umount(&merged).map_err(io_err(&self.volume, "unmount overlay from", &merged))?;
        }
        if !self.exists() {
            return Err(StorageError::State { volume: self.volume.clone(), step: "activate", problem: format!("{} does not exist; define it first", self.dir.display()) });
        }
        self.mkdirs()?;
        let lower = self.lower()?;
        let (opts, flags) = if read_only {
            (format!("lowerdir={}:{}", self.upper().display(), lower.display()), nix::mount::MsFlags::MS_RDONLY)
        } else {
            (format!("lowerdir={},upperdir={},workdir={}", lower.display(), self.upper().display(), self.work().display()), nix::mount::MsFlags::empty())
        };
        let merged = self.merged();
        mount::mount_data("overlay", &merged, "overlay", flags, &opts).map_err(io_err(&self.volume, "mount overlay on", &merged))
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
        self.mount(false)
    }

    /// Read-only, the volume's `upper/` and its template both as lower
    /// layers: the same files as [`Volume::activate`] shows, on the same
    /// kind of file system, but overlayfs sets up no upper layer. It then
    /// neither checks and prepares `work/` when mounting nor syncs the
    /// whole file system holding `upper/` when unmounting, which
    /// [`Volume::clone_template`] does at once (mount and unmount 0.19
    /// against 1.1 ms here, more on a host whose guests have written much).
    fn activate_to_clone(&mut self) -> Result<(), StorageError> {
        self.mount(true)
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        let merged = self.merged();
        mount::umount(&merged).map_err(io_err(&self.volume, "unmount overlay from", &merged))
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

    /// `upper/`: its file system is synced whole when the overlay is
    /// unmounted anyway (`ovl_sync_fs`), which follows a fresh install
    /// into a mounted overlay (one a killed action left mounted; otherwise
    /// the install goes through [`Volume::offline_root`], which syncs file
    /// by file).
    fn sync_path(&self) -> Option<PathBuf> {
        Some(self.upper())
    }

    /// Unmounted, a fresh install reads the template it stands on (the
    /// one `lower` names, or the empty one before the clone) and writes
    /// into `upper/`: overlayfs allows changes to its layers while it is
    /// not mounted, and a file in `upper/` hides the template's of that
    /// name. The VM will see an overlay, whose type the VM type is told
    /// (it decides how the container's ids are mapped by it).
    fn offline_root(&self) -> Option<RootDirs> {
        if self.is_active() {
            return None;
        }
        // Without making anything (a dry run asks too): no `lower` yet
        // reads as the empty template, whether or not it exists.
        let read = match std::fs::read_to_string(self.lower_file()) {
            Ok(text) if template_cache::valid_key(text.trim()) => self.templates().join(text.trim()),
            Ok(_) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.templates().join(".empty"),
            Err(_) => return None,
        };
        Some(RootDirs { read, write: self.upper(), fs_type: Some(OVERLAYFS_SUPER_MAGIC) })
    }

    /// `lower`, written when the clone was not durable.
    fn sync_clone(&self) -> Result<(), StorageError> {
        let lf = self.lower_file();
        std::fs::File::open(&lf).and_then(|f| f.sync_all()).map_err(io_err(&self.volume, "sync", &lf))
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
        VolumeUsage { size_bytes: None, used_bytes: self.exists().then(|| crate::sys::fsutil::du_cached(&self.upper(), &self.usage_cache)) }
    }

    fn describe(&self) -> String {
        format!("overlay {}", self.dir.display())
    }

    fn clone_template(&mut self, template: &Template, durable: bool) -> Result<bool, StorageError> {
        let lower = template_cache::ensure(&self.volume, &self.templates(), template, &DirCache(&self.volume))?;
        let entry = lower.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let was_active = self.is_active();
        if was_active {
            self.deactivate()?;
        }
        // The volume is empty; start its upper layer afresh over the template.
        empty_dir(&self.volume, &self.upper())?;
        empty_dir(&self.volume, &self.work())?;
        let lf = self.lower_file();
        // Beside `upper/`, on the file system of [`Volume::sync_path`].
        crate::sys::fsutil::write_replace(&lf, entry.as_bytes(), 0o644, durable).map_err(io_err(&self.volume, "write", &lf))?;
        if !durable {
            // Synced with the guest files' journal commit, then by
            // [`Volume::sync_clone`] or `syncfs`.
            if let Ok(f) = std::fs::File::open(&lf) {
                crate::sys::fsutil::start_writeback(&f);
            }
        }
        if was_active {
            self.activate()?;
        }
        Ok(true)
    }

    fn snapshot(&mut self, name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        let target = self.snapshot_dir(name);
        remove_tree(&self.volume, &target)?;
        let partial = snapshot::with_suffix(&target, ".partial");
        remove_tree(&self.volume, &partial)?;
        std::fs::create_dir_all(&partial).map_err(io_err(&self.volume, "create", &partial))?;
        // Writes of a running VM reach `upper/` directly (overlayfs writes
        // through to the upper file), so with the VM frozen the copy is
        // what the VM sees.
        let made = snapshot::copy_tree(&self.volume, &self.upper(), &partial.join("upper")).and_then(|_| {
            let lf = self.lower_file();
            match std::fs::read(&lf) {
                Ok(text) => std::fs::write(partial.join("lower"), text).map_err(io_err(&self.volume, "write", &partial)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StorageError::Io { volume: self.volume.clone(), step: "read", path: lf, source }),
            }
        });
        let made = made.and_then(|_| std::fs::rename(&partial, &target).map_err(io_err(&self.volume, "rename snapshot into", &target)));
        if made.is_err() {
            let _ = remove_tree(&self.volume, &partial);
        }
        made?;
        Ok(Some(crate::sys::fsutil::du(&target)))
    }

    fn restore(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        let source = self.snapshot_dir(name);
        if !source.join("upper").is_dir() {
            return Err(snapshot::missing(&self.volume, name));
        }
        self.deactivate()?;
        snapshot::restore_tree(&self.volume, &source.join("upper"), &self.upper())?;
        empty_dir(&self.volume, &self.work())?;
        let lf = self.lower_file();
        match std::fs::read(source.join("lower")) {
            Ok(text) => crate::sys::fsutil::write_atomic(&lf, &text, 0o644).map_err(io_err(&self.volume, "write", &lf)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::sys::fsutil::remove_file_if_exists(&lf).map_err(io_err(&self.volume, "remove", &lf)),
            Err(source_err) => Err(StorageError::Io { volume: self.volume.clone(), step: "read", path: source.join("lower"), source: source_err }),
        }
    }

    fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        remove_tree(&self.volume, &self.snapshot_dir(name))?;
        remove_if_empty(&self.dir.join("snapshots"));
        Ok(())
    }
}

impl super::Driver for Overlay {
    const NAME: &'static str = "overlay";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/overlay");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        Overlay::new(ctx)
    }
}
