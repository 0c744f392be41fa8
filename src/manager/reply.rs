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

use crate::definition::{Definition, DefinitionJson};
use crate::names::{SnapshotName, TypeName, VmName, VolumeName};
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
    /// `snapshot`.
    Snapshot(SnapshotReply),
    /// `restore`.
    Restore(RestoreReply),
    /// `migrate` (and the CLI's `export` and `import`).
    Migrate(MigrateReply),
    /// Any mutating action with `dry_run`.
    DryRun(DryRunReply),
    /// A request id that already completed: the reply recorded then.
    Replayed(Value),
    /// Any reply of a request that first repaired an interrupted action
    /// on its VM: the reply's own keys plus `repaired`.
    Repaired(Box<RepairedReply>),
    /// `events`.
    Events(EventsReply),
    /// `reconcile`.
    Reconcile(ReconcileReply),
}

impl Reply {
    /// Did the action change anything? `None` for reads.
    pub fn changed(&self) -> Option<bool> {
        match self {
            Reply::Status(_) | Reply::Info(_) | Reply::Events(_) => None,
            Reply::Reconcile(r) => Some(r.changed),
            Reply::Define(r) => Some(r.changed),
            Reply::Power(r) => Some(r.changed),
            Reply::Removed(r) => Some(r.changed),
            Reply::AdminLock(r) => Some(r.changed),
            Reply::Snapshot(r) => Some(r.changed),
            Reply::Restore(r) => Some(r.changed),
            Reply::Migrate(r) => Some(r.changed),
            Reply::DryRun(r) => Some(r.changed),
            Reply::Replayed(v) => v.get("changed").and_then(Value::as_bool),
            Reply::Repaired(r) => r.reply.changed(),
        }
    }

    /// This reply, reporting `repairs` if there were any (a reply without
    /// repairs is byte for byte what it always was).
    pub fn with_repairs(self, repairs: Vec<Repair>) -> Reply {
        if repairs.is_empty() {
            self
        } else {
            Reply::Repaired(Box::new(RepairedReply { reply: self, repaired: repairs }))
        }
    }

    /// The reply as JSON. Keys come out sorted, as the wire has always had
    /// them (serde_json's map), whatever the order of the fields here.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
    }

    /// The reply as compact JSON bytes: exactly the bytes of
    /// [`Reply::to_json`], but a `status` reply, whose size grows with the
    /// number of VMs, is written straight from its types instead of
    /// through a `Value` tree (a quarter of a `status` of 1000 VMs,
    /// callgrind).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        if let Reply::Status(s) = self {
            let mut out = Vec::with_capacity(1024 + s.vms.len() * 256);
            if s.write_json(&mut out).is_ok() {
                return out;
            }
        }
        let v = self.to_json();
        serde_json::to_vec(&v).unwrap_or_else(|_| v.to_string().into_bytes())
    }
}

impl StatusReply {
    /// The reply as `serde_json::to_vec` of its `Value` writes it (keys
    /// sorted), without building the `Value`: the per-VM entries key by
    /// key in sorted order, each definition copied as stored; the parts
    /// whose size does not grow with the VMs go through `Value`.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let StatusReply { vms, kept, status } = self;
        out.extend_from_slice(b"{\"kept\":");
        serde_json::to_writer(&mut *out, &serde_json::to_value(kept)?)?;
        out.extend_from_slice(b",\"status\":");
        serde_json::to_writer(&mut *out, &serde_json::to_value(status)?)?;
        out.extend_from_slice(b",\"vms\":{");
        for (i, (name, vm)) in vms.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, name.as_str())?;
            out.push(b':');
            vm.write_json(out)?;
        }
        out.extend_from_slice(b"}}");
        Ok(())
    }
}

impl VmStatus {
    /// One entry of [`StatusReply::write_json`]. Every field is named
    /// here, so a new one does not compile until it is written too.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let VmStatus { definition, vm_type: _, state, privileged, health } = self;
        let HealthReport { desired, health, in_flight, exit_reason } = health;
        out.extend_from_slice(b"{\"definition\":");
        out.extend_from_slice(definition.as_str().as_bytes());
        out.extend_from_slice(b",\"desired\":");
        match desired {
            Some(d) => json_str(out, d.as_str())?,
            None => out.extend_from_slice(b"null"),
        }
        if let Some(r) = exit_reason {
            out.extend_from_slice(b",\"exit_reason\":");
            json_str(out, r)?;
        }
        out.extend_from_slice(b",\"health\":");
        json_str(out, health.as_str())?;
        if let Some(f) = in_flight {
            out.extend_from_slice(b",\"in_flight\":");
            serde_json::to_writer(&mut *out, &serde_json::to_value(f)?)?;
        }
        out.extend_from_slice(if *privileged { b",\"privileged\":true" } else { b",\"privileged\":false" });
        // `[state, substate]`, as VmState serialises.
        out.extend_from_slice(b",\"state\":[");
        json_str(out, state.power.as_str())?;
        out.push(b',');
        json_str(out, &state.substate)?;
        out.extend_from_slice(b"]}");
        Ok(())
    }
}

