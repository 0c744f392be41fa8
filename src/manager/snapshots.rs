//! Snapshots of a VM: `snapshot`, `restore` and `delete_snapshot`, each a
//! mutating action like any other (lease, journal, steps with undo, dry
//! run, request-id replay), plus retention (`snapshots.keep`) and the
//! schedule `geats snapshot --due` follows (`snapshots.schedule`).
//!
//! A snapshot covers every volume of the VM under one name. Of a running
//! VM it is consistent across volumes: the VM is frozen
//! ([`crate::vm::VmType::freeze`]) while each volume's driver takes its
//! snapshot, then resumed; it never stops. Restore needs the VM stopped:
//! a running VM is shut down (stopped after `shutdown_timeout`), its
//! volumes restored, and started again.
//!
//! Every step is idempotent (a driver's snapshot replaces one of the same
//! name, restore and delete can be repeated), so an interrupted action
//! converges by being run again. The records live in the database and in
//! the VM's record file, so `geats recover` finds them again.

use super::actions::{deactivate_all, load, load_defined, with_rollback, Loaded, Outcome};
use super::op::{Op, Undo};
use super::reply::{RemovedReply, Reply, RestoreReply, SnapshotReply};
use super::{Manager, RecordFile};
use crate::config::Config;
use crate::db::{self, SnapshotRecord};
use crate::error::{Error, Result};
use crate::names::{SnapshotName, VmName};
use crate::request::{Action, Request};
use crate::state::Power;

/// The snapshots a VM's record file lists (none if it has no file).
pub(super) fn recorded(config: &Config, vm: &VmName) -> Vec<SnapshotRecord> {
    std::fs::read_to_string(Manager::record_path(config, vm))
        .ok()
        .and_then(|t| serde_json::from_str::<RecordFile>(&t).ok())
        .map(|r| r.snapshots)
        .unwrap_or_default()
}

/// Write the database's snapshot rows of `vm` into its record file.
fn sync_record(op: &mut Op<'_>, vm: &VmName) -> Result<()> {
    let config = op.config;
    let db = op.db_mut()?;
    let Some(rec) = db.vm(vm)? else { return Ok(()) };
    let volumes = db.volumes(vm)?;
    let snapshots = db.snapshots(vm)?;
    Manager::write_record_file(config, RecordFile { vm: rec, volumes, snapshots })
}

/// Forget the record of snapshot `name` (database and record file).
pub(super) fn forget(op: &mut Op<'_>, vm: &VmName, name: &SnapshotName) -> Result<()> {
    op.db_mut()?.delete_snapshot(vm, name)?;
    sync_record(op, vm)
}

fn find(op: &Op<'_>, vm: &VmName, name: &SnapshotName) -> Result<Option<SnapshotRecord>> {
    match op.db() {
        Some(db) => Ok(db.snapshots(vm)?.into_iter().find(|s| &s.name == name)),
        None => Ok(None),
    }
}

/// `snapshot`: take snapshot `name` of every volume; a running VM is
/// frozen meanwhile. Then expire the oldest beyond `snapshots.keep`.
pub(super) fn snapshot(op: &mut Op<'_>, vm: &VmName, name: &SnapshotName) -> Outcome {
    let Loaded { rec, vmt, mut vols } = load_defined(op, vm)?;
    if find(op, vm, name)?.is_some() {
        return Err(Error::InvalidState { vm: vm.clone(), action: "snapshot", reason: format!("it has a snapshot named {name} already; delete it or choose another name") });
    }
    let older = op.db().map(|db| db.snapshots(vm)).transpose()?.unwrap_or_default();
    // A paused VM stays as it is; only one this action froze is resumed.
    let freeze = vmt.state(vm).power == Power::Running;
    let created = db::now();
    let volumes: Vec<_> = vols.iter().map(|v| v.name().clone()).collect();
    let mut sizes: Vec<Option<u64>> = Vec::new();
    let keep = rec.definition.snapshots.and_then(|p| p.keep).map(|k| k as usize);
    let expire: Vec<SnapshotRecord> = match keep {
        Some(k) if older.len() + 1 > k => older[..older.len() + 1 - k].to_vec(),
        _ => Vec::new(),
    };
    let vmt_ref = &*vmt;
    let mut size_bytes = None;
    with_rollback(op, vm, vmt_ref, &mut vols, |op, vols| {
        if freeze {
            op.step(format!("freeze VM {vm}"), Some(Undo::UnfreezeVm), |_| Ok(vmt_ref.freeze(vm)?))?;
        }
        for (i, v) in vols.iter_mut().enumerate() {
            let desc = format!("snapshot volume {} as {name}", v.name());
            op.step(desc, Some(Undo::DeleteSnapshot(i, name.clone())), |_| {
                sizes.push(v.volume.snapshot(name)?);
                Ok(())
            })?;
        }
        if freeze {
            op.step(format!("unfreeze VM {vm}"), None, |_| Ok(vmt_ref.unfreeze(vm)?))?;
        }
        size_bytes = if sizes.len() == vols.len() { sizes.iter().copied().sum::<Option<u64>>() } else { None };
        let record = SnapshotRecord { name: name.clone(), created: created.clone(), size_bytes, volumes: volumes.clone() };
        op.step(format!("record snapshot {name}"), Some(Undo::ForgetSnapshot(name.clone())), |op| {
            op.db_mut()?.put_snapshot(vm, &record)?;
            sync_record(op, vm)
        })?;
        // Retention: the snapshot is taken and recorded; expiring an
        // old one is not undone if a later step fails.
        op.commit();
        for old in &expire {
            delete_steps(op, vm, vols, old)?;
        }
        Ok(())
    })?;
    Ok(Reply::Snapshot(SnapshotReply { snapshot: name.clone(), created, size_bytes, expired: expire.into_iter().map(|s| s.name).collect(), changed: true }))
}

