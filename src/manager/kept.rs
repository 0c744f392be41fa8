//! Kept VMs: undefined while their volumes were kept, so a later `define`
//! of the name finds the data again and `deprovision` destroys it. They
//! are not defined VMs (no hypervisor state, not in `vms`, which the
//! Vagoth monitor reads as the defined VMs), but an operator must see
//! them: `status` lists them under their own key, `geats list --all`
//! with the state `kept`.

use std::collections::BTreeMap;

use super::reply::{KeptVm, ListRow, RowState};
use super::Manager;
use crate::db::{Db, DbError, VmSummary};
use crate::error::Result;
use crate::names::VmName;

impl Manager {
    /// `status`'s `kept`: every kept VM by name (`rows`, read with the
    /// defined ones), with its last definition and the names of the
    /// volumes kept for it.
    pub(super) fn kept(&self, db: Option<&Db>, rows: Vec<VmSummary>) -> Result<BTreeMap<VmName, KeptVm>> {
        let mut out = BTreeMap::new();
        let Some(db) = db else { return Ok(out) };
        for r in rows {
            let definition = r.definition.parse().map_err(|e| DbError::Corrupt { what: format!("definition of {}", r.name), problem: e.to_string() })?;
            let volumes = db.volumes(&r.name)?.into_iter().map(|v| v.name).collect();
            out.insert(r.name, KeptVm { definition, volumes });
        }
        Ok(out)
    }

    /// The rows `geats list --all` adds: kept VMs in the shape of
    /// [`Manager::list`]'s rows, with the state `["kept", "kept"]` and no IP.
    pub fn list_kept(&self) -> Result<Vec<ListRow>> {
        let Some(db) = self.db_read()? else { return Ok(Vec::new()) };
        Ok(db
            .vms(true)?
            .into_iter()
            .filter(|r| !r.defined)
            .map(|r| ListRow { name: r.name, state: RowState::Kept, locked: r.locked, vm_type: r.vm_type, ip: None, ram: r.definition.ram })
            .collect())
    }
}