/// A JSON string as serde_json writes it: copied between quotes when
/// nothing in it needs escaping (names and state words never do; serde's
/// escaper per string was a third of writing a `status` reply), else
/// through serde_json, which escapes `"`, `\` and control characters only.
fn json_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(&mut *out, s)
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
    /// Its definition, as stored.
    pub definition: DefinitionJson,
    /// Its VM type (not sent: the definition names it).
    #[serde(skip)]
    pub vm_type: TypeName,
    /// `[state, substate]`, read from the VM type.
    pub state: VmState,
    /// Whether root inside is root on the host (`definition.privileged`).
    pub privileged: bool,
    /// Desired against observed.
    #[serde(flatten)]
    pub health: HealthReport,
}

/// How a VM's observed state compares with its intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Desired and observed agree (or no intent was ever recorded).
    Ok,
    /// It should run but does not.
    DownUnexpected,
    /// It runs but should not.
    UpUnexpected,
    /// A live process holds its operation lease.
    InFlight,
    /// The VM type could not tell its state.
    Unknown,
}

impl Health {
    /// The wire word, which is also the kind of a drift's event.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::DownUnexpected => "down_unexpected",
            Health::UpUnexpected => "up_unexpected",
            Health::InFlight => "in_flight",
            Health::Unknown => "unknown",
        }
    }
}

/// The intent, the health, and what explains it: the keys `status`
/// entries and `info` share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// `running`, `stopped`, or null when no intent was recorded.
    pub desired: Option<crate::db::Desired>,
    /// Desired against observed.
    pub health: Health,
    /// The action under way, when `in_flight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<Box<InFlight>>,
    /// Why it stopped, when `down_unexpected` and the VM type knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
}

/// The action holding a VM's operation lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InFlight {
    /// The action.
    pub action: String,
    /// Who asked, once its journal entry is open.
    pub caller: Option<String>,
    /// Its request id, once its journal entry is open.
    pub request_id: Option<String>,
    /// When it took the lease (RFC 3339).
    pub since: String,
    /// How long it has run, seconds.
    pub running_s: f64,
    /// The process running it.
    pub pid: i64,
}

/// `events`: one page of the feed.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReply {
    /// Events with `seq > since`, oldest first.
    pub events: Vec<crate::db::Event>,
    /// The next request's `since`.
    pub last_seq: i64,
    /// Present (and true) when events after `since` were pruned.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gap: bool,
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
    /// Desired against observed.
    #[serde(flatten)]
    pub health: HealthReport,
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
    /// Its snapshots, oldest first.
    pub snapshots: Vec<SnapshotInfo>,
    /// The argv that attaches to its console, if the VM type has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<Vec<String>>,
    /// What an exec VM type's plugin adds (its `info` reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<serde_json::Map<String, Value>>,
    /// Definition keys the running VM does not run with yet (applied at
    /// its next start). Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
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

/// One snapshot in `info` and `geats snapshots`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// Its name.
    pub name: SnapshotName,
    /// When it was taken (RFC 3339 UTC).
    pub created: String,
    /// Bytes it takes, when every driver of the VM's volumes knows.
    pub size_bytes: Option<u64>,
}

/// `snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReply {
    /// The snapshot taken.
    pub snapshot: SnapshotName,
    /// When.
    pub created: String,
    /// Bytes it takes, when every driver knows.
    pub size_bytes: Option<u64>,
    /// Older snapshots deleted because the definition keeps fewer.
    pub expired: Vec<SnapshotName>,
    /// Always true (a name that exists is refused).
    pub changed: bool,
}

/// `restore`.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReply {
    /// The snapshot restored.
    pub snapshot: SnapshotName,
    /// The state afterwards (running again if it was running).
    pub state: VmState,
    /// Always true.
    pub changed: bool,
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
    /// For a running VM: the definition keys applied to it at once
    /// (`ram`, `cpus`). Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applied_live: Vec<String>,
    /// For a running VM: the definition keys it does not run with yet,
    /// applied at its next start (or reboot). Absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
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

/// A reply plus the repairs its request did first.
#[derive(Debug, Clone)]
pub struct RepairedReply {
    /// The action's own reply; its keys come out at the top level.
    pub reply: Reply,
    /// What was repaired before the action ran.
    pub repaired: Vec<Repair>,
}

impl Serialize for RepairedReply {
    // By hand: `#[serde(flatten)]` of the recursive `Reply` does not
    // terminate at compile time.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let mut v = serde_json::to_value(&self.reply).map_err(S::Error::custom)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("repaired".into(), serde_json::to_value(&self.repaired).map_err(S::Error::custom)?);
        }
        v.serialize(s)
    }
}

/// One interrupted action (its process was killed) that a later request
/// finished or undid before doing its own work.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repair {
    /// The interrupted action.
    pub action: String,
    /// Its journal entry.
    pub journal_id: i64,
    /// `rolled_back` (undone) or `rolled_forward` (finished).
    pub resolution: String,
    /// The steps the repair ran.
    pub steps: Vec<String>,
}

