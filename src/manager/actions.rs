//! The mutating actions. Each decides its disposition from the observed
//! state first, then runs its steps through [`Op`], which journals them and
//! undoes them in reverse if a later step fails.

use serde_json::{json, Value};

use super::op::{Op, Undo};
use super::Manager;
use crate::db::{self, VmRecord, VolumeRecord};
use crate::definition::Definition;
use crate::error::{Error, Result};
use crate::names::VmName;
use crate::request::{Action, RequestError};
use crate::state::{power_disposition, Disposition, Power, PowerAction};
use crate::storage::{self, StorageError, Volume};
use crate::template;
use crate::vm::{self, Accepts, AttachedVolume, VmType};

type Outcome = Result<(bool, Value)>;

/// Run a mutating action.
pub(super) fn run(op: &mut Op<'_>, action: &Action) -> Outcome {
    match action {
        Action::Define(vm, def) => define(op, vm, def, false),
        Action::Provision(vm, def) => define(op, vm, def, true),
        Action::Start(vm) => power(op, vm, PowerAction::Start),
        Action::Stop(vm) => power(op, vm, PowerAction::Stop),
        Action::Shutdown(vm) => power(op, vm, PowerAction::Shutdown),
        Action::Reboot(vm) => power(op, vm, PowerAction::Reboot),
        Action::Undefine(vm) => remove(op, vm, false),
        Action::Deprovision(vm) => remove(op, vm, true),
        Action::Lock(vm) => set_lock(op, vm, true),
        Action::Unlock(vm) => set_lock(op, vm, false),
        Action::Status | Action::Info(_) | Action::Migrate(..) => {
            Err(Error::Internal(format!("{} is not a mutating action", action.name())))
        }
    }
}

fn invalid(pointer: &str, problem: impl std::fmt::Display) -> Error {
    RequestError::Invalid(format!("{pointer}: {problem}")).into()
}

/// A VM as geats knows it: its record, VM type and volumes.
struct Loaded {
    rec: VmRecord,
    vmt: Box<dyn VmType>,
    vols: Vec<Box<dyn Volume>>,
}

fn open_volumes(op: &Op<'_>, vm: &VmName, def: &Definition) -> Result<Vec<Box<dyn Volume>>> {
    def.storage
        .iter()
        .enumerate()
        .map(|(i, spec)| storage::open(op.config, vm, spec, &format!("/definition/storage/{i}")).map_err(Error::from))
        .collect()
}

/// Load any record of `vm`, defined or kept.
fn load(op: &Op<'_>, vm: &VmName) -> Result<Option<Loaded>> {
    let Some(db) = op.db() else { return Ok(None) };
    let Some(rec) = db.vm(vm)? else { return Ok(None) };
    let vmt = vm::build(op.config, &rec.vm_type)?;
    let vols = open_volumes(op, vm, &rec.definition)?;
    Ok(Some(Loaded { rec, vmt, vols }))
}

/// Load a defined VM or fail with `not_found`.
fn load_defined(op: &Op<'_>, vm: &VmName) -> Result<Loaded> {
    match load(op, vm)? {
        Some(l) if l.rec.defined => Ok(l),
        _ => Err(Error::NotFound(vm.clone())),
    }
}

/// What the VM type sees of the volumes.
pub(crate) fn attached(vols: &[Box<dyn Volume>], def: &Definition) -> Vec<AttachedVolume> {
    vols.iter()
        .zip(&def.storage)
        .map(|(v, spec)| {
            let p = v.provides();
            AttachedVolume { name: spec.name.clone(), directory: p.directory, block_device: p.block_device, file: p.file, mountpoint: spec.mountpoint.clone() }
        })
        .collect()
}

fn volume_records(vols: &[Box<dyn Volume>], def: &Definition) -> Vec<VolumeRecord> {
    vols.iter()
        .zip(&def.storage)
        .map(|(v, spec)| VolumeRecord { name: spec.name.clone(), storage_type: spec.storage_type.clone(), record: v.record() })
        .collect()
}

