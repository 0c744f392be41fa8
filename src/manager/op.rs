//! [`Op`]: runs (or, in a dry run, only records) the steps of one action,
//! journals each completed step, and remembers how to undo it.

use crate::config::Config;
use crate::db::{Db, JournalId, VmRecord, VolumeRecord};
use crate::error::{Error, Result};

/// How to undo a completed step. Indexes refer to the action's volumes.
#[derive(Debug)]
pub enum Undo {
    /// Destroy a volume this action created.
    UndefineVolume(usize),
    /// Deactivate a volume this action activated.
    DeactivateVolume(usize),
    /// Remove the VM from the hypervisor (it did not exist before).
    UndefineVm,
    /// Write the previous definition back into the hypervisor.
    RedefineVm(Box<VmRecord>),
    /// Power the VM off again.
    StopVm,
    /// Apply the previous definition's live limits again.
    ApplyLive(Box<crate::definition::Definition>),
    /// Activate the volumes and start the VM again (this action stopped it).
    StartVm,
    /// Put back the database rows and record file as they were.
    RestoreRecord(Option<Box<(VmRecord, Vec<VolumeRecord>)>>),
    /// Delete the snapshot this action took of a volume.
    DeleteSnapshot(usize, crate::names::SnapshotName),
    /// Resume the VM this action froze.
    UnfreezeVm,
    /// Forget the snapshot record this action wrote.
    ForgetSnapshot(crate::names::SnapshotName),
}

/// Who asked for an action, for its journal entry.
#[derive(Debug, Clone)]
pub struct Meta {
    /// The VM.
    pub vm: crate::names::VmName,
    /// The action.
    pub action: &'static str,
    /// The caller.
    pub caller: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
}

/// The fault-injection point: `GEATS_FAULT_KILL_AT=ACTION:N` makes the
/// process SIGKILL itself just before the side effect of step `N` (0-based)
/// of `ACTION`, after the step was journaled as begun; `ACTION:N+` just
/// after the side effect, before it was journaled as done. Only tests set
/// it; unset, it costs one environment lookup per action.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KillAt {
    step: usize,
    after: bool,
}

impl KillAt {
    fn from_env(action: &str) -> Option<KillAt> {
        let v = std::env::var("GEATS_FAULT_KILL_AT").ok()?;
        let (a, n) = v.split_once(':')?;
        if a != action {
            return None;
        }
        let (n, after) = match n.strip_suffix('+') {
            Some(n) => (n, true),
            None => (n, false),
        };
        Some(KillAt { step: n.parse().ok()?, after })
    }

    fn fire(&self, step: usize, after: bool) {
        if self.step == step && self.after == after {
            tracing::warn!(step, after, "GEATS_FAULT_KILL_AT: killing this process");
            crate::sys::proc::kill_self();
        }
    }
}

/// The step runner of one action.
#[derive(Debug)]
pub struct Op<'a> {
    /// The configuration.
    pub config: &'a Config,
    db: Option<&'a mut Db>,
    dry: bool,
    /// Opened at the first step, so a request refused before any step
    /// (bad input) leaves no journal row.
    journal: Option<JournalId>,
    meta: Option<Meta>,
    steps: Vec<String>,
    undo: Vec<Undo>,
    intent: Option<serde_json::Value>,
    kill_at: Option<KillAt>,
}

impl<'a> Op<'a> {
    /// A runner that records steps without running them.
    pub fn dry(config: &'a Config, db: Option<&'a mut Db>) -> Op<'a> {
        Op { config, db, dry: true, journal: None, meta: None, steps: Vec::new(), undo: Vec::new(), intent: None, kill_at: None }
    }

    /// A runner that runs steps and journals them.
    pub fn real(config: &'a Config, db: &'a mut Db, meta: Meta) -> Op<'a> {
        let kill_at = KillAt::from_env(meta.action);
        Op { config, db: Some(db), dry: false, journal: None, meta: Some(meta), steps: Vec::new(), undo: Vec::new(), intent: None, kill_at }
    }

    /// A runner that continues the journal entry `id` of a killed action
    /// (recovery): its steps follow the ones `done` already recorded. No
    /// fault injection: a repair is not the action it repairs.
    pub fn resume(config: &'a Config, db: &'a mut Db, meta: Meta, id: JournalId, done: Vec<String>) -> Op<'a> {
        Op { config, db: Some(db), dry: false, journal: Some(id), meta: Some(meta), steps: done, undo: Vec::new(), intent: None, kill_at: None }
    }

    /// The journal entry, opening it if it is not open yet.
    pub fn journal(&mut self) -> Result<Option<JournalId>> {
        if self.journal.is_none() {
            if let (Some(m), Some(db)) = (&self.meta, self.db.as_deref_mut()) {
                self.journal = Some(db.journal_begin(Some(&m.vm), m.action, m.caller.as_deref(), m.request_id.as_deref(), self.intent.as_ref())?);
            }
        }
        Ok(self.journal)
    }

    /// Say what the action sets out to do, before its first step: the
    /// journal entry carries it, so that recovery can finish or undo a
    /// killed action (`manager::recovery`).
    pub fn set_intent(&mut self, intent: serde_json::Value) {
        self.intent = Some(intent);
    }

    /// Whether a journal entry was opened.
    pub fn journaled(&self) -> Option<JournalId> {
        self.journal
    }

    /// Is this a dry run?
    pub fn is_dry(&self) -> bool {
        self.dry
    }

    /// The steps run (or planned) so far.
    pub fn steps(&self) -> &[String] {
        &self.steps
    }

    /// The database, if there is one (a dry run on a fresh host has none).
    pub fn db(&self) -> Option<&Db> {
        self.db.as_deref()
    }

    /// The database for writing; only reached inside [`Op::step`] of a
    /// real run, which always has one.
    pub fn db_mut(&mut self) -> Result<&mut Db> {
        self.db.as_deref_mut().ok_or_else(|| Error::Internal("write without a database".into()))
    }

    /// Run a step: in a dry run only record `desc`; otherwise journal it
    /// as begun (intent first, and the steps done before it), run `f`,
    /// and remember `undo`.
    pub fn step(&mut self, desc: impl Into<String>, undo: Option<Undo>, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let desc = desc.into();
        if !self.dry {
            tracing::debug!(step = %desc, "running");
            if let (Some(id), Some(db)) = (self.journal()?, self.db.as_deref_mut()) {
                db.journal_pending(id, &self.steps, &desc)?;
            }
            let n = self.steps.len();
            if let Some(k) = &self.kill_at {
                k.fire(n, false);
            }
            f(self)?;
            if let Some(k) = &self.kill_at {
                k.fire(n, true);
            }
        }
        self.steps.push(desc);
        if let Some(u) = undo {
            self.undo.push(u);
        }
        // Its completion is journaled with the next step, or when the entry
        // ends (`journal_pending`).
        Ok(())
    }

    /// Take the undo list, newest first.
    pub fn take_undo(&mut self) -> Vec<Undo> {
        let mut u = std::mem::take(&mut self.undo);
        u.reverse();
        u
    }

    /// Forget the undo list (the action committed).
    pub fn commit(&mut self) {
        self.undo.clear();
    }
}