/// `reconcile`: what it started, what failed, what it left alone.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReply {
    /// VMs started (in boot order), or, in a dry run, that would be.
    pub started: Vec<VmName>,
    /// VMs whose start failed, and why.
    pub failed: Vec<ReconcileFailure>,
    /// VMs that should run but say `"autostart": false`.
    pub skipped: Vec<VmName>,
    /// True for a dry run: nothing was started.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Whether anything was started.
    pub changed: bool,
}

/// A VM `reconcile` could not start.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileFailure {
    /// The VM.
    pub vm: VmName,
    /// The start's error code.
    pub errorcode: String,
    /// Its message.
    pub message: String,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Desired;
    use crate::state::Power;

    fn vm(def: Value, state: VmState, privileged: bool, health: HealthReport) -> VmStatus {
        let d: Definition = serde_json::from_value(def).unwrap();
        let vm_type = d.vm_type.clone().unwrap();
        VmStatus { definition: DefinitionJson::of(&d).unwrap(), vm_type, state, privileged, health }
    }

    fn report(desired: Option<Desired>, health: Health) -> HealthReport {
        HealthReport { desired, health, in_flight: None, exit_reason: None }
    }

    /// The bytes written straight from the types are the bytes of the
    /// `Value` path, whatever the entries hold.
    #[test]
    fn status_bytes_are_those_of_the_value() {
        let mut vms = BTreeMap::new();
        let name = |s: &str| VmName::new(s).unwrap();
        vms.insert(
            name("web1"),
            vm(
                serde_json::json!({"name": "web1", "vm_type": "dummy", "description": "é \"q\" \n\u{1}", "ram": 512, "cpus": 2,
                    "network": [{"name": "eth0", "type": "veth", "bridge": "br0", "ipaddr": "10.0.0.5/24", "hwaddr": "02:03:04:05:06:07"}],
                    "storage": [{"name": "root", "type": "dir", "size": "1G", "zz": 1, "aa": true}], "metadata": {"Z": "1", "A": "2"},
                    "privileged": true, "transient": true, "autostart": false, "boot_priority": -1, "boot_delay": 3,
                    "snapshots": {"keep": 2, "schedule": "weekly"}}),
                VmState::plain(Power::Running),
                true,
                report(Some(Desired::Running), Health::Ok),
            ),
        );
        vms.insert(
            name("A.b-c_d"),
            vm(serde_json::json!({"vm_type": "lxc"}), VmState::with(Power::Unknown, "corrupt \"x\" \\ \u{7f} \u{1f} é"), false, report(None, Health::Unknown)),
        );
        let mut down = report(Some(Desired::Running), Health::DownUnexpected);
        down.exit_reason = Some("init exited: \"code\" 1\n".into());
        let mut plain = report(Some(Desired::Running), Health::DownUnexpected);
        plain.exit_reason = Some("no escapes here: é ☃ \u{7f}".into());
        vms.insert(name("plain"), vm(serde_json::json!({"vm_type": "dummy"}), VmState::with(Power::Stopped, "é\u{7f}"), false, plain));
        vms.insert(name("down"), vm(serde_json::json!({"vm_type": "dummy"}), VmState::plain(Power::Stopped), false, down));
        let mut busy = report(Some(Desired::Stopped), Health::InFlight);
        busy.in_flight = Some(Box::new(InFlight { action: "start".into(), caller: None, request_id: Some("r1".into()), since: "2026-01-01T00:00:00.000Z".into(), running_s: 1.25, pid: 42 }));
        vms.insert(name("busy"), vm(serde_json::json!({"vm_type": "dummy"}), VmState::with(Power::Running, "starting"), false, busy));
        let kept_def: Definition = serde_json::from_value(serde_json::json!({"vm_type": "dummy", "description": "kept"})).unwrap();
        let mut kept = BTreeMap::new();
        kept.insert(name("old"), KeptVm { definition: kept_def, volumes: vec![VolumeName::new("root").unwrap()] });
        let mut status = HostStats { load_avg: [0.5, 1.0, 12.25], hostname: "h\"ost".into(), mem_total: 7, ..HostStats::default() };
        status.storage.insert("storage_dir_free_kb".into(), 5);
        status.storage.insert("storage_dir_total_kb".into(), 9);
        for reply in [
            Reply::Status(StatusReply { vms: vms.clone(), kept: kept.clone(), status: status.clone() }),
            Reply::Status(StatusReply { vms: BTreeMap::new(), kept: BTreeMap::new(), status: HostStats::default() }),
        ] {
            let via_value = serde_json::to_vec(&reply.to_json()).unwrap();
            assert_eq!(String::from_utf8(reply.to_json_bytes()).unwrap(), String::from_utf8(via_value).unwrap());
        }
        // Any other reply goes through the Value.
        let r = Reply::Removed(RemovedReply { changed: true });
        assert_eq!(r.to_json_bytes(), serde_json::to_vec(&r.to_json()).unwrap());
    }
}