/// Run `f`; if it fails, undo its completed steps newest first and report
/// the failure together with any failure of the cleanup.
fn with_rollback(
    op: &mut Op<'_>,
    vm: &VmName,
    vmt: &dyn VmType,
    def: &Definition,
    vols: &mut [Box<dyn Volume>],
    f: impl FnOnce(&mut Op<'_>, &mut [Box<dyn Volume>]) -> Result<()>,
) -> Result<()> {
    let result = f(op, vols);
    let Err(error) = result else {
        op.commit();
        return Ok(());
    };
    let mut cleanup = Vec::new();
    for u in op.take_undo() {
        tracing::info!(vm = %vm, undo = ?u, "rolling back");
        let r: Result<()> = match &u {
            Undo::UndefineVolume(i) => vols.get_mut(*i).map_or(Ok(()), |v| v.undefine().map_err(Error::from)),
            Undo::DeactivateVolume(i) => vols.get_mut(*i).map_or(Ok(()), |v| v.deactivate().map_err(Error::from)),
            Undo::UndefineVm => vmt.undefine(vm).map_err(Error::from),
            Undo::RedefineVm(old) => {
                let att: Vec<AttachedVolume> =
                    attached(vols, def).into_iter().filter(|a| old.definition.storage.iter().any(|s| s.name == a.name)).collect();
                vmt.define(vm, &old.definition, &att).map_err(Error::from)
            }
            Undo::StopVm => vmt.stop(vm).map_err(Error::from),
            Undo::RestoreRecord(old) => restore_record(op, vm, old.as_deref()),
        };
        if let Err(e) = r {
            cleanup.push(e.message());
        }
    }
    if cleanup.is_empty() {
        Err(error)
    } else {
        Err(Error::Rollback { error: Box::new(error), cleanup: cleanup.join("; ") })
    }
}

fn restore_record(op: &mut Op<'_>, vm: &VmName, old: Option<&(VmRecord, Vec<VolumeRecord>)>) -> Result<()> {
    let config = op.config;
    let db = op.db_mut()?;
    match old {
        None => {
            db.delete_vm(vm)?;
            Manager::remove_record(config, vm).map_err(|e| Error::Internal(format!("cannot remove record of {vm}: {e}")))
        }
        Some((rec, vols)) => {
            db.put_vm(rec, vols)?;
            Manager::write_record(config, rec, vols).map_err(|e| Error::Internal(format!("cannot write record of {vm}: {e}")))
        }
    }
}

fn save_record(op: &mut Op<'_>, rec: &VmRecord, vols: &[VolumeRecord]) -> Result<()> {
    let config = op.config;
    op.db_mut()?.put_vm(rec, vols)?;
    Manager::write_record(config, rec, vols).map_err(|e| Error::Internal(format!("cannot write record file of {}: {e}", rec.name)))
}

/// Is a directory absent or empty (a fresh file system's `lost+found`
/// does not count)?
fn is_empty_dir(p: &std::path::Path) -> bool {
    match std::fs::read_dir(p) {
        Ok(mut rd) => rd.all(|e| e.map(|e| e.file_name() == "lost+found").unwrap_or(false)),
        Err(_) => true,
    }
}

fn define(op: &mut Op<'_>, vm: &VmName, def_in: &Definition, provision: bool) -> Outcome {
    let config = op.config;
    let mut def = def_in.clone();
    let type_name = def.vm_type.clone().unwrap_or_else(|| config.default_vm_type.clone());
    let Some(type_config) = config.vm_types.get(&type_name) else {
        let known: Vec<&str> = config.vm_types.keys().map(|k| k.as_str()).collect();
        return Err(invalid("/definition/vm_type", format!("VM type {type_name} is not configured (configured: {})", known.join(", "))));
    };
    // Store the definition explicit, so a later change of the defaults
    // does not change what an existing VM is.
    def.name = Some(vm.clone());
    def.vm_type = Some(type_name.clone());
    let existing = match op.db() {
        Some(db) => match db.vm(vm)? {
            Some(rec) => {
                let v = db.volumes(vm)?;
                Some((rec, v))
            }
            None => None,
        },
        None => None,
    };
    if let Some((ex, _)) = &existing {
        if ex.vm_type != type_name {
            return Err(invalid("/definition/vm_type", format!("VM {vm} is of type {}; deprovision it before changing its type", ex.vm_type)));
        }
    }
    let vmt = vm::build(config, &type_name)?;
    vmt.check(vm, &def)?;
    for (i, spec) in def.storage.iter().enumerate() {
        let allowed = &type_config.valid_storage_types;
        if !allowed.is_empty() && !allowed.iter().any(|s| s == spec.storage_type.as_str()) {
            return Err(StorageError::TypeNotAllowed {
                pointer: format!("/definition/storage/{i}/type"),
                name: spec.storage_type.to_string(),
                allowed: allowed.join(", "),
            }
            .into());
        }
    }
    let mut vols = open_volumes(op, vm, &def)?;
    if vmt.accepts() == Accepts::Directory {
        for (i, v) in vols.iter().enumerate() {
            let p = v.provides();
            if p.directory.is_none() && (p.block_device.is_some() || p.file.is_some()) {
                return Err(invalid(
                    &format!("/definition/storage/{i}/type"),
                    format!("VM type {type_name} needs a directory; storage type {} provides none (add a filesystem adapter)", def.storage[i].storage_type),
                ));
            }
        }
    }
    let template = match (&def.template, vmt.installs_templates()) {
        (Some(t), true) => Some(template::find(&config.template_dir, t).map_err(|e| invalid("/definition/template", e))?),
        _ => None,
    };
    if let Some((ex, _)) = &existing {
        for old in &ex.definition.storage {
            if !def.storage.iter().any(|s| s.name == old.name && s.storage_type == old.storage_type) {
                return Err(invalid(
                    "/definition/storage",
                    format!("VM {vm} has volume {} of type {}, which this definition drops or changes; geats only adds volumes to an existing VM (deprovision it to start over)", old.name, old.storage_type),
                ));
            }
        }
        if provision && vmt.state(vm).is_running() {
            return Err(Error::InvalidState { vm: vm.clone(), action: "provision", reason: "it is running; stop it first".into() });
        }
        if !provision && ex.defined && ex.definition == def && vmt.exists(vm) {
            let state = vmt.state(vm);
            return Ok((false, json!({"definition": def, "state": state, "changed": false})));
        }
    }
    let vm_existed = existing.as_ref().is_some_and(|(r, _)| r.defined) && vmt.exists(vm);
    let old_rec = existing.as_ref().map(|(r, _)| r.clone());
    let (created, locked) = existing.as_ref().map_or_else(|| (db::now(), false), |(r, _)| (r.created.clone(), r.locked));
    let vmt_ref: &dyn VmType = &*vmt;
    with_rollback(op, vm, vmt_ref, &def, &mut vols, |op, vols| {
        let mut new_volume = vec![false; vols.len()];
        for (i, v) in vols.iter_mut().enumerate() {
            if !v.exists() {
                let desc = format!("define volume {} ({})", def.storage[i].name, v.describe());
                op.step(desc, Some(Undo::UndefineVolume(i)), |_| Ok(v.define()?))?;
                new_volume[i] = true;
            }
        }
        let root_created = new_volume.first().copied().unwrap_or(false);
        if provision {
            // A volume defined just now is empty already.
            for (i, v) in vols.iter_mut().enumerate().filter(|(i, _)| !new_volume[*i]) {
                op.step(format!("format volume {}", def.storage[i].name), None, |_| Ok(v.format()?))?;
            }
        }
        if provision && vols.is_empty() && vm_existed && vmt_ref.installs_templates() {
            // No volume: the VM type keeps the root itself; empty it so
            // that define installs the template afresh.
            op.step(format!("erase the root of VM {vm}"), None, |_| Ok(vmt_ref.destroy_data(vm)?))?;
        }
        if vmt_ref.installs_templates() {
            if let Some(root) = vols.first_mut() {
                let name = &def.storage[0].name;
                op.step(format!("activate volume {name}"), Some(Undo::DeactivateVolume(0)), |_| Ok(root.activate()?))?;
                let dir = root.provides().directory;
                if let (Some(t), Some(dir)) = (&template, &dir) {
                    if provision || root_created || is_empty_dir(dir) {
                        op.step(format!("install template {}", t.name), None, |_| {
                            let t = vmt_ref.template_for(vm, &def, dir, t.clone())?;
                            if !root.clone_template(&t)? {
                                template::install(&t, dir)?;
                            }
                            Ok(())
                        })?;
                    }
                }
                if let Some(dir) = &dir {
                    op.step("write guest configuration", None, |_| Ok(vmt_ref.write_guest_files(vm, &def, dir)?))?;
                }
                op.step(format!("deactivate volume {name}"), None, |_| Ok(root.deactivate()?))?;
            }
        }
        let att = attached(vols, &def);
        let undo = match (&old_rec, vm_existed) {
            (Some(old), true) => Undo::RedefineVm(Box::new(old.clone())),
            _ => Undo::UndefineVm,
        };
        op.step(format!("define {type_name} VM {vm}"), Some(undo), |_| Ok(vmt_ref.define(vm, &def, &att)?))?;
        let rec = VmRecord {
            name: vm.clone(),
            vm_type: type_name.clone(),
            definition: def.clone(),
            locked,
            defined: true,
            created: created.clone(),
            updated: db::now(),
        };
        let vrecs = volume_records(vols, &def);
        let undo = Undo::RestoreRecord(existing.clone().map(Box::new));
        op.step("record definition", Some(undo), |op| save_record(op, &rec, &vrecs))?;
        Ok(())
    })?;
    Ok((true, json!({"definition": def, "state": vmt.state(vm), "changed": true})))
}

fn power(op: &mut Op<'_>, vm: &VmName, action: PowerAction) -> Outcome {
    let Loaded { rec, vmt, mut vols } = load_defined(op, vm)?;
    let state = vmt.state(vm);
    let verb = match action {
        PowerAction::Start => "start",
        PowerAction::Stop => "stop",
        PowerAction::Shutdown => "shutdown",
        PowerAction::Reboot => "reboot",
    };
    match power_disposition(action, &state) {
        Disposition::AlreadyDone => {
            if matches!(action, PowerAction::Stop | PowerAction::Shutdown) {
                tidy(op, &rec.definition, &mut vols)?;
            }
            return Ok((false, json!({"state": state, "changed": false})));
        }
        Disposition::Deny(reason) => return Err(Error::InvalidState { vm: vm.clone(), action: verb, reason: reason.into() }),
        Disposition::Apply => {}
    }
    let vmt_ref: &dyn VmType = &*vmt;
    let def = &rec.definition;
    with_rollback(op, vm, vmt_ref, def, &mut vols, |op, vols| {
        match action {
            PowerAction::Start => {
                for (i, v) in vols.iter_mut().enumerate() {
                    op.step(format!("activate volume {}", def.storage[i].name), Some(Undo::DeactivateVolume(i)), |_| Ok(v.activate()?))?;
                }
                op.step(format!("start VM {vm}"), Some(Undo::StopVm), |_| Ok(vmt_ref.start(vm)?))
            }
            PowerAction::Stop => {
                op.step(format!("stop VM {vm}"), None, |_| Ok(vmt_ref.stop(vm)?))?;
                deactivate_all(op, def, vols)
            }
            PowerAction::Shutdown => {
                op.step(format!("shut down VM {vm}"), None, |_| Ok(vmt_ref.shutdown(vm)?))?;
                if op.is_dry() || !vmt_ref.state(vm).is_running() {
                    deactivate_all(op, def, vols)?;
                }
                Ok(())
            }
            PowerAction::Reboot => op.step(format!("reboot VM {vm}"), None, |_| Ok(vmt_ref.reboot(vm)?)),
        }
    })?;
    Ok((true, json!({"state": vmt.state(vm), "changed": true})))
}

fn deactivate_all(op: &mut Op<'_>, def: &Definition, vols: &mut [Box<dyn Volume>]) -> Result<()> {
    for (i, v) in vols.iter_mut().enumerate().rev() {
        op.step(format!("deactivate volume {}", def.storage[i].name), None, |_| Ok(v.deactivate()?))?;
    }
    Ok(())
}

/// Release the volumes of a VM that stopped on its own.
fn tidy(op: &mut Op<'_>, def: &Definition, vols: &mut [Box<dyn Volume>]) -> Result<()> {
    for (i, v) in vols.iter_mut().enumerate().rev() {
        if v.is_active() {
            op.step(format!("deactivate volume {} (the VM stopped on its own)", def.storage[i].name), None, |_| Ok(v.deactivate()?))?;
        }
    }
    Ok(())
}

fn remove(op: &mut Op<'_>, vm: &VmName, deprovision: bool) -> Outcome {
    let Some(Loaded { rec, vmt, mut vols }) = load(op, vm)? else {
        return Ok((false, json!({"changed": false})));
    };
    if !deprovision && !rec.defined {
        return Ok((false, json!({"changed": false})));
    }
    if rec.locked {
        return Err(Error::Locked(vm.clone()));
    }
    let vmt_ref: &dyn VmType = &*vmt;
    let def = rec.definition.clone();
    let destroy = deprovision || def.transient;
    with_rollback(op, vm, vmt_ref, &def, &mut vols, |op, vols| {
        if rec.defined {
            let state = vmt_ref.state(vm);
            if state.power != Power::Stopped && vmt_ref.exists(vm) {
                op.step(format!("stop VM {vm}"), None, |_| Ok(vmt_ref.stop(vm)?))?;
            }
            deactivate_all(op, &def, vols)?;
            if vmt_ref.exists(vm) {
                op.step(format!("undefine VM {vm}"), None, |_| Ok(vmt_ref.undefine(vm)?))?;
            }
        }
        if destroy {
            for (i, v) in vols.iter_mut().enumerate() {
                op.step(format!("destroy volume {} ({})", def.storage[i].name, v.describe()), None, |_| Ok(v.undefine()?))?;
            }
            if vols.is_empty() && vmt_ref.installs_templates() {
                // Without a volume the VM type keeps the root itself (LXC's
                // rootfs under default_rootfs_prefix).
                op.step(format!("destroy the root of VM {vm}"), None, |_| Ok(vmt_ref.destroy_data(vm)?))?;
            }
            let config = op.config;
            op.step(format!("forget VM {vm}"), None, |op| {
                op.db_mut()?.delete_vm(vm)?;
                Manager::remove_record(config, vm).map_err(|e| Error::Internal(format!("cannot remove record of {vm}: {e}")))
            })
        } else {
            let kept = VmRecord { defined: false, updated: db::now(), ..rec.clone() };
            let vrecs = volume_records(vols, &def);
            op.step(format!("keep the volumes of {vm}"), None, |op| save_record(op, &kept, &vrecs))
        }
    })?;
    Ok((true, json!({"changed": true})))
}

fn set_lock(op: &mut Op<'_>, vm: &VmName, locked: bool) -> Outcome {
    let Some(db) = op.db() else { return Err(Error::NotFound(vm.clone())) };
    let Some(rec) = db.vm(vm)? else { return Err(Error::NotFound(vm.clone())) };
    if rec.locked == locked {
        return Ok((false, json!({"locked": locked, "changed": false})));
    }
    let vols = db.volumes(vm)?;
    let new = VmRecord { locked, updated: db::now(), ..rec };
    op.step(if locked { format!("lock VM {vm}") } else { format!("unlock VM {vm}") }, None, |op| save_record(op, &new, &vols))?;
    Ok((true, json!({"locked": locked, "changed": true})))
}
