//! The replies of the actions, as types. The transports serialise them
//! (field names are the wire's, `schemas/reply/*.json` describe them and
//! the schema tests keep both in step); the CLI reads their fields, so a
//! misspelt key is a compile error instead of a "-" on the screen.
//!
//! Every mutating reply carries `changed`; a dry run replies
//! [`DryRunReply`] whatever the action; a request answered from the
//! journal replies what was recorded then, as it was.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::definition::Definition;
use crate::names::{TypeName, VmName, VolumeName};
use crate::state::VmState;
use crate::vm::Usage;

/// The reply of one action.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// `status`.
    Status(StatusReply),
    /// `info`.
    Info(Box<InfoReply>),
    /// `define` and `provision`.
    Define(DefineReply),
    /// `start`, `stop`, `shutdown`, `reboot`.
    Power(PowerReply),
    /// `undefine` and `deprovision`.
    Removed(RemovedReply),
    /// `lock` and `unlock` (the admin lock).
    AdminLock(AdminLockReply),
    /// `migrate` (and the CLI's `export` and `import`).
    Migrate(MigrateReply),
    /// Any mutating action with `dry_run`.
    DryRun(DryRunReply),
    /// A request id that already completed: the reply recorded then.
    Replayed(Value),
}

impl Reply {
    /// Did the action change anything? `None` for reads.
    pub fn changed(&self) -> Option<bool> {
        match self {
            Reply::Status(_) | Reply::Info(_) => None,
            Reply::Define(r) => Some(r.changed),
            Reply::Power(r) => Some(r.changed),
            Reply::Removed(r) => Some(r.changed),
            Reply::AdminLock(r) => Some(r.changed),
            Reply::Migrate(r) => Some(r.changed),
            Reply::DryRun(r) => Some(r.changed),
            Reply::Replayed(v) => v.get("changed").and_then(Value::as_bool),
        }
    }

    /// The reply as JSON. Keys come out sorted, as the wire has always had
    /// them (serde_json's map), whatever the order of the fields here.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
    }
}

/// `status`: every defined VM, every kept one, and the host's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReply {
    /// Each defined VM by name.
    pub vms: BTreeMap<VmName, VmStatus>,
    /// Each kept VM (undefined, volumes kept) by name: never in `vms`,
    /// which the Vagoth monitor reads as the defined VMs.
    pub kept: BTreeMap<VmName, KeptVm>,
    /// The host.
    pub status: HostStats,
}

/// One kept VM in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct KeptVm {
    /// Its last definition.
    pub definition: Definition,
    /// The volumes kept for it.
    pub volumes: Vec<VolumeName>,
}

/// One VM in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    /// Its definition.
    pub definition: Definition,
    /// `[state, substate]`, read from the VM type.
    pub state: VmState,
    /// Whether root inside is root on the host (`definition.privileged`).
    pub privileged: bool,
}

/// The host's figures: the original keys (kB, load average) plus what a
/// placement engine needs. Flat, as the Vagoth driver stores them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostStats {
    /// MemTotal, kB.
    pub mem_total: u64,
    /// Total minus free, buffers and cache, kB.
    pub mem_used: u64,
    /// MemFree, kB.
    pub mem_free: u64,
    /// Buffers, kB.
    pub mem_buffers: u64,
    /// Cached, kB.
    pub mem_cached: u64,
    /// SwapTotal, kB.
    pub swap_total: u64,
    /// Swap in use, kB.
    pub swap_used: u64,
    /// SwapFree, kB.
    pub swap_free: u64,
    /// 1, 5 and 15 minute load averages.
    pub load_avg: [f64; 3],
    /// CPUs available.
    pub cpu_count: u64,
    /// RAM (MB) the definitions of defined VMs ask for.
    pub ram_promised: u64,
    /// Defined VMs.
    pub vm_count: usize,
    /// The host's name.
    pub hostname: String,
    /// `storage_NAME_total_kb` and `storage_NAME_free_kb` of each storage
    /// type that keeps its volumes under a root directory.
    #[serde(flatten)]
    pub storage: BTreeMap<String, u64>,
}

