//! Requests independent of transport: the [`Action`] enum and how request
//! data (the `data` object) becomes one, after schema validation.
//!
//! The agent (MCollective, Choria, stdio) and the CLI both build an
//! [`Request`] and hand it to [`crate::manager::Manager`].

use serde_json::Value;

use crate::definition::Definition;
use crate::names::{SnapshotName, VmName};
use crate::schema;

/// One thing wrong with a request: where (a JSON pointer relative to the
/// request data, `/` for the whole request) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON pointer of the offending value.
    pub pointer: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.pointer, self.problem)
    }
}

fn join(problems: &[Problem]) -> String {
    problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("; ")
}

/// Why a request was refused before any work.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Required keys are absent.
    #[error("missing data: {}", join(.0))]
    Missing(Vec<Problem>),
    /// The request is malformed or violates the schema.
    #[error("invalid data: {}", join(.0))]
    Invalid(Vec<Problem>),
    /// The action is not known.
    #[error("unknown action {0:?}; known actions: {known}", known = Action::NAMES.join(", "))]
    UnknownAction(String),
    /// The request could not be read at all.
    #[error("cannot read request file {path}: {source}")]
    Unreadable {
        /// The file (`<stdin>` for stdin).
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl RequestError {
    /// One invalid value at `pointer`.
    pub fn invalid(pointer: impl Into<String>, problem: impl std::fmt::Display) -> RequestError {
        RequestError::Invalid(vec![Problem { pointer: pointer.into(), problem: problem.to_string() }])
    }

    /// One absent key at `pointer`.
    pub fn missing(pointer: impl Into<String>, problem: impl std::fmt::Display) -> RequestError {
        RequestError::Missing(vec![Problem { pointer: pointer.into(), problem: problem.to_string() }])
    }
}

/// Every action, matched exhaustively by the manager.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// All VMs and host figures.
    Status,
    /// One VM.
    Info(VmName),
    /// Create or update.
    Define(VmName, Box<Definition>),
    /// Define, format, install the template.
    Provision(VmName, Box<Definition>),
    /// Start.
    Start(VmName),
    /// Power off.
    Stop(VmName),
    /// Clean halt.
    Shutdown(VmName),
    /// Restart.
    Reboot(VmName),
    /// Remove from the hypervisor.
    Undefine(VmName),
    /// Undefine and destroy the volumes.
    Deprovision(VmName),
    /// Set the admin lock.
    Lock(VmName),
    /// Clear the admin lock.
    Unlock(VmName),
    /// Move to another host.
    Migrate(VmName, String),
    /// Take a snapshot of every volume, under one name.
    Snapshot(VmName, SnapshotName),
    /// Bring every volume back to a snapshot.
    Restore(VmName, SnapshotName),
    /// Remove a snapshot.
    DeleteSnapshot(VmName, SnapshotName),
    /// Start every VM that should run and does not (`geats reconcile`).
    Reconcile,
    /// The event feed: events after `since`, at most `limit`.
    Events {
        /// Only events with a greater seq.
        since: i64,
        /// At most this many.
        limit: u32,
    },
}

impl Action {
    /// The action names, as on the wire.
    pub const NAMES: [&'static str; 18] = [
        "status", "info", "define", "provision", "start", "stop", "shutdown", "reboot", "undefine", "deprovision", "lock", "unlock", "migrate",
        "snapshot", "restore", "delete_snapshot", "events", "reconcile",
    ];

    /// The default `limit` of `events`.
    pub const EVENTS_LIMIT: u32 = 1000;

