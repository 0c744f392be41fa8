//! The manager: every action goes through here, whatever the transport.
//!
//! A mutating action on a VM runs as: open the database (creating it only
//! on a fresh host), answer from the journal if its request id already
//! completed, take the VM's operation lease (waiting up to `lock_timeout`),
//! open a journal entry, decide the disposition from the observed state,
//! run the steps (each recorded in the journal with its undo), and on
//! failure undo in reverse. A dry run goes through the very same code with
//! an [`op::Op`] that records steps instead of running them, and touches
//! neither the lock table nor the journal.

mod actions;
mod check;
mod events;
mod kept;
mod migrate;
mod op;
mod read;
mod reconcile;
mod recovery;
pub mod reply;
mod snapshots;
mod volumes;

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::db::{Db, VmRecord, VolumeRecord};
use crate::error::{self, Error, Result};
use crate::names::VmName;
use crate::request::{Action, Request};
use crate::state::PowerAction;
use crate::sys::fsutil::write_atomic;
use crate::sys::proc;

pub use check::Difference;
pub use op::Op;
pub use reply::Reply;

/// The entry point of the library: one per process.
#[derive(Debug)]
pub struct Manager {
    config: Config,
    /// Events this request committed, for the hooks to run once the
    /// request's transactions and lease are done.
    pending: std::cell::RefCell<Vec<crate::db::Event>>,
}

/// What one VM's record file holds: everything only geats knows about it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RecordFile {
    /// The VM row.
    pub vm: VmRecord,
    /// Its volumes.
    pub volumes: Vec<VolumeRecord>,
    /// Its snapshots, oldest first (kept here too, so `recover` finds them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<crate::db::SnapshotRecord>,
}

