//! The `lvm` driver: a logical volume `VM+VOLUME` (`+` cannot occur in a
//! geats name, so the pair is unambiguous) of the definition's `size` in
//! the configured volume group. Provides the block device `/dev/VG/LV`
//! while active; `activate` is `lvchange -ay`, `deactivate` `lvchange
//! -an`, `undefine` `lvremove`. Combine with the `filesystem` adapter for a
//! directory. Needs device-mapper (`/dev/mapper/control`).
//!
//! With `thin_pool`, volumes are thin LVs in that pool and snapshots are
//! thin snapshots `VM+VOLUME+NAME` (`lvcreate -s`, no size, no copy);
//! restore makes a thin snapshot of the snapshot, removes the volume and
//! renames the new LV into its place, keeping every snapshot. A volume
//! group without a thin pool has no snapshots (classic COW snapshots need
//! a size guessed up front and slow the origin down): `not_supported`.
//!
//! Settings: `volume_group` (required), `thin_pool`. Options: none
//! (`size` is required).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{tool_err, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::names::SnapshotName;
use crate::sys::exec::{Cmd, ExecError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    volume_group: Option<String>,
    thin_pool: Option<String>,
}

/// A logical volume.
#[derive(Debug)]
pub struct Lvm {
    volume: String,
    vg: String,
    lv: String,
    size: u64,
    thin_pool: Option<String>,
}

/// The argv of the LVM commands, kept apart so tests can check them
/// (this machine has no device-mapper to run them on).
pub mod argv {
    /// `lvcreate -y -W y -n LV -L SIZEb VG`, or for a thin volume
    /// `lvcreate -y -W y -n LV -V SIZEb -T VG/POOL`.
    pub fn create(vg: &str, lv: &str, size: u64, thin_pool: Option<&str>) -> Vec<String> {
        let mut a: Vec<String> = ["lvcreate", "-y", "-W", "y", "-n", lv].iter().map(|s| s.to_string()).collect();
        match thin_pool {
            Some(pool) => a.extend(["-V".to_string(), format!("{size}b"), "-T".into(), format!("{vg}/{pool}")]),
            None => a.extend(["-L".to_string(), format!("{size}b"), vg.to_string()]),
        }
        a
    }

    /// `lvcreate -y -s -n SNAP VG/ORIGIN`: a thin snapshot (no size),
    /// which LVM marks to be skipped by activation; with `volume`, `-k n`
    /// clears that mark, for the LV that becomes the volume on restore.
    pub fn snapshot(vg: &str, origin: &str, snap: &str, volume: bool) -> Vec<String> {
        let mut a: Vec<String> = ["lvcreate", "-y", "-s"].iter().map(|s| s.to_string()).collect();
        if volume {
            a.extend(["-k".to_string(), "n".into()]);
        }
        a.extend(["-n".to_string(), snap.into(), format!("{vg}/{origin}")]);
        a
    }

    /// `lvremove -y VG/LV`.
    pub fn remove(vg: &str, lv: &str) -> Vec<String> {
        vec!["lvremove".into(), "-y".into(), format!("{vg}/{lv}")]
    }

    /// `lvrename VG FROM TO`.
    pub fn rename(vg: &str, from: &str, to: &str) -> Vec<String> {
        vec!["lvrename".into(), vg.into(), from.into(), to.into()]
    }