    /// The wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::Info(_) => "info",
            Action::Define(..) => "define",
            Action::Provision(..) => "provision",
            Action::Start(_) => "start",
            Action::Stop(_) => "stop",
            Action::Shutdown(_) => "shutdown",
            Action::Reboot(_) => "reboot",
            Action::Undefine(_) => "undefine",
            Action::Deprovision(_) => "deprovision",
            Action::Lock(_) => "lock",
            Action::Unlock(_) => "unlock",
            Action::Migrate(..) => "migrate",
            Action::Snapshot(..) => "snapshot",
            Action::Restore(..) => "restore",
            Action::DeleteSnapshot(..) => "delete_snapshot",
            Action::Events { .. } => "events",
            Action::Reconcile => "reconcile",
        }
    }

    /// The VM it acts on.
    pub fn vm(&self) -> Option<&VmName> {
        match self {
            Action::Status | Action::Events { .. } | Action::Reconcile => None,
            Action::Info(v)
            | Action::Define(v, _)
            | Action::Provision(v, _)
            | Action::Start(v)
            | Action::Stop(v)
            | Action::Shutdown(v)
            | Action::Reboot(v)
            | Action::Undefine(v)
            | Action::Deprovision(v)
            | Action::Lock(v)
            | Action::Unlock(v)
            | Action::Migrate(v, _)
            | Action::Snapshot(v, _)
            | Action::Restore(v, _)
            | Action::DeleteSnapshot(v, _) => Some(v),
        }
    }

    /// Does it change anything (and so take a lock and a journal entry)?
    pub fn is_mutating(&self) -> bool {
        !matches!(self, Action::Status | Action::Info(_) | Action::Events { .. })
    }
}

/// A request ready for the manager.
#[derive(Debug, Clone)]
pub struct Request {
    /// What to do.
    pub action: Action,
    /// Plan only.
    pub dry_run: bool,
    /// Idempotency key.
    pub request_id: Option<String>,
    /// Who asked (MCollective sender, Choria callerid, CLI user).
    pub caller: Option<String>,
}

/// Validate `data` for the action `name` and build the request.
/// `envelope_request_id` is the transport's id (MCollective `uniqid`,
/// Choria `requestid`), used when `data` carries no `request_id`.
pub fn parse(name: &str, mut data: Value, caller: Option<String>, envelope_request_id: Option<String>) -> Result<Request, RequestError> {
    if !Action::NAMES.contains(&name) {
        return Err(RequestError::UnknownAction(name.to_string()));
    }
    let Some(obj) = data.as_object_mut() else {
        return Err(RequestError::invalid("/", format!("request data must be an object, got {}", kind(&data))));
    };
    // MCollective 2.12 cannot validate hash inputs, so its clients may send
    // the definition as a JSON string: parse it first.
    if let Some(Value::String(s)) = obj.get("definition") {
        let parsed: Value = serde_json::from_str(s)
            .map_err(|e| RequestError::invalid("/definition", format!("a string definition must hold a JSON object: {e}")))?;
        obj.insert("definition".into(), parsed);
    }
    let schema_name = format!("request/{name}.json");
    if let Err(violations) = schema::validate(&schema_name, &data) {
        let problem = |v: &schema::Violation| Problem { pointer: v.pointer.clone(), problem: v.message.clone() };
        let missing: Vec<Problem> = violations.iter().filter(|v| v.missing).map(problem).collect();
        if !missing.is_empty() {
            return Err(RequestError::Missing(missing));
        }
        return Err(RequestError::Invalid(violations.iter().map(problem).collect()));
    }
    let vm = || -> Result<VmName, RequestError> {
        let s = data.get("vm_name").and_then(Value::as_str).unwrap_or_default();
        VmName::new(s).map_err(|e| RequestError::invalid("/vm_name", e))
    };
    let definition = |vm: &VmName| -> Result<Box<Definition>, RequestError> {
        let d = data.get("definition").cloned().unwrap_or(Value::Null);
        let def: Definition = serde_json::from_value(d).map_err(|e| RequestError::invalid("/definition", e))?;
        def.check(vm).map_err(|(p, e)| RequestError::invalid(format!("/definition{p}"), e))?;
        Ok(Box::new(def))
    };
    let snapshot = || -> Result<SnapshotName, RequestError> {
        let s = data.get("snapshot").and_then(Value::as_str).unwrap_or_default();
        SnapshotName::new(s).map_err(|e| RequestError::invalid("/snapshot", e))
    };
    let action = match name {
        "status" => Action::Status,
        "info" => Action::Info(vm()?),
        "define" => {
            let v = vm()?;
            let d = definition(&v)?;
            Action::Define(v, d)
        }
        "provision" => {
            let v = vm()?;
            let d = definition(&v)?;
            Action::Provision(v, d)
        }
        "start" => Action::Start(vm()?),
        "stop" => Action::Stop(vm()?),
        "shutdown" => Action::Shutdown(vm()?),
        "reboot" => Action::Reboot(vm()?),
        "undefine" => Action::Undefine(vm()?),
        "deprovision" => Action::Deprovision(vm()?),
        "lock" => Action::Lock(vm()?),
        "unlock" => Action::Unlock(vm()?),
        "migrate" => Action::Migrate(vm()?, data.get("vm_destination").and_then(Value::as_str).unwrap_or_default().to_string()),
        "snapshot" => Action::Snapshot(vm()?, snapshot()?),
        "restore" => Action::Restore(vm()?, snapshot()?),
        "delete_snapshot" => Action::DeleteSnapshot(vm()?, snapshot()?),
        // The schema bounds both (integers, since >= 0, 1 <= limit <= 10000).
        "reconcile" => Action::Reconcile,
        "events" => Action::Events {
            since: data.get("since").and_then(Value::as_i64).unwrap_or(0),
            limit: data.get("limit").and_then(Value::as_u64).map_or(Action::EVENTS_LIMIT, |l| u32::try_from(l).unwrap_or(u32::MAX)),
        },
        other => return Err(RequestError::UnknownAction(other.to_string())),
    };
    let dry_run = data.get("dry_run").and_then(Value::as_bool).unwrap_or(false);
    let request_id = data.get("request_id").and_then(Value::as_str).map(str::to_string).or(envelope_request_id);
    Ok(Request { action, dry_run, request_id, caller })
}