impl Manager {
    /// A manager over this configuration. Does no I/O.
    pub fn new(config: Config) -> Manager {
        Manager { config, pending: Default::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Run one request and return its reply data.
    pub fn execute(&self, req: &Request) -> Result<Reply> {
        let out = self.dispatch(req);
        self.run_hooks();
        out
    }

    fn dispatch(&self, req: &Request) -> Result<Reply> {
        match &req.action {
            Action::Status => self.status_repaired().map(|(s, r)| Reply::Status(s).with_repairs(r)),
            Action::Info(vm) => self.info_repaired(vm).map(|(i, r)| Reply::Info(Box::new(i)).with_repairs(r)),
            Action::Events { since, limit } => self.events(*since, *limit).map(Reply::Events),
            Action::Reconcile => self.reconcile(req.dry_run, req.caller.clone()).map(Reply::Reconcile),
            Action::Migrate(..)
            | Action::Define(..)
            | Action::Provision(..)
            | Action::Start(_)
            | Action::Stop(_)
            | Action::Shutdown(_)
            | Action::Reboot(_)
            | Action::Undefine(_)
            | Action::Deprovision(_)
            | Action::Lock(_)
            | Action::Unlock(_)
            | Action::Snapshot(..)
            | Action::Restore(..)
            | Action::DeleteSnapshot(..) => self.mutate(req),
        }
    }

    /// How many VMs the roots hold: record files, plus VMs the VM types
    /// hold that no record names. Only called when the database is
    /// missing, so the directory reads are off the hot path.
    fn record_count(&self) -> usize {
        let records: std::collections::BTreeSet<String> = std::fs::read_dir(&self.config.records_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut containers = std::collections::BTreeSet::new();
        for t in self.config.vm_types.keys() {
            if let Ok(vmt) = crate::vm::build(&self.config, t) {
                containers.extend(vmt.list().into_iter().map(|n| n.to_string()).filter(|n| !records.contains(n)));
            }
        }
        records.len() + containers.len()
    }

    fn missing(&self) -> Error {
        Error::DatabaseMissing {
            path: self.config.database.display().to_string(),
            records: self.config.records_dir.display().to_string(),
            count: self.record_count(),
        }
    }

    /// Open the database for reading. `None` on a fresh host (no database,
    /// no records): nothing is defined, and nothing is created.
    pub(crate) fn db_read(&self) -> Result<Option<Db>> {
        let path = &self.config.database;
        if path.exists() {
            return Db::open_read(path, self.config.busy_timeout).map(Some).map_err(|e| self.open_failed(e));
        }
        if self.record_count() > 0 {
            return Err(self.missing());
        }
        Ok(None)
    }

    /// Open the database for writing, creating it on a fresh host only.
    pub(crate) fn db_write(&self) -> Result<Db> {
        let path = &self.config.database;
        if path.exists() {
            return Db::open(path, self.config.busy_timeout).map_err(|e| self.open_failed(e));
        }
        if self.record_count() > 0 {
            return Err(self.missing());
        }
        Ok(Db::create(path, self.config.busy_timeout)?)
    }

    fn open_failed(&self, e: crate::db::DbError) -> Error {
        if e.is_unusable_file() && self.record_count() > 0 {
            self.missing()
        } else {
            e.into()
        }
    }

    fn mutate(&self, req: &Request) -> Result<Reply> {
        let action = req.action.name();
        let vm = req.action.vm().ok_or_else(|| Error::Internal(format!("{action} without a VM")))?.clone();
        if req.dry_run {
            let mut db = self.db_read()?;
            let mut op = Op::dry(&self.config, db.as_mut());
            let out = actions::run(&mut op, &req.action);
            return out.map(|reply| {
                Reply::DryRun(reply::DryRunReply { dry_run: true, changed: reply.changed().unwrap_or(false), steps: op.steps().to_vec() })
            });
        }
        // Only define and provision can create a VM, so only they may
        // create the database; on a fresh host every other action is a
        // no-op or `not_found`, decided without touching the disk.
        let creates = matches!(req.action, Action::Define(..) | Action::Provision(..));
        if !self.config.database.exists() {
            if self.record_count() > 0 {
                return Err(self.missing());
            }
            // A fresh host: a dry run sees exactly what the real run will.
            // It answers every action but define and provision (a no-op or
            // `not_found`) and validates those completely before anything
            // is created.
            let out = actions::run(&mut Op::dry(&self.config, None), &req.action);
            if !creates {
                return out;
            }
            out?;
        }
        let mut db = self.db_write()?;
        // Dropped when the action has ended.
        let _early = self.begin_power(&db, &req.action);
        let me = me();
        self.acquire_lease(&mut db, &vm, action, me)?;
        let before = events::before(&db, &vm);
        let meta = op::Meta { vm: vm.clone(), action, caller: req.caller.clone(), request_id: req.request_id.clone() };
        let mut repairs = Vec::new();
        let result = (|| {
            // Under the lease: first converge what a killed process left,
            // then answer a request id that already completed (so two
            // concurrent retries cannot both run), then act.
            repairs = self.repair_interrupted(&mut db, &vm)?;
            if let Some(id) = &req.request_id {
                if let Some(reply) = db.journal_replay(Some(&vm), action, id)? {
                    tracing::info!(vm = %vm, action, request_id = %id, "answered from the journal");
                    return Ok(Reply::Replayed(reply));
                }
            }
            let mut op = Op::real(&self.config, &mut db, meta.clone());
            let out = actions::run(&mut op, &req.action);
            // Bad input refused before any step leaves no trace; refusals
            // and no-ops of valid requests are journaled too.
            let bad_input = matches!(&out, Err(e) if e.is_bad_input());
            if op.journaled().is_none() && bad_input {
                return out;
            }
            let jid = op.journal()?;
            let steps = op.steps().to_vec();
            if let Some(jid) = jid {
                end_entry(&mut db, jid, &steps, &out)?;
                self.note_action(&mut db, before, &req.action, &meta, &out);
            }
            out
        })();
        if let Err(e) = db.release_lease(&vm, me) {
            tracing::warn!(vm = %vm, "cannot release the operation lease: {}", error::chain(&e));
        }
        result.map(|r| r.with_repairs(repairs))
    }

    /// What the VM type of a start or a stop begins before the lease
    /// ([`crate::vm::VmType::begin_power`]); nothing for any other action,
    /// or when the VM or its type cannot be read (the action itself then
    /// says why).
    fn begin_power(&self, db: &Db, action: &Action) -> Option<Box<dyn std::any::Any>> {
        let (vm, power) = match action {
            Action::Start(vm) => (vm, PowerAction::Start),
            Action::Stop(vm) => (vm, PowerAction::Stop),
            _ => return None,
        };
        let t = db.vm_type(vm).ok().flatten()?;
        crate::vm::build(&self.config, &t).ok()?.begin_power(vm, power)
    }

    /// Take the VM's operation lease, waiting up to `lock_timeout` for a
    /// live holder; `busy` after that.
    fn acquire_lease(&self, db: &mut Db, vm: &VmName, action: &str, me: (i64, u64)) -> Result<()> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            match db.try_lease(vm, action, me, proc::alive)? {
                Ok(()) => return Ok(()),
                Err(holder) => {
                    if start.elapsed() >= self.config.lock_timeout {
                        return Err(Error::Busy {
                            vm: vm.clone(),
                            action: holder.action,
                            pid: holder.pid,
                            waited_s: self.config.lock_timeout.as_secs(),
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// The journal, for `geats history`.
    pub fn history(&self, vm: Option<&VmName>, limit: u32) -> Result<Vec<crate::db::JournalEntry>> {
        match self.db_read()? {
            Some(db) => Ok(db.history(vm, limit)?),
            None => Ok(Vec::new()),
        }
    }

    /// Rebuild the database from the record files (`geats recover`): those
    /// of the records directory, then those the VM types keep beside each
    /// VM (so a lost records directory loses nothing that still runs). A
    /// database file that cannot be opened is moved aside first. Returns
    /// the names of the VMs recovered.
    pub fn recover(&self) -> Result<Vec<String>> {
        let path = &self.config.database;
        if path.exists() && Db::open(path, self.config.busy_timeout).is_err() {
            let aside = path.with_extension(format!("broken-{}", crate::db::now().replace([':', '.'], "")));
            std::fs::rename(path, &aside).map_err(error::io("move aside", path))?;
            tracing::warn!("moved unreadable database to {}", aside.display());
        }
        let mut db = if path.exists() { Db::open(path, self.config.busy_timeout)? } else { Db::create(path, self.config.busy_timeout)? };
        let mut found: Vec<(std::path::PathBuf, Vec<u8>)> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.config.records_dir) {
            let mut files: Vec<_> = rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
            files.sort();
            for f in files {
                let text = std::fs::read(&f).map_err(error::io("read", &f))?;
                found.push((f, text));
            }
        }
        for t in self.config.vm_types.keys() {
            let vmt = crate::vm::build(&self.config, t)?;
            for text in vmt.kept_records() {
                found.push((std::path::PathBuf::from(format!("(kept by VM type {t})")), text));
            }
        }
        let mut names = Vec::new();
        for (f, text) in found {
            let rec: RecordFile = serde_json::from_slice(&text).map_err(|e| Error::CorruptRecord { path: f.clone(), problem: e.to_string() })?;
            if db.vm(&rec.vm.name)?.is_none() {
                db.put_vm(&rec.vm, &rec.volumes)?;
                db.put_snapshots(&rec.vm.name, &rec.snapshots)?;
                if rec.vm.defined {
                    // The record files do not carry the intent: take what
                    // runs now as what should run, so a reconcile after
                    // the recovery brings back what ran before the loss.
                    let running = crate::vm::build(&self.config, &rec.vm.vm_type)?.state(&rec.vm.name).is_running();
                    let desired = if running { crate::db::Desired::Running } else { crate::db::Desired::Stopped };
                    db.record_action(&rec.vm.name, Some(desired), None, self.retention())?;
                }
                Self::write_record_file(&self.config, RecordFile { vm: rec.vm.clone(), volumes: rec.volumes.clone(), snapshots: rec.snapshots.clone() })?;
                names.push(rec.vm.name.to_string());
            }
        }
        Ok(names)
    }

    /// The record file of a VM.
    pub(crate) fn record_path(config: &Config, vm: &VmName) -> std::path::PathBuf {
        config.records_dir.join(format!("{vm}.json"))
    }

    /// Write a VM's record file, keeping the snapshots it lists, and keep
    /// a copy beside a defined VM's own files (`VmType::keep_record`).
    pub(crate) fn write_record(config: &Config, rec: &VmRecord, volumes: &[VolumeRecord]) -> Result<()> {
        let snapshots = snapshots::recorded(config, &rec.name);
        Self::write_record_file(config, RecordFile { vm: rec.clone(), volumes: volumes.to_vec(), snapshots })
    }

    /// Write a whole record file.
    pub(crate) fn write_record_file(config: &Config, file: RecordFile) -> Result<()> {
        let rec = &file.vm;
        std::fs::create_dir_all(&config.records_dir).map_err(error::io("create", &config.records_dir))?;
        let text = serde_json::to_vec_pretty(&file).unwrap_or_default();
        let path = Self::record_path(config, &rec.name);
        write_atomic(&path, &text, 0o600).map_err(error::io("write", &path))?;
        if rec.defined {
            let vmt = crate::vm::build(config, &rec.vm_type)?;
            if vmt.exists(&rec.name) {
                vmt.keep_record(&rec.name, &text, &path)?;
            }
        }
        Ok(())
    }

    /// Remove a VM's record file.
    pub(crate) fn remove_record(config: &Config, vm: &VmName) -> Result<()> {
        let path = Self::record_path(config, vm);
        crate::sys::fsutil::remove_file_if_exists(&path).map_err(error::io("remove", &path))?;
        let name = format!("{vm}.json");
        crate::sys::fsutil::remove_stale_temps(&config.records_dir, &[&name]).map_err(error::io("remove temp files in", &config.records_dir))
    }
}

/// Close an action's journal entry with its outcome: `ok` with whether it
/// changed anything and its reply (for request-id replays), or the error's
/// code.
pub(super) fn end_entry(db: &mut Db, jid: crate::db::JournalId, steps: &[String], out: &Result<Reply>) -> Result<()> {
    match out {
        Ok(reply) => db.journal_end(jid, "ok", reply.changed(), steps, Some(&reply.to_json()))?,
        Err(e) => db.journal_end(jid, e.code().as_str(), None, steps, None)?,
    }
    Ok(())
}

/// This process: (pid, start time).
pub(super) fn me() -> (i64, u64) {
    let pid = std::process::id() as i64;
    (pid, proc::start_time(pid).unwrap_or(0))
}
