//! Intent and events: each VM's `desired` state and outstanding `drift`
//! (columns of the VM row), and the event feed with its retention.
//!
//! Reads (`status`, `info`, `events`) only query (intent comes with the VM
//! rows, `Intent`); the one write a read may make is
//! [`Db::record_drifts`], a single short transaction, and only when a drift
//! began or ended.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;

use super::{now, q, Db, DbError, Desired, Intent};
use crate::names::VmName;

/// One event of the feed, as the `events` action returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Strictly increasing, never reused.
    pub seq: i64,
    /// When (RFC 3339 UTC).
    pub time: String,
    /// The VM.
    pub vm: Option<String>,
    /// The action's name, or `down_unexpected` / `up_unexpected`.
    pub kind: String,
    /// False for a failed action and for a drift.
    pub ok: bool,
    /// A failure's errorcode.
    pub errorcode: Option<String>,
    /// Who asked, when known.
    pub caller: Option<String>,
    /// The request id, when known.
    pub request_id: Option<String>,
    /// A failure's message, or a drift's exit reason, when known.
    pub detail: Option<String>,
}

/// An event to append (`seq` and `time` are given on insert).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The VM.
    pub vm: VmName,
    /// The kind.
    pub kind: String,
    /// Success.
    pub ok: bool,
    /// A failure's errorcode.
    pub errorcode: Option<String>,
    /// Who asked.
    pub caller: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// Message or exit reason.
    pub detail: Option<String>,
}

/// How many events to keep, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many.
    pub keep: u64,
    /// None older than this.
    pub max_age: std::time::Duration,
}

/// One page of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// Events with `seq > since`, oldest first.
    pub events: Vec<Event>,
    /// The seq of the last event returned, else the newest seq given.
    pub last_seq: i64,
    /// Events after `since` were pruned before they could be returned.
    pub gap: bool,
}

/// Who holds a VM's operation lease, with its journal entry's caller and
/// request id (filled by [`Db::lease_origin`], once the entry is open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The VM.
    pub vm: String,
    /// Its pid.
    pub pid: i64,
    /// Its start time (clock ticks since boot).
    pub start_time: u64,
    /// The action.
    pub action: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// The caller.
    pub caller: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
}

/// A new drift a read saw: the intent it judged against, and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// `desired` as the read saw it.
    pub desired: Option<Desired>,
    /// The event to append.
    pub event: NewEvent,
}

/// What the `body` column holds: the event but for seq, time and VM,
/// which are columns (retention and the drift check query them).
#[derive(Debug, Serialize, serde::Deserialize)]
struct Body {
    kind: String,
    ok: bool,
    errorcode: Option<String>,
    caller: Option<String>,
    request_id: Option<String>,
    detail: Option<String>,
}

type EventRow = (i64, String, Option<String>, String);

fn event_from_row((seq, time, vm, body): EventRow) -> Result<Event, DbError> {
    let b: Body = serde_json::from_str(&body).map_err(|e| DbError::Corrupt { what: format!("event {seq}"), problem: e.to_string() })?;
    Ok(Event { seq, time, vm, kind: b.kind, ok: b.ok, errorcode: b.errorcode, caller: b.caller, request_id: b.request_id, detail: b.detail })
}

/// Append one event and prune by count and age; returns it as stored.
fn append(tx: &Transaction<'_>, e: &NewEvent, keep: Retention) -> Result<Event, DbError> {
    let time = now();
    let body = Body {
        kind: e.kind.clone(),
        ok: e.ok,
        errorcode: e.errorcode.clone(),
        caller: e.caller.clone(),
        request_id: e.request_id.clone(),
        detail: e.detail.clone(),
    };
    let body = serde_json::to_string(&body).map_err(|err| DbError::Corrupt { what: "new event".into(), problem: err.to_string() })?;
    tx.execute("INSERT INTO events (time, vm, body) VALUES (?1, ?2, ?3)", params![time, e.vm.as_str(), body]).map_err(q("append event"))?;
    let seq = tx.last_insert_rowid();
    let cutoff = super::rfc3339(std::time::SystemTime::now().checked_sub(keep.max_age).unwrap_or(std::time::UNIX_EPOCH));
    // Both deletes walk the primary key from the oldest event: the count
    // bound directly, the age bound up to the first young event.
    tx.execute("DELETE FROM events WHERE seq <= ?1", [seq - keep.keep.min(i64::MAX as u64) as i64])
        .map_err(q("prune events"))?;
    tx.execute(
        "DELETE FROM events WHERE seq < COALESCE((SELECT seq FROM events WHERE time >= ?1 ORDER BY seq LIMIT 1), ?2)",
        params![cutoff, seq],
    )
    .map_err(q("prune events"))?;
    Ok(Event {
        seq,
        time,
        vm: Some(e.vm.to_string()),
        kind: e.kind.clone(),
        ok: e.ok,
        errorcode: e.errorcode.clone(),
        caller: e.caller.clone(),
        request_id: e.request_id.clone(),
        detail: e.detail.clone(),
    })
}

