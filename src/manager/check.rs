//! `geats check`: where the database, the VM types and the storage
//! disagree, read from the same three sources as `status`; and
//! `geats check --repair`, which fixes what it safely can.
//!
//! The kinds of difference:
//!
//! | kind | what | `--repair` |
//! |---|---|---|
//! | `interrupted` | an action whose process was killed and that nobody has repaired yet | finish or undo it (`recovery.rs`) |
//! | `config_missing` | a defined VM the VM type does not hold (its LXC config is gone) | define it in the VM type again from the database, if its volumes exist |
//! | `volume_missing` | a volume of a VM (defined or kept) whose storage is gone | no: its data is gone; deprovision the VM |
//! | `unknown_container` | a VM the VM type holds that the database does not know as defined | no: it may be someone else's; `geats recover` if it is a lost geats VM |
//! | `record_missing`, `record_stale` | the record file beside the database is missing or says something else | write it again from the database |
//!
//! A VM stopped behind geats' back is not a difference: state is read
//! live, and the next action on it releases its volumes (as does
//! `--repair` for a VM it repairs anyway).

use std::collections::BTreeSet;

use serde::Serialize;

use super::actions;
use super::op::{Meta, Op};
use super::volumes;
use super::Manager;
use crate::db::{Db, VmRecord};
use crate::error::{self, Result};
use crate::names::VmName;
use crate::sys::proc;
use crate::vm;

/// One disagreement between the database and the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The VM.
    pub vm: String,
    /// A short stable word: see the module documentation.
    pub kind: &'static str,
    /// What exactly, for people.
    pub detail: String,
    /// After `--repair`: whether it was fixed. Absent from a plain check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<bool>,
}

fn diff(vm: &VmName, kind: &'static str, detail: impl Into<String>) -> Difference {
    Difference { vm: vm.to_string(), kind, detail: detail.into(), repaired: None }
}

impl Manager {
    /// List every difference; changes nothing.
    pub fn check(&self) -> Result<Vec<Difference>> {
        let db = self.db_read()?;
        let records = match &db {
            Some(db) => db.vms(true)?,
            None => Vec::new(),
        };
        let mut out = Vec::new();
        if let Some(db) = &db {
            for vm in db.journal_unfinished_vms()?.iter().filter_map(|n| VmName::new(n).ok()) {
                let live = db.lock_holder(&vm)?.is_some_and(|h| proc::alive(h.pid, h.start_time));
                if !live {
                    for e in db.journal_unfinished(&vm)? {
                        let at = e.pending.map(|p| format!(" during {p:?}")).unwrap_or_default();
                        out.push(diff(&vm, "interrupted", format!("{} (journal entry {}, pid {}) was killed{at}", e.action, e.id, e.pid)));
                    }
                }
            }
        }
        for rec in &records {
            self.check_vm(db.as_ref(), rec, &mut out)?;
        }
        let defined: BTreeSet<(&str, &str)> = records.iter().filter(|r| r.defined).map(|r| (r.vm_type.as_str(), r.name.as_str())).collect();
        for t in self.config.vm_types.keys() {
            let vmt = vm::build(&self.config, t)?;
            for name in vmt.list() {
                if !defined.contains(&(t.as_str(), name.as_str())) {
                    let kept = records.iter().any(|r| r.name == name && !r.defined);
                    let why = if kept { "the database keeps it as undefined" } else { "the database does not know it" };
                    out.push(diff(&name, "unknown_container", format!("VM type {t} holds {name}, but {why}")));
                }
            }
        }
        out.sort_by(|a, b| (&a.vm, a.kind).cmp(&(&b.vm, b.kind)));
        Ok(out)
    }

