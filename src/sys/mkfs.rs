//! Making and probing file systems: `mkfs.TYPE` and `blkid`.

use std::path::Path;

use crate::sys::exec::{Cmd, ExecError};

/// The file systems geats can make.
pub const FSTYPES: [&str; 4] = ["ext4", "ext3", "xfs", "btrfs"];

/// Make a file system of `fstype` (one of [`FSTYPES`]) on `dev`, replacing
/// whatever was there.
pub fn mkfs(fstype: &str, dev: &Path) -> Result<(), ExecError> {
    let tool = format!("mkfs.{fstype}");
    let flags: &[&str] = match fstype {
        "ext4" | "ext3" => &["-F", "-q"],
        "xfs" | "btrfs" => &["-f", "-q"],
        _ => &[],
    };
    Cmd::new(std::iter::once(tool.as_str()).chain(flags.iter().copied())).arg(dev).timeout(std::time::Duration::from_secs(600)).run().map(|_| ()).map_err(trim_usage)
}

// `mkfs.xfs -f -q /dev/loop1` on a 16 MB device exits 1 and prints the
// reason followed by its whole usage text:
//
//   Filesystem must be larger than 300MB.
//   Usage: mkfs.xfs
//   /* blocksize */		[-b size=num]
//   ...
//
/// Drop a usage text that follows the reason in a failed mkfs's stderr.
fn trim_usage(e: ExecError) -> ExecError {
    match e {
        ExecError::Failed { argv, status, stdout, stderr } => {
            let stderr = match stderr.find("Usage:") {
                Some(i) if i > 0 => stderr[..i].trim_end().to_string(),
                _ => stderr,
            };
            ExecError::Failed { argv, status, stdout, stderr }
        }
        other => other,
    }
}

// `blkid -p -o value -s TYPE /dev/loop0` prints the type of the file
// system found by a low-level probe and exits 0:
//
//   ext4
//
// and exits 2 with no output when the device holds no known signature.
/// The file-system type on `dev`, or `None` when it holds none.
pub fn probe(dev: &Path) -> Result<Option<String>, ExecError> {
    let cmd = Cmd::new(["blkid", "-p", "-o", "value", "-s", "TYPE"]).arg(dev);
    let out = cmd.output()?;
    match out.code {
        Some(0) => Ok(Some(out.stdout.trim().to_string()).filter(|s| !s.is_empty())),
        Some(2) => Ok(None),
        code => Err(cmd.failure(format!("exit status {code:?}"), out)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_text_is_dropped() {
        let e = ExecError::Failed {
            argv: "mkfs.xfs -f -q /dev/loop1".into(),
            status: "exit status 1".into(),
            stdout: String::new(),
            stderr: "Filesystem must be larger than 300MB.\nUsage: mkfs.xfs\n/* blocksize */ [-b size=num]\n".into(),
        };
        assert_eq!(trim_usage(e).stderr(), "Filesystem must be larger than 300MB.");
    }
}
