//! Loop devices through the `losetup` tool. Which device backs which file
//! is read back from the kernel (`losetup -j`) every time, so a process
//! can release what an earlier process attached.

use std::path::{Path, PathBuf};

use crate::sys::exec::{Cmd, ExecError};



// `losetup -j /tmp/t.img` prints one line per loop device backed by the
// file (matched by device and inode), nothing when there is none:
//
//   /dev/loop0: [65024]:10010793 (/tmp/t.img)
//
/// Parse `losetup -j` output into device paths.
pub fn parse_associations(text: &str) -> Vec<PathBuf> {
    text.lines().filter_map(|l| l.split_once(':').map(|(dev, _)| PathBuf::from(dev.trim()))).filter(|d| d.starts_with("/dev")).collect()
}

/// The loop devices attached to `file`. When the file no longer exists,
/// the devices still holding its deleted inode are found through sysfs
/// (`/sys/block/loopN/loop/backing_file` reads `PATH (deleted)`), so they
/// can still be released.
pub fn find(file: &Path) -> Result<Vec<PathBuf>, ExecError> {
    if !file.exists() {
        return Ok(deleted_backing(file));
    }
    let out = Cmd::new(["losetup", "-j"]).arg(file).run()?;
    Ok(parse_associations(&out.stdout))
}

/// Loop devices whose backing file was `file` and has been deleted.
fn deleted_backing(file: &Path) -> Vec<PathBuf> {
    let want = format!("{} (deleted)", file.display());
    let Ok(rd) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).is_ok_and(|b| b.trim_end_matches('\n') == want))
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    out.sort();
    out
}

// `losetup --find --show /tmp/t.img` attaches the file to the first free
// device and prints its name:
//
//   /dev/loop0
//
/// Attach `file` to a free loop device; returns the device.
pub fn attach(file: &Path) -> Result<PathBuf, ExecError> {
    let cmd = Cmd::new(["losetup", "--find", "--show"]).arg(file);
    let out = cmd.run()?;
    let dev = out.stdout.trim();
    if dev.starts_with("/dev/") {
        Ok(PathBuf::from(dev))
    } else {
        let out = out.clone();
        Err(cmd.failure("unexpected output", out))
    }
}

/// Is `dev` (`/dev/loopN`) attached to a file? Read from sysfs.
pub fn is_attached(dev: &Path) -> bool {
    dev.file_name().is_some_and(|n| Path::new("/sys/block").join(n).join("loop/backing_file").exists())
}

/// Detach a loop device (`losetup -d DEV`) and wait until the kernel has
/// released it: while another process has the device open (even briefly,
/// like a concurrent `losetup -a`), the kernel only marks it for release
/// on last close. Fails if it is still attached after 10 s.
pub fn detach(dev: &Path) -> Result<(), ExecError> {
    let cmd = Cmd::new(["losetup", "-d"]).arg(dev);
    let r = cmd.run();
    let limit = std::time::Duration::from_secs(10);
    let start = std::time::Instant::now();
    while is_attached(dev) && start.elapsed() < limit {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match r {
        // A concurrent detach won the race: it is gone either way.
        Err(_) if !is_attached(dev) => Ok(()),
        Err(e) => Err(e),
        Ok(_) if is_attached(dev) => Err(ExecError::Timeout {
            argv: cmd.shown(),
            secs: limit.as_secs(),
            stderr: format!("{} is still in use and is released when its last user closes it", dev.display()),
        }),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_associations() {
        let t = "/dev/loop0: [65024]:10010793 (/tmp/t.img)\n/dev/loop7: [65024]:10010793 (/tmp/t.img)\n";
        assert_eq!(parse_associations(t), vec![PathBuf::from("/dev/loop0"), PathBuf::from("/dev/loop7")]);
        assert!(parse_associations("").is_empty());
    }
}
