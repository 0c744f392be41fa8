//! OS templates: archives `NAME.tar.{gz,xz,zst}` in the template directory,
//! with an optional `overlay/NAME.tar.*` unpacked on top, installed onto an
//! empty root volume so that no entry escapes it.

use std::path::{Path, PathBuf};

use crate::names::TemplateName;

/// Archive suffixes, in the order they are looked for.
pub const SUFFIXES: [&str; 3] = ["tar.gz", "tar.xz", "tar.zst"];

/// A template found on disk.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its name.
    pub name: TemplateName,
    /// The main archive.
    pub archive: PathBuf,
    /// The overlay archive, if any.
    pub overlay: Option<PathBuf>,
    /// Shift every owner into a user namespace's id map while unpacking
    /// (an unprivileged container on a filesystem that cannot be
    /// idmapped); `None` keeps the archive's owners.
    pub shift: Option<IdShift>,
}

/// An id map: ids `0..range` of the container are host ids
/// `uid..uid+range` (users) and `gid..gid+range` (groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdShift {
    /// The host uid of the container's root.
    pub uid: u32,
    /// The host gid of the container's root group.
    pub gid: u32,
    /// How many ids are mapped.
    pub range: u32,
}

impl IdShift {
    /// The host ids of the container's `uid`/`gid`, or why they cannot
    /// be mapped (outside the range).
    pub fn map(&self, uid: u64, gid: u64) -> Result<(u32, u32), String> {
        let r = u64::from(self.range);
        if uid >= r || gid >= r {
            return Err(format!("owner {uid}:{gid} is outside the id map's range of {} ids", self.range));
        }
        // In range, and uid + range fits in u32 (checked when the map is configured).
        Ok((self.uid.saturating_add(uid as u32), self.gid.saturating_add(gid as u32)))
    }

    /// A name for template caches unpacked with this map.
    pub fn tag(&self) -> String {
        format!("shift{}-{}-{}", self.uid, self.gid, self.range)
    }
}

/// A template failure.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No archive of that name.
    #[error("template {name} does not exist in {dir} (available: {})", if available.is_empty() { "none".to_string() } else { available.join(", ") })]
    NotFound {
        /// The name asked for.
        name: String,
        /// The template directory.
        dir: PathBuf,
        /// What exists.
        available: Vec<String>,
    },
    /// Unpacking failed.
    #[error("cannot unpack template {archive} into {target}: {problem}")]
    Unpack {
        /// The archive.
        archive: PathBuf,
        /// The root directory.
        target: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

fn archive_in(dir: &Path, name: &str) -> Option<PathBuf> {
    SUFFIXES.iter().map(|s| dir.join(format!("{name}.{s}"))).find(|p| p.is_file())
}

/// The names of the templates in `dir`, sorted.
pub fn available(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    SUFFIXES.iter().find_map(|s| n.strip_suffix(&format!(".{s}")).map(str::to_string))
                })
                .filter(|n| TemplateName::new(n.as_str()).is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// Find the template `name`.
pub fn find(dir: &Path, name: &TemplateName) -> Result<Template, TemplateError> {
    match archive_in(dir, name.as_str()) {
        Some(archive) => Ok(Template { name: name.clone(), archive, overlay: archive_in(&dir.join("overlay"), name.as_str()), shift: None }),
        None => Err(TemplateError::NotFound { name: name.to_string(), dir: dir.to_path_buf(), available: available(dir) }),
    }
}

/// Unpack the template (and its overlay) into `target`.
///
/// Owners (when running as root), modes, mtimes, device nodes, FIFOs,
/// symlinks and hard links are preserved. No entry may escape `target`:
/// an absolute path or a `..` component is refused, a path that goes
/// through a symlink (one the archive planted, e.g. `etc -> /`) is
/// refused, and a hard link must name a file inside `target` by a plain
/// relative path. Symlinks themselves are created as they are (an
/// absolute `/bin/busybox` is right inside the container) and are never
/// followed while unpacking. A progress bar is drawn only when stderr is
/// a terminal.
///
/// With [`Template::shift`], every owner is shifted into the map as the
/// entry is written (uid 0 becomes `shift.uid`), the target directory
/// itself included, so no second `chown -R` pass is needed; an entry
/// owned outside the map's range is refused.
pub fn install(t: &Template, target: &Path) -> Result<(), TemplateError> {
    unpack_archive(&t.archive, target, t.shift)?;
    if let Some(o) = &t.overlay {
        unpack_archive(o, target, t.shift)?;
    }
    if let Some(s) = t.shift {
        // An archive without a "./" entry leaves the top directory as it
        // was: it is the container's "/", so it belongs to its root too.
        if nix::unistd::Uid::effective().is_root() && std::fs::symlink_metadata(target).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0) {
            std::os::unix::fs::lchown(target, Some(s.uid), Some(s.gid))
                .map_err(|e| TemplateError::Unpack { archive: t.archive.clone(), target: target.to_path_buf(), problem: format!("cannot chown the top directory: {e}") })?;
        }
    }
    Ok(())
}