/// A JSON value's kind, for messages (the plugin transport's words).
pub use crate::sys::plugin::kind;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definition_as_string_is_accepted() {
        let d = json!({"vm_name": "a", "definition": "{\"vm_type\": \"dummy\"}"});
        let r = parse("define", d, None, None).unwrap();
        assert!(matches!(r.action, Action::Define(_, _)));
    }

    #[test]
    fn classes() {
        assert!(matches!(parse("explode", json!({}), None, None), Err(RequestError::UnknownAction(_))));
        assert!(matches!(parse("start", json!({}), None, None), Err(RequestError::Missing(_))));
        assert!(matches!(parse("start", json!({"vm_name": "a", "x": 1}), None, None), Err(RequestError::Invalid(_))));
        assert!(matches!(parse("start", json!([1]), None, None), Err(RequestError::Invalid(_))));
        let e = parse("define", json!({"vm_name": "a", "definition": {"name": "b"}}), None, None).unwrap_err();
        assert!(e.to_string().contains("/definition/name"), "{e}");
    }

    #[test]
    fn events_defaults_and_bounds() {
        let r = parse("events", json!({}), None, None).unwrap();
        assert_eq!(r.action, Action::Events { since: 0, limit: Action::EVENTS_LIMIT });
        let r = parse("events", json!({"since": 7, "limit": 2}), None, None).unwrap();
        assert_eq!(r.action, Action::Events { since: 7, limit: 2 });
        assert!(matches!(parse("events", json!({"since": -1}), None, None), Err(RequestError::Invalid(_))));
        assert!(matches!(parse("events", json!({"limit": 0}), None, None), Err(RequestError::Invalid(_))));
        assert!(matches!(parse("events", json!({"since": "3"}), None, None), Err(RequestError::Invalid(_))));
    }

    #[test]
    fn envelope_id_is_the_fallback() {
        let r = parse("start", json!({"vm_name": "a", "process_results": true}), None, Some("abc".into())).unwrap();
        assert_eq!(r.request_id.as_deref(), Some("abc"));
        let r = parse("start", json!({"vm_name": "a", "request_id": "mine"}), None, Some("abc".into())).unwrap();
        assert_eq!(r.request_id.as_deref(), Some("mine"));
    }
}
