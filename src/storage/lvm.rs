//! The `lvm` driver: a logical volume `VM+VOLUME` (`+` cannot occur in a
//! geats name, so the pair is unambiguous) of the definition's `size` in
//! the configured volume group. Provides the block device `/dev/VG/LV`
//! while active; `activate` is `lvchange -ay`, `deactivate` `lvchange
//! -an`, `undefine` `lvremove`. Combine with the `filesystem` adapter for a
//! directory. Needs device-mapper (`/dev/mapper/control`).
//!
//! Settings: `volume_group` (required). Options: none (`size` is required).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{tool_err, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::sys::exec::{Cmd, ExecError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    volume_group: Option<String>,
}

/// A logical volume.
#[derive(Debug)]
pub struct Lvm {
    volume: String,
    vg: String,
    lv: String,
    size: u64,
}

/// Is `s` a usable LVM name (letters, digits, `+_.-`, not starting with `-`)?
fn lvm_name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 127 && !s.starts_with('-') && s.chars().all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c)) && s != "." && s != ".."
}

// `lvs --noheadings --nosuffix --units b -o lv_size,lv_active vg0/web1+root`
// prints one line per LV, the second field empty when it is inactive:
//
//     67108864 active
//
// and exits 5 with `Failed to find logical volume "vg0/web1+root"` (or
// `Volume group "vg0" not found`) on stderr when there is none.
/// Parse `lvs -o lv_size,lv_active` output: (size bytes, active).
pub fn parse_lvs(text: &str) -> Option<(u64, bool)> {
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let mut f = line.split_whitespace();
    let size = f.next()?.trim_end_matches('B').parse().ok()?;
    let active = f.next() == Some("active");
    Some((size, active))
}

impl Lvm {
    /// Build from the context; no disk access.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<Lvm, StorageError> {
        ctx.only_options(&[])?;
        let size = ctx.required_size()?;
        let s: Settings = ctx.settings_for(&["volume_group"])?;
        let key = format!("{}.volume_group", ctx.prefix);
        let vg = s.volume_group.ok_or_else(|| ctx.config.invalid(&key, "the lvm driver needs the name of a volume group"))?;
        if !lvm_name_ok(&vg) {
            return Err(ctx.config.invalid(key, format!("{vg:?} is not a volume group name (letters, digits, +_.- not starting with -)")).into());
        }
        Ok(Lvm { volume: ctx.volume_label(), vg, lv: format!("{}+{}", ctx.vm, ctx.name), size })
    }

    fn full(&self) -> String {
        format!("{}/{}", self.vg, self.lv)
    }

    fn device(&self) -> PathBuf {
        Path::new("/dev").join(&self.vg).join(&self.lv)
    }

    fn lvs(&self) -> Result<Option<(u64, bool)>, ExecError> {
        let cmd = Cmd::new(["lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size,lv_active"]).arg(self.full());
        let out = cmd.output()?;
        if out.code == Some(0) {
            Ok(parse_lvs(&out.stdout))
        } else if out.stderr.contains("Failed to find") || out.stderr.contains("not found") {
            Ok(None)
        } else {
            let status = format!("exit status {:?}", out.code);
            Err(cmd.failure(status, out))
        }
    }

    fn lvchange(&self, flag: &str, step: &'static str) -> Result<(), StorageError> {
        Cmd::new(["lvchange".to_string(), flag.into(), self.full()]).run().map(|_| ()).map_err(tool_err(&self.volume, step))
    }

    fn create(&self) -> Result<(), StorageError> {
        Cmd::new(["lvcreate".to_string(), "-y".into(), "-W".into(), "y".into(), "-n".into(), self.lv.clone(), "-L".into(), format!("{}b", self.size), self.vg.clone()])
            .run()
            .map_err(tool_err(&self.volume, "create logical volume"))?;
        // lvcreate activates; a defined volume is inactive until started.
        self.lvchange("-an", "deactivate logical volume")
    }

    fn remove(&self) -> Result<(), StorageError> {
        Cmd::new(["lvremove".to_string(), "-y".into(), self.full()]).run().map(|_| ()).map_err(tool_err(&self.volume, "remove logical volume"))
    }

    fn exists_now(&self) -> Result<bool, StorageError> {
        Ok(self.lvs().map_err(tool_err(&self.volume, "list logical volume"))?.is_some())
    }
}

impl Volume for Lvm {
    fn define(&mut self) -> Result<(), StorageError> {
        if self.exists_now()? {
            return Ok(());
        }
        self.create()
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if self.is_active() {
            return Ok(());
        }
        self.lvchange("-ay", "activate logical volume")
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        match self.lvs().map_err(tool_err(&self.volume, "list logical volume"))? {
            Some((_, true)) => self.lvchange("-an", "deactivate logical volume"),
            _ => Ok(()),
        }
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        if !self.exists_now()? {
            return Ok(());
        }
        self.deactivate()?;
        self.remove()
    }

    fn format(&mut self) -> Result<(), StorageError> {
        let was_active = self.is_active();
        if self.exists_now()? {
            self.deactivate()?;
            self.remove()?;
        }
        self.create()?;
        if was_active {
            self.activate()?;
        }
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.device().exists()
    }

    fn provides(&self) -> Provides {
        Provides::block_device(self.is_active().then(|| self.device()))
    }

    fn exists(&self) -> bool {
        self.exists_now().unwrap_or(false)
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": "lvm", "volume_group": self.vg, "logical_volume": self.lv, "size": self.size})
    }

    fn usage(&self) -> VolumeUsage {
        match self.lvs() {
            Ok(Some((size, _))) => VolumeUsage { size_bytes: Some(size), used_bytes: None },
            _ => VolumeUsage::default(),
        }
    }

    fn describe(&self) -> String {
        format!("logical volume {}", self.full())
    }
}

impl super::Driver for Lvm {
    const NAME: &'static str = "lvm";
    const DEFAULT_ROOT: Option<&'static str> = None;

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        Lvm::new(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lvs() {
        assert_eq!(parse_lvs("  67108864 active\n"), Some((67108864, true)));
        assert_eq!(parse_lvs("  67108864B \n"), Some((67108864, false)));
        assert_eq!(parse_lvs(""), None);
    }

    #[test]
    fn names() {
        assert!(lvm_name_ok("vg0") && lvm_name_ok("web1+root"));
        assert!(!lvm_name_ok("-x") && !lvm_name_ok("a/b") && !lvm_name_ok(""));
    }
}
