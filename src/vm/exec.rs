//! The `exec` VM type: a hypervisor driven by an executable in any
//! language, through the JSON protocol of `docs/plugins.md` ("Exec
//! plugins") and `schemas/plugin/`.
//!
//! Settings geats keeps: `command` (argv, absolute), `timeout` (seconds per
//! call, default 300), `shutdown_timeout` (seconds the plugin may wait for
//! a clean halt, sent with `shutdown`; default 60, at most `timeout`),
//! `accepts` (storage kinds its volumes may provide: `"directory"`,
//! `"file"`, `"block_device"`, `"nothing"`; default all) and
//! `installs_templates` (whether the manager unpacks the definition's
//! template onto the root volume's directory; default false). Every other
//! key of the table is passed to the plugin as `settings`.
//!
//! `define` keeps the definition and the volumes it was given in
//! `ROOT/var/lib/geats/exec/vm/TYPE/VM.json`: that file is how `exists`
//! answers without a call, and what every later request carries. `state`
//! is one plugin call per VM (so `status` costs one call per VM of the
//! type); a plugin that fails it makes the state `["unknown",
//! "plugin_failed"]`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{AttachedVolume, VmDriver, VmError, VmType};
use crate::config::{Config, ConfigError};
use crate::definition::Definition;
use crate::names::VmName;
use crate::state::{Power, VmState};
use crate::storage::Kind;
use crate::sys::fsutil;
use crate::sys::plugin::{settings_json, Plugin, PluginError, PluginSettings};

const OWN: &[&str] = &["command", "timeout", "shutdown_timeout", "accepts", "installs_templates"];

/// Every subset of the kinds, indexed by a bit mask (directory 1, block
/// device 2, file 4, nothing 8), so that [`VmType::accepts`] can return a
/// `&'static` slice for any configured list.
const SUBSETS: [&[Kind]; 16] = {
    use Kind::{BlockDevice as B, Directory as D, File as F, Nothing as N};
    [&[], &[D], &[B], &[D, B], &[F], &[D, F], &[B, F], &[D, B, F], &[N], &[D, N], &[B, N], &[D, B, N], &[F, N], &[D, F, N], &[B, F, N], &[D, B, F, N]]
};

/// A VM type whose hypervisor is an exec plugin.
#[derive(Debug)]
pub struct ExecVm {
    plugin: Plugin,
    type_name: String,
    settings: Value,
    accepts: &'static [Kind],
    installs_templates: bool,
    shutdown_timeout: f64,
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    command: Vec<String>,
    timeout: Option<f64>,
    shutdown_timeout: Option<f64>,
    accepts: Option<Vec<String>>,
    installs_templates: Option<bool>,
}