/// Unpack one archive (gzip, xz or zstd, detected by its magic bytes).
fn unpack_archive(archive: &Path, target: &Path, shift: Option<IdShift>) -> Result<(), TemplateError> {
    let fail = |problem: String| TemplateError::Unpack { archive: archive.to_path_buf(), target: target.to_path_buf(), problem };
    let file = std::fs::File::open(archive).map_err(|e| fail(format!("cannot open the archive: {e}")))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 6];
    {
        use std::io::Read;
        let mut f = &file;
        let n = f.read(&mut magic).map_err(|e| fail(format!("cannot read the archive: {e}")))?;
        if n < 4 {
            return Err(fail("the archive is too short".into()));
        }
    }
    let file = {
        use std::io::Seek;
        let mut f = file;
        f.seek(std::io::SeekFrom::Start(0)).map_err(|e| fail(format!("cannot read the archive: {e}")))?;
        f
    };
    let bar = progress_bar(archive, size);
    let raw: Box<dyn std::io::Read> = match &bar {
        Some(b) => Box::new(b.wrap_read(std::io::BufReader::new(file))),
        None => Box::new(std::io::BufReader::new(file)),
    };
    let reader: Box<dyn std::io::Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(liblzma::read::XzDecoder::new_multi_decoder(raw))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(raw).map_err(|e| fail(format!("cannot start zstd: {e}")))?)
    } else {
        return Err(fail("the archive is not gzip, xz or zstd compressed (unknown magic bytes)".into()));
    };
    std::fs::create_dir_all(target).map_err(|e| fail(format!("cannot create the target directory: {e}")))?;
    let res = unpack_tar(reader, target, shift);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    res.map_err(fail)
}

fn progress_bar(archive: &Path, size: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::with_draw_target(Some(size), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes}") {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_message(format!("unpacking {}", archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    Some(b)
}

/// An archive path made safe: its normal components, or a refusal.
fn safe_relative(p: &Path, what: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{what} {} is an absolute path; refusing it", p.display()));
            }
            Component::ParentDir => {
                return Err(format!("{what} {} contains '..'; refusing it", p.display()));
            }
        }
    }
    Ok(out)
}

/// Make sure every directory between `target` and `rel`'s last component
/// is a real directory inside `target` (creating missing ones), never a
/// symlink: so nothing written for `rel` can land outside `target`.
fn ensure_parents(target: &Path, rel: &Path) -> Result<(), String> {
    let Some(parent) = rel.parent() else { return Ok(()) };
    let mut cur = target.to_path_buf();
    for c in parent.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!("entry {} goes through the symlink {}; refusing it", rel.display(), cur.display()));
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("entry {} goes through {}, which is not a directory", rel.display(), cur.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&cur).map_err(|e| format!("cannot create {}: {e}", cur.display()))?;
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", cur.display())),
        }
    }
    Ok(())
}

/// Remove whatever non-directory is at `p` (a symlink is removed, never
/// followed).
fn clear_path(p: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Err(format!("{} is a directory in the way", p.display())),
        Ok(_) => std::fs::remove_file(p).map_err(|e| format!("cannot replace {}: {e}", p.display())),
        Err(_) => Ok(()),
    }
}