impl Db {
    /// The operation leases, dead or alive. The table holds a row only
    /// while an action runs, so this is usually empty.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>, DbError> {
        let mut st = self
            .conn()
            .prepare_cached("SELECT vm, pid, start_time, action, since FROM op_locks")
            .map_err(q("read operation leases"))?;
        let rows = st
            .query_map([], |r| {
                Ok(LeaseInfo {
                    vm: r.get(0)?,
                    pid: r.get(1)?,
                    start_time: r.get::<_, i64>(2)? as u64,
                    action: r.get(3)?,
                    since: r.get(4)?,
                    caller: None,
                    request_id: None,
                })
            })
            .map_err(q("read operation leases"))?;
        rows.collect::<Result<_, _>>().map_err(q("read operation leases"))
    }

    /// Fill in the caller and request id of a lease from the journal entry
    /// its holder opened (none before the action's first step).
    pub fn lease_origin(&self, lease: &mut LeaseInfo) -> Result<(), DbError> {
        let r: Option<(Option<String>, Option<String>)> = self
            .conn()
            .query_row(
                "SELECT caller, request_id FROM journal WHERE vm = ?1 AND pid = ?2 AND ended IS NULL AND started >= ?3 ORDER BY id DESC LIMIT 1",
                params![lease.vm, lease.pid, lease.since],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(q("read journal"))?;
        if let Some((caller, request_id)) = r {
            lease.caller = caller;
            lease.request_id = request_id;
        }
        Ok(())
    }

    /// Whether `vm` is defined, and its intent (none for an unknown VM):
    /// what a mutating action reads before it runs, to know afterwards
    /// whether a define created the VM and whether its intent changed.
    pub fn intent(&self, vm: &VmName) -> Result<(bool, Intent), DbError> {
        let r: Option<(bool, Option<String>, bool)> = self
            .conn()
            .query_row("SELECT defined, desired, drift IS NOT NULL FROM vms WHERE name = ?1", [vm.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(q("read VM"))?;
        Ok(match r {
            Some((defined, desired, drift)) => (defined, Intent { desired: desired.as_deref().and_then(Desired::parse), drift, leased: true }),
            None => (false, Intent::default()),
        })
    }

    /// After a mutating action, in one transaction: record its intent
    /// (`desired`, which also ends an outstanding drift) and append its
    /// event. Nothing to record: no transaction at all.
    pub fn record_action(&mut self, vm: &VmName, desired: Option<Desired>, event: Option<&NewEvent>, keep: Retention) -> Result<Option<Event>, DbError> {
        if desired.is_none() && event.is_none() {
            return Ok(None);
        }
        self.write(|tx| {
            if let Some(d) = desired {
                tx.execute("UPDATE vms SET desired = ?2, drift = NULL WHERE name = ?1", params![vm.as_str(), d.as_str()])
                    .map_err(q("record intent"))?;
            }
            event.map(|e| append(tx, e, keep)).transpose()
        })
    }

    /// What a read saw, in one transaction: a new drift of each VM in
    /// `begun` (with its event), the end of the drift of each VM in
    /// `ended`. The read began at `read_at`
    /// (RFC 3339): a drift is appended only if, since then, no action
    /// recorded an intent (`desired` is still what the read judged by) or
    /// an event for the VM, no live process holds its lease (`alive`
    /// decides) and no other read reported it.
    pub fn record_drifts(
        &mut self,
        begun: &[Drift],
        ended: &[VmName],
        read_at: &str,
        keep: Retention,
        alive: impl Fn(i64, u64) -> bool,
    ) -> Result<Vec<Event>, DbError> {
        self.write(|tx| {
            let mut out = Vec::new();
            for d in begun {
                let name = d.event.vm.as_str();
                let now_row: Option<(Option<String>, Option<String>)> = tx
                    .query_row("SELECT desired, drift FROM vms WHERE name = ?1 AND defined = 1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(q("read intent"))?;
                let Some((desired, drift)) = now_row else { continue };
                if desired.as_deref() != d.desired.map(Desired::as_str) || drift.is_some() {
                    continue;
                }
                let newer: i64 = tx
                    .query_row("SELECT count(*) FROM events WHERE vm = ?1 AND time >= ?2", params![name, read_at], |r| r.get(0))
                    .map_err(q("read events"))?;
                if newer > 0 {
                    continue;
                }
                let holder: Option<(i64, i64)> = tx
                    .query_row("SELECT pid, start_time FROM op_locks WHERE vm = ?1", [name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(q("read operation lease"))?;
                if holder.is_some_and(|(pid, st)| alive(pid, st as u64)) {
                    continue;
                }
                tx.execute("UPDATE vms SET drift = ?2 WHERE name = ?1", params![name, d.event.kind]).map_err(q("record drift"))?;
                out.push(append(tx, &d.event, keep)?);
            }
            for vm in ended {
                tx.execute("UPDATE vms SET drift = NULL WHERE name = ?1", [vm.as_str()]).map_err(q("record drift"))?;
            }
            Ok(out)
        })
    }

    /// Events with `seq > since`, oldest first, at most `limit`.
    pub fn events(&self, since: i64, limit: u32) -> Result<EventPage, DbError> {
        // Both reads in one snapshot: an event committed between them
        // would count in `last_seq` without being in the page, and a
        // client polling from `last_seq` would never see it (seen as a
        // lost event in `lxc_events` under load).
        let tx = self.conn().unchecked_transaction().map_err(q("read events"))?;
        let mut st = tx
            .prepare_cached("SELECT seq, time, vm, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(q("read events"))?;
        let rows: Vec<EventRow> = st
            .query_map(params![since, limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(q("read events"))?
            .collect::<Result<_, _>>()
            .map_err(q("read events"))?;
        let events = rows.into_iter().map(event_from_row).collect::<Result<Vec<_>, _>>()?;
        let (newest, oldest): (i64, i64) = tx
            .query_row("SELECT COALESCE(max(seq), 0), COALESCE(min(seq), 1) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(q("read events"))?;
        drop(st);
        tx.commit().map_err(q("read events"))?;
        // Pruning keeps the newest event, so pruned events lie between
        // `since` and the oldest kept one.
        let gap = since < newest && oldest > since + 1;
        let last_seq = events.last().map_or(newest, |e| e.seq);
        Ok(EventPage { events, last_seq, gap })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(vm: &VmName, kind: &str) -> NewEvent {
        NewEvent { vm: vm.clone(), kind: kind.into(), ok: true, errorcode: None, caller: None, request_id: None, detail: None }
    }

    #[test]
    fn retention_by_count_reports_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::create(&dir.path().join("g.db"), Duration::from_secs(1)).unwrap();
        let vm = VmName::new("a").unwrap();
        let keep = Retention { keep: 3, max_age: Duration::from_secs(3600) };
        for _ in 0..5 {
            db.record_action(&vm, None, Some(&ev(&vm, "start")), keep).unwrap();
        }
        let p = db.events(0, 100).unwrap();
        assert_eq!(p.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(p.gap);
        assert_eq!(p.last_seq, 5);
        let p = db.events(2, 100).unwrap();
        assert!(!p.gap, "seq 3 is the oldest kept: nothing after 2 was lost");
        let p = db.events(5, 100).unwrap();
        assert!(p.events.is_empty() && !p.gap && p.last_seq == 5);
        let p = db.events(3, 1).unwrap();
        assert_eq!((p.events.len(), p.last_seq), (1, 4));
    }

    #[test]
    fn retention_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::create(&dir.path().join("g.db"), Duration::from_secs(1)).unwrap();
        let vm = VmName::new("a").unwrap();
        let long = Retention { keep: 100, max_age: Duration::from_secs(3600) };
        db.record_action(&vm, None, Some(&ev(&vm, "start")), long).unwrap();
        db.conn().execute("UPDATE events SET time = '2000-01-01T00:00:00.000Z'", []).unwrap();
        db.record_action(&vm, None, Some(&ev(&vm, "stop")), long).unwrap();
        let p = db.events(0, 100).unwrap();
        assert_eq!(p.events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), vec!["stop"]);
        assert!(p.gap);
    }
}
