//! Convergence after a crash: finishing or undoing the actions whose
//! process was killed.
//!
//! Every step of an action is journaled as begun before its side effect
//! and as done after it (`Op::step`), and `define`/`provision` journal
//! their intent (the definition, what existed before, which volumes they
//! create) before their first step. A killed action leaves its journal
//! entry without an end. The next request that holds the VM's operation
//! lease (a mutating action, or a read that finds the lease's owner dead)
//! repairs each such entry here, before its own work, and reports it in
//! its reply (`repaired`).
//!
//! The rules, per action (docs/architecture.md keeps the same table):
//!
//! | action | rule |
//! |---|---|
//! | define, provision of a new VM | back: destroy the volumes it created, remove the VM from the hypervisor, forget it; forward once `record definition` is done |
//! | define of an existing VM | back: destroy the volumes it added, write the old definition back to the hypervisor; forward once recorded |
//! | provision of an existing VM | forward: run it again (its volumes were being erased on purpose; only a whole run gives a usable root) |
//! | start | forward: activate and start; if that fails, the start's own rollback deactivates |
//! | stop | forward: stop and deactivate |
//! | shutdown | forward (deactivate) if the VM has stopped; back (leave it running) if not |
//! | reboot | forward: start it if it is not running |
//! | undefine | forward: finish it (the volumes keep their data) |
//! | deprovision | back (define the VM again, data intact) until a volume's destruction began; forward after |
//! | lock, unlock | one database transaction: nothing to do but rewrite the record file |
//!
//! Every step a repair runs is idempotent, so a repair that is itself
//! killed is repaired again by the next request.

use super::actions::{self, Loaded};
use super::op::{Meta, Op};
use super::reply::Repair;
use super::volumes::{self, Vol};
use super::Manager;
use crate::db::{Db, Unfinished};
use crate::definition::Definition;
use crate::error::{self, Error, Result};
use crate::names::{VmName, VolumeName};
use crate::state::PowerAction;
use crate::sys::proc;
use crate::vm;

/// How an interrupted action was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Back,
    Forward,
}

impl Resolution {
    fn as_str(self) -> &'static str {
        match self {
            Resolution::Back => "rolled_back",
            Resolution::Forward => "rolled_forward",
        }
    }
}

/// What `define` and `provision` journal before their first step.
#[derive(Debug, serde::Deserialize)]
struct DefineIntent {
    definition: Definition,
    existed: bool,
    vm_existed: bool,
    new_volumes: Vec<VolumeName>,
}

