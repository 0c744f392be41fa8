//! VM and volume rows.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{q, Db, DbError};
use crate::definition::{Definition, DefinitionJson, Nic};
use crate::names::{TypeName, VmName, VolumeName};

/// What geats knows about a VM (not its running state).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Its name.
    pub name: VmName,
    /// Its VM type.
    pub vm_type: TypeName,
    /// Its definition.
    pub definition: Definition,
    /// The admin lock.
    pub locked: bool,
    /// False once undefined while its volumes are kept.
    pub defined: bool,
    /// When first defined.
    pub created: String,
    /// When last changed.
    pub updated: String,
    /// The intent and outstanding drift, read with the row (issue 14);
    /// written only by `db::events`, never by [`Db::put_vm`], and not
    /// kept in record files.
    #[serde(skip)]
    pub intent: Intent,
}

/// What a VM should be doing, as recorded: the `desired` and `drift`
/// columns of its row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// None recorded yet (or a value this geats does not know).
    pub desired: Option<Desired>,
    /// A read already reported a drift that has not ended.
    pub drift: bool,
    /// False when no operation lease row existed as the row was read;
    /// true when one did (its holder may be dead) or when the read did not
    /// check (the list of all VMs).
    pub leased: bool,
}

/// A defined VM as `status` reads it: its definition as stored, not
/// parsed ([`DefinitionJson`]), and the two values `status` needs from it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSummary {
    /// Its name.
    pub name: VmName,
    /// Its VM type.
    pub vm_type: TypeName,
    /// Its definition, as stored.
    pub definition: DefinitionJson,
    /// `definition.ram`.
    pub ram: Option<u64>,
    /// `definition.privileged`.
    pub privileged: bool,
    /// The intent and outstanding drift (`leased` is always true: the
    /// list does not check).
    pub intent: Intent,
}

/// What `status` reads from a stored definition. Deserialising it checks
/// that the whole text is JSON (every other key is skipped, not built).
#[derive(Deserialize)]
struct SummaryFields {
    #[serde(default)]
    ram: Option<u64>,
    #[serde(default)]
    privileged: bool,
}

/// A defined VM as `geats list` reads it: of its definition only what
/// the list shows or needs to choose the primary address.
#[derive(Debug, Clone, PartialEq)]
pub struct VmListed {
    /// Its name.
    pub name: VmName,
    /// Its VM type.
    pub vm_type: TypeName,
    /// The admin lock.
    pub locked: bool,
    /// `definition.ram`.
    pub ram: Option<u64>,
    /// `definition.network`.
    pub network: Vec<Nic>,
}

/// What `geats list` reads from a stored definition (as
/// [`SummaryFields`]: the rest is checked to be JSON, not built).
#[derive(Deserialize)]
struct ListedFields {
    #[serde(default)]
    ram: Option<u64>,
    #[serde(default)]
    network: Vec<Nic>,
}

/// What a storage driver recorded about one volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The volume's name.
    pub name: VolumeName,
    /// Its storage type.
    pub storage_type: TypeName,
    /// Driver state (paths, sizes, ...).
    pub record: serde_json::Value,
}

/// The intent an action expressed: the `desired` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// start, reboot.
    Running,
    /// stop, shutdown, define of a new VM.
    Stopped,
}

impl Desired {
    /// The stored and wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }

    /// From the stored word.
    pub fn parse(s: &str) -> Option<Desired> {
        match s {
            "running" => Some(Desired::Running),
            "stopped" => Some(Desired::Stopped),
            _ => None,
        }
    }
}

impl std::fmt::Display for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> DbError {
    DbError::Corrupt { what: what.to_string(), problem: e.to_string() }
}

type VmRow = (String, String, String, bool, bool, String, String, Option<Desired>, bool, bool);

fn vm_from_row(r: VmRow) -> Result<VmRecord, DbError> {
    let (name, vm_type, def, locked, defined, created, updated, desired, drift, leased) = r;
    Ok(VmRecord {
        name: VmName::new(&name).map_err(|e| corrupt("VM name", e))?,
        vm_type: TypeName::new(&vm_type).map_err(|e| corrupt(&format!("VM type of {name}"), e))?,
        definition: serde_json::from_str(&def).map_err(|e| corrupt(&format!("definition of {name}"), e))?,
        locked,
        defined,
        created,
        updated,
        intent: Intent { desired, drift, leased },
    })
}

const VM_COLS: &str = "name, vm_type, definition, locked, defined, created, updated, desired, drift IS NOT NULL";

// For one VM the last column tells whether an operation lease row exists,
// so `info` asks for the lease only then (cheaper than one more statement);
// for the list, one read of the (usually empty) lease table is cheaper
// than a lookup per row, so it says "maybe" (issue 14).
const ONE_LEASED: &str = "EXISTS (SELECT 1 FROM op_locks WHERE op_locks.vm = vms.name)";
const LIST_LEASED: &str = "1";