/// What `define` keeps: the definition and volumes every request carries.
#[derive(Debug, Serialize, Deserialize)]
struct Defined {
    definition: Value,
    volumes: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyReply {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateReply {
    state: (String, String),
}

impl VmDriver for ExecVm {
    const NAME: &'static str = "exec";

    fn build(config: &Config, prefix: &str, settings: &toml::Table) -> Result<ExecVm, ConfigError> {
        let own: toml::Table = settings.iter().filter(|(k, _)| OWN.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        let s: Settings = config.settings(prefix, &own)?;
        let type_name = prefix.strip_prefix("vm_types.").unwrap_or(prefix).to_string();
        let plugin = Plugin::from_settings(format!("VM type {type_name}"), PluginSettings { command: s.command, timeout: s.timeout })
            .map_err(|(key, problem)| config.invalid(format!("{prefix}.{key}"), problem))?;
        let mut mask = 0usize;
        for k in s.accepts.as_deref().unwrap_or(&["directory".into(), "block_device".into(), "file".into(), "nothing".into()]) {
            let i = match k.as_str() {
                "directory" => 0,
                "block_device" => 1,
                "file" => 2,
                "nothing" => 3,
                other => return Err(config.invalid(format!("{prefix}.accepts"), format!("{other:?} is not one of \"directory\", \"block_device\", \"file\", \"nothing\""))),
            };
            mask |= 1 << i;
        }
        let limit = plugin.timeout.as_secs_f64();
        let shutdown_timeout = s.shutdown_timeout.unwrap_or(60f64.min(limit));
        if !(shutdown_timeout.is_finite() && shutdown_timeout > 0.0 && shutdown_timeout <= limit) {
            return Err(config.invalid(format!("{prefix}.shutdown_timeout"), format!("{shutdown_timeout} is not a number of seconds between 0 and timeout ({limit})")));
        }
        Ok(ExecVm {
            plugin,
            settings: settings_json(settings, OWN),
            accepts: SUBSETS[mask],
            installs_templates: s.installs_templates.unwrap_or(false),
            shutdown_timeout,
            dir: config.under_root("var/lib/geats/exec/vm").join(&type_name),
            type_name,
        })
    }
}

impl ExecVm {
    fn file(&self, vm: &VmName) -> PathBuf {
        self.dir.join(format!("{vm}.json"))
    }

    fn defined(&self, vm: &VmName) -> Option<Defined> {
        std::fs::read(self.file(vm)).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn request(&self, op: &str, vm: &VmName, defined: &Defined) -> Value {
        json!({
            "op": op,
            "vm": vm,
            "vm_type": self.type_name,
            "settings": self.settings,
            "definition": defined.definition,
            "volumes": defined.volumes,
        })
    }

    /// Call `op` for `vm` with `request` and parse the reply as `T`.
    fn call<T: serde::de::DeserializeOwned>(&self, step: &'static str, op: &str, vm: &VmName, request: &Value) -> Result<T, VmError> {
        let err = |source| VmError::Plugin { step, vm: vm.clone(), source };
        let reply = self.plugin.call(op, request).map_err(err)?;
        serde_json::from_value(Value::Object(reply.clone())).map_err(|e| {
            err(PluginError::Garbage {
                label: self.plugin.label.clone(),
                op: op.into(),
                problem: format!("not a reply to {op} (schemas/plugin/vm-{op}-reply.json): {e}"),
                excerpt: Value::Object(reply).to_string().chars().take(80).collect(),
            })
        })
    }

    /// Call an operation that replies `{}` for a defined VM.
    fn simple(&self, step: &'static str, op: &str, vm: &VmName) -> Result<(), VmError> {
        let defined = self.defined(vm).unwrap_or(Defined { definition: json!({}), volumes: json!([]) });
        let _: EmptyReply = self.call(step, op, vm, &self.request(op, vm, &defined))?;
        Ok(())
    }

    fn try_state(&self, vm: &VmName, defined: &Defined) -> Result<VmState, VmError> {
        let r: StateReply = self.call("read the state of", "state", vm, &self.request("state", vm, defined))?;
        let power = match r.state.0.as_str() {
            "running" => Power::Running,
            "stopped" => Power::Stopped,
            "paused" => Power::Paused,
            "unknown" => Power::Unknown,
            other => {
                return Err(VmError::Plugin {
                    step: "read the state of",
                    vm: vm.clone(),
                    source: PluginError::Garbage {
                        label: self.plugin.label.clone(),
                        op: "state".into(),
                        problem: format!("{other:?} is not running, stopped, paused or unknown"),
                        excerpt: String::new(),
                    },
                })
            }
        };
        Ok(VmState::with(power, &r.state.1))
    }
}

impl VmType for ExecVm {
    fn accepts(&self) -> &'static [Kind] {
        self.accepts
    }

    fn installs_templates(&self) -> bool {
        self.installs_templates
    }

    fn check(&self, _vm: &VmName, _def: &Definition) -> Result<(), VmError> {
        // The plugin judges the definition at `define`.
        Ok(())
    }

    fn define(&self, vm: &VmName, def: &Definition, volumes: &[AttachedVolume]) -> Result<(), VmError> {
        let defined = Defined { definition: serde_json::to_value(def).unwrap_or(Value::Null), volumes: serde_json::to_value(volumes).unwrap_or(json!([])) };
        let _: EmptyReply = self.call("define", "define", vm, &self.request("define", vm, &defined))?;
        let path = self.file(vm);
        let io = |step| {
            let path = path.clone();
            move |source| VmError::Io { step, path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("create the directory of"))?;
        fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&defined).unwrap_or_default(), 0o600).map_err(io("write"))
    }

    fn undefine(&self, vm: &VmName) -> Result<(), VmError> {
        self.simple("undefine", "undefine", vm)?;
        let path = self.file(vm);
        fsutil::remove_file_if_exists(&path).map_err(|source| VmError::Io { step: "remove", path: path.clone(), source })?;
        // A process killed while writing it left its temp file (issue 11).
        let name = format!("{vm}.json");
        fsutil::remove_stale_temps(&self.dir, &[&name]).map_err(|source| VmError::Io { step: "remove temp files in", path: self.dir.clone(), source })
    }

    fn exists(&self, vm: &VmName) -> bool {
        self.file(vm).is_file()
    }

    fn start(&self, vm: &VmName) -> Result<(), VmError> {
        self.simple("start", "start", vm)
    }

    fn stop(&self, vm: &VmName) -> Result<(), VmError> {
        self.simple("stop", "stop", vm)
    }

    fn shutdown(&self, vm: &VmName) -> Result<(), VmError> {
        let defined = self.defined(vm).unwrap_or(Defined { definition: json!({}), volumes: json!([]) });
        let mut req = self.request("shutdown", vm, &defined);
        if let Some(o) = req.as_object_mut() {
            o.insert("timeout".into(), json!(self.shutdown_timeout));
        }
        let _: EmptyReply = self.call("shut down", "shutdown", vm, &req)?;
        Ok(())
    }

    fn reboot(&self, vm: &VmName) -> Result<(), VmError> {
        // The protocol has no reboot: a clean shutdown, then a start.
        self.shutdown(vm)?;
        if self.state(vm).is_running() {
            return Err(VmError::Failed { vm: vm.clone(), detail: format!("{vm} did not shut down within {} s, so it was not restarted", self.shutdown_timeout) });
        }
        self.start(vm)
    }

    fn state(&self, vm: &VmName) -> VmState {
        // Not defined in the "hypervisor": no call.
        let Some(defined) = self.defined(vm) else { return VmState::with(Power::Unknown, "undefined") };
        self.try_state(vm, &defined).unwrap_or_else(|e| {
            tracing::warn!(vm = %vm, "{}: {}", e, e.source_text());
            VmState::with(Power::Unknown, "plugin_failed")
        })
    }

    fn info(&self, vm: &VmName) -> Option<Map<String, Value>> {
        let defined = self.defined(vm)?;
        // `info` is optional: a plugin without it adds nothing.
        self.plugin.call("info", &self.request("info", vm, &defined)).map_err(|e| tracing::debug!(vm = %vm, "no plugin info: {e}")).ok()
    }
}

impl VmError {
    fn source_text(&self) -> String {
        match self {
            VmError::Plugin { source, .. } => source.to_string(),
            other => other.to_string(),
        }
    }
}
