//! Intent, health and events (issue 14).
//!
//! - **Intent**: a successful `start`/`reboot` records `desired =
//!   running`, `stop`/`shutdown` `stopped`, and `define`/`provision` of a VM
//!   that was not defined `stopped`; nothing else sets it. A failed action
//!   leaves the intent as it was (its undo put the VM back) and reports the
//!   failure as an event.
//! - **Health** is judged on every `status` and `info` from the intent, the
//!   observed state and the operation lease ([`judge`]).
//! - **Events**: one per mutating action that changed something or failed
//!   (none for a no-op), appended with the intent in one transaction after
//!   the journal entry ends; one per drift, by the first read that sees it
//!   ([`Manager::note_drifts`]). Hooks run after the commit
//!   ([`Manager::run_hooks`]), never inside a transaction or the lease.

use std::collections::BTreeMap;
use std::time::Instant;

use super::reply::{Health, HealthReport, InFlight, Reply};
use super::Manager;
use crate::db::{self, Db, Desired, Drift, Intent, LeaseInfo, NewEvent, Retention, VmRecord};
use crate::error::{self, Result};
use crate::names::VmName;
use crate::request::Action;
use crate::state::{Power, VmState};
use crate::sys::{exec::Cmd, proc};

impl Manager {
    /// The configured retention of the event feed.
    pub(crate) fn retention(&self) -> Retention {
        Retention { keep: self.config.events_keep, max_age: self.config.events_max_age }
    }

    /// After a journaled mutating action: record its intent and its event
    /// (`before`: whether the VM was defined and its intent, read before
    /// the action ran). An intent already recorded with no drift
    /// outstanding is not written again. A failure to record is logged,
    /// never the action's failure.
    pub(crate) fn note_action(&self, db: &mut Db, before: Option<(bool, Intent)>, action: &Action, meta: &super::op::Meta, out: &Result<Reply>) {
        let was_defined = before.as_ref().is_some_and(|(d, _)| *d);
        let desired = match (out, action) {
            (Ok(_), Action::Start(_) | Action::Reboot(_)) => Some(Desired::Running),
            (Ok(_), Action::Stop(_) | Action::Shutdown(_)) => Some(Desired::Stopped),
            (Ok(r), Action::Define(..) | Action::Provision(..)) if r.changed() == Some(true) && !was_defined => Some(Desired::Stopped),
            _ => None,
        };
        let desired = desired.filter(|d| !matches!(&before, Some((true, i)) if i.desired == Some(*d) && !i.drift));
        let event = match out {
            Ok(r) if r.changed() != Some(true) => None,
            Ok(_) => Some(NewEvent {
                vm: meta.vm.clone(),
                kind: meta.action.to_string(),
                ok: true,
                errorcode: None,
                caller: meta.caller.clone(),
                request_id: meta.request_id.clone(),
                detail: None,
            }),
            Err(e) => Some(NewEvent {
                vm: meta.vm.clone(),
                kind: meta.action.to_string(),
                ok: false,
                errorcode: Some(e.code().as_str().to_string()),
                caller: meta.caller.clone(),
                request_id: meta.request_id.clone(),
                detail: Some(e.message()),
            }),
        };
        match db.record_action(&meta.vm, desired, event.as_ref(), self.retention()) {
            Ok(Some(ev)) => self.pending.borrow_mut().push(ev),
            Ok(None) => {}
            Err(e) => tracing::warn!(vm = %meta.vm, action = meta.action, "cannot record the event: {}", error::chain(&e)),
        }
    }

    /// Before a read observes the states: when it began.
    pub(crate) fn read_started(&self) -> String {
        db::now()
    }