fn unpack_tar(reader: impl std::io::Read, target: &Path, shift: Option<IdShift>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let as_root = nix::unistd::Uid::effective().is_root();
    let mut ar = tar::Archive::new(reader);
    let entries = ar.entries().map_err(|e| format!("cannot read the tar stream: {e}"))?;
    // Directory modes and times are applied at the end, so a read-only
    // directory can still be filled and its mtime is not bumped.
    let mut dirs: Vec<(PathBuf, u32, u64, u64, Option<u64>)> = Vec::new();
    for entry in entries {
        let mut e = entry.map_err(|e| format!("cannot read the tar stream: {e}"))?;
        let raw = e.path().map_err(|e| format!("bad entry name: {e}"))?.into_owned();
        let rel = safe_relative(&raw, "entry")?;
        let h = e.header();
        let kind = h.entry_type();
        let mode = match h.mode() {
            Ok(m) => m & 0o7777,
            // A link's mode means nothing; some archivers leave it empty.
            Err(_) if kind.is_symlink() || kind.is_hard_link() => 0o777,
            Err(e) => return Err(format!("entry {}: bad mode: {e}", raw.display())),
        };
        let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
        let (uid, gid) = match shift {
            Some(s) => s.map(uid, gid).map(|(u, g)| (u64::from(u), u64::from(g))).map_err(|p| format!("entry {}: {p}", raw.display()))?,
            None => (uid, gid),
        };
        let mtime = h.mtime().ok();
        if rel.as_os_str().is_empty() {
            // The archive's "./": the root directory's own metadata.
            if kind.is_dir() {
                dirs.push((target.to_path_buf(), mode, uid, gid, mtime));
            }
            continue;
        }
        ensure_parents(target, &rel)?;
        let dst = target.join(&rel);
        let shown = rel.display().to_string();
        let chown = |p: &Path| -> Result<(), String> {
            if as_root {
                std::os::unix::fs::lchown(p, Some(uid as u32), Some(gid as u32)).map_err(|e| format!("cannot chown {shown}: {e}"))?;
            }
            Ok(())
        };
        match kind {
            tar::EntryType::Directory => {
                match std::fs::symlink_metadata(&dst) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        clear_path(&dst)?;
                        std::fs::create_dir(&dst).map_err(|e| format!("cannot create {shown}: {e}"))?;
                    }
                    Err(_) => std::fs::create_dir(&dst).map_err(|e| format!("cannot create {shown}: {e}"))?,
                }
                dirs.push((dst, mode, uid, gid, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                use std::os::unix::fs::OpenOptionsExt;
                clear_path(&dst)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dst)
                    .map_err(|e| format!("cannot create {shown}: {e}"))?;
                std::io::copy(&mut e, &mut f).map_err(|e| format!("cannot write {shown}: {e}"))?;
                chown(&dst)?;
                // After chown, which clears set-id bits.
                f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| format!("cannot chmod {shown}: {e}"))?;
                drop(f);
                set_mtime(&dst, mtime);
            }
            tar::EntryType::Symlink => {
                let link = e.link_name().map_err(|e| format!("entry {shown}: bad link: {e}"))?.ok_or_else(|| format!("symlink {shown} has no target"))?;
                clear_path(&dst)?;
                // Created as it is and never followed by geats: it only
                // means something inside the container.
                std::os::unix::fs::symlink(&link, &dst).map_err(|e| format!("cannot create symlink {shown}: {e}"))?;
                chown(&dst)?;
                set_mtime(&dst, mtime);
            }
            tar::EntryType::Link => {
                let link = e.link_name().map_err(|e| format!("entry {shown}: bad link: {e}"))?.ok_or_else(|| format!("hard link {shown} has no target"))?;
                let src_rel = safe_relative(&link, "hard link target")?;
                if src_rel.as_os_str().is_empty() {
                    return Err(format!("hard link {shown} has an empty target"));
                }
                // The source's directories must be real directories inside
                // the target too (no `evil -> /etc`, `evil/shadow`).
                let src = target.join(&src_rel);
                check_no_symlink_dirs(target, &src_rel)?;
                match std::fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    Ok(_) => return Err(format!("hard link {shown} points to a directory")),
                    Err(e) => return Err(format!("hard link {shown} points to {}: {e}", src_rel.display())),
                }
                clear_path(&dst)?;
                // link(2) does not follow a symlink source.
                std::fs::hard_link(&src, &dst).map_err(|e| format!("cannot hard link {shown}: {e}"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                use nix::sys::stat::{makedev, mknod, Mode, SFlag};
                let kind_flag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                clear_path(&dst)?;
                mknod(&dst, kind_flag, Mode::from_bits_truncate(0o600), makedev(major.into(), minor.into()))
                    .map_err(|e| format!("cannot create device node {shown}: {e}"))?;
                chown(&dst)?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("cannot chmod {shown}: {e}"))?;
                set_mtime(&dst, mtime);
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {}
            other => return Err(format!("entry {shown} has an unsupported type {other:?}")),
        }
    }
    for (d, mode, uid, gid, mtime) in dirs.into_iter().rev() {
        if as_root {
            std::os::unix::fs::lchown(&d, Some(uid as u32), Some(gid as u32)).map_err(|e| format!("cannot chown {}: {e}", d.display()))?;
        }
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("cannot chmod {}: {e}", d.display()))?;
        set_mtime(&d, mtime);
    }
    Ok(())
}