/// `info`: one defined VM.
#[derive(Debug, Clone, Serialize)]
pub struct InfoReply {
    /// Its name.
    pub name: VmName,
    /// Its VM type.
    pub vm_type: TypeName,
    /// Its definition, as stored (name and VM type explicit).
    pub definition: Definition,
    /// `[state, substate]`.
    pub state: VmState,
    /// The admin lock.
    pub locked: bool,
    /// Whether root inside is root on the host (`definition.privileged`).
    pub privileged: bool,
    /// Memory and CPU.
    pub usage: Usage,
    /// The primary IPv4 address, when running and known.
    pub ip: Option<String>,
    /// Its volumes, in definition order.
    pub storage: Vec<VolumeInfo>,
    /// When it was first defined (RFC 3339).
    pub created: String,
    /// When its record last changed (RFC 3339).
    pub updated: String,
    /// The argv that attaches to its console, if the VM type has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<Vec<String>>,
    /// What an exec VM type's plugin adds (its `info` reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<serde_json::Map<String, Value>>,
}

/// One volume in `info`.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    /// The volume's name.
    pub name: VolumeName,
    /// Its storage type.
    #[serde(rename = "type")]
    pub storage_type: TypeName,
    /// The driver, as recorded.
    pub driver: Value,
    /// Capacity, if it has one.
    pub size_bytes: Option<u64>,
    /// Bytes used.
    pub used_bytes: Option<u64>,
    /// Its directory, if it provides one.
    pub directory: Option<PathBuf>,
    /// Where it is mounted in the VM.
    pub mountpoint: Option<String>,
    /// Attached or mounted now.
    pub active: bool,
}

/// One row of `geats list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    /// The VM.
    pub name: VmName,
    /// `[state, substate]`, or `["kept", "kept"]`.
    pub state: RowState,
    /// The admin lock.
    pub locked: bool,
    /// Its VM type.
    pub vm_type: TypeName,
    /// The primary IPv4 address.
    pub ip: Option<String>,
    /// RAM from the definition, MB.
    pub ram: Option<u64>,
}

/// The state column of `geats list`.
#[derive(Debug, Clone)]
pub enum RowState {
    /// A defined VM's state, read from its VM type.
    Observed(VmState),
    /// A kept VM (`list --all`): `["kept", "kept"]`.
    Kept,
}

impl Serialize for RowState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RowState::Observed(state) => state.serialize(s),
            RowState::Kept => ["kept", "kept"].serialize(s),
        }
    }
}

/// `define` and `provision`.
#[derive(Debug, Clone, Serialize)]
pub struct DefineReply {
    /// The definition as stored.
    pub definition: Definition,
    /// The state afterwards.
    pub state: VmState,
    /// False for an identical re-define.
    pub changed: bool,
}

/// The power actions.
#[derive(Debug, Clone, Serialize)]
pub struct PowerReply {
    /// The state afterwards.
    pub state: VmState,
    /// False when the VM already was in the asked state.
    pub changed: bool,
}

/// `undefine` and `deprovision`.
#[derive(Debug, Clone, Serialize)]
pub struct RemovedReply {
    /// False for a VM geats held nothing of.
    pub changed: bool,
}

/// `lock` and `unlock`.
#[derive(Debug, Clone, Serialize)]
pub struct AdminLockReply {
    /// The admin lock afterwards.
    pub locked: bool,
    /// False when it already was so.
    pub changed: bool,
}

/// A dry run of any mutating action.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReply {
    /// Always true.
    pub dry_run: bool,
    /// Whether the real run would change anything.
    pub changed: bool,
    /// The steps the real run would take.
    pub steps: Vec<String>,
}

/// `migrate`, `export` and `import`: what moved, how much, how long.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReply {
    /// Always true: a VM moved.
    pub changed: bool,
    /// The VM.
    pub vm: VmName,
    /// Where it went: the destination host, or the export file.
    pub destination: String,
    /// Whether it was started at the destination (it ran before).
    pub started: bool,
    /// Each volume that moved.
    pub volumes: Vec<MovedVolume>,
    /// Bytes of the whole stream.
    pub bytes: u64,
    /// Seconds from the start of the action to the end.
    pub duration_s: f64,
}

/// One volume in a [`MigrateReply`].
#[derive(Debug, Clone, Serialize)]
pub struct MovedVolume {
    /// Its name.
    pub name: VolumeName,
    /// Its storage type.
    #[serde(rename = "type")]
    pub storage_type: TypeName,
    /// How its content travelled: `tar`, `image` or `none`.
    pub encoding: crate::stream::Encoding,
    /// Bytes of content (a tar stream's length, an image's size).
    pub bytes: u64,
}
