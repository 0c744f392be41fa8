//! The operation journal: every mutating action with caller, request id,
//! start, end, outcome, the steps it completed and its reply.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{now, q, Db, DbError};
use crate::names::VmName;

/// A journal row id.
pub type JournalId = i64;

/// One journal entry, as `geats history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    /// Row id.
    pub id: i64,
    /// The VM, if the action had one.
    pub vm: Option<String>,
    /// The action.
    pub action: String,
    /// Who asked.
    pub caller: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// The process that ran it.
    pub pid: i64,
    /// Start time.
    pub started: String,
    /// End time, if it ended.
    pub ended: Option<String>,
    /// `ok`, an errorcode, or none while running (or if it was killed).
    pub outcome: Option<String>,
    /// Whether it changed anything.
    pub changed: Option<bool>,
    /// Steps completed, in order.
    pub steps: Vec<String>,
}

/// A journal entry that never ended, as recovery reads it.
#[derive(Debug, Clone)]
pub struct Unfinished {
    /// Row id.
    pub id: JournalId,
    /// The action.
    pub action: String,
    /// The process that ran it.
    pub pid: i64,
    /// Steps completed.
    pub steps: Vec<String>,
    /// The step that had begun (its side effect may or may not have
    /// happened).
    pub pending: Option<String>,
    /// What the action set out to do.
    pub intent: Option<serde_json::Value>,
}

impl Db {
    /// Record the start of an action, with what it intends to do (before
    /// its first side effect).
    pub fn journal_begin(
        &mut self,
        vm: Option<&VmName>,
        action: &str,
        caller: Option<&str>,
        request_id: Option<&str>,
        intent: Option<&serde_json::Value>,
    ) -> Result<JournalId, DbError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO journal (vm, action, caller, request_id, pid, started, intent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![vm.map(VmName::as_str), action, caller, request_id, std::process::id() as i64, now(), intent.map(|i| i.to_string())],
            )
            .map_err(q("write journal"))?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Record the step about to run, before its side effect, with the
    /// steps completed before it: one transaction per step. The last step
    /// stays `pending` until the entry ends; a repair takes a pending step
    /// as begun, maybe done (as for one killed while it ran).
    pub fn journal_pending(&mut self, id: JournalId, done: &[String], step: &str) -> Result<(), DbError> {
        let s = serde_json::to_string(done).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            // Once per step of an action: parsed once per process.
            let mut st = tx.prepare_cached("UPDATE journal SET steps = ?2, pending = ?3 WHERE id = ?1").map_err(q("write journal"))?;
            st.execute(params![id, s, step]).map_err(q("write journal"))?;
            Ok(())
        })
    }

    /// The entries of `vm` that never ended, oldest first: running now (by
    /// the lease holder) or killed.
    pub fn journal_unfinished(&self, vm: &VmName) -> Result<Vec<Unfinished>, DbError> {
        let mut st = self
            .conn()
            .prepare_cached("SELECT id, action, pid, steps, pending, intent FROM journal WHERE vm = ?1 AND ended IS NULL ORDER BY id")
            .map_err(q("read journal"))?;
        let rows = st
            .query_map([vm.as_str()], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, String>(3)?, r.get::<_, Option<String>>(4)?, r.get::<_, Option<String>>(5)?))
            })
            .map_err(q("read journal"))?;
        rows.map(|r| {
            let (id, action, pid, steps, pending, intent) = r.map_err(q("read journal"))?;
            Ok(Unfinished {
                id,
                action,
                pid,
                steps: serde_json::from_str(&steps).map_err(|e| DbError::Corrupt { what: format!("steps of journal entry {id}"), problem: e.to_string() })?,
                pending,
                intent: match intent {
                    Some(t) => Some(serde_json::from_str(&t).map_err(|e| DbError::Corrupt { what: format!("intent of journal entry {id}"), problem: e.to_string() })?),
                    None => None,
                },
            })
        })
        .collect()
    }

    /// The VMs that have entries that never ended.
    pub fn journal_unfinished_vms(&self) -> Result<Vec<String>, DbError> {
        let mut st = self.conn().prepare_cached("SELECT DISTINCT vm FROM journal WHERE ended IS NULL AND vm IS NOT NULL ORDER BY vm").map_err(q("read journal"))?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(q("read journal"))?;
        rows.collect::<Result<_, _>>().map_err(q("read journal"))
    }

    /// Close an interrupted entry: `outcome` says how it was resolved
    /// (`rolled_back`, `rolled_forward`), `steps` are its own steps
    /// followed by those of the repair.
    pub fn journal_resolve(&mut self, id: JournalId, outcome: &str, steps: &[String]) -> Result<(), DbError> {
        let s = serde_json::to_string(steps).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            tx.execute("UPDATE journal SET ended = ?2, outcome = ?3, steps = ?4, pending = NULL WHERE id = ?1", params![id, now(), outcome, s])
                .map_err(q("write journal"))?;
            Ok(())
        })
    }

    /// Record the end of an action.
    pub fn journal_end(&mut self, id: JournalId, outcome: &str, changed: Option<bool>, steps: &[String], reply: Option<&serde_json::Value>) -> Result<(), DbError> {
        let s = serde_json::to_string(steps).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            tx.execute(
                "UPDATE journal SET ended = ?2, outcome = ?3, changed = ?4, steps = ?5, reply = ?6, pending = NULL WHERE id = ?1",
                params![id, now(), outcome, changed, s, reply.map(|r| r.to_string())],
            )
            .map_err(q("write journal"))?;
            Ok(())
        })
    }

    /// The reply of a completed, successful `action` on `vm` with this
    /// request id, if there is one.
    pub fn journal_replay(&self, vm: Option<&VmName>, action: &str, request_id: &str) -> Result<Option<serde_json::Value>, DbError> {
        let r: Option<String> = self
            .conn()
            .query_row(
                "SELECT reply FROM journal WHERE request_id = ?1 AND action = ?2 AND vm IS ?3 AND outcome = 'ok'
                 ORDER BY id DESC LIMIT 1",
                params![request_id, action, vm.map(VmName::as_str)],
                |r| r.get(0),
            )
            .optional()
            .map_err(q("read journal"))?;
        Ok(r.and_then(|s| serde_json::from_str(&s).ok()))
    }

    /// The newest `limit` entries, for one VM or all, oldest first.
    pub fn history(&self, vm: Option<&VmName>, limit: u32) -> Result<Vec<JournalEntry>, DbError> {
        let mut st = self
            .conn()
            .prepare_cached(
                "SELECT id, vm, action, caller, request_id, pid, started, ended, outcome, changed, steps FROM journal
                 WHERE ?1 IS NULL OR vm = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(q("read journal"))?;
        let rows = st
            .query_map(params![vm.map(VmName::as_str), limit], |r| {
                let steps: String = r.get(10)?;
                Ok(JournalEntry {
                    id: r.get(0)?,
                    vm: r.get(1)?,
                    action: r.get(2)?,
                    caller: r.get(3)?,
                    request_id: r.get(4)?,
                    pid: r.get(5)?,
                    started: r.get(6)?,
                    ended: r.get(7)?,
                    outcome: r.get(8)?,
                    changed: r.get(9)?,
                    steps: serde_json::from_str(&steps).unwrap_or_default(),
                })
            })
            .map_err(q("read journal"))?;
        let mut v: Vec<JournalEntry> = rows.collect::<Result<_, _>>().map_err(q("read journal"))?;
        v.reverse();
        Ok(v)
    }
}