/// The steps that delete snapshot `s` from the volumes it covers and
/// forget it.
fn delete_steps(op: &mut Op<'_>, vm: &VmName, vols: &mut [super::volumes::Vol], s: &SnapshotRecord) -> Result<()> {
    for v in vols.iter_mut().filter(|v| s.volumes.contains(v.name())) {
        op.step(format!("delete snapshot {} of volume {}", s.name, v.name()), None, |_| Ok(v.volume.delete_snapshot(&s.name)?))?;
    }
    op.step(format!("forget snapshot {}", s.name), None, |op| forget(op, vm, &s.name))
}

/// `restore`: bring every volume the snapshot covers back to it. A
/// running VM is shut down first and started again afterwards.
pub(super) fn restore(op: &mut Op<'_>, vm: &VmName, name: &SnapshotName) -> Outcome {
    let Loaded { vmt, mut vols, .. } = load_defined(op, vm)?;
    let Some(snap) = find(op, vm, name)? else { return Err(Error::NoSnapshot { vm: vm.clone(), snapshot: name.to_string() }) };
    let was_running = vmt.state(vm).power != Power::Stopped;
    let vmt_ref = &*vmt;
    with_rollback(op, vm, vmt_ref, &mut vols, |op, vols| {
        if was_running {
            // No undo: once a volume may have been restored, starting the
            // VM again on half-restored volumes would be worse than
            // leaving it stopped; running restore again converges.
            op.step(format!("shut down VM {vm}"), None, |_| Ok(vmt_ref.shutdown(vm)?))?;
            if op.is_dry() || vmt_ref.state(vm).power != Power::Stopped {
                op.step(format!("stop VM {vm}"), None, |_| Ok(vmt_ref.stop(vm)?))?;
            }
        }
        deactivate_all(op, vols)?;
        for v in vols.iter_mut().filter(|v| snap.volumes.contains(v.name())) {
            op.step(format!("restore volume {} to snapshot {name}", v.name()), None, |_| Ok(v.volume.restore(name)?))?;
        }
        if was_running {
            for (i, v) in vols.iter_mut().enumerate() {
                op.step(format!("activate volume {}", v.name()), Some(Undo::DeactivateVolume(i)), |_| Ok(v.volume.activate()?))?;
            }
            op.step(format!("start VM {vm}"), Some(Undo::StopVm), |_| Ok(vmt_ref.start(vm)?))?;
        }
        Ok(())
    })?;
    Ok(Reply::Restore(RestoreReply { snapshot: name.clone(), state: vmt.state(vm), changed: true }))
}

/// `delete_snapshot`: remove it from every volume and forget it; one that
/// does not exist is `changed: false`. Works on a kept VM too.
pub(super) fn delete(op: &mut Op<'_>, vm: &VmName, name: &SnapshotName) -> Outcome {
    let Some(Loaded { vmt, mut vols, .. }) = load(op, vm)? else { return Err(Error::NotFound(vm.clone())) };
    let Some(snap) = find(op, vm, name)? else { return Ok(Reply::Removed(RemovedReply { changed: false })) };
    with_rollback(op, vm, &*vmt, &mut vols, |op, vols| delete_steps(op, vm, vols, &snap))?;
    Ok(Reply::Removed(RemovedReply { changed: true }))
}

