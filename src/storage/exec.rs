//! The `exec` driver: a storage driver in any language. Each operation
//! runs the configured executable (`sys::plugin`) with one JSON request and
//! reads one JSON reply; the protocol is in `docs/plugins.md` ("Exec
//! plugins") and `schemas/plugin/`.
//!
//! Settings geats keeps: `command` (argv, absolute), `timeout` (seconds,
//! default 300) and `provides` (`"directory"`, `"file"` or
//! `"block_device"`, default `"directory"`: adapters check it when the
//! chain is built, before the plugin ever ran). Every other key of the
//! table, and every definition option, is passed on to the plugin
//! (`settings`, `options`), which validates them.
//!
//! What geats remembers of a volume (the plugin's `record`, its path, and
//! whether it is active) is kept in `ROOT/var/lib/geats/exec/storage/TYPE/
//! VM/VOLUME.json`, written after each successful call, so `exists`,
//! `is_active`, `provides` and `record` cost no plugin call. Only `usage`
//! (for `info`) asks the plugin.

use std::cell::RefCell;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{io_err, remove_if_empty, Driver, Kind, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::sys::fsutil;
use crate::sys::plugin::{settings_json, Plugin, PluginError, PluginSettings};

/// Keys of the table that geats reads itself; the rest goes to the plugin.
const OWN: &[&str] = &["command", "timeout", "provides"];

/// A volume managed by an exec plugin.
#[derive(Debug)]
pub struct Exec {
    plugin: Plugin,
    label: String,
    vm: String,
    volume: String,
    storage_type: String,
    settings: Value,
    options: Value,
    size_bytes: Option<u64>,
    kind: Kind,
    state_path: PathBuf,
    state: RefCell<Option<Option<State>>>,
}

/// What geats keeps of a created volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    record: Value,
    path: PathBuf,
    active: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    command: Vec<String>,
    timeout: Option<f64>,
    provides: Option<String>,
}

