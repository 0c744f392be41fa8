//! The mutating actions. Each decides its disposition from the observed
//! state first, then runs its steps through [`Op`], which journals them and
//! undoes them in reverse if a later step fails.

use super::op::{Op, Undo};
use super::reply::{AdminLockReply, DefineReply, PowerReply, RemovedReply, Reply};
use super::volumes::{self, Vol};
use super::Manager;
use crate::db::{self, VmRecord, VolumeRecord};
use crate::definition::Definition;
use crate::error::{Error, Result};
use crate::names::{TypeName, VmName, VolumeName};
use crate::request::{Action, RequestError};
use crate::state::{power_disposition, Disposition, Power, PowerAction};
use crate::storage::{Kind, RootDirs, StorageError};
use crate::template::{self, Template};
use crate::vm::{self, VmType};

pub(super) type Outcome = Result<Reply>;

/// Run a mutating action.
pub(super) fn run(op: &mut Op<'_>, action: &Action) -> Outcome {
    match action {
        Action::Define(vm, def) => define(op, vm, def),
        Action::Provision(vm, def) => provision(op, vm, def),
        Action::Start(vm) => power(op, vm, PowerAction::Start),
        Action::Stop(vm) => power(op, vm, PowerAction::Stop),
        Action::Shutdown(vm) => power(op, vm, PowerAction::Shutdown),
        Action::Reboot(vm) => power(op, vm, PowerAction::Reboot),
        Action::Undefine(vm) => undefine(op, vm),
        Action::Deprovision(vm) => deprovision(op, vm),
        Action::Lock(vm) => set_admin_lock(op, vm, true),
        Action::Unlock(vm) => set_admin_lock(op, vm, false),
        Action::Snapshot(vm, name) => super::snapshots::snapshot(op, vm, name),
        Action::Restore(vm, name) => super::snapshots::restore(op, vm, name),
        Action::DeleteSnapshot(vm, name) => super::snapshots::delete(op, vm, name),
        Action::Migrate(vm, dest) => super::migrate::migrate(op, vm, dest),
        Action::Status | Action::Info(_) | Action::Events { .. } | Action::Reconcile => {
            Err(Error::Internal(format!("{} is not a mutating action", action.name())))
        }
    }
}

fn invalid(pointer: &str, problem: impl std::fmt::Display) -> Error {
    RequestError::invalid(pointer, problem).into()
}

/// A VM as geats knows it: its record, VM type and volumes.
pub(super) struct Loaded {
    pub rec: VmRecord,
    pub vmt: Box<dyn VmType>,
    pub vols: Vec<Vol>,
}

/// Load any record of `vm`, defined or kept.
pub(super) fn load(op: &Op<'_>, vm: &VmName) -> Result<Option<Loaded>> {
    let Some(db) = op.db() else { return Ok(None) };
    let Some(rec) = db.vm(vm)? else { return Ok(None) };
    let vmt = vm::build(op.config, &rec.vm_type)?;
    let vols = volumes::open(op.config, vm, &rec.definition, &*vmt)?;
    Ok(Some(Loaded { rec, vmt, vols }))
}

/// Load a defined VM or fail with `not_found`.
pub(super) fn load_defined(op: &Op<'_>, vm: &VmName) -> Result<Loaded> {
    match load(op, vm)? {
        Some(l) if l.rec.defined => Ok(l),
        _ => Err(Error::NotFound(vm.clone())),
    }
}

/// Run `f`; if it fails, undo its completed steps newest first and report
/// the failure together with any failure of the cleanup.
pub(super) fn with_rollback(
    op: &mut Op<'_>,
    vm: &VmName,
    vmt: &dyn VmType,
    vols: &mut [Vol],
    f: impl FnOnce(&mut Op<'_>, &mut [Vol]) -> Result<()>,
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
            Undo::UndefineVolume(i) => vols.get_mut(*i).map_or(Ok(()), |v| v.volume.undefine().map_err(Error::from)),
            Undo::DeactivateVolume(i) => vols.get_mut(*i).map_or(Ok(()), |v| v.volume.deactivate().map_err(Error::from)),
            Undo::UndefineVm => vmt.undefine(vm).map_err(Error::from),
            Undo::RedefineVm(old) => {
                let att: Vec<_> = vols
                    .iter()
                    .filter(|v| v.implicit || old.definition.storage.iter().any(|s| s.name == v.spec.name))
                    .map(Vol::attached)
                    .collect();
                vmt.define(vm, &old.definition, &att).map_err(Error::from)
            }
            Undo::StopVm => vmt.stop(vm).map_err(Error::from),
            Undo::ApplyLive(old) => vmt.apply_live(vm, old).map(|_| ()).map_err(Error::from),
            Undo::StartVm => vols
                .iter_mut()
                .try_for_each(|v| v.volume.activate())
                .map_err(Error::from)
                .and_then(|()| vmt.start(vm).map_err(Error::from)),
            Undo::RestoreRecord(old) => restore_record(op, vm, old.as_deref()),
            Undo::DeleteSnapshot(i, name) => vols.get_mut(*i).map_or(Ok(()), |v| v.volume.delete_snapshot(name).map_err(Error::from)),
            Undo::UnfreezeVm => vmt.unfreeze(vm).map_err(Error::from),
            Undo::ForgetSnapshot(name) => super::snapshots::forget(op, vm, name),
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
            Manager::remove_record(config, vm)
        }
        Some((rec, vols)) => {
            db.put_vm(rec, vols)?;
            Manager::write_record(config, rec, vols)
        }
    }
}