/// Every directory on the way to `rel` (inside `target`) must be a real
/// directory, not a symlink.
fn check_no_symlink_dirs(target: &Path, rel: &Path) -> Result<(), String> {
    let Some(parent) = rel.parent() else { return Ok(()) };
    let mut cur = target.to_path_buf();
    for c in parent.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("{} goes through {}, which is not a real directory; refusing it", rel.display(), cur.display())),
            Err(e) => return Err(format!("cannot inspect {}: {e}", cur.display())),
        }
    }
    Ok(())
}

fn set_mtime(p: &Path, mtime: Option<u64>) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    if let Some(t) = mtime {
        let ts = TimeSpec::new(t as i64, 0);
        // Best effort: a wrong mtime breaks nothing.
        let _ = utimensat(None, p, &ts, &ts, UtimensatFlags::NoFollowSymlink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// One archive entry for the test builder.
    enum E<'a> {
        Dir(&'a [u8], u32),
        File(&'a [u8], u32, &'a [u8]),
        Sym(&'a [u8], &'a [u8]),
        Hard(&'a [u8], &'a [u8]),
        Fifo(&'a [u8]),
        Char(&'a [u8], u32, u32),
    }

    /// A raw tar stream; names are written as bytes, so `..` and absolute
    /// names (which `tar::Builder` refuses) can be made.
    fn tar_bytes(entries: &[E<'_>], uid: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (name, data): (&[u8], &[u8]) = match e {
                E::Dir(n, m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*m);
                    (n, b"")
                }
                E::File(n, m, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    (n, d)
                }
                E::Sym(n, t) | E::Hard(n, t) => {
                    h.set_entry_type(if matches!(e, E::Sym(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link });
                    h.set_mode(0o777);
                    h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                    (n, b"")
                }
                E::Fifo(n) => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_mode(0o644);
                    (n, b"")
                }
                E::Char(n, ma, mi) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o666);
                    h.set_device_major(*ma).unwrap();
                    h.set_device_minor(*mi).unwrap();
                    (n, b"")
                }
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_size(data.len() as u64);
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn write_archive(dir: &Path, name: &str, suffix: &str, tar: &[u8]) -> PathBuf {
        let p = dir.join(format!("{name}.{suffix}"));
        let f = std::fs::File::create(&p).unwrap();
        match suffix {
            "tar.gz" => {
                let mut w = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
                w.write_all(tar).unwrap();
                w.finish().unwrap();
            }
            "tar.xz" => {
                let mut w = liblzma::write::XzEncoder::new(f, 1);
                w.write_all(tar).unwrap();
                w.finish().unwrap();
            }
            _ => {
                let mut w = zstd::stream::write::Encoder::new(f, 1).unwrap();
                w.write_all(tar).unwrap();
                w.finish().unwrap();
            }
        }
        p
    }

    fn template(dir: &Path, entries: &[E<'_>]) -> Template {
        let archive = write_archive(dir, "t", "tar.gz", &tar_bytes(entries, 0));
        Template { name: TemplateName::new("t").unwrap(), archive, overlay: None, shift: None }
    }

    fn is_root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn all_formats_preserve_modes_links_and_owners() {
        for suffix in SUFFIXES {
            let d = tempfile::tempdir().unwrap();
            let uid = if is_root() { 4242 } else { 0 };
            let mut entries = vec![
                E::Dir(b"./", 0o755),
                E::Dir(b"./bin", 0o755),
                E::File(b"./bin/busybox", 0o4755, b"#!fake"),
                E::Sym(b"./bin/sh", b"busybox"),
                E::Sym(b"./init", b"/bin/busybox"),
                E::Hard(b"./bin/bb2", b"./bin/busybox"),
                E::Dir(b"./tmp", 0o1777),
                E::Dir(b"./dev", 0o755),
                E::Fifo(b"./dev/fifo"),
            ];
            if is_root() {
                entries.push(E::Char(b"./dev/null", 1, 3));
            }
            let archive = write_archive(d.path(), "t", suffix, &tar_bytes(&entries, uid));
            let t = Template { name: TemplateName::new("t").unwrap(), archive, overlay: None, shift: None };
            let root = d.path().join("root");
            install(&t, &root).unwrap();
            let bb = std::fs::symlink_metadata(root.join("bin/busybox")).unwrap();
            assert_eq!(bb.permissions().mode() & 0o7777, 0o4755, "{suffix}");
            assert_eq!(bb.nlink(), 2, "hard link kept ({suffix})");
            assert_eq!(bb.mtime(), 1_700_000_000);
            assert_eq!(std::fs::read_link(root.join("init")).unwrap(), Path::new("/bin/busybox"));
            assert_eq!(std::fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
            assert_eq!(std::fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
            assert_eq!(std::fs::symlink_metadata(root.join("dev/fifo")).unwrap().mode() & libc::S_IFMT, libc::S_IFIFO);
            if is_root() {
                assert_eq!(bb.uid(), 4242);
                assert_eq!(std::fs::symlink_metadata(root.join("init")).unwrap().uid(), 4242);
                let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
                assert_eq!(null.mode() & libc::S_IFMT, libc::S_IFCHR);
                assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
            }
        }
    }

    /// Issue 12: owners are shifted into the map while unpacking, the top
    /// directory included (the archive has no "./" entry), modes and
    /// set-id bits survive, and an owner outside the range is refused.
    #[test]
    fn issue_12_shifted_unpack() {
        if !is_root() {
            eprintln!("SKIPPED issue_12_shifted_unpack: needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let entries = [E::Dir(b"bin", 0o755), E::File(b"bin/su", 0o4755, b"x"), E::Sym(b"bin/sh", b"su"), E::Char(b"null", 1, 3)];
        let mut t = template(d.path(), &entries);
        let shift = IdShift { uid: 100_000, gid: 200_000, range: 65_536 };
        t.shift = Some(shift);
        let root = d.path().join("root");
        install(&t, &root).unwrap();
        for (p, uid, gid) in [("", 100_000, 200_000), ("bin", 100_000, 200_000), ("bin/su", 100_000, 200_000), ("bin/sh", 100_000, 200_000), ("null", 100_000, 200_000)] {
            let m = std::fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (uid, gid), "{p:?}");
        }
        assert_eq!(std::fs::metadata(root.join("bin/su")).unwrap().permissions().mode() & 0o7777, 0o4755, "set-uid kept after the shifted chown");
        // uid 4242 of the archive becomes 104242.
        let archive = write_archive(d.path(), "u", "tar.gz", &tar_bytes(&[E::File(b"f", 0o644, b"x")], 4242));
        let t = Template { name: TemplateName::new("u").unwrap(), archive, overlay: None, shift: Some(shift) };
        install(&t, &d.path().join("root2")).unwrap();
        let m = std::fs::metadata(d.path().join("root2/f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (104_242, 204_242));
        let archive = write_archive(d.path(), "v", "tar.gz", &tar_bytes(&[E::File(b"f", 0o644, b"x")], 70_000));
        let t = Template { name: TemplateName::new("v").unwrap(), archive, overlay: None, shift: Some(shift) };
        let e = install(&t, &d.path().join("root3")).unwrap_err().to_string();
        assert!(e.contains("outside the id map"), "{e}");
    }

    /// Every refused archive must leave `outside` untouched.
    fn assert_refused(entries: &[E<'_>], outside: &Path, expect: &str) {
        let d = tempfile::tempdir().unwrap();
        let t = template(d.path(), entries);
        let err = install(&t, &d.path().join("root")).unwrap_err().to_string();
        assert!(err.contains(expect), "expected {expect:?} in {err}");
        assert!(!outside.join("pwned").exists(), "an entry escaped: {err}");
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret", "outside file changed: {err}");
    }

    fn outside() -> (tempfile::TempDir, String) {
        let o = tempfile::tempdir().unwrap();
        std::fs::write(o.path().join("secret"), "secret").unwrap();
        let s = o.path().display().to_string();
        (o, s)
    }

    #[test]
    fn absolute_entry_is_refused() {
        let (o, s) = outside();
        let name = format!("{s}/pwned");
        assert_refused(&[E::File(name.as_bytes(), 0o644, b"x")], o.path(), "absolute path");
    }

    #[test]
    fn dotdot_entry_is_refused() {
        let (o, s) = outside();
        // root is d/root; make a relative path that climbs to `outside`.
        let name = format!("../../../../../../../../..{s}/pwned");
        assert_refused(&[E::File(name.as_bytes(), 0o644, b"x")], o.path(), "'..'");
        assert_refused(&[E::File(b"./a/../../pwned", 0o644, b"x")], o.path(), "'..'");
    }

    #[test]
    fn write_through_symlink_is_refused() {
        let (o, s) = outside();
        let entries = [E::Sym(b"./etc", s.as_bytes()), E::File(b"./etc/pwned", 0o644, b"x")];
        assert_refused(&entries, o.path(), "goes through the symlink");
        // A symlink replacing a file the archive wrote is replaced, not followed.
        let link = format!("{s}/secret");
        let entries = [E::Sym(b"./secret", link.as_bytes()), E::File(b"./secret", 0o644, b"overwritten")];
        let d = tempfile::tempdir().unwrap();
        let t = template(d.path(), &entries);
        let root = d.path().join("root");
        install(&t, &root).unwrap();
        assert_eq!(std::fs::read(root.join("secret")).unwrap(), b"overwritten");
        assert_eq!(std::fs::read(o.path().join("secret")).unwrap(), b"secret");
    }

    #[test]
    fn hard_link_out_is_refused() {
        let (o, s) = outside();
        let abs = format!("{s}/secret");
        assert_refused(&[E::Hard(b"./h", abs.as_bytes())], o.path(), "absolute path");
        let up = format!("../../../../../../../../..{s}/secret");
        assert_refused(&[E::Hard(b"./h", up.as_bytes())], o.path(), "'..'");
        let entries = [E::Sym(b"./evil", s.as_bytes()), E::Hard(b"./h", b"./evil/secret")];
        assert_refused(&entries, o.path(), "not a real directory");
        // And a file written later through the link name must not reach it.
        let d = tempfile::tempdir().unwrap();
        let t = template(d.path(), &entries);
        assert!(install(&t, &d.path().join("root")).is_err());
        assert_eq!(std::fs::metadata(o.path().join("secret")).unwrap().nlink(), 1);
    }

    #[test]
    fn overlay_is_unpacked_on_top() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("templates");
        std::fs::create_dir_all(dir.join("overlay")).unwrap();
        write_archive(&dir, "base", "tar.xz", &tar_bytes(&[E::Dir(b"etc", 0o755), E::File(b"etc/motd", 0o644, b"base"), E::File(b"etc/keep", 0o644, b"keep")], 0));
        write_archive(&dir.join("overlay"), "base", "tar.zst", &tar_bytes(&[E::File(b"etc/motd", 0o600, b"overlay")], 0));
        let t = find(&dir, &TemplateName::new("base").unwrap()).unwrap();
        assert!(t.overlay.is_some());
        let root = d.path().join("root");
        install(&t, &root).unwrap();
        assert_eq!(std::fs::read(root.join("etc/motd")).unwrap(), b"overlay");
        assert_eq!(std::fs::read(root.join("etc/keep")).unwrap(), b"keep");
        assert_eq!(std::fs::metadata(root.join("etc/motd")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn unknown_template_lists_available() {
        let d = tempfile::tempdir().unwrap();
        write_archive(d.path(), "alpha", "tar.gz", &tar_bytes(&[], 0));
        write_archive(d.path(), "beta", "tar.zst", &tar_bytes(&[], 0));
        let e = find(d.path(), &TemplateName::new("gamma").unwrap()).unwrap_err();
        assert!(matches!(e, TemplateError::NotFound { .. }));
        assert!(e.to_string().contains("available: alpha, beta"), "{e}");
    }

    #[test]
    fn garbage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.tar.gz");
        std::fs::write(&p, b"not an archive at all").unwrap();
        let t = Template { name: TemplateName::new("t").unwrap(), archive: p, overlay: None, shift: None };
        let e = install(&t, &d.path().join("root")).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }
}