/// A text column, borrowed from the row.
fn text<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> Result<&'a str, DbError> {
    r.get_ref(i).map_err(q("list VMs"))?.as_str().map_err(|e| corrupt("VM row", e))
}

/// VM `name`'s type from its column `t`. Most hosts use one VM type or
/// two: a name equal to the last row's is not checked again.
fn type_of(name: &VmName, t: &str, last: &mut Option<TypeName>) -> Result<TypeName, DbError> {
    if let Some(l) = last.as_ref().filter(|l| l.as_str() == t) {
        return Ok(l.clone());
    }
    let t = TypeName::new(t).map_err(|e| corrupt(&format!("VM type of {name}"), e))?;
    *last = Some(t.clone());
    Ok(t)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VmRow> {
    let desired = r.get_ref(7)?.as_str_or_null().ok().flatten().and_then(Desired::parse);
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, desired, r.get(8)?, r.get(9)?))
}

impl Db {
    /// One VM, defined or kept.
    pub fn vm(&self, name: &VmName) -> Result<Option<VmRecord>, DbError> {
        let sql = format!("SELECT {VM_COLS}, {ONE_LEASED} FROM vms WHERE name = ?1");
        let r = self.conn().query_row(&sql, [name.as_str()], row).optional().map_err(q("read VM"))?;
        r.map(vm_from_row).transpose()
    }

    /// The VM type of a defined VM, read alone (no definition parsed).
    pub fn vm_type(&self, name: &VmName) -> Result<Option<TypeName>, DbError> {
        const SQL: &str = "SELECT vm_type FROM vms WHERE name = ?1 AND defined = 1";
        let t: Option<String> = self.conn().query_row(SQL, [name.as_str()], |r| r.get(0)).optional().map_err(q("read VM"))?;
        t.map(|t| TypeName::new(&t).map_err(|e| corrupt(&format!("VM type of {name}"), e))).transpose()
    }

    /// All VMs, defined ones only unless `with_kept`.
    pub fn vms(&self, with_kept: bool) -> Result<Vec<VmRecord>, DbError> {
        let sql = format!("SELECT {VM_COLS}, {LIST_LEASED} FROM vms WHERE defined = 1 OR ?1 ORDER BY name");
        let mut st = self.conn().prepare_cached(&sql).map_err(q("list VMs"))?;
        let rows = st.query_map([with_kept], row).map_err(q("list VMs"))?;
        rows.map(|r| r.map_err(q("list VMs")).and_then(vm_from_row)).collect()
    }

    /// Every VM as `status` reads it, by name: the defined ones, then the
    /// kept ones (one pass over the table for both). The stored
    /// definitions are checked to be JSON but not parsed into
    /// [`Definition`]s, and no text is copied that `status` does not send.
    pub fn vm_summaries(&self) -> Result<(Vec<VmSummary>, Vec<VmSummary>), DbError> {
        const SQL: &str = "SELECT name, vm_type, definition, desired, drift IS NOT NULL, defined FROM vms ORDER BY name";
        let mut st = self.conn().prepare_cached(SQL).map_err(q("list VMs"))?;
        let mut rows = st.query([]).map_err(q("list VMs"))?;
        let (mut defined, mut kept) = (Vec::new(), Vec::new());
        let mut last_type: Option<TypeName> = None;
        while let Some(r) = rows.next().map_err(q("list VMs"))? {
            let name = VmName::new(text(r, 0)?).map_err(|e| corrupt("VM name", e))?;
            let vm_type = type_of(&name, text(r, 1)?, &mut last_type)?;
            let def = text(r, 2)?;
            let fields: SummaryFields = serde_json::from_str(def).map_err(|e| corrupt(&format!("definition of {name}"), e))?;
            let desired = r.get_ref(3).map_err(q("list VMs"))?.as_str_or_null().ok().flatten().and_then(Desired::parse);
            let drift: bool = r.get(4).map_err(q("list VMs"))?;
            let is_defined: bool = r.get(5).map_err(q("list VMs"))?;
            let summary = VmSummary {
                vm_type,
                definition: DefinitionJson::from_stored(def.to_owned()),
                ram: fields.ram,
                privileged: fields.privileged,
                intent: Intent { desired, drift, leased: true },
                name,
            };
            if is_defined { defined.push(summary) } else { kept.push(summary) }
        }
        Ok((defined, kept))
    }