    /// `lvs --noheadings -o lv_name VG`: every LV of the group, one a line.
    pub fn list(vg: &str) -> Vec<String> {
        vec!["lvs".into(), "--noheadings".into(), "-o".into(), "lv_name".into(), vg.into()]
    }
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
        let s: Settings = ctx.settings_for(&["volume_group", "thin_pool"])?;
        let key = format!("{}.volume_group", ctx.prefix);
        let vg = s.volume_group.ok_or_else(|| ctx.config.invalid(&key, "the lvm driver needs the name of a volume group"))?;
        if !lvm_name_ok(&vg) {
            return Err(ctx.config.invalid(key, format!("{vg:?} is not a volume group name (letters, digits, +_.- not starting with -)")).into());
        }
        let s_pool = s.thin_pool;
        if let Some(p) = &s_pool {
            if !lvm_name_ok(p) {
                return Err(ctx.config.invalid(format!("{}.thin_pool", ctx.prefix), format!("{p:?} is not a logical volume name")).into());
            }
        }
        Ok(Lvm { volume: ctx.volume_label(), vg, lv: format!("{}+{}", ctx.vm, ctx.name), size, thin_pool: s_pool })
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
        Cmd::new(argv::create(&self.vg, &self.lv, self.size, self.thin_pool.as_deref()))
            .run()
            .map_err(tool_err(&self.volume, "create logical volume"))?;
        // lvcreate activates; a defined volume is inactive until started.
        self.lvchange("-an", "deactivate logical volume")
    }

    fn remove(&self) -> Result<(), StorageError> {
        Cmd::new(["lvremove".to_string(), "-y".into(), self.full()]).run().map(|_| ()).map_err(tool_err(&self.volume, "remove logical volume"))
    }

    /// The LV of snapshot `name`: `VM+VOLUME+NAME`.
    fn snapshot_lv(&self, name: &str) -> String {
        format!("{}+{name}", self.lv)
    }

    /// The names of this volume's snapshot LVs.
    fn snapshot_lvs(&self) -> Result<Vec<String>, StorageError> {
        let out = Cmd::new(argv::list(&self.vg)).run().map_err(tool_err(&self.volume, "list logical volumes"))?;
        let prefix = format!("{}+", self.lv);
        Ok(out.stdout.split_whitespace().filter(|n| n.starts_with(&prefix)).map(str::to_string).collect())
    }

    fn thin(&self) -> Result<(), StorageError> {
        match self.thin_pool {
            Some(_) => Ok(()),
            None => Err(StorageError::NotSupported { volume: self.volume.clone(), driver: "lvm without a thin_pool", what: "take snapshots" }),
        }
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
        if self.thin_pool.is_some() {
            for snap in self.snapshot_lvs()? {
                Cmd::new(argv::remove(&self.vg, &snap)).run().map_err(tool_err(&self.volume, "remove snapshot"))?;
            }
        }
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

    fn snapshot(&mut self, name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        self.thin()?;
        let snap = self.snapshot_lv(name.as_str());
        if self.snapshot_lvs()?.contains(&snap) {
            Cmd::new(argv::remove(&self.vg, &snap)).run().map_err(tool_err(&self.volume, "remove snapshot"))?;
        }
        Cmd::new(argv::snapshot(&self.vg, &self.lv, &snap, false)).run().map_err(tool_err(&self.volume, "create thin snapshot"))?;
        Ok(None)
    }

    fn restore(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        self.thin()?;
        let snap = self.snapshot_lv(name.as_str());
        let lvs = self.snapshot_lvs()?;
        if !lvs.contains(&snap) {
            return Err(super::snapshot::missing(&self.volume, name));
        }
        // A snapshot name never starts with a dot, so this cannot be one.
        let fresh = self.snapshot_lv(".restore");
        if lvs.contains(&fresh) {
            Cmd::new(argv::remove(&self.vg, &fresh)).run().map_err(tool_err(&self.volume, "remove snapshot"))?;
        }
        Cmd::new(argv::snapshot(&self.vg, &snap, &fresh, true)).run().map_err(tool_err(&self.volume, "snapshot the snapshot"))?;
        self.deactivate()?;
        if self.exists_now()? {
            self.remove()?;
        }
        Cmd::new(argv::rename(&self.vg, &fresh, &self.lv)).run().map(|_| ()).map_err(tool_err(&self.volume, "rename restored volume"))
    }

    fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        self.thin()?;
        let snap = self.snapshot_lv(name.as_str());
        if self.snapshot_lvs()?.contains(&snap) {
            Cmd::new(argv::remove(&self.vg, &snap)).run().map_err(tool_err(&self.volume, "remove snapshot"))?;
        }
        Ok(())
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
    fn issue_18_thin_snapshot_argv() {
        assert_eq!(argv::create("vg0", "web1+root", 1024, Some("pool")).join(" "), "lvcreate -y -W y -n web1+root -V 1024b -T vg0/pool");
        assert_eq!(argv::create("vg0", "web1+root", 1024, None).join(" "), "lvcreate -y -W y -n web1+root -L 1024b vg0");
        assert_eq!(argv::snapshot("vg0", "web1+root", "web1+root+before", false).join(" "), "lvcreate -y -s -n web1+root+before vg0/web1+root");
        assert_eq!(argv::snapshot("vg0", "web1+root+before", "web1+root+.restore", true).join(" "), "lvcreate -y -s -k n -n web1+root+.restore vg0/web1+root+before");
        assert_eq!(argv::remove("vg0", "web1+root+before").join(" "), "lvremove -y vg0/web1+root+before");
        assert_eq!(argv::rename("vg0", "web1+root+.restore", "web1+root").join(" "), "lvrename vg0 web1+root+.restore web1+root");
        assert_eq!(argv::list("vg0").join(" "), "lvs --noheadings -o lv_name vg0");
    }

    #[test]
    fn names() {
        assert!(lvm_name_ok("vg0") && lvm_name_ok("web1+root"));
        assert!(!lvm_name_ok("-x") && !lvm_name_ok("a/b") && !lvm_name_ok(""));
    }
}