    fn check_vm(&self, db: Option<&Db>, rec: &VmRecord, out: &mut Vec<Difference>) -> Result<()> {
        let vm = &rec.name;
        let vmt = vm::build(&self.config, &rec.vm_type)?;
        let vols = volumes::open(&self.config, vm, &rec.definition, &*vmt)?;
        if rec.defined && !vmt.exists(vm) {
            out.push(diff(vm, "config_missing", format!("VM {vm} is defined in the database, but VM type {} does not hold it", rec.vm_type)));
        }
        for v in &vols {
            if !v.volume.exists() {
                out.push(diff(vm, "volume_missing", format!("volume {} ({}) is gone", v.name(), v.volume.describe())));
            }
        }
        if let Some(db) = db {
            let path = Manager::record_path(&self.config, vm);
            match std::fs::read_to_string(&path) {
                Err(_) => out.push(diff(vm, "record_missing", format!("no record file {}", path.display()))),
                Ok(text) => {
                    let same = serde_json::from_str::<super::RecordFile>(&text)
                        // The intent is not part of the record (db::VmRecord).
                        .is_ok_and(|f| VmRecord { intent: rec.intent.clone(), ..f.vm } == *rec && db.volumes(vm).is_ok_and(|v| v == f.volumes));
                    if !same {
                        out.push(diff(vm, "record_stale", format!("record file {} differs from the database", path.display())));
                    }
                }
            }
        }
        Ok(())
    }

    /// Fix what can be fixed safely, then check again. Returns every
    /// difference found first, each marked whether it is gone now.
    pub fn check_repair(&self) -> Result<Vec<Difference>> {
        let found = self.check()?;
        let vms: BTreeSet<&str> = found.iter().map(|d| d.vm.as_str()).collect();
        for name in vms {
            let Ok(vm) = VmName::new(name) else { continue };
            if let Err(e) = self.repair_vm(&vm, &found) {
                tracing::warn!(vm = %vm, "check --repair: {}", error::chain(&e));
            }
        }
        let left = self.check()?;
        Ok(found
            .into_iter()
            .map(|mut d| {
                d.repaired = Some(!left.iter().any(|l| l.vm == d.vm && l.kind == d.kind));
                d
            })
            .collect())
    }

    fn repair_vm(&self, vm: &VmName, found: &[Difference]) -> Result<()> {
        let kinds: BTreeSet<&str> = found.iter().filter(|d| d.vm == vm.as_str()).map(|d| d.kind).collect();
        if kinds.iter().all(|k| matches!(*k, "volume_missing" | "unknown_container")) {
            return Ok(());
        }
        let mut db = self.db_write()?;
        let me = super::me();
        self.acquire_lease(&mut db, vm, "check", me)?;
        let r = (|| {
            self.repair_interrupted(&mut db, vm)?;
            let meta = Meta { vm: vm.clone(), action: "check", caller: Some("geats check --repair".into()), request_id: None };
            let mut op = Op::real(&self.config, &mut db, meta);
            let Some(mut l) = actions::load(&op, vm)? else { return Ok(()) };
            if kinds.contains("config_missing") && l.rec.defined && !l.vmt.exists(vm) && l.vols.iter().all(|v| v.volume.exists()) {
                let att = volumes::attached(&l.vols);
                let (vmt, def) = (&l.vmt, &l.rec.definition);
                op.step(format!("define {} VM {vm} again from the database", l.rec.vm_type), None, |_| Ok(vmt.define(vm, def, &att)?))?;
            }
            if !l.vmt.state(vm).is_running() {
                actions::tidy(&mut op, &mut l.vols)?;
            }
            let steps = op.steps().to_vec();
            let jid = op.journaled();
            drop(op);
            if let Some(jid) = jid {
                db.journal_end(jid, "ok", Some(!steps.is_empty()), &steps, None)?;
            }
            match db.vm(vm)? {
                Some(rec) => {
                    let vols = db.volumes(vm)?;
                    Manager::write_record(&self.config, &rec, &vols)
                }
                None => Ok(()),
            }
        })();
        if let Err(e) = db.release_lease(vm, me) {
            tracing::warn!(vm = %vm, "cannot release the operation lease: {}", error::chain(&e));
        }
        r
    }
}
