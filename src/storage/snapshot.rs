//! What the drivers that keep snapshots as copies share (`dir`,
//! `sparsefile`, `overlay`): a reflink copy where the file system can
//! share extents (btrfs, xfs with reflink, bcachefs), a full copy
//! elsewhere (ext4), made under a temporary name and renamed into place so
//! a crash never leaves a half copy where a snapshot is looked for; and
//! restore by swapping renames, so the volume is at every moment either
//! its old contents or the snapshot's.
//!
//! The copy is `cp -a --reflink=auto` (`--sparse=always` for image files):
//! it keeps owners, modes, times, xattrs (overlayfs' `trusted.overlay.*`
//! among them), device nodes and holes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{io_err, remove_tree, tool_err, StorageError};
use crate::names::SnapshotName;
use crate::sys::exec::Cmd;
use crate::sys::fsutil;

/// A copy of a whole volume may take long; it is still bounded.
const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// `cp -a --reflink=auto SRC/. DST`: the tree `from` copied to `to`
/// (which must not exist), through `TO.partial`.
pub fn copy_tree(volume: &str, from: &Path, to: &Path) -> Result<(), StorageError> {
    let partial = partial(to);
    remove_tree(volume, &partial)?;
    std::fs::create_dir_all(&partial).map_err(io_err(volume, "create", &partial))?;
    let res = Cmd::new(["cp", "-a", "--reflink=auto", "--"])
        .arg(from.join("."))
        .arg(&partial)
        .timeout(COPY_TIMEOUT)
        .run()
        .map_err(tool_err(volume, "copy"))
        .and_then(|_| std::fs::rename(&partial, to).map_err(io_err(volume, "rename copy into", to)));
    if res.is_err() {
        let _ = remove_tree(volume, &partial);
    }
    res
}

/// `cp --reflink=auto --sparse=always SRC DST.partial` and rename: a copy
/// of the image file `from` at `to`.
pub fn copy_file(volume: &str, from: &Path, to: &Path) -> Result<(), StorageError> {
    let partial = partial(to);
    fsutil::remove_file_if_exists(&partial).map_err(io_err(volume, "remove", &partial))?;
    let res = Cmd::new(["cp", "--reflink=auto", "--sparse=always", "--preserve=mode,timestamps", "--"])
        .arg(from)
        .arg(&partial)
        .timeout(COPY_TIMEOUT)
        .run()
        .map_err(tool_err(volume, "copy"))
        .and_then(|_| std::fs::rename(&partial, to).map_err(io_err(volume, "rename copy into", to)));
    if res.is_err() {
        let _ = fsutil::remove_file_if_exists(&partial);
    }
    res
}

/// Replace the directory `target` by a copy of `snapshot`: copy beside it,
/// then `target` → `TARGET.old`, copy → `target`, remove the old tree.
pub fn restore_tree(volume: &str, snapshot: &Path, target: &Path) -> Result<(), StorageError> {
    let fresh = with_suffix(target, ".restore");
    remove_tree(volume, &fresh)?;
    copy_tree(volume, snapshot, &fresh)?;
    swap_in(volume, &fresh, target, |p| remove_tree(volume, p))
}

/// Replace the file `target` by a copy of `snapshot`, as [`restore_tree`].
pub fn restore_file(volume: &str, snapshot: &Path, target: &Path) -> Result<(), StorageError> {
    let fresh = with_suffix(target, ".restore");
    copy_file(volume, snapshot, &fresh)?;
    swap_in(volume, &fresh, target, |p| fsutil::remove_file_if_exists(p).map_err(io_err(volume, "remove", p)))
}

/// Move `fresh` to `target`, moving what was there aside and removing it.
pub fn swap_in(volume: &str, fresh: &Path, target: &Path, remove: impl Fn(&Path) -> Result<(), StorageError>) -> Result<(), StorageError> {
    let old = with_suffix(target, ".old");
    remove(&old)?;
    if std::fs::symlink_metadata(target).is_ok() {
        std::fs::rename(target, &old).map_err(io_err(volume, "move aside", target))?;
    }
    if let Err(e) = std::fs::rename(fresh, target) {
        // Put the old contents back rather than leave nothing.
        let _ = std::fs::rename(&old, target);
        return Err(StorageError::Io { volume: volume.to_string(), step: "rename restored copy into", path: target.to_path_buf(), source: e });
    }
    remove(&old)
}

/// `PATH.partial`, hidden beside `path`.
fn partial(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

/// `DIR/.NAME.SUFFIX` for `DIR/NAME`: a hidden name beside `path` that no
/// volume or snapshot name can take (those never start with a dot).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{suffix}"))
}

/// The snapshot directory of a volume at `path`: `DIR/.snapshots/NAME`
/// for `DIR/NAME` (the extension of an image file dropped).
pub fn dir_for(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(".snapshots").join(stem)
}

/// Remove a volume's snapshot directory and everything in it, then
/// `.snapshots` if that is empty now.
pub fn remove_all(volume: &str, dir: &Path) -> Result<(), StorageError> {
    remove_tree(volume, dir)?;
    if let Some(parent) = dir.parent() {
        super::remove_if_empty(parent);
    }
    Ok(())
}

/// A [`StorageError::NoSnapshot`].
pub fn missing(volume: &str, name: &SnapshotName) -> StorageError {
    StorageError::NoSnapshot { volume: volume.to_string(), snapshot: name.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names_beside_the_volume() {
        assert_eq!(dir_for(Path::new("/r/vm/root")), PathBuf::from("/r/vm/.snapshots/root"));
        assert_eq!(dir_for(Path::new("/r/vm/root.img")), PathBuf::from("/r/vm/.snapshots/root"));
        assert_eq!(with_suffix(Path::new("/r/vm/root"), ".old"), PathBuf::from("/r/vm/.root.old"));
    }

    #[test]
    fn copy_and_restore_a_tree() {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        std::fs::create_dir_all(vol.join("etc")).unwrap();
        std::fs::write(vol.join("etc/marker"), "before").unwrap();
        let snap = d.path().join("snap");
        copy_tree("t", &vol, &snap).unwrap();
        std::fs::write(vol.join("etc/marker"), "after").unwrap();
        std::fs::write(vol.join("later"), "x").unwrap();
        restore_tree("t", &snap, &vol).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("etc/marker")).unwrap(), "before");
        assert!(!vol.join("later").exists());
        assert_eq!(std::fs::read_to_string(snap.join("etc/marker")).unwrap(), "before", "the snapshot is kept");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "no partial or old copy left: {names:?}");
    }
}