pub(super) fn save_record(op: &mut Op<'_>, rec: &VmRecord, vols: &[VolumeRecord]) -> Result<()> {
    let config = op.config;
    op.db_mut()?.put_vm(rec, vols)?;
    Manager::write_record(config, rec, vols)
}

/// Is a directory absent or empty (a fresh file system's `lost+found`
/// does not count)?
fn is_empty_dir(p: &std::path::Path) -> bool {
    match std::fs::read_dir(p) {
        Ok(mut rd) => rd.all(|e| e.map(|e| e.file_name() == "lost+found").unwrap_or(false)),
        Err(_) => true,
    }
}

/// `define`: create or update the VM, keeping its data; an identical
/// re-define of a VM that exists changes nothing.
fn define(op: &mut Op<'_>, vm: &VmName, def: &Definition) -> Outcome {
    let plan = plan_definition(op, vm, def)?;
    if let Some((ex, _)) = &plan.existing {
        if ex.defined && ex.definition == plan.def && plan.vmt.exists(vm) {
            let state = plan.vmt.state(vm);
            return Ok(Reply::Define(DefineReply { definition: plan.def, state, changed: false, applied_live: Vec::new(), pending: Vec::new() }));
        }
    }
    apply_definition(op, vm, plan, false)
}

/// `provision`: define, then erase every volume and install the template
/// afresh. Refused while the VM runs.
fn provision(op: &mut Op<'_>, vm: &VmName, def: &Definition) -> Outcome {
    let plan = plan_definition(op, vm, def)?;
    if plan.existing.is_some() && plan.vmt.state(vm).is_running() {
        return Err(Error::InvalidState { vm: vm.clone(), action: "provision", reason: "it is running; stop it first".into() });
    }
    apply_definition(op, vm, plan, true)
}

/// A definition checked against the configuration, the VM type, its
/// storage and what exists: everything `define` and `provision` decide
/// before their first step.
pub(super) struct Plan {
    pub(super) def: Definition,
    pub(super) type_name: TypeName,
    pub(super) vmt: Box<dyn VmType>,
    pub(super) vols: Vec<Vol>,
    template: Option<Template>,
    pub(super) existing: Option<(VmRecord, Vec<VolumeRecord>)>,
}

