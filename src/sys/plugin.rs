//! The exec plugin protocol's transport: run `COMMAND... OP` with one JSON
//! object on stdin and read one JSON object from stdout (docs/plugins.md,
//! "Exec plugins").
//!
//! The plugin runs through [`Cmd`] with a clean environment plus
//! `GEATS_PLUGIN_OP`, as the leader of its own process group, killed with
//! the group when it outlives its timeout. Exit 0 is success and its stdout
//! must be exactly one JSON object; any other exit is a failure whose
//! message is the last non-empty line of stderr.

use std::ffi::OsString;
use std::time::Duration;

use serde_json::{Map, Value};

use super::exec::{Cmd, ExecError};

/// One configured plugin command.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// What the plugin is, for messages: `storage type zfs`.
    pub label: String,
    /// The configured argv; the operation is appended.
    pub command: Vec<OsString>,
    /// How long one call may take.
    pub timeout: Duration,
}

/// A plugin call that failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin could not be started.
    #[error("plugin {label} ({program}): cannot run {op}: {source}")]
    Spawn {
        /// The plugin.
        label: String,
        /// argv[0].
        program: String,
        /// The operation.
        op: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited non-zero (or was killed by a signal).
    #[error("plugin {label}: {op} failed ({status}): {message}")]
    Failed {
        /// The plugin.
        label: String,
        /// The operation.
        op: String,
        /// `exit status 1`, `killed by a signal`.
        status: String,
        /// The last line of its stderr.
        message: String,
    },
    /// It exited 0 but its output is not what the protocol asks for.
    #[error("plugin {label}: {op} replied with output geats cannot use: {problem} (stdout began {excerpt:?})")]
    Garbage {
        /// The plugin.
        label: String,
        /// The operation.
        op: String,
        /// What is wrong with it.
        problem: String,
        /// The start of its stdout.
        excerpt: String,
    },
    /// It ran past its timeout and was killed with its process group.
    #[error("plugin {label}: {op} did not finish within {secs} s and was killed with its process group")]
    Timeout {
        /// The plugin.
        label: String,
        /// The operation.
        op: String,
        /// The limit.
        secs: f64,
    },
}

impl Plugin {
    /// Run `op` with `request` (an object that already carries `op`) and
    /// return the reply object.
    pub fn call(&self, op: &str, request: &Value) -> Result<Map<String, Value>, PluginError> {
        let body = serde_json::to_vec(request).unwrap_or_default();
        let cmd = Cmd::new(&self.command).arg(op).env("GEATS_PLUGIN_OP", op).stdin(body).timeout(self.timeout).process_group();
        let out = match cmd.output() {
            Ok(out) => out,
            Err(ExecError::Spawn { program, source }) => return Err(PluginError::Spawn { label: self.label.clone(), program, op: op.into(), source }),
            Err(ExecError::Timeout { .. }) => {
                return Err(PluginError::Timeout { label: self.label.clone(), op: op.into(), secs: self.timeout.as_secs_f64() })
            }
            // `output` never reports a plain failure; treat one like an exit.
            Err(ExecError::Failed { status, stderr, .. }) => return Err(self.failed(op, status, &stderr)),
        };
        match out.code {
            Some(0) => {}
            Some(c) => return Err(self.failed(op, format!("exit status {c}"), &out.stderr)),
            None => return Err(self.failed(op, "killed by a signal".into(), &out.stderr)),
        }
        let garbage = |problem: String| PluginError::Garbage {
            label: self.label.clone(),
            op: op.into(),
            problem,
            excerpt: out.stdout.chars().take(80).collect(),
        };
        match serde_json::from_str::<Value>(out.stdout.trim()) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => Err(garbage(format!("expected one JSON object, got {}", kind(&other)))),
            Err(e) => Err(garbage(format!("expected one JSON object: {e}"))),
        }
    }

    fn failed(&self, op: &str, status: String, stderr: &str) -> PluginError {
        let message = stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no message on stderr)").to_string();
        PluginError::Failed { label: self.label.clone(), op: op.into(), status, message }
    }

    /// The argv shown in step lists: the command as configured.
    pub fn shown(&self) -> String {
        self.command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }
}

