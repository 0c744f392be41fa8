//! The read-only actions, `status` and `info`: no lock, no journal entry,
//! and no write transaction unless a drift began or ended (then one short
//! one, see `events.rs`). The running state always comes from the VM type,
//! in one pass per VM type for `status`.

use std::collections::BTreeMap;

use super::reply::{Health, HealthReport, HostStats, InfoReply, ListRow, Repair, RowState, StatusReply, VmStatus, VolumeInfo};
use super::{events, volumes, Manager};
use crate::db::{Db, Intent, VmRecord, VmSummary};
use crate::error::{Error, Result};
use crate::names::{TypeName, VmName};
use crate::state::VmState;
use crate::sys::{fsutil, proc};
use crate::{storage, vm};

/// VM types by name, and the states of their VMs in the rows' order.
type TypesAndStates = (BTreeMap<TypeName, Box<dyn vm::VmType>>, BTreeMap<TypeName, std::vec::IntoIter<VmState>>);

/// Records, VM types by name, and states by VM.
type Observed = (Vec<VmRecord>, BTreeMap<TypeName, Box<dyn vm::VmType>>, BTreeMap<VmName, VmState>);

/// Items grouped by VM type, each group in the order given: the VM types
/// are asked once per type, never once per VM.
fn by_type<'a, T>(items: impl Iterator<Item = (&'a TypeName, T)>) -> BTreeMap<&'a TypeName, Vec<T>> {
    let mut groups: BTreeMap<&TypeName, Vec<T>> = BTreeMap::new();
    for (t, item) in items {
        groups.entry(t).or_default().push(item);
    }
    groups
}

impl Manager {
    /// `status`: every defined VM with its definition and state, and the
    /// host's figures (after repairing any VM whose action was killed).
    pub fn status(&self) -> Result<StatusReply> {
        self.status_repaired().map(|(s, _)| s)
    }

    /// `status`, and the repairs done first.
    ///
    /// Its cost grows with the number of VMs, so per VM it reads only what
    /// it sends: the stored definition is copied into the reply as it is
    /// ([`crate::definition::DefinitionJson`]), and the states come in one
    /// pass per VM type, in the rows' order.
    pub(super) fn status_repaired(&self) -> Result<(StatusReply, Vec<Repair>)> {
        let (repairs, mut db) = self.converged_read(None)?;
        // A drift is only recorded if no action recorded anything since
        // the states were observed (db::events).
        let read_at = self.read_started();
        let (rows, kept) = match db.as_ref() {
            Some(db) => db.vm_summaries()?,
            None => Default::default(),
        };
        let (types, mut states) = self.states_by_type(&rows)?;
        let basis = self.health_basis_of(db.as_ref(), read_at, rows.iter().map(|r| &r.name))?;
        // RAM promised to defined VMs: summed from the rows just read
        // (as SQL's json_extract over every definition did, at 8% of a
        // status of 1000 VMs, callgrind).
        let ram: u64 = rows.iter().filter_map(|r| r.ram).sum();
        let status = self.host_stats(ram, rows.len());
        let kept = self.kept(db.as_ref(), kept)?;
        // What note_drifts may act on: a VM that is not healthy or had a
        // drift recorded (usually none; a healthy VM without one needs
        // nothing written).
        let mut noted = Vec::new();
        let vms: BTreeMap<VmName, VmStatus> = rows
            .into_iter()
            .map(|r| {
                let state = states.get_mut(&r.vm_type).and_then(Iterator::next).unwrap_or_else(|| VmState::plain(crate::state::Power::Unknown));
                let health = events::judge(&r.intent, basis.lease(&r.name), &state, || types.get(&r.vm_type).and_then(|t| t.exit_reason(&r.name)));
                if health.health != Health::Ok || r.intent.drift {
                    noted.push((r.name.clone(), r.intent, health.clone()));
                }
                (r.name, VmStatus { definition: r.definition, vm_type: r.vm_type, state, privileged: r.privileged, health })
            })
            .collect();
        if let Some(db) = db.as_mut() {
            let judged: Vec<(&VmName, &Intent, &HealthReport)> = noted.iter().map(|(n, i, h)| (n, i, h)).collect();
            self.note_drifts(db, &basis, &judged);
        }
        self.run_hooks();
        Ok((StatusReply { vms, kept, status }, repairs))
    }

    /// The VM types of `rows`, and the states of each type's VMs in the
    /// rows' order, asked in one pass per VM type (never a process per VM).
    fn states_by_type(&self, rows: &[VmSummary]) -> Result<TypesAndStates> {
        let by_type = by_type(rows.iter().map(|r| (&r.vm_type, &r.name)));
        let mut types = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (t, names) in by_type {
            let vmt = vm::build(&self.config, t)?;
            let got = vmt.states_in_order(&names);
            // A VM type that answers for other VMs than asked: none of its
            // states can be matched to a VM.
            let got = if got.len() == names.len() {
                got
            } else {
                tracing::warn!(vm_type = %t, "the VM type answered {} states for {} VMs", got.len(), names.len());
                Vec::new()
            };
            states.insert(t.clone(), got.into_iter());
            types.insert(t.clone(), vmt);
        }
        Ok((types, states))
    }