    /// After a read read the VM rows: the live lease holders among them,
    /// with the action's caller and request id. The leases are only asked
    /// for when a row says one exists; dead holders are left out (they
    /// are not in flight).
    pub(crate) fn health_basis<'r>(&self, db: Option<&Db>, read_at: String, records: impl IntoIterator<Item = &'r VmRecord>) -> Result<Basis> {
        self.health_basis_of(db, read_at, records.into_iter().filter(|r| r.intent.leased).map(|r| &r.name))
    }

    /// [`Manager::health_basis`], given the names of the VMs whose rows
    /// say a lease may exist.
    pub(crate) fn health_basis_of<'r>(&self, db: Option<&Db>, read_at: String, leased: impl IntoIterator<Item = &'r VmName>) -> Result<Basis> {
        let mut live = BTreeMap::new();
        let wanted: Vec<&VmName> = leased.into_iter().collect();
        if let (Some(db), false) = (db, wanted.is_empty()) {
            for mut l in db.leases()? {
                if wanted.iter().any(|w| w.as_str() == l.vm) && proc::alive(l.pid, l.start_time) {
                    db.lease_origin(&mut l)?;
                    live.insert(l.vm.clone(), l);
                }
            }
        }
        Ok(Basis { read_at, live })
    }

    /// After a read judged health: append an event for each new drift and
    /// forget each drift that ended, in one transaction, only if there is
    /// any (a read that sees nothing new writes nothing). A failure to
    /// write is logged; the read still answers.
    pub(crate) fn note_drifts(&self, db: &mut Db, basis: &Basis, judged: &[(&VmName, &Intent, &HealthReport)]) {
        let mut begun = Vec::new();
        let mut ended = Vec::new();
        for (vm, intent, h) in judged {
            match h.health {
                Health::DownUnexpected | Health::UpUnexpected if !intent.drift => {
                    let event = NewEvent {
                        vm: (*vm).clone(),
                        kind: h.health.as_str().to_string(),
                        ok: false,
                        errorcode: None,
                        caller: None,
                        request_id: None,
                        detail: h.exit_reason.clone(),
                    };
                    begun.push(Drift { desired: intent.desired, event });
                }
                Health::Ok if intent.drift => ended.push((*vm).clone()),
                _ => {}
            }
        }
        if begun.is_empty() && ended.is_empty() {
            return;
        }
        match db.record_drifts(&begun, &ended, &basis.read_at, self.retention(), proc::alive) {
            Ok(evs) => self.pending.borrow_mut().extend(evs),
            Err(e) => tracing::warn!("cannot record a drift: {}", error::chain(&e)),
        }
    }

    /// Run the configured hook of each event committed by this request,
    /// oldest first, with the event as JSON on stdin and no shell. All of
    /// them together get `hooks.timeout`; a hook that fails or is killed
    /// for running too long is logged and changes nothing else.
    pub(crate) fn run_hooks(&self) {
        let events = std::mem::take(&mut *self.pending.borrow_mut());
        if events.is_empty() {
            return;
        }
        let hooks = &self.config.hooks;
        let deadline = Instant::now() + hooks.timeout;
        for ev in &events {
            let Some(program) = hooks.for_kind(&ev.kind) else { continue };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(seq = ev.seq, kind = %ev.kind, hook = %program.display(), "hook not run: the hooks of this request used up hooks.timeout");
                continue;
            }
            let input = serde_json::to_vec(ev).unwrap_or_default();
            match Cmd::new([program]).stdin(input).process_group().timeout(left).run() {
                Ok(_) => tracing::debug!(seq = ev.seq, hook = %program.display(), "hook ran"),
                Err(e) => tracing::warn!(seq = ev.seq, kind = %ev.kind, "hook failed: {}", error::chain(&e)),
            }
        }
    }

    /// `events`: the feed after `since`.
    pub fn events(&self, since: i64, limit: u32) -> Result<super::reply::EventsReply> {
        let page = match self.db_read()? {
            Some(db) => db.events(since, limit)?,
            None => db::EventPage { events: Vec::new(), last_seq: 0, gap: false },
        };
        Ok(page.into())
    }
}

/// When a read began, and the live lease holders it saw.
#[derive(Debug)]
pub(crate) struct Basis {
    read_at: String,
    live: BTreeMap<String, LeaseInfo>,
}

impl Basis {
    /// The live lease on `vm`, if any.
    pub(crate) fn lease(&self, vm: &VmName) -> Option<&LeaseInfo> {
        self.live.get(vm.as_str())
    }
}

/// The health of a VM: in flight while a live process holds its lease;
/// unknown when its VM type could not tell its state; else its intent
/// against what runs (paused counts as up; no intent recorded is ok).
pub(crate) fn judge(intent: &Intent, live_lease: Option<&LeaseInfo>, state: &VmState, exit_reason: impl FnOnce() -> Option<String>) -> HealthReport {
    let desired = intent.desired;
    if let Some(l) = live_lease {
        let now_ms = db::parse_rfc3339_ms(&db::now()).unwrap_or(0);
        let running_s = db::parse_rfc3339_ms(&l.since).map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
        let in_flight = InFlight { action: l.action.clone(), caller: l.caller.clone(), request_id: l.request_id.clone(), since: l.since.clone(), running_s, pid: l.pid };
        return HealthReport { desired, health: Health::InFlight, in_flight: Some(Box::new(in_flight)), exit_reason: None };
    }
    let health = match (state.power, desired) {
        (Power::Unknown, _) => Health::Unknown,
        (Power::Stopped, Some(Desired::Running)) => Health::DownUnexpected,
        (Power::Running | Power::Paused, Some(Desired::Stopped)) => Health::UpUnexpected,
        _ => Health::Ok,
    };
    let exit_reason = if health == Health::DownUnexpected { exit_reason() } else { None };
    HealthReport { desired, health, in_flight: None, exit_reason }
}