/// A JSON value's kind, for messages ("an object", "a string", ...).
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `command` and `timeout` keys of an exec plugin's config table, as
/// read by [`Plugin::from_settings`].
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// argv of the plugin, without the operation.
    pub command: Vec<String>,
    /// Seconds (default 300).
    pub timeout: Option<f64>,
}

impl Plugin {
    /// Build from the config keys; `Err` says what is wrong with which key.
    pub fn from_settings(label: String, s: PluginSettings) -> Result<Plugin, (&'static str, String)> {
        let Some(program) = s.command.first() else {
            return Err(("command", "must name the plugin executable, like [\"/usr/local/lib/geats/zfs\"]".into()));
        };
        if !program.starts_with('/') {
            return Err(("command", format!("{program:?} is not an absolute path (plugins run with a fixed PATH)")));
        }
        let secs = s.timeout.unwrap_or(300.0);
        if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
            return Err(("timeout", format!("{secs} is not a number of seconds between 0 and 86400")));
        }
        Ok(Plugin { label, command: s.command.iter().map(OsString::from).collect(), timeout: Duration::from_secs_f64(secs) })
    }
}

/// A TOML settings table as the JSON object plugins receive, without the
/// keys geats keeps for itself.
pub fn settings_json(table: &toml::Table, own: &[&str]) -> Value {
    let mut m = Map::new();
    for (k, v) in table.iter().filter(|(k, _)| !own.contains(&k.as_str())) {
        m.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: f64) -> Plugin {
        let command = vec!["/bin/sh".into(), "-c".into(), script.into(), "plugin".into()];
        Plugin { label: "test".into(), command, timeout: Duration::from_secs_f64(timeout) }
    }

    #[test]
    fn op_is_the_last_argument_and_in_the_environment() {
        let p = sh(r#"read -r line; printf '{"arg":"%s","env":"%s","in":%s}' "$1" "$GEATS_PLUGIN_OP" "$line""#, 5.0);
        let r = p.call("create", &serde_json::json!({"op": "create"})).unwrap();
        assert_eq!(Value::Object(r), serde_json::json!({"arg": "create", "env": "create", "in": {"op": "create"}}));
    }

    #[test]
    fn last_stderr_line_is_the_message() {
        let p = sh("echo noise >&2; echo 'no such pool: tank' >&2; echo >&2; exit 3", 5.0);
        let e = p.call("create", &Value::Null).unwrap_err();
        assert!(matches!(&e, PluginError::Failed { message, status, .. } if message == "no such pool: tank" && status == "exit status 3"), "{e}");
    }

    #[test]
    fn not_one_object_is_garbage() {
        for out in ["hello", "[1]", "{} {}", ""] {
            let e = sh(&format!("printf '%s' '{out}'"), 5.0).call("state", &Value::Null).unwrap_err();
            assert!(matches!(e, PluginError::Garbage { .. }), "{out}: {e}");
            assert!(e.to_string().contains("plugin test: state"), "{e}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let s = |command: &[&str], timeout| PluginSettings { command: command.iter().map(|s| s.to_string()).collect(), timeout };
        assert_eq!(Plugin::from_settings("x".into(), s(&[], None)).unwrap_err().0, "command");
        assert_eq!(Plugin::from_settings("x".into(), s(&["zfs.py"], None)).unwrap_err().0, "command");
        assert_eq!(Plugin::from_settings("x".into(), s(&["/p"], Some(0.0))).unwrap_err().0, "timeout");
        assert_eq!(Plugin::from_settings("x".into(), s(&["/p"], None)).unwrap().timeout, Duration::from_secs(300));
    }
}