    /// The rows of `geats list`: name, state, admin lock, VM type, primary
    /// IP and memory of every defined VM, from one database read and one
    /// look per VM type (state and IP together).
    pub fn list(&self) -> Result<Vec<ListRow>> {
        let db = self.db_read()?;
        let listed = match db.as_ref() {
            Some(db) => db.vms_listed()?,
            None => Vec::new(),
        };
        let mut looks = BTreeMap::new();
        for (t, vms) in by_type(listed.iter().map(|r| (&r.vm_type, (&r.name, r.network.as_slice())))) {
            let vmt = vm::build(&self.config, t)?;
            looks.extend(vms.iter().map(|(n, _)| *n).zip(vmt.looks(&vms)));
        }
        Ok(listed
            .iter()
            .map(|r| {
                let (state, ip) = match looks.remove(&r.name) {
                    Some(l) => (l.state, l.ip),
                    None => (VmState::plain(crate::state::Power::Unknown), None),
                };
                ListRow { name: r.name.clone(), state: RowState::Observed(state), locked: r.locked, vm_type: r.vm_type.clone(), ip, ram: r.ram }
            })
            .collect())
    }

    /// Every defined VM's record, the VM types they use, and their states,
    /// read in one pass per VM type (never a process per VM).
    pub(super) fn observe(&self, db: Option<&Db>) -> Result<Observed> {
        let records = match db {
            Some(db) => db.vms(false)?,
            None => Vec::new(),
        };
        let mut by_type: BTreeMap<TypeName, Vec<VmName>> = BTreeMap::new();
        for r in &records {
            by_type.entry(r.vm_type.clone()).or_default().push(r.name.clone());
        }
        let mut types = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (t, names) in by_type {
            let vmt = vm::build(&self.config, &t)?;
            states.extend(vmt.states(&names));
            types.insert(t, vmt);
        }
        Ok((records, types, states))
    }

    /// The host's figures: the original keys (kB, load average) plus what a
    /// placement engine needs. Flat, as the Vagoth driver stores them.
    fn host_stats(&self, ram_promised: u64, vm_count: usize) -> HostStats {
        let m = proc::meminfo();
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        let (total, free, buffers, cached) = (g("MemTotal"), g("MemFree"), g("Buffers"), g("Cached"));
        let mut storage = BTreeMap::new();
        for root in storage::roots(&self.config) {
            if let Some((total, free)) = fsutil::space(&root.path) {
                storage.insert(format!("storage_{}_total_kb", root.name), total / 1024);
                storage.insert(format!("storage_{}_free_kb", root.name), free / 1024);
            }
        }
        HostStats {
            mem_total: total,
            mem_used: total.saturating_sub(free + buffers + cached),
            mem_free: free,
            mem_buffers: buffers,
            mem_cached: cached,
            swap_total: g("SwapTotal"),
            swap_used: g("SwapTotal").saturating_sub(g("SwapFree")),
            swap_free: g("SwapFree"),
            load_avg: proc::loadavg(),
            cpu_count: proc::cpu_count(),
            ram_promised,
            vm_count,
            hostname: proc::hostname(),
            storage,
        }
    }

    /// `info`: one defined VM (after repairing it if an action on it was
    /// killed).
    pub fn info(&self, vm: &VmName) -> Result<InfoReply> {
        self.info_repaired(vm).map(|(i, _)| i)
    }

    /// `info`, and the repairs done first.
    pub(super) fn info_repaired(&self, vm: &VmName) -> Result<(InfoReply, Vec<Repair>)> {
        let (repairs, db) = self.converged_read(Some(vm))?;
        let Some(mut db) = db else { return Err(Error::NotFound(vm.clone())) };
        let rec = match db.vm(vm)? {
            Some(r) if r.defined => r,
            _ => return Err(Error::NotFound(vm.clone())),
        };
        let read_at = self.read_started();
        let vmt = vm::build(&self.config, &rec.vm_type)?;
        // State, usage, IP and pending changes from one look.
        let vm::Look { state, usage, ip, pending } = vmt.look_full(vm, &rec.definition);
        let basis = self.health_basis(Some(&db), read_at, [&rec])?;
        let health = events::judge(&rec.intent, basis.lease(vm), &state, || vmt.exit_reason(vm));
        self.note_drifts(&mut db, &basis, &[(vm, &rec.intent, &health)]);
        self.run_hooks();
        let vols = volumes::open(&self.config, vm, &rec.definition, &*vmt)?;
        let storage = vols
            .iter()
            .filter(|v| !v.implicit)
            .map(|v| {
                let u = v.volume.usage();
                VolumeInfo {
                    name: v.spec.name.clone(),
                    storage_type: v.spec.storage_type.clone(),
                    driver: v.volume.record().get("driver").cloned().unwrap_or(serde_json::Value::Null),
                    size_bytes: u.size_bytes,
                    used_bytes: u.used_bytes,
                    directory: v.attached().directory().map(std::path::Path::to_path_buf),
                    mountpoint: v.spec.mountpoint.clone(),
                    active: v.volume.is_active(),
                }
            })
            .collect();
        let snapshots = db.snapshots(vm)?.into_iter().map(|s| super::reply::SnapshotInfo { name: s.name, created: s.created, size_bytes: s.size_bytes }).collect();
        let info = InfoReply {
            name: rec.name,
            vm_type: rec.vm_type,
            state,
            health,
            locked: rec.locked,
            privileged: rec.definition.privileged,
            usage,
            ip,
            definition: rec.definition,
            storage,
            snapshots,
            created: rec.created,
            updated: rec.updated,
            console: vmt.console_command(vm),
            plugin: vmt.info(vm),
            pending,
        };
        Ok((info, repairs))
    }

    /// The definition, VM type and hypervisor access of a defined VM, for
    /// the CLI's `console`, `exec`, `ssh` and `info --config`.
    pub fn vm_type_of(&self, vm: &VmName) -> Result<(crate::db::VmRecord, Box<dyn vm::VmType>)> {
        let Some(db) = self.db_read()? else { return Err(Error::NotFound(vm.clone())) };
        match db.vm(vm)? {
            Some(r) if r.defined => {
                let vmt = vm::build(&self.config, &r.vm_type)?;
                Ok((r, vmt))
            }
            _ => Err(Error::NotFound(vm.clone())),
        }
    }
}
