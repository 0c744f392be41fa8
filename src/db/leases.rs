//! Per-VM operation leases: one row while an action runs on a VM, so two
//! actions never run on one VM at once. (The admin lock, `lock`/`unlock`
//! on the wire, is another thing: a flag of the VM row that refuses
//! undefine and deprovision.) The table keeps its first name, `op_locks`,
//! so existing databases need no migration.
//!
//! The row records the owner's pid and process start time, so a lease left
//! by a killed process is recognised (the pid is gone or belongs to a newer
//! process) and taken over instead of blocking forever.

use rusqlite::{params, OptionalExtension};

use super::{now, q, Db, DbError};
use crate::names::VmName;

/// Who holds a VM's operation lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    /// Its pid.
    pub pid: i64,
    /// Its start time (clock ticks since boot).
    pub start_time: u64,
    /// The action it runs.
    pub action: String,
}

impl Db {
    /// Take the lease of `vm` for this process if it is free or its holder
    /// is dead (`alive` decides). Returns the live holder otherwise.
    pub fn try_lease(
        &mut self,
        vm: &VmName,
        action: &str,
        me: (i64, u64),
        alive: impl Fn(i64, u64) -> bool,
    ) -> Result<Result<(), LeaseHolder>, DbError> {
        self.write(|tx| {
            let holder = tx
                .query_row("SELECT pid, start_time, action FROM op_locks WHERE vm = ?1", [vm.as_str()], |r| {
                    Ok(LeaseHolder { pid: r.get(0)?, start_time: r.get::<_, i64>(1)? as u64, action: r.get(2)? })
                })
                .optional()
                .map_err(q("read operation lease"))?;
            if let Some(h) = holder {
                if (h.pid, h.start_time) != me && alive(h.pid, h.start_time) {
                    return Ok(Err(h));
                }
                if (h.pid, h.start_time) != me {
                    tracing::warn!(vm = %vm, pid = h.pid, action = %h.action, "taking over the operation lease of a dead process");
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO op_locks (vm, pid, start_time, action, since) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![vm.as_str(), me.0, me.1 as i64, action, now()],
            )
            .map_err(q("take operation lease"))?;
            Ok(Ok(()))
        })
    }

    /// Release the lease of `vm` if this process holds it.
    pub fn release_lease(&mut self, vm: &VmName, me: (i64, u64)) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM op_locks WHERE vm = ?1 AND pid = ?2 AND start_time = ?3",
                params![vm.as_str(), me.0, me.1 as i64],
            )
            .map_err(q("release operation lease"))?;
            Ok(())
        })
    }

    /// The current holder of `vm`'s lock, if any (dead or alive).
    pub fn lock_holder(&self, vm: &VmName) -> Result<Option<LeaseHolder>, DbError> {
        self.conn()
            .query_row("SELECT pid, start_time, action FROM op_locks WHERE vm = ?1", [vm.as_str()], |r| {
                Ok(LeaseHolder { pid: r.get(0)?, start_time: r.get::<_, i64>(1)? as u64, action: r.get(2)? })
            })
            .optional()
            .map_err(q("read operation lease"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_holder_blocks_dead_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::create(&dir.path().join("g.db"), std::time::Duration::from_secs(1)).unwrap();
        let vm = VmName::new("a").unwrap();
        assert!(db.try_lease(&vm, "start", (10, 1), |_, _| true).unwrap().is_ok());
        let h = db.try_lease(&vm, "stop", (11, 1), |_, _| true).unwrap().unwrap_err();
        assert_eq!((h.pid, h.action.as_str()), (10, "start"));
        assert!(db.try_lease(&vm, "stop", (11, 1), |_, _| false).unwrap().is_ok());
        db.release_lease(&vm, (11, 1)).unwrap();
        assert!(db.lock_holder(&vm).unwrap().is_none());
    }
}
