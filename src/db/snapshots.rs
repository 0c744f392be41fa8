//! Snapshot rows: one per snapshot of a VM's volumes, oldest first. They
//! are also kept in the VM's record file (see `manager::snapshots`), so
//! `geats recover` finds them again.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{q, Db, DbError};
use crate::names::{SnapshotName, VmName, VolumeName};

/// One snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Its name.
    pub name: SnapshotName,
    /// When it was taken (RFC 3339 UTC).
    pub created: String,
    /// Bytes it takes, when every driver knows.
    pub size_bytes: Option<u64>,
    /// The volumes it covers (a volume added later has no part in it).
    pub volumes: Vec<VolumeName>,
}

impl Db {
    /// The snapshots of `vm`, oldest first.
    pub fn snapshots(&self, vm: &VmName) -> Result<Vec<SnapshotRecord>, DbError> {
        let mut st = self
            .conn()
            .prepare_cached("SELECT name, created, size_bytes, volumes FROM snapshots WHERE vm = ?1 ORDER BY created, name")
            .map_err(q("list snapshots"))?;
        let rows = st
            .query_map([vm.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<i64>>(2)?, r.get::<_, String>(3)?)))
            .map_err(q("list snapshots"))?;
        rows.map(|r| {
            let (name, created, size, volumes) = r.map_err(q("list snapshots"))?;
            let name = SnapshotName::new(&name).map_err(|e| DbError::Corrupt { what: format!("snapshot name of {vm}"), problem: e.to_string() })?;
            let volumes = serde_json::from_str(&volumes).map_err(|e| DbError::Corrupt { what: format!("volumes of snapshot {name} of {vm}"), problem: e.to_string() })?;
            Ok(SnapshotRecord { name, created, size_bytes: size.and_then(|s| u64::try_from(s).ok()), volumes })
        })
        .collect()
    }

    /// Record a snapshot of `vm` (replacing one of the same name).
    pub fn put_snapshot(&mut self, vm: &VmName, s: &SnapshotRecord) -> Result<(), DbError> {
        self.write(|tx| insert(tx, vm, s))
    }

    /// Forget a snapshot of `vm`; absent is fine.
    pub fn delete_snapshot(&mut self, vm: &VmName, name: &SnapshotName) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute("DELETE FROM snapshots WHERE vm = ?1 AND name = ?2", params![vm.as_str(), name.as_str()]).map_err(q("delete snapshot"))?;
            Ok(())
        })
    }

    /// Replace every snapshot row of `vm` (for `geats recover`).
    pub fn put_snapshots(&mut self, vm: &VmName, all: &[SnapshotRecord]) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute("DELETE FROM snapshots WHERE vm = ?1", [vm.as_str()]).map_err(q("delete snapshots"))?;
            for s in all {
                insert(tx, vm, s)?;
            }
            Ok(())
        })
    }
}

fn insert(tx: &rusqlite::Transaction<'_>, vm: &VmName, s: &SnapshotRecord) -> Result<(), DbError> {
    let size = s.size_bytes.and_then(|b| i64::try_from(b).ok());
    let volumes = serde_json::to_string(&s.volumes).map_err(|e| DbError::Corrupt { what: "snapshot volumes".into(), problem: e.to_string() })?;
    tx.execute(
        "INSERT OR REPLACE INTO snapshots (vm, name, created, size_bytes, volumes) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![vm.as_str(), s.name.as_str(), s.created, size, volumes],
    )
    .map_err(q("write snapshot"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_first_and_forgotten_with_the_vm() {
        let d = tempfile::tempdir().unwrap();
        let mut db = Db::create(&d.path().join("g.db"), std::time::Duration::from_secs(1)).unwrap();
        let vm = VmName::new("a").unwrap();
        let rec = |n: &str, c: &str| SnapshotRecord { name: SnapshotName::new(n).unwrap(), created: c.into(), size_bytes: Some(1), volumes: vec![VolumeName::new("root").unwrap()] };
        db.put_snapshot(&vm, &rec("z", "2026-01-01T00:00:00.000Z")).unwrap();
        db.put_snapshot(&vm, &rec("b", "2026-01-02T00:00:00.000Z")).unwrap();
        let names: Vec<String> = db.snapshots(&vm).unwrap().into_iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["z", "b"]);
        assert_eq!(db.snapshots(&vm).unwrap()[0].volumes, vec![VolumeName::new("root").unwrap()]);
        db.delete_snapshot(&vm, &SnapshotName::new("z").unwrap()).unwrap();
        assert_eq!(db.snapshots(&vm).unwrap().len(), 1);
        db.delete_vm(&vm).unwrap();
        assert!(db.snapshots(&vm).unwrap().is_empty(), "deleting the VM forgets its snapshots");
    }
}