/// What a mutating action needs to know before it runs, to record its
/// intent afterwards: whether the VM was defined, and its intent.
pub(crate) fn before(db: &Db, vm: &VmName) -> Option<(bool, Intent)> {
    match db.intent(vm) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(vm = %vm, "cannot read the intent: {}", error::chain(&e));
            None
        }
    }
}

impl From<db::EventPage> for super::reply::EventsReply {
    fn from(p: db::EventPage) -> Self {
        super::reply::EventsReply { events: p.events, last_seq: p.last_seq, gap: p.gap }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(desired: Option<&str>) -> Intent {
        Intent { desired: desired.and_then(Desired::parse), drift: false, leased: false }
    }

    #[test]
    fn health_table() {
        let run = VmState::plain(Power::Running);
        let stop = VmState::plain(Power::Stopped);
        let paused = VmState::plain(Power::Paused);
        let unknown = VmState::with(Power::Unknown, "undefined");
        let reason = || Some("killed".to_string());
        let cases = [
            (Some("running"), &run, Health::Ok),
            (Some("running"), &stop, Health::DownUnexpected),
            (Some("running"), &paused, Health::Ok),
            (Some("stopped"), &stop, Health::Ok),
            (Some("stopped"), &run, Health::UpUnexpected),
            (Some("stopped"), &paused, Health::UpUnexpected),
            (None, &run, Health::Ok),
            (None, &stop, Health::Ok),
            (Some("running"), &unknown, Health::Unknown),
            (Some("stopped"), &unknown, Health::Unknown),
        ];
        for (desired, st, want) in cases {
            let h = judge(&intent(desired), None, st, reason);
            assert_eq!(h.health, want, "{desired:?} {st:?}");
            assert_eq!(h.exit_reason.is_some(), want == Health::DownUnexpected);
        }
    }

    #[test]
    fn a_live_lease_is_in_flight() {
        let lease = LeaseInfo { vm: "a".into(), pid: 7, start_time: 1, action: "shutdown".into(), since: db::now(), caller: Some("c".into()), request_id: None };
        let h = judge(&intent(Some("running")), Some(&lease), &VmState::plain(Power::Stopped), || None);
        assert_eq!(h.health, Health::InFlight);
        let f = h.in_flight.unwrap();
        assert_eq!((f.action.as_str(), f.caller.as_deref(), f.pid), ("shutdown", Some("c"), 7));
    }

    #[test]
    fn only_live_holders_are_in_the_basis() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config::from_toml("", None, Some(dir.path().into())).unwrap();
        let m = Manager::new(cfg);
        let mut db = m.db_write().unwrap();
        let rec = |name: &str, leased: bool| VmRecord {
            name: VmName::new(name).unwrap(),
            vm_type: crate::names::TypeName::new("dummy").unwrap(),
            definition: serde_json::from_value(serde_json::json!({})).unwrap(),
            locked: false,
            defined: true,
            created: db::now(),
            updated: db::now(),
            intent: Intent { desired: None, drift: false, leased },
        };
        let (a, b) = (rec("a", true), rec("b", true));
        let pid = std::process::id() as i64;
        let st = proc::start_time(pid).unwrap();
        db.try_lease(&a.name, "start", (pid, st), |_, _| false).unwrap().unwrap();
        db.try_lease(&b.name, "stop", (pid, st + 1), |_, _| false).unwrap().unwrap();
        let basis = m.health_basis(Some(&db), db::now(), [&a, &b]).unwrap();
        assert_eq!(basis.lease(&a.name).map(|l| l.action.as_str()), Some("start"));
        assert!(basis.lease(&b.name).is_none(), "a holder with another start time is dead");
        let basis = m.health_basis(Some(&db), db::now(), [&rec("a", false)]).unwrap();
        assert!(basis.lease(&a.name).is_none(), "leases are only read for rows that say they have one");
    }
}