    /// Every defined VM as `geats list` reads it, by name: no whole
    /// definition is built, and no column read that the list does not show.
    pub fn vms_listed(&self) -> Result<Vec<VmListed>, DbError> {
        const SQL: &str = "SELECT name, vm_type, definition, locked FROM vms WHERE defined = 1 ORDER BY name";
        let mut st = self.conn().prepare_cached(SQL).map_err(q("list VMs"))?;
        let mut rows = st.query([]).map_err(q("list VMs"))?;
        let mut out = Vec::new();
        let mut last_type: Option<TypeName> = None;
        while let Some(r) = rows.next().map_err(q("list VMs"))? {
            let name = VmName::new(text(r, 0)?).map_err(|e| corrupt("VM name", e))?;
            let vm_type = type_of(&name, text(r, 1)?, &mut last_type)?;
            let fields: ListedFields = serde_json::from_str(text(r, 2)?).map_err(|e| corrupt(&format!("definition of {name}"), e))?;
            let locked: bool = r.get(3).map_err(q("list VMs"))?;
            out.push(VmListed { name, vm_type, locked, ram: fields.ram, network: fields.network });
        }
        Ok(out)
    }

    /// The volumes of a VM, root first.
    pub fn volumes(&self, vm: &VmName) -> Result<Vec<VolumeRecord>, DbError> {
        let mut st = self
            .conn()
            .prepare_cached("SELECT name, storage_type, record FROM volumes WHERE vm = ?1 ORDER BY position")
            .map_err(q("list volumes"))?;
        let rows = st
            .query_map([vm.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
            .map_err(q("list volumes"))?;
        rows.map(|r| {
            let (name, st, rec) = r.map_err(q("list volumes"))?;
            Ok(VolumeRecord {
                name: VolumeName::new(&name).map_err(|e| corrupt("volume name", e))?,
                storage_type: TypeName::new(&st).map_err(|e| corrupt("storage type", e))?,
                record: serde_json::from_str(&rec).map_err(|e| corrupt(&format!("record of volume {name}"), e))?,
            })
        })
        .collect()
    }

    /// Insert or replace a VM and its volumes in one transaction.
    pub fn put_vm(&mut self, vm: &VmRecord, volumes: &[VolumeRecord]) -> Result<(), DbError> {
        let def = DefinitionJson::of(&vm.definition).map_err(|e| corrupt("definition", e))?;
        let def = def.as_str();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO vms (name, vm_type, definition, locked, defined, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(name) DO UPDATE SET vm_type = ?2, definition = ?3, locked = ?4, defined = ?5, updated = ?7",
                params![vm.name.as_str(), vm.vm_type.as_str(), def, vm.locked, vm.defined, vm.created, vm.updated],
            )
            .map_err(q("write VM"))?;
            tx.execute("DELETE FROM volumes WHERE vm = ?1", [vm.name.as_str()]).map_err(q("write volumes"))?;
            for (i, v) in volumes.iter().enumerate() {
                tx.execute(
                    "INSERT INTO volumes (vm, name, position, storage_type, record) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![vm.name.as_str(), v.name.as_str(), i as i64, v.storage_type.as_str(), v.record.to_string()],
                )
                .map_err(q("write volume"))?;
            }
            Ok(())
        })
    }

    /// Forget a VM and its volumes.
    pub fn delete_vm(&mut self, name: &VmName) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute("DELETE FROM volumes WHERE vm = ?1", [name.as_str()]).map_err(q("delete volumes"))?;
            tx.execute("DELETE FROM snapshots WHERE vm = ?1", [name.as_str()]).map_err(q("delete snapshots"))?;
            tx.execute("DELETE FROM vms WHERE name = ?1", [name.as_str()]).map_err(q("delete VM"))?;
            Ok(())
        })
    }
}

/// Migration to schema version 5: every stored definition rewritten in its
/// canonical form ([`DefinitionJson`]), which `status` copies into its
/// reply as it is. A definition that does not parse is left as it was: it
/// is reported as corrupt when read, as before.
pub(super) fn canonical_definitions(tx: &rusqlite::Transaction<'_>) -> Result<(), DbError> {
    let rows: Vec<(String, String)> = {
        let mut st = tx.prepare("SELECT name, definition FROM vms").map_err(q("read definitions"))?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(q("read definitions"))?;
        rows.collect::<Result<_, _>>().map_err(q("read definitions"))?
    };
    for (name, text) in rows {
        let Ok(def) = serde_json::from_str::<Definition>(&text) else { continue };
        let canonical = DefinitionJson::of(&def).map_err(|e| corrupt(&format!("definition of {name}"), e))?;
        if canonical.as_str() != text {
            tx.execute("UPDATE vms SET definition = ?2 WHERE name = ?1", params![name, canonical.as_str()]).map_err(q("rewrite definition"))?;
        }
    }
    Ok(())
}