pub(super) fn plan_definition(op: &Op<'_>, vm: &VmName, def_in: &Definition) -> Result<Plan> {
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
    let vols = volumes::open(config, vm, &def, &*vmt)?;
    let accepts = vmt.accepts();
    for (i, v) in vols.iter().enumerate().filter(|(_, v)| !v.implicit) {
        let kind = v.volume.provides().kind;
        if !accepts.contains(&kind) {
            let wanted: Vec<&str> = accepts.iter().map(|k| k.as_str()).collect();
            let hint = if accepts.contains(&Kind::Directory) && matches!(kind, Kind::BlockDevice | Kind::File) { " (add a filesystem adapter)" } else { "" };
            return Err(invalid(
                &format!("/definition/storage/{i}/type"),
                format!("VM type {type_name} needs {}; storage type {} provides {}{hint}", wanted.join(" or "), v.spec.storage_type, kind.as_str()),
            ));
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
    }
    Ok(Plan { def, type_name, vmt, vols, template, existing })
}

/// The steps of `define` and `provision`: define new volumes (provision:
/// format the others), install the template onto the root and write the
/// guest files, define the VM in the hypervisor, record it.
pub(super) fn apply_definition(op: &mut Op<'_>, vm: &VmName, plan: Plan, provision: bool) -> Outcome {
    let Plan { def, type_name, vmt, mut vols, template, existing } = plan;
    let vm_existed = existing.as_ref().is_some_and(|(r, _)| r.defined) && vmt.exists(vm);
    // A running VM takes what can change live now, the rest at its next
    // start; a change it would refuse is refused before any step.
    // (provision refuses a running VM, so it need not ask again)
    let running = !provision && vm_existed && vmt.state(vm).is_running();
    if running {
        vmt.check_live(vm, &def)?;
    }
    let mut applied_live: Vec<&'static str> = Vec::new();
    let old_rec = existing.as_ref().map(|(r, _)| r.clone());
    let (created, locked) = existing.as_ref().map_or_else(|| (db::now(), false), |(r, _)| (r.created.clone(), r.locked));
    // What recovery needs to finish or undo this action if the process
    // is killed half-way (`recovery.rs`), journaled before the first step.
    let new_volumes: Vec<&VolumeName> = vols.iter().filter(|v| !v.volume.exists()).map(Vol::name).collect();
    op.set_intent(serde_json::json!({
        "definition": def,
        "existed": existing.is_some(),
        "vm_existed": vm_existed,
        "new_volumes": new_volumes,
    }));
    let vmt_ref: &dyn VmType = &*vmt;
    with_rollback(op, vm, vmt_ref, &mut vols, |op, vols| {
        let mut new_volume = vec![false; vols.len()];
        for (i, v) in vols.iter_mut().enumerate() {
            if !v.volume.exists() {
                let desc = format!("define volume {} ({})", v.name(), v.volume.describe());
                op.step(desc, Some(Undo::UndefineVolume(i)), |_| Ok(v.volume.define()?))?;
                new_volume[i] = true;
            }
        }
        if provision {
            // A volume defined just now is empty already.
            for (_, v) in vols.iter_mut().enumerate().filter(|(i, _)| !new_volume[*i]) {
                op.step(format!("format volume {}", v.name()), None, |_| Ok(v.volume.format()?))?;
            }
        }
        let root_created = new_volume.first().copied().unwrap_or(false);
        if vmt_ref.installs_templates() {
            if let Some(root) = vols.first_mut() {
                install_root(op, vm, vmt_ref, &def, root, template.as_ref(), provision || root_created, running)?;
            }
        }
        let att = volumes::attached(vols);
        let undo = match (&old_rec, vm_existed) {
            (Some(old), true) => Undo::RedefineVm(Box::new(old.clone())),
            _ => Undo::UndefineVm,
        };
        op.step(format!("define {type_name} VM {vm}"), Some(undo), |_| Ok(vmt_ref.define(vm, &def, &att)?))?;
        if let (true, Some(old)) = (running, &old_rec) {
            let undo = Undo::ApplyLive(Box::new(old.definition.clone()));
            op.step(format!("apply live limits to VM {vm}"), Some(undo), |_| {
                applied_live = vmt_ref.apply_live(vm, &def)?;
                Ok(())
            })?;
        }
        let rec = VmRecord {
            name: vm.clone(),
            vm_type: type_name.clone(),
            definition: def.clone(),
            locked,
            defined: true,
            created: created.clone(),
            updated: db::now(),
            intent: Default::default(),
        };
        let vrecs = volumes::records(vols);
        let undo = Undo::RestoreRecord(existing.clone().map(Box::new));
        op.step("record definition", Some(undo), |op| save_record(op, &rec, &vrecs))
    })?;
    let state = vmt.state(vm);
    let pending = if running { vmt.pending(vm, &def) } else { Vec::new() };
    let applied_live = applied_live.into_iter().map(str::to_string).collect();
    Ok(Reply::Define(DefineReply { definition: def, state, changed: true, applied_live, pending }))
}

/// Activate the root volume, install the template (when `fresh`, or when
/// the root is empty), write the guest files, deactivate it again.
#[allow(clippy::too_many_arguments)]
fn install_root(op: &mut Op<'_>, vm: &VmName, vmt: &dyn VmType, def: &Definition, root: &mut Vol, template: Option<&Template>, fresh: bool, running: bool) -> Result<()> {
    let name = root.name().clone();
    // A running VM's root stays active whatever happens.
    let undo = (!running).then_some(Undo::DeactivateVolume(0));
    // A fresh install's root is only looked at before the template
    // replaces what it holds (`Volume::activate_to_clone`).
    let cloning = fresh && template.is_some();
    if let (true, false, Some(t)) = (cloning, running, template) {
        if root.volume.offline_root().is_some() {
            return install_offline(op, vm, vmt, def, root, t);
        }
    }
    op.step(format!("activate volume {name}"), undo, |_| Ok(if cloning { root.volume.activate_to_clone() } else { root.volume.activate() }?))?;
    let dir = root.volume.provides().path_of(Kind::Directory).map(std::path::Path::to_path_buf);
    // A fresh root that syncs whole at less cost than a file at a time
    // (`Volume::sync_path`): the clone's files and the guest files without
    // an fsync each, then one `syncfs`, before the install is recorded.
    let whole = if fresh && !running && dir.is_some() { root.volume.sync_path() } else { None };
    if let (Some(t), Some(dir)) = (template, &dir) {
        if fresh || is_empty_dir(dir) {
            op.step(format!("install template {}", t.name), None, |_| {
                // The template as this VM's root must receive it (LXC
                // shifts owners into an unprivileged container's id map).
                let t = vmt.template_for(vm, def, &RootDirs::active(dir), t.clone())?;
                if !root.volume.clone_template(&t, whole.is_none())? {
                    template::install(&t, dir)?;
                }
                Ok(())
            })?;
        }
    }
    if let Some(dir) = &dir {
        op.step("write guest configuration", None, |_| {
            vmt.write_guest_files(vm, def, &RootDirs::active(dir), whole.is_none())?;
            match &whole {
                Some(p) => Ok(crate::sys::fsutil::syncfs(p).map_err(crate::storage::io_err(&name.to_string(), "sync", p))?),
                None => Ok(()),
            }
        })?;
    }
    // The root of a running VM is active and stays so; any other is
    // released (also one a killed action left active).
    if running {
        return Ok(());
    }
    op.step(format!("deactivate volume {name}"), None, |_| Ok(root.volume.deactivate()?))
}

/// [`install_root`] of a fresh install into a volume that takes it
/// while inactive (`Volume::offline_root`, an unmounted overlay): the
/// template and the guest files go in without activating it, so there is
/// no mount to make, no unmount to sync the file system under it, and
/// nothing to release. The guest files are fsynced (their journal commit
/// carries what the clone wrote, whose writeback it started), then the
/// clone's files (`Volume::sync_clone`, a cache flush), before the
/// install is recorded: one journal commit for the install, not two.
fn install_offline(op: &mut Op<'_>, vm: &VmName, vmt: &dyn VmType, def: &Definition, root: &mut Vol, template: &Template) -> Result<()> {
    let name = root.name().clone();
    let offline = |root: &Vol| {
        root.volume
            .offline_root()
            .ok_or_else(|| Error::Internal(format!("volume {name} stopped taking an install while inactive")))
    };
    op.step(format!("install template {}", template.name), None, |_| {
        let dirs = offline(root)?;
        let t = vmt.template_for(vm, def, &dirs, template.clone())?;
        if !root.volume.clone_template(&t, false)? {
            template::install(&t, &dirs.write)?;
            crate::sys::fsutil::syncfs(&dirs.write).map_err(crate::storage::io_err(&name.to_string(), "sync", &dirs.write))?;
        }
        Ok(())
    })?;
    op.step("write guest configuration", None, |_| {
        // Again: the clone has put the template under the volume.
        let dirs = offline(root)?;
        vmt.write_guest_files(vm, def, &dirs, true)?;
        Ok(root.volume.sync_clone()?)
    })
}

pub(super) fn power(op: &mut Op<'_>, vm: &VmName, action: PowerAction) -> Outcome {
    let Loaded { vmt, mut vols, .. } = load_defined(op, vm)?;
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
                tidy(op, &mut vols)?;
            }
            return Ok(Reply::Power(PowerReply { state, changed: false }));
        }
        Disposition::Deny(reason) => return Err(Error::InvalidState { vm: vm.clone(), action: verb, reason: reason.into() }),
        Disposition::Apply => {}
    }
    let vmt_ref: &dyn VmType = &*vmt;
    with_rollback(op, vm, vmt_ref, &mut vols, |op, vols| match action {
        PowerAction::Start => {
            for (i, v) in vols.iter_mut().enumerate() {
                op.step(format!("activate volume {}", v.name()), Some(Undo::DeactivateVolume(i)), |_| Ok(v.volume.activate()?))?;
            }
            op.step(format!("start VM {vm}"), Some(Undo::StopVm), |_| Ok(vmt_ref.start(vm)?))
        }
        PowerAction::Stop => {
            op.step(format!("stop VM {vm}"), None, |_| Ok(vmt_ref.stop(vm)?))?;
            deactivate_all(op, vols)
        }
        PowerAction::Shutdown => {
            op.step(format!("shut down VM {vm}"), None, |_| Ok(vmt_ref.shutdown(vm)?))?;
            if op.is_dry() || !vmt_ref.state(vm).is_running() {
                deactivate_all(op, vols)?;
            }
            Ok(())
        }
        PowerAction::Reboot => op.step(format!("reboot VM {vm}"), None, |_| Ok(vmt_ref.reboot(vm)?)),
    })?;
    Ok(Reply::Power(PowerReply { state: vmt.state(vm), changed: true }))
}

