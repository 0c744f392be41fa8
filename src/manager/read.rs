//! The read-only actions, `status` and `info`: no lock, no write
//! transaction, no journal entry. The running state always comes from the
//! VM type, in one pass per VM type for `status`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::actions::attached;
use super::Manager;
use crate::db::{Db, VmRecord};
use crate::error::{Error, Result};
use crate::names::{TypeName, VmName};
use crate::state::VmState;
use crate::sys::{fsutil, proc};
use crate::{storage, vm};

/// Records, VM types by name, and states by VM.
type Observed = (Vec<VmRecord>, BTreeMap<TypeName, Box<dyn vm::VmType>>, BTreeMap<VmName, VmState>);

fn state_json(states: &BTreeMap<VmName, VmState>, vm: &VmName) -> Value {
    states.get(vm).map(VmState::to_json).unwrap_or_else(|| json!(["unknown", "unknown"]))
}

impl Manager {
    /// `status`: every defined VM with its definition and state, and the
    /// host's figures.
    pub(super) fn status(&self) -> Result<Value> {
        let db = self.db_read()?;
        let (records, _types, states) = self.observe(db.as_ref())?;
        let mut vms = Map::new();
        for r in &records {
            vms.insert(r.name.to_string(), json!({"definition": r.definition, "state": state_json(&states, &r.name), "privileged": r.definition.privileged}));
        }
        let ram = match &db {
            Some(db) => db.ram_promised()?,
            None => 0,
        };
        Ok(json!({"vms": vms, "status": self.host_stats(ram, records.len())}))
    }

    /// The rows of `geats list`: name, state, admin lock, VM type, primary
    /// IP and memory of every defined VM, from one database read and one
    /// state pass per VM type.
    pub fn list(&self) -> Result<Vec<Value>> {
        let db = self.db_read()?;
        let (records, types, states) = self.observe(db.as_ref())?;
        Ok(records
            .iter()
            .map(|r| {
                let ip = types.get(&r.vm_type).and_then(|t| t.primary_ip(&r.name, &r.definition));
                json!({
                    "name": r.name,
                    "state": state_json(&states, &r.name),
                    "locked": r.locked,
                    "vm_type": r.vm_type,
                    "ip": ip,
                    "ram": r.definition.ram,
                })
            })
            .collect())
    }

    /// Every defined VM's record, the VM types they use, and their states,
    /// read in one pass per VM type (never a process per VM).
    fn observe(&self, db: Option<&Db>) -> Result<Observed> {
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
    fn host_stats(&self, ram_promised: u64, vm_count: usize) -> Value {
        let m = proc::meminfo();
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        let (total, free, buffers, cached) = (g("MemTotal"), g("MemFree"), g("Buffers"), g("Cached"));
        let mut s = json!({
            "mem_total": total,
            "mem_used": total.saturating_sub(free + buffers + cached),
            "mem_free": free,
            "mem_buffers": buffers,
            "mem_cached": cached,
            "swap_total": g("SwapTotal"),
            "swap_used": g("SwapTotal").saturating_sub(g("SwapFree")),
            "swap_free": g("SwapFree"),
            "load_avg": proc::loadavg(),
            "cpu_count": proc::cpu_count(),
            "ram_promised": ram_promised,
            "vm_count": vm_count,
            "hostname": proc::hostname(),
        });
        if let Some(obj) = s.as_object_mut() {
            for root in storage::roots(&self.config) {
                if let Some((total, free)) = fsutil::space(&root.path) {
                    obj.insert(format!("storage_{}_total_kb", root.name), json!(total / 1024));
                    obj.insert(format!("storage_{}_free_kb", root.name), json!(free / 1024));
                }
            }
        }
        s
    }

    /// `info`: one defined VM.
    pub(super) fn info(&self, vm: &VmName) -> Result<Value> {
        let Some(db) = self.db_read()? else { return Err(Error::NotFound(vm.clone())) };
        let rec = match db.vm(vm)? {
            Some(r) if r.defined => r,
            _ => return Err(Error::NotFound(vm.clone())),
        };
        let vmt = vm::build(&self.config, &rec.vm_type)?;
        let state = vmt.state(vm);
        let usage = vmt.usage(vm);
        let ip = vmt.primary_ip(vm, &rec.definition);
        let mut vols = Vec::new();
        for (i, spec) in rec.definition.storage.iter().enumerate() {
            vols.push(storage::open(&self.config, vm, spec, &format!("/definition/storage/{i}"))?);
        }
        let att = attached(&vols, &rec.definition);
        let storage: Vec<Value> = vols
            .iter()
            .zip(&rec.definition.storage)
            .zip(&att)
            .map(|((v, spec), a)| {
                let u = v.usage();
                json!({
                    "name": spec.name,
                    "type": spec.storage_type,
                    "driver": v.record().get("driver").cloned().unwrap_or(Value::Null),
                    "size_bytes": u.size_bytes,
                    "used_bytes": u.used_bytes,
                    "directory": a.directory,
                    "mountpoint": spec.mountpoint,
                    "active": v.is_active(),
                })
            })
            .collect();
        let mut out = json!({
            "name": rec.name,
            "vm_type": rec.vm_type,
            "definition": rec.definition,
            "state": state,
            "locked": rec.locked,
            "privileged": rec.definition.privileged,
            "usage": usage,
            "ip": ip,
            "storage": storage,
            "created": rec.created,
            "updated": rec.updated,
        });
        if let (Some(c), Some(obj)) = (vmt.console_command(vm), out.as_object_mut()) {
            obj.insert("console".into(), json!(c));
        }
        Ok(out)
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