/// Seconds since the epoch of an RFC 3339 UTC time as [`db::now`] writes
/// it (`2026-12-01T12:00:00.000Z`); `None` for anything else.
pub fn epoch_of(t: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| t.get(r).and_then(|s| s.parse::<i64>().ok());
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), the inverse of db::now.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The name `--due` gives a snapshot taken at `now` (RFC 3339):
/// `auto-YYYYMMDD-HHMM`.
pub fn auto_name(now: &str) -> Option<SnapshotName> {
    let digits = |r: std::ops::Range<usize>| t_digits(now, r);
    let name = format!("auto-{}{}{}-{}{}", digits(0..4)?, digits(5..7)?, digits(8..10)?, digits(11..13)?, digits(14..16)?);
    SnapshotName::new(&name).ok()
}

fn t_digits(t: &str, r: std::ops::Range<usize>) -> Option<&str> {
    t.get(r).filter(|s| s.chars().all(|c| c.is_ascii_digit()))
}

/// A scheduled snapshot is due when the newest `auto-` one is older than
/// the period, less five minutes of slack for a timer that fires early.
pub fn is_due(period_s: i64, newest_auto: Option<&str>, now: &str) -> bool {
    match (newest_auto.and_then(epoch_of), epoch_of(now)) {
        (Some(last), Some(now)) => now - last >= period_s - 300,
        _ => true,
    }
}

/// What `geats snapshot --due` did for one VM.
#[derive(Debug)]
pub struct DueOutcome {
    /// The VM.
    pub vm: VmName,
    /// The snapshot it took, or why it failed.
    pub result: Result<Reply>,
}

impl Manager {
    /// `geats snapshot --due`: for every defined VM whose definition has a
    /// `snapshots.schedule`, take a snapshot named by date when the last
    /// scheduled one is a period old. Each goes through [`Manager::execute`]
    /// like any request (lease, journal, retention).
    pub fn snapshot_due(&self, caller: Option<String>) -> Result<Vec<DueOutcome>> {
        let Some(db) = self.db_read()? else { return Ok(Vec::new()) };
        let now = db::now();
        let mut due = Vec::new();
        for r in db.vms(false)? {
            let Some(schedule) = r.definition.snapshots.and_then(|p| p.schedule) else { continue };
            let snaps = db.snapshots(&r.name)?;
            let newest = snaps.iter().filter(|s| s.name.as_str().starts_with("auto-")).map(|s| s.created.as_str()).max();
            if !is_due(schedule.period_s(), newest, &now) {
                continue;
            }
            let Some(name) = auto_name(&now) else { continue };
            if snaps.iter().any(|s| s.name == name) {
                continue;
            }
            due.push((r.name, name));
        }
        drop(db);
        Ok(due
            .into_iter()
            .map(|(vm, name)| {
                let req = Request { action: Action::Snapshot(vm.clone(), name), dry_run: false, request_id: None, caller: caller.clone() };
                DueOutcome { vm, result: self.execute(&req) }
            })
            .collect())
    }

    /// The snapshots of a VM, defined or kept, oldest first (`geats snapshots`).
    pub fn snapshots(&self, vm: &VmName) -> Result<Vec<super::reply::SnapshotInfo>> {
        let Some(db) = self.db_read()? else { return Err(Error::NotFound(vm.clone())) };
        if db.vm(vm)?.is_none() {
            return Err(Error::NotFound(vm.clone()));
        }
        Ok(db.snapshots(vm)?.into_iter().map(|s| super::reply::SnapshotInfo { name: s.name, created: s.created, size_bytes: s.size_bytes }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_invert_now() {
        assert_eq!(epoch_of("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(epoch_of("2026-12-01T12:00:00.000Z"), Some(1_796_126_400));
        let now = db::now();
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((epoch_of(&now).unwrap() - secs).abs() <= 1, "{now}");
        assert_eq!(epoch_of("garbage"), None);
    }

    #[test]
    fn due_by_schedule() {
        let now = "2026-12-01T12:00:00.000Z";
        assert!(is_due(3600, None, now), "never taken: due");
        assert!(!is_due(3600, Some("2026-12-01T11:30:00.000Z"), now));
        assert!(is_due(3600, Some("2026-12-01T11:00:00.000Z"), now));
        assert!(is_due(3600, Some("2026-12-01T11:04:00.000Z"), now), "a timer firing a little early still counts");
        assert!(!is_due(86_400, Some("2026-12-01T00:00:00.000Z"), now));
        assert!(is_due(86_400, Some("2026-11-30T12:00:00.000Z"), now));
        assert_eq!(auto_name(now).unwrap().as_str(), "auto-20261201-1200");
    }
}