pub(super) fn deactivate_all(op: &mut Op<'_>, vols: &mut [Vol]) -> Result<()> {
    for v in vols.iter_mut().rev() {
        op.step(format!("deactivate volume {}", v.name()), None, |_| Ok(v.volume.deactivate()?))?;
    }
    Ok(())
}

/// Release the volumes of a VM that stopped on its own.
pub(super) fn tidy(op: &mut Op<'_>, vols: &mut [Vol]) -> Result<()> {
    for v in vols.iter_mut().rev() {
        if v.volume.is_active() {
            op.step(format!("deactivate volume {} (the VM stopped on its own)", v.name()), None, |_| Ok(v.volume.deactivate()?))?;
        }
    }
    Ok(())
}

/// `undefine`: stop the VM and remove it from the hypervisor; keep its
/// volumes (destroy them if it is transient). A VM geats holds nothing of,
/// or one already undefined, is `changed: false`.
fn undefine(op: &mut Op<'_>, vm: &VmName) -> Outcome {
    let Some(loaded) = load(op, vm)? else { return Ok(Reply::Removed(RemovedReply { changed: false })) };
    if !loaded.rec.defined {
        return Ok(Reply::Removed(RemovedReply { changed: false }));
    }
    let destroy = loaded.rec.definition.transient;
    remove(op, vm, loaded, destroy)
}

