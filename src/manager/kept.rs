//! Kept VMs: undefined while their volumes were kept, so a later `define`
//! of the name finds the data again and `deprovision` destroys it. They
//! are not defined VMs (no hypervisor state, not in `vms`, which the
//! Vagoth monitor reads as the defined VMs), but an operator must see
//! them: `status` lists them under their own key, `geats list --all`
//! with the state `kept`.

use serde_json::{json, Map, Value};

use super::Manager;
use crate::db::Db;
use crate::error::Result;

impl Manager {
    /// `status`'s `kept`: every kept VM by name, with its last definition
    /// and the names of the volumes kept for it.
    pub(super) fn kept(&self, db: Option<&Db>) -> Result<Value> {
        let mut out = Map::new();
        let Some(db) = db else { return Ok(Value::Object(out)) };
        for r in db.vms(true)?.into_iter().filter(|r| !r.defined) {
            let volumes: Vec<String> = db.volumes(&r.name)?.into_iter().map(|v| v.name.to_string()).collect();
            out.insert(r.name.to_string(), json!({"definition": r.definition, "volumes": volumes}));
        }
        Ok(Value::Object(out))
    }

    /// The rows `geats list --all` adds: kept VMs in the shape of
    /// [`Manager::list`]'s rows, with the state `["kept", "kept"]` and no IP.
    pub fn list_kept(&self) -> Result<Vec<Value>> {
        let Some(db) = self.db_read()? else { return Ok(Vec::new()) };
        Ok(db
            .vms(true)?
            .into_iter()
            .filter(|r| !r.defined)
            .map(|r| {
                json!({
                    "name": r.name,
                    "state": ["kept", "kept"],
                    "locked": r.locked,
                    "vm_type": r.vm_type,
                    "ip": null,
                    "ram": r.definition.ram,
                })
            })
            .collect())
    }
}
