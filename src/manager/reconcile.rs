//! `reconcile`: after a host boot (or whenever a controller asks), start
//! every defined VM whose desired state is `running` and that does not
//! run, unless its definition says `"autostart": false`.
//!
//! Order: by `boot_priority`, higher first. The VMs of one priority start
//! in parallel, at most `boot_parallel` at once; after a group, the largest
//! `boot_delay` of its VMs is waited before the next group. Each start is
//! an ordinary `start` request through [`Manager::execute`], so it takes
//! the VM's operation lease, is journaled, appends its event and records
//! the intent like any other. A VM whose desired state is `stopped` (or
//! that has none recorded) is never started. Run again, it starts nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use super::reply::{ReconcileFailure, ReconcileReply};
use super::Manager;
use crate::db::Desired;
use crate::error::Result;
use crate::names::VmName;
use crate::request::{Action, Request};

/// One VM to start, with its place in the boot order.
#[derive(Debug)]
struct Due {
    vm: VmName,
    priority: i32,
    delay: u32,
}

impl Manager {
    /// Start what should run; `dry_run` only says what it would start.
    pub fn reconcile(&self, dry_run: bool, caller: Option<String>) -> Result<ReconcileReply> {
        let db = self.db_read()?;
        let (records, _types, states) = self.observe(db.as_ref())?;
        drop(db);
        let mut due = Vec::new();
        let mut skipped = Vec::new();
        for r in records {
            if r.intent.desired != Some(Desired::Running) {
                continue;
            }
            if states.get(&r.name).is_some_and(|s| s.is_running()) {
                continue;
            }
            if r.definition.autostart == Some(false) {
                skipped.push(r.name);
                continue;
            }
            due.push(Due { vm: r.name, priority: r.definition.boot_priority.unwrap_or(0), delay: r.definition.boot_delay.unwrap_or(0) });
        }
        let mut groups: BTreeMap<std::cmp::Reverse<i32>, Vec<Due>> = BTreeMap::new();
        for d in due {
            groups.entry(std::cmp::Reverse(d.priority)).or_default().push(d);
        }
        let mut reply = ReconcileReply { started: Vec::new(), failed: Vec::new(), skipped, dry_run, changed: false };
        if dry_run {
            reply.started = groups.into_values().flatten().map(|d| d.vm).collect();
            return Ok(reply);
        }
        let n = groups.len();
        for (i, (_, group)) in groups.into_iter().enumerate() {
            let delay = group.iter().map(|d| d.delay).max().unwrap_or(0);
            for chunk in group.chunks(self.config.boot_parallel().max(1)) {
                let results = self.start_all(chunk, &caller);
                for (vm, r) in results {
                    match r {
                        Ok(()) => reply.started.push(vm),
                        Err(e) => reply.failed.push(ReconcileFailure { vm, errorcode: e.code().as_str().into(), message: e.message() }),
                    }
                }
            }
            if delay > 0 && i + 1 < n {
                tracing::info!(seconds = delay, "boot_delay before the next priority group");
                std::thread::sleep(Duration::from_secs(u64::from(delay)));
            }
        }
        reply.changed = !reply.started.is_empty();
        Ok(reply)
    }

    /// Start these VMs at once, one thread each, each through its own
    /// `Manager` (and so its own database connection and lease).
    fn start_all(&self, vms: &[Due], caller: &Option<String>) -> Vec<(VmName, Result<()>)> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = vms
                .iter()
                .map(|d| {
                    let config = self.config.clone();
                    let req = Request { action: Action::Start(d.vm.clone()), dry_run: false, request_id: None, caller: caller.clone() };
                    (d.vm.clone(), scope.spawn(move || Manager::new(config).execute(&req).map(|_| ())))
                })
                .collect();
            handles
                .into_iter()
                .map(|(vm, h)| {
                    let r = h.join().unwrap_or_else(|_| Err(crate::error::Error::Internal(format!("the start of {vm} panicked"))));
                    (vm, r)
                })
                .collect()
        })
    }
}