/// `deprovision`: undefine if defined, and destroy the volumes, also those
/// an earlier undefine kept.
fn deprovision(op: &mut Op<'_>, vm: &VmName) -> Outcome {
    let Some(loaded) = load(op, vm)? else { return Ok(Reply::Removed(RemovedReply { changed: false })) };
    remove(op, vm, loaded, true)
}

/// The steps of `undefine` and `deprovision`.
pub(super) fn remove(op: &mut Op<'_>, vm: &VmName, loaded: Loaded, destroy: bool) -> Outcome {
    let Loaded { rec, vmt, mut vols } = loaded;
    if rec.locked {
        return Err(Error::Locked(vm.clone()));
    }
    let vmt_ref: &dyn VmType = &*vmt;
    with_rollback(op, vm, vmt_ref, &mut vols, |op, vols| {
        if rec.defined {
            let state = vmt_ref.state(vm);
            if state.power != Power::Stopped && vmt_ref.exists(vm) {
                op.step(format!("stop VM {vm}"), None, |_| Ok(vmt_ref.stop(vm)?))?;
            }
            deactivate_all(op, vols)?;
            if vmt_ref.exists(vm) {
                op.step(format!("undefine VM {vm}"), None, |_| Ok(vmt_ref.undefine(vm)?))?;
            }
        }
        if destroy {
            for v in vols.iter_mut() {
                op.step(format!("destroy volume {} ({})", v.name(), v.volume.describe()), None, |_| Ok(v.volume.undefine()?))?;
            }
            let config = op.config;
            op.step(format!("forget VM {vm}"), None, |op| {
                op.db_mut()?.delete_vm(vm)?;
                Manager::remove_record(config, vm)
            })
        } else {
            let kept = VmRecord { defined: false, updated: db::now(), ..rec.clone() };
            let vrecs = volumes::records(vols);
            op.step(format!("keep the volumes of {vm}"), None, |op| save_record(op, &kept, &vrecs))
        }
    })?;
    Ok(Reply::Removed(RemovedReply { changed: true }))
}

/// `lock` and `unlock`: the admin lock, which refuses undefine and
/// deprovision (not the operation lease every action takes).
fn set_admin_lock(op: &mut Op<'_>, vm: &VmName, locked: bool) -> Outcome {
    let Some(db) = op.db() else { return Err(Error::NotFound(vm.clone())) };
    let Some(rec) = db.vm(vm)? else { return Err(Error::NotFound(vm.clone())) };
    if rec.locked == locked {
        return Ok(Reply::AdminLock(AdminLockReply { locked, changed: false }));
    }
    let vols = db.volumes(vm)?;
    let new = VmRecord { locked, updated: db::now(), ..rec };
    op.step(if locked { format!("lock VM {vm}") } else { format!("unlock VM {vm}") }, None, |op| save_record(op, &new, &vols))?;
    Ok(Reply::AdminLock(AdminLockReply { locked, changed: true }))
}
