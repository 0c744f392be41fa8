//! A VM's volumes as the manager handles them: each volume's definition
//! and its built chain together, plus the implicit root a VM type keeps
//! itself ([`crate::vm::VmType::own_root`]) for a definition without
//! volumes, so that every later step treats all of them alike.

use crate::config::Config;
use crate::db::VolumeRecord;
use crate::definition::{Definition, VolumeSpec};
use crate::error::{Error, Result};
use crate::names::{TypeName, VmName, VolumeName};
use crate::storage::{self, Volume};
use crate::vm::{AttachedVolume, VmType};

/// One volume of a VM: its definition and the driver chain built for it.
#[derive(Debug)]
pub(crate) struct Vol {
    /// The definition's entry (for the implicit root, a `dir` named `root`).
    pub spec: VolumeSpec,
    /// The chain.
    pub volume: Box<dyn Volume>,
    /// The VM type's own root, not in the definition: it is not recorded
    /// in the database, since the VM type finds it again by name.
    pub implicit: bool,
}

impl Vol {
    /// What the VM type sees of it.
    pub fn attached(&self) -> AttachedVolume {
        AttachedVolume { name: self.spec.name.clone(), mountpoint: self.spec.mountpoint.clone(), provides: self.volume.provides() }
    }

    /// Its name, for step descriptions.
    pub fn name(&self) -> &VolumeName {
        &self.spec.name
    }
}

/// Build the volumes of `def` for `vm` (no disk access), or the VM type's
/// implicit root when the definition names none.
pub(crate) fn open(config: &Config, vm: &VmName, def: &Definition, vmt: &dyn VmType) -> Result<Vec<Vol>> {
    if def.storage.is_empty() {
        return Ok(implicit_root(vm, vmt).into_iter().collect());
    }
    def.storage
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let volume = storage::open(config, vm, spec, &format!("/definition/storage/{i}")).map_err(Error::from)?;
            Ok(Vol { spec: spec.clone(), volume, implicit: false })
        })
        .collect()
}

fn implicit_root(vm: &VmName, vmt: &dyn VmType) -> Option<Vol> {
    let path = vmt.own_root(vm)?;
    let name = VolumeName::new("root").ok()?;
    let storage_type = TypeName::new("dir").ok()?;
    let spec = VolumeSpec { name, storage_type, size: None, mountpoint: None, options: Default::default() };
    Some(Vol { spec, volume: Box::new(storage::dir::Dir::at(format!("{vm}/root"), path)), implicit: true })
}

/// What the VM type sees of the volumes.
pub(crate) fn attached(vols: &[Vol]) -> Vec<AttachedVolume> {
    vols.iter().map(Vol::attached).collect()
}

/// What the database and the record file keep of the volumes.
pub(crate) fn records(vols: &[Vol]) -> Vec<VolumeRecord> {
    vols.iter()
        .filter(|v| !v.implicit)
        .map(|v| VolumeRecord { name: v.spec.name.clone(), storage_type: v.spec.storage_type.clone(), record: v.volume.record() })
        .collect()
}