/// `{"directory": PATH}` and the like: exactly one key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum ProvidesReply {
    Directory(PathBuf),
    File(PathBuf),
    BlockDevice(PathBuf),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReply {
    record: Map<String, Value>,
    provides: ProvidesReply,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateReply {
    provides: ProvidesReply,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyReply {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageReply {
    used_bytes: u64,
    #[serde(default)]
    size_bytes: Option<u64>,
}

/// The reply to the optional snapshot ops: `{"not_supported": true}` from
/// a plugin that has no snapshots, else `{}` (with `size_bytes` for
/// `snapshot` when the plugin knows it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotReply {
    #[serde(default)]
    not_supported: bool,
    #[serde(default)]
    size_bytes: Option<u64>,
}

impl Driver for Exec {
    const NAME: &'static str = "exec";

    fn open(ctx: &VolumeCtx<'_>) -> Result<Exec, StorageError> {
        let s: Settings = ctx.settings_for(OWN)?;
        let kind = match s.provides.as_deref() {
            None | Some("directory") => Kind::Directory,
            Some("file") => Kind::File,
            Some("block_device") => Kind::BlockDevice,
            Some(other) => {
                let key = format!("{}.provides", ctx.prefix);
                return Err(ctx.config.invalid(key, format!("{other:?} is not one of \"directory\", \"file\", \"block_device\"")).into());
            }
        };
        let storage_type = ctx.spec.storage_type.to_string();
        let plugin = Plugin::from_settings(format!("storage type {storage_type}"), PluginSettings { command: s.command, timeout: s.timeout })
            .map_err(|(key, problem)| StorageError::from(ctx.config.invalid(format!("{}.{key}", ctx.prefix), problem)))?;
        // Everything else is the plugin's to check.
        ctx.claim_everything();
        let size_bytes = match &ctx.spec.size {
            None => None,
            Some(_) => Some(ctx.required_size()?),
        };
        let options = Value::Object(ctx.spec.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let state_path = ctx
            .config
            .under_root("var/lib/geats/exec/storage")
            .join(&storage_type)
            .join(ctx.vm.as_str())
            .join(format!("{}.json", ctx.name));
        Ok(Exec {
            plugin,
            label: ctx.volume_label(),
            vm: ctx.vm.to_string(),
            volume: ctx.name.to_string(),
            storage_type,
            settings: settings_json(ctx.settings, OWN),
            options,
            size_bytes,
            kind,
            state_path,
            state: RefCell::new(None),
        })
    }
}

impl Exec {
    /// The kept state, read once.
    fn state(&self) -> Option<State> {
        let mut cell = self.state.borrow_mut();
        cell.get_or_insert_with(|| std::fs::read(&self.state_path).ok().and_then(|b| serde_json::from_slice(&b).ok())).clone()
    }

    fn save(&self, state: Option<State>) -> Result<(), StorageError> {
        let path = &self.state_path;
        match &state {
            Some(s) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err(&self.label, "create", dir))?;
                }
                let text = serde_json::to_vec_pretty(s).unwrap_or_default();
                fsutil::write_atomic(path, &text, 0o600).map_err(io_err(&self.label, "write", path))?;
            }
            None => {
                fsutil::remove_file_if_exists(path).map_err(io_err(&self.label, "remove", path))?;
                if let Some(dir) = path.parent() {
                    remove_if_empty(dir);
                }
            }
        }
        *self.state.borrow_mut() = Some(state);
        Ok(())
    }

    fn request(&self, op: &str, record: &Value) -> Value {
        json!({
            "op": op,
            "vm": self.vm,
            "volume": self.volume,
            "storage_type": self.storage_type,
            "settings": self.settings,
            "size_bytes": self.size_bytes,
            "options": self.options,
            "record": record,
        })
    }

    /// Call one of the optional snapshot ops for snapshot `name`.
    fn snapshot_op(&self, op: &'static str, name: &crate::names::SnapshotName, what: &'static str) -> Result<Option<u64>, StorageError> {
        let Some(state) = self.state() else {
            return Err(StorageError::State { volume: self.label.clone(), step: op, problem: "the volume does not exist".into() });
        };
        let mut req = self.request(op, &state.record);
        if let Some(o) = req.as_object_mut() {
            o.insert("snapshot".into(), json!(name));
        }
        let reply = self.plugin.call(op, &req).map_err(|e| self.err(e))?;
        let r: SnapshotReply = serde_json::from_value(Value::Object(reply.clone())).map_err(|e| {
            self.err(PluginError::Garbage {
                label: self.plugin.label.clone(),
                op: op.into(),
                problem: format!("not a reply to {op} (schemas/plugin/storage-snapshot-reply.json): {e}"),
                excerpt: Value::Object(reply).to_string().chars().take(80).collect(),
            })
        })?;
        if r.not_supported {
            return Err(StorageError::NotSupported { volume: self.label.clone(), driver: "this exec plugin", what });
        }
        Ok(r.size_bytes)
    }

    /// Call `op` and parse its reply as `T`.
    fn call<T: serde::de::DeserializeOwned>(&self, op: &str, record: &Value) -> Result<T, StorageError> {
        let reply = self.plugin.call(op, &self.request(op, record)).map_err(|e| self.err(e))?;
        serde_json::from_value(Value::Object(reply.clone())).map_err(|e| {
            self.err(PluginError::Garbage {
                label: self.plugin.label.clone(),
                op: op.into(),
                problem: format!("not a reply to {op} (schemas/plugin/storage-{op}-reply.json): {e}"),
                excerpt: Value::Object(reply).to_string().chars().take(80).collect(),
            })
        })
    }

    fn err(&self, source: PluginError) -> StorageError {
        StorageError::Plugin { volume: self.label.clone(), source }
    }

    /// The path of a `provides` reply, if it is of this storage type's kind.
    fn path_of(&self, op: &str, p: ProvidesReply) -> Result<PathBuf, StorageError> {
        let (kind, path) = match p {
            ProvidesReply::Directory(p) => (Kind::Directory, p),
            ProvidesReply::File(p) => (Kind::File, p),
            ProvidesReply::BlockDevice(p) => (Kind::BlockDevice, p),
        };
        if kind != self.kind || !path.is_absolute() {
            return Err(self.err(PluginError::Garbage {
                label: self.plugin.label.clone(),
                op: op.into(),
                problem: format!("it provides {} at {:?}, but the storage type is configured to provide {} at an absolute path", kind.as_str(), path, self.kind.as_str()),
                excerpt: String::new(),
            }));
        }
        Ok(path)
    }

    fn create(&self) -> Result<State, StorageError> {
        let reply: CreateReply = self.call("create", &Value::Null)?;
        let record = Value::Object(reply.record);
        let path = match self.path_of("create", reply.provides) {
            Ok(p) => p,
            Err(e) => {
                // Undo the plugin's work: no half-made volume.
                let _ = self.call::<EmptyReply>("destroy", &record);
                return Err(e);
            }
        };
        let state = State { record, path, active: false };
        if let Err(e) = self.save(Some(state.clone())) {
            let _ = self.call::<EmptyReply>("destroy", &state.record);
            return Err(e);
        }
        Ok(state)
    }

    fn not_created(&self, step: &'static str) -> StorageError {
        StorageError::State { volume: self.label.clone(), step, problem: format!("the plugin never created it ({} is missing)", self.state_path.display()) }
    }
}