impl Manager {
    /// Repair every interrupted action of `vm`. The caller holds the VM's
    /// operation lease, so every unfinished journal entry of `vm` belongs
    /// to a process that died.
    pub(super) fn repair_interrupted(&self, db: &mut Db, vm: &VmName) -> Result<Vec<Repair>> {
        let mut out = Vec::new();
        for entry in db.journal_unfinished(vm)? {
            tracing::warn!(vm = %vm, action = %entry.action, journal = entry.id, pid = entry.pid, "repairing an interrupted action");
            let meta = Meta { vm: vm.clone(), action: "repair", caller: None, request_id: None };
            let done = entry.steps.len() + 1;
            let mut steps = entry.steps.clone();
            steps.push(match &entry.pending {
                // A step's end is journaled with the next one's start.
                Some(p) => format!("(killed during or just after: {p})"),
                None => "(killed between steps)".to_string(),
            });
            let mut op = Op::resume(&self.config, db, meta, entry.id, steps);
            let resolution = repair_one(&mut op, vm, &entry)?;
            let steps = op.steps().to_vec();
            drop(op);
            // The record file follows the database, whatever step was cut.
            sync_record(&self.config, db, vm)?;
            db.journal_resolve(entry.id, resolution.as_str(), &steps)?;
            out.push(Repair {
                action: entry.action.clone(),
                journal_id: entry.id,
                resolution: resolution.as_str().to_string(),
                steps: steps.get(done..).map(<[String]>::to_vec).unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// For a read (`info`, `status`): repair the VMs (one, or all) that
    /// have an interrupted action and no live lease holder, taking the
    /// lease for it; then the database, open for reading. With nothing
    /// interrupted this costs one indexed query on the read's own
    /// connection.
    pub(super) fn converged_read(&self, only: Option<&VmName>) -> Result<(Vec<Repair>, Option<Db>)> {
        let Some(db) = self.db_read()? else { return Ok((Vec::new(), None)) };
        let candidates: Vec<VmName> = match only {
            Some(vm) => {
                if db.journal_unfinished(vm)?.is_empty() {
                    Vec::new()
                } else {
                    vec![vm.clone()]
                }
            }
            None => db.journal_unfinished_vms()?.iter().filter_map(|n| VmName::new(n).ok()).collect(),
        };
        let mut todo = Vec::new();
        for vm in candidates {
            match db.lock_holder(&vm)? {
                Some(h) if proc::alive(h.pid, h.start_time) => {}
                _ => todo.push(vm),
            }
        }
        if todo.is_empty() {
            return Ok((Vec::new(), Some(db)));
        }
        drop(db);
        let mut db = self.db_write()?;
        let me = super::me();
        let mut out = Vec::new();
        for vm in todo {
            // A live process may have taken the lease since: it repairs.
            if db.try_lease(&vm, "repair", me, proc::alive)?.is_err() {
                continue;
            }
            let r = self.repair_interrupted(&mut db, &vm);
            if let Err(e) = db.release_lease(&vm, me) {
                tracing::warn!(vm = %vm, "cannot release the operation lease: {}", error::chain(&e));
            }
            out.extend(r?);
        }
        Ok((out, Some(db)))
    }
}

/// Make the record file say what the database says.
fn sync_record(config: &crate::config::Config, db: &Db, vm: &VmName) -> Result<()> {
    match db.vm(vm)? {
        Some(rec) => {
            let vols = db.volumes(vm)?;
            Manager::write_record(config, &rec, &vols)
        }
        None => Manager::remove_record(config, vm),
    }
}

/// Did the entry complete, or begin, a step whose description starts
/// with `prefix`?
fn reached(entry: &Unfinished, prefix: &str) -> bool {
    entry.steps.iter().chain(entry.pending.iter()).any(|s| s.starts_with(prefix))
}

fn repair_one(op: &mut Op<'_>, vm: &VmName, entry: &Unfinished) -> Result<Resolution> {
    // A tool the dead process started may still be at work on the VM
    // (`lxc-stop` goes on after its parent is killed): repair the state
    // it leaves, not the one it is passing through.
    if let Some(rec) = op.db().map(|db| db.vm(vm)).transpose()?.flatten() {
        vm::build(op.config, &rec.vm_type)?.settle(vm);
    } else if let Some(t) = entry.intent.as_ref().and_then(|i| i["definition"]["vm_type"].as_str()).and_then(|t| crate::names::TypeName::new(t).ok()) {
        vm::build(op.config, &t)?.settle(vm);
    }
    match entry.action.as_str() {
        "define" | "provision" => repair_definition(op, vm, entry),
        "start" => {
            if !actions::load(op, vm)?.is_some_and(|l| l.rec.defined) {
                return Ok(Resolution::Back);
            }
            match actions::power(op, vm, PowerAction::Start) {
                Ok(_) => Ok(Resolution::Forward),
                // The start's own rollback deactivated what it activated.
                Err(e @ Error::Rollback { .. }) => Err(e),
                Err(e) => {
                    tracing::warn!(vm = %vm, "the interrupted start fails again, so it is undone: {}", e.message());
                    Ok(Resolution::Back)
                }
            }
        }
        "stop" | "shutdown" | "reboot" => {
            let Some(l) = actions::load(op, vm)? else { return Ok(Resolution::Back) };
            if !l.rec.defined {
                return Ok(Resolution::Back);
            }
            let running = l.vmt.state(vm).is_running();
            match (entry.action.as_str(), running) {
                // A shutdown the guest has not finished: leave it running.
                ("shutdown", true) => Ok(Resolution::Back),
                ("reboot", true) => Ok(Resolution::Forward),
                ("reboot", false) => actions::power(op, vm, PowerAction::Start).map(|_| Resolution::Forward),
                _ => actions::power(op, vm, PowerAction::Stop).map(|_| Resolution::Forward),
            }
        }
        "undefine" => {
            let Some(l) = actions::load(op, vm)? else { return Ok(Resolution::Forward) };
            if l.rec.defined || l.vmt.exists(vm) {
                let destroy = l.rec.definition.transient;
                let l = Loaded { rec: crate::db::VmRecord { defined: true, ..l.rec }, ..l };
                actions::remove(op, vm, l, destroy)?;
            }
            Ok(Resolution::Forward)
        }
        "deprovision" => {
            let Some(l) = actions::load(op, vm)? else { return Ok(Resolution::Forward) };
            if reached(entry, "destroy volume") || reached(entry, "forget VM") {
                let l = Loaded { rec: crate::db::VmRecord { defined: l.rec.defined || l.vmt.exists(vm), ..l.rec }, ..l };
                actions::remove(op, vm, l, true)?;
                return Ok(Resolution::Forward);
            }
            let Loaded { rec, vmt, mut vols } = l;
            if rec.defined && !vmt.exists(vm) {
                let att = volumes::attached(&vols);
                let vmt_ref: &dyn vm::VmType = &*vmt;
                op.step(format!("define {} VM {vm} again", rec.vm_type), None, |_| Ok(vmt_ref.define(vm, &rec.definition, &att)?))?;
            }
            if !vmt.state(vm).is_running() {
                actions::tidy(op, &mut vols)?;
            }
            Ok(Resolution::Back)
        }
        "snapshot" => {
            // A snapshot of a running VM freezes it first: never leave it
            // frozen. Taken but not recorded is undone by the next
            // snapshot of that name (it replaces the orphaned copy).
            let Some(l) = actions::load(op, vm)? else { return Ok(Resolution::Back) };
            if reached(entry, "freeze VM") && l.rec.defined {
                let vmt_ref: &dyn vm::VmType = &*l.vmt;
                op.step(format!("unfreeze VM {vm}"), None, |_| Ok(vmt_ref.unfreeze(vm)?))?;
            }
            Ok(if reached(entry, "record snapshot") { Resolution::Forward } else { Resolution::Back })
        }
        "restore" => {
            // A restore of a running VM shuts it down first: it runs again
            // afterwards, restored if the restore got that far.
            let Some(l) = actions::load(op, vm)? else { return Ok(Resolution::Back) };
            if l.rec.defined && (reached(entry, "shut down VM") || reached(entry, "stop VM")) && !l.vmt.state(vm).is_running() {
                actions::power(op, vm, PowerAction::Start)?;
            }
            Ok(if reached(entry, "restore volume") { Resolution::Forward } else { Resolution::Back })
        }
        // lock, unlock: one transaction; the record file is synced after.
        _ => Ok(Resolution::Forward),
    }
}

/// Is `stored` the definition `intended` (which the action stored with
/// its name made explicit)?
fn defined_as(stored: &Definition, intended: &Definition, vm: &VmName) -> bool {
    let mut i = intended.clone();
    i.name = Some(vm.clone());
    i.vm_type = i.vm_type.or_else(|| stored.vm_type.clone());
    *stored == i
}

fn repair_definition(op: &mut Op<'_>, vm: &VmName, entry: &Unfinished) -> Result<Resolution> {
    let intent: Option<DefineIntent> = entry.intent.clone().and_then(|i| serde_json::from_value(i).ok());
    // Recorded: done, or begun and the database already holds the new
    // definition (killed after its transaction, before the journal said so).
    let recorded = entry.steps.iter().any(|s| s == "record definition")
        || (entry.pending.as_deref() == Some("record definition")
            && intent.as_ref().is_some_and(|i| {
                op.db().and_then(|db| db.vm(vm).ok().flatten()).is_some_and(|r| r.defined && defined_as(&r.definition, &i.definition, vm))
            }));
    let Some(intent) = intent.filter(|_| !recorded) else {
        // Finished but for the end of its entry (or an entry written before
        // intents were journaled): release what a stopped VM must not hold.
        if let Some(mut l) = actions::load(op, vm)? {
            if !l.vmt.state(vm).is_running() {
                actions::tidy(op, &mut l.vols)?;
            }
        }
        return Ok(Resolution::Forward);
    };
    let def = &intent.definition;
    let type_name = def.vm_type.clone().unwrap_or_else(|| op.config.default_vm_type.clone());
    if intent.existed && entry.action == "provision" {
        let plan = actions::plan_definition(op, vm, def)?;
        actions::apply_definition(op, vm, plan, true)?;
        return Ok(Resolution::Forward);
    }
    let vmt = vm::build(op.config, &type_name)?;
    let mut vols = volumes::open(op.config, vm, def, &*vmt)?;
    let vmt_ref: &dyn vm::VmType = &*vmt;
    // Release every volume first (a killed step may have left one mounted),
    // then destroy those this action created.
    for v in vols.iter_mut().rev() {
        if v.volume.is_active() && !vmt_ref.state(vm).is_running() {
            op.step(format!("deactivate volume {}", v.name()), None, |_| Ok(v.volume.deactivate()?))?;
        }
    }
    for v in vols.iter_mut().filter(|v| intent.new_volumes.contains(&v.spec.name)).rev() {
        let desc = format!("destroy volume {} ({})", v.name(), v.volume.describe());
        op.step(desc, None, |_| Ok(v.volume.undefine()?))?;
    }
    if !intent.existed {
        op.step(format!("undefine VM {vm}"), None, |_| Ok(vmt_ref.undefine(vm)?))?;
        let config = op.config;
        op.step(format!("forget VM {vm}"), None, |op| {
            op.db_mut()?.delete_vm(vm)?;
            Manager::remove_record(config, vm)
        })?;
        return Ok(Resolution::Back);
    }
    // Define of an existing VM: the database still holds the old record.
    let Some(old) = op.db().map(|db| db.vm(vm)).transpose()?.flatten() else { return Ok(Resolution::Back) };
    let old_vols: Vec<Vol> = volumes::open(op.config, vm, &old.definition, vmt_ref)?;
    if intent.vm_existed {
        let att = volumes::attached(&old_vols);
        op.step(format!("define {type_name} VM {vm} as it was"), None, |_| Ok(vmt_ref.define(vm, &old.definition, &att)?))?;
    } else {
        op.step(format!("undefine VM {vm}"), None, |_| Ok(vmt_ref.undefine(vm)?))?;
    }
    Ok(Resolution::Back)
}