impl Volume for Exec {
    fn define(&mut self) -> Result<(), StorageError> {
        if self.state().is_none() {
            self.create()?;
        }
        Ok(())
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        let state = self.state().ok_or_else(|| self.not_created("activate"))?;
        // Marked active before the call, so that a geats killed during it
        // still deactivates the volume later; plugins are idempotent, and
        // geats asks even when it believes the volume active already.
        self.save(Some(State { active: true, ..state.clone() }))?;
        let reply = self.call::<ActivateReply>("activate", &state.record).and_then(|r| self.path_of("activate", r.provides));
        match reply {
            Ok(path) => self.save(Some(State { path, active: true, ..state })),
            Err(e) => {
                // The plugin undid its own partial work.
                let _ = self.save(Some(state));
                Err(e)
            }
        }
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        // Only what geats activated (or may have) is deactivated.
        let Some(state) = self.state().filter(|s| s.active) else { return Ok(()) };
        let _: EmptyReply = self.call("deactivate", &state.record)?;
        self.save(Some(State { active: false, ..state }))
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        let Some(state) = self.state() else { return Ok(()) };
        self.deactivate()?;
        let _: EmptyReply = self.call("destroy", &state.record)?;
        self.save(None)?;
        if let Some(vm_dir) = self.state_path.parent() {
            remove_if_empty(vm_dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        // The protocol has no erase: destroy and create afresh, and leave
        // it as active as it was.
        let was_active = self.is_active();
        self.undefine()?;
        self.create()?;
        if was_active {
            self.activate()?;
        }
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.state().is_some_and(|s| s.active)
    }

    fn provides(&self) -> Provides {
        Provides { kind: self.kind, path: self.state().map(|s| s.path) }
    }

    fn exists(&self) -> bool {
        self.state().is_some()
    }

    fn record(&self) -> Value {
        let record = self.state().map(|s| s.record).unwrap_or(Value::Null);
        json!({"driver": Self::NAME, "command": self.plugin.shown(), "record": record})
    }

    fn usage(&self) -> VolumeUsage {
        let Some(state) = self.state() else { return VolumeUsage { size_bytes: self.size_bytes, used_bytes: None } };
        match self.call::<UsageReply>("usage", &state.record) {
            Ok(u) => VolumeUsage { size_bytes: u.size_bytes.or(self.size_bytes), used_bytes: Some(u.used_bytes) },
            Err(e) => {
                // `usage` is optional: a plugin without it reports nothing.
                tracing::debug!(volume = %self.label, "no usage: {}", e);
                VolumeUsage { size_bytes: self.size_bytes, used_bytes: None }
            }
        }
    }

    fn describe(&self) -> String {
        format!("{} from exec plugin {}", self.kind.as_str(), self.plugin.shown())
    }

    fn snapshot(&mut self, name: &crate::names::SnapshotName) -> Result<Option<u64>, StorageError> {
        self.snapshot_op("snapshot", name, "take snapshots")
    }

    fn restore(&mut self, name: &crate::names::SnapshotName) -> Result<(), StorageError> {
        self.snapshot_op("restore", name, "restore snapshots").map(|_| ())
    }

    fn delete_snapshot(&mut self, name: &crate::names::SnapshotName) -> Result<(), StorageError> {
        self.snapshot_op("delete_snapshot", name, "delete snapshots").map(|_| ())
    }
}

