//! The MCollective and Choria DDLs and the Ruby agent stub, generated from
//! the embedded request/reply schemas ([`crate::schema::SCHEMAS`]) so they
//! cannot drift from what geats accepts. `geats ddl --out agent-ddl/` writes
//! them; a test regenerates them and fails on any difference with the
//! committed `agent-ddl/`.
//!
//! What differs between the two DDLs, and why (see `docs/operations.md`):
//! - MCollective 2.12 cannot validate `:hash` inputs (every value fails), so
//!   the Ruby DDL leaves `definition` undeclared (undeclared inputs pass
//!   through unchecked); geats validates it itself and also accepts it as a
//!   JSON string.
//! - Choria rejects undeclared inputs, so the JSON DDL declares every
//!   property of the request schema (`definition` as `hash`, `dry_run`,
//!   `request_id`), except `process_results`, which Choria's validator skips.
//! - Both carry a `timeout` well above the slowest action: MCollective drops
//!   the reply on timeout without killing the child, Choria kills it.

use serde_json::{json, Map, Value};

use crate::request::Action;

/// Agent timeout in seconds, for both DDLs: above the slowest action
/// (provision of a large template; shutdown waits up to its own timeout).
pub const TIMEOUT_SECS: u64 = 600;

/// Where the Ruby stub finds the binary unless `plugin.geats.command` says
/// otherwise.
pub const DEFAULT_COMMAND: &str = "/usr/bin/geats";

/// The systemu/Ruby 3 fix shipped beside the agent stub (see
/// `docs/operations.md`): without it Debian 12's `mcollectived` fails every
/// `implemented_by` call after the command has run.
pub const SYSTEMU_FIX: &str = include_str!("ddl/systemu_fix.rb");

/// One generated file: its path relative to the output directory, and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Relative path, e.g. `geats.ddl` or `geats/systemu_fix.rb`.
    pub path: &'static str,
    /// The file's content.
    pub text: String,
}

/// Why the DDLs could not be generated (a broken embedded schema: a bug).
#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    /// An action has no request schema.
    #[error("no embedded request schema for action {0}")]
    MissingSchema(String),
    /// A schema is not valid JSON.
    #[error("embedded schema {name} is not valid JSON: {source}")]
    BadSchema {
        /// The schema file.
        name: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// One input of an action, as both DDLs need it.
#[derive(Debug, Clone)]
struct Input {
    name: String,
    description: String,
    /// `string`, `boolean`, `integer`, `number` or `hash`.
    kind: &'static str,
    pattern: String,
    maxlength: u64,
    optional: bool,
}

/// One output of an action.
#[derive(Debug, Clone)]
struct Output {
    name: String,
    description: String,
    display_as: String,
}

#[derive(Debug, Clone)]
struct ActionDdl {
    name: &'static str,
    description: String,
    inputs: Vec<Input>,
    outputs: Vec<Output>,
}

fn schema(name: &str) -> Result<Value, DdlError> {
    let text = crate::schema::source(name).ok_or_else(|| DdlError::MissingSchema(name.to_string()))?;
    serde_json::from_str(text).map_err(|source| DdlError::BadSchema { name: name.to_string(), source })
}

/// "vm_name" → "Vm name"; a few names get a friendlier prompt.
fn prompt(name: &str) -> String {
    match name {
        "vm_name" => "VM name".into(),
        "vm_destination" => "Destination host".into(),
        "dry_run" => "Dry run".into(),
        "request_id" => "Request id".into(),
        "vm_type" => "VM type".into(),
        "ip" => "IP".into(),
        _ => {
            let mut s = name.replace('_', " ");
            if let Some(f) = s.get(0..1) {
                let up = f.to_uppercase();
                s.replace_range(0..1, &up);
            }
            s
        }
    }
}

fn inputs(req: &Value) -> Vec<Input> {
    let required: Vec<&str> = req["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut out = Vec::new();
    for (name, p) in req["properties"].as_object().into_iter().flatten() {
        if name == "process_results" {
            continue;
        }
        let kind = if p.get("$ref").is_some() {
            "hash"
        } else {
            match p["type"].as_str() {
                Some("boolean") => "boolean",
                Some("integer") => "integer",
                Some("number") => "number",
                Some("object") => "hash",
                _ => "string",
            }
        };
        out.push(Input {
            name: name.clone(),
            description: p["description"].as_str().unwrap_or(name).to_string(),
            kind,
            pattern: p["pattern"].as_str().unwrap_or(".").to_string(),
            maxlength: p["maxLength"].as_u64().unwrap_or(0),
            optional: !required.contains(&name.as_str()),
        });
    }
    out
}

/// Description of a reply key: from the schema where it has one.
fn output_description(action: &str, key: &str, p: &Value) -> String {
    if let Some(d) = p["description"].as_str() {
        if key == "state" {
            return "State as [state, substate]: running, stopped, paused or unknown".into();
        }
        return d.to_string();
    }
    match key {
        "definition" => "The stored VM definition".into(),
        "locked" => "Whether the admin lock is set".into(),
        "vms" => "Every VM by name: its definition and state".into(),
        "status" => "Host figures: memory and swap in kB, load, CPUs, RAM promised, storage free".into(),
        "usage" => "Memory and CPU usage".into(),
        "ip" => "Primary IP address".into(),
        "storage" => "The VM's volumes".into(),
        "name" => "The VM's name".into(),
        "vm_type" => "The VM type".into(),
        "console" => "Command that attaches to the console".into(),
        "created" => "When the VM was first defined".into(),
        "updated" => "When the definition last changed".into(),
        "dry_run" => "True: nothing was changed".into(),
        _ => format!("{key} of {action}"),
    }
}

fn outputs(action: &str, reply: &Value) -> Vec<Output> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    // A reply schema is an object, or a oneOf of objects (normal and dry run).
    let branches: Vec<&Value> = match reply["oneOf"].as_array() {
        Some(bs) => bs.iter().collect(),
        None => vec![reply],
    };
    for b in branches {
        for (key, p) in b["properties"].as_object().into_iter().flatten() {
            if seen.contains(key) {
                continue;
            }
            seen.push(key.clone());
            out.push(Output { name: key.clone(), description: output_description(action, key, p), display_as: prompt(key) });
        }
    }
    out
}

/// The error object's keys, declared as outputs in the Choria DDL only:
/// under Choria a failed reply's `data` is that object. Under MCollective
/// the agent stub sends a failed reply with empty data (see
/// [`ruby_agent`]), so the Ruby DDL does not declare them, and MCollective
/// does not pre-fill them with nil into every reply.
const ERROR_OUTPUTS: [(&str, &str, &str); 3] = [
    ("errorcode", "Stable error code when the action failed", "Error code"),
    ("message", "What went wrong and what to fix", "Message"),
    ("retryable", "Whether trying again may succeed", "Retryable"),
];

fn actions() -> Result<Vec<ActionDdl>, DdlError> {
    let mut out = Vec::new();
    for name in Action::NAMES {
        let req = schema(&format!("request/{name}.json"))?;
        let reply = schema(&format!("reply/{name}.json"))?;
        out.push(ActionDdl {
            name,
            description: req["description"].as_str().unwrap_or(name).to_string(),
            inputs: inputs(&req),
            outputs: outputs(name, &reply),
        });
    }
    Ok(out)
}

/// A Ruby single-quoted string literal.
fn rq(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A Ruby double-quoted literal with no interpolation.
fn rdq(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '#' => o.push_str("\\#"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

const HEADER_RB: &str = "# Generated by `geats ddl` from geats's JSON schemas: do not edit.\n";

fn metadata() -> Vec<(&'static str, String)> {
    vec![
        ("name", "geats".into()),
        ("description", "Local resource manager for LXC containers and other VMs (geats external agent)".into()),
        ("author", "geats project".into()),
        ("license", env!("CARGO_PKG_LICENSE").into()),
        ("version", env!("CARGO_PKG_VERSION").into()),
        ("url", "https://github.com/sippeproject/geats".into()),
    ]
}

/// The MCollective Ruby DDL (`agent/geats.ddl`).
fn ruby_ddl(actions: &[ActionDdl]) -> String {
    let mut s = String::from(HEADER_RB);
    s.push_str("# `definition` is deliberately not declared: MCollective 2.12 cannot validate\n");
    s.push_str("# :hash inputs, and undeclared inputs pass through. geats validates it (an\n");
    s.push_str("# object, or the same as a JSON string).\n");
    let meta = metadata();
    let w = meta.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max("timeout".len());
    for (i, (k, v)) in meta.iter().enumerate() {
        let lead = if i == 0 { "metadata " } else { "         " };
        s.push_str(&format!("{lead}:{k:<w$} => {},\n", rdq(v)));
    }
    s.push_str(&format!("         :{:<w$} => {TIMEOUT_SECS}\n\n", "timeout"));
    s.push_str("requires :mcollective => \"2.2.1\"\n");
    for a in actions {
        s.push_str(&format!("\naction {}, :description => {} do\n", rdq(a.name), rdq(&a.description)));
        s.push_str("  display :always\n");
        for i in a.inputs.iter().filter(|i| i.kind != "hash") {
            s.push_str(&format!("\n  input :{},\n", i.name));
            s.push_str(&format!("        :prompt      => {},\n", rdq(&prompt(&i.name))));
            s.push_str(&format!("        :description => {},\n", rdq(&i.description)));
            s.push_str(&format!("        :type        => :{},\n", i.kind));
            if i.kind == "string" {
                s.push_str(&format!("        :validation  => {},\n", rq(&i.pattern)));
                s.push_str(&format!("        :maxlength   => {},\n", i.maxlength));
            }
            s.push_str(&format!("        :optional    => {}\n", i.optional));
        }
        for o in &a.outputs {
            s.push_str(&format!("\n  output :{},\n", o.name));
            s.push_str(&format!("         :description => {},\n", rdq(&o.description)));
            s.push_str(&format!("         :display_as  => {}\n", rdq(&o.display_as)));
        }
        if a.outputs.iter().any(|o| o.name == "changed") {
            s.push_str("\n  summarize do\n    aggregate summary(:changed)\n  end\n");
        }
        s.push_str("end\n");
    }
    s
}

/// The Choria JSON DDL (`agent/geats.json`).
fn choria_ddl(actions: &[ActionDdl]) -> String {
    let mut meta = Map::new();
    for (k, v) in metadata() {
        meta.insert(k.into(), Value::String(v));
    }
    meta.insert("timeout".into(), json!(TIMEOUT_SECS));
    meta.insert("provider".into(), json!("external"));
    let acts: Vec<Value> = actions
        .iter()
        .map(|a| {
            let mut input = Map::new();
            for i in &a.inputs {
                let mut o = Map::new();
                o.insert("prompt".into(), json!(prompt(&i.name)));
                o.insert("description".into(), json!(i.description));
                o.insert("type".into(), json!(i.kind));
                o.insert("optional".into(), json!(i.optional));
                if i.kind == "string" {
                    o.insert("validation".into(), json!(i.pattern));
                    // Choria skips `validation` when maxlength is 0.
                    o.insert("maxlength".into(), json!(i.maxlength.max(1)));
                }
                input.insert(i.name.clone(), Value::Object(o));
            }
            let mut output = Map::new();
            for o in &a.outputs {
                output.insert(o.name.clone(), json!({"description": o.description, "display_as": o.display_as}));
            }
            for (key, description, display_as) in ERROR_OUTPUTS {
                output.insert(key.into(), json!({"description": description, "display_as": display_as}));
            }
            let mut v = json!({
                "action": a.name,
                "description": a.description,
                "display": "always",
                "input": input,
                "output": output,
            });
            let agg = if a.name == "status" {
                Some("errorcode")
            } else if a.outputs.iter().any(|o| o.name == "changed") {
                Some("changed")
            } else {
                None
            };
            if let Some(arg) = agg {
                v["aggregate"] = json!([{"function": "summary", "args": [arg]}]);
            }
            v
        })
        .collect();
    let doc = json!({
        "$schema": "https://choria.io/schemas/mcorpc/ddl/v1/agent.json",
        "metadata": meta,
        "actions": acts,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// The Ruby agent stub (`agent/geats.rb`).
///
/// Its two hooks make the reply data exactly what geats wrote on success
/// and empty on any failure (geats's own, a DDL refusal, a command that
/// cannot run). Vagoth's stock `GeatsMcollective` driver takes a reply
/// whose `data` is non-empty for a success before it looks at
/// `statuscode`; MCollective pre-fills every declared output with nil, and
/// geats used to add the error object, so a failed `start` read as a
/// success there. `mco rpc` users keep `statuscode` and `statusmsg`
/// (`Failed to run CMD: MESSAGE [errorcode]`).
fn ruby_agent(actions: &[ActionDdl]) -> String {
    let names: Vec<&str> = actions.iter().map(|a| a.name).collect();
    format!(
        r#"{HEADER_RB}#
# MCollective agent stub: every action is run by the geats binary through
# implemented_by (request and reply files, exit code = statuscode).
# The binary is plugin.geats.command in server.cfg (or `command` in
# plugin.d/geats.cfg), default {DEFAULT_COMMAND}; the path must not contain spaces.
#
# The reply data is exactly what geats wrote on success, and empty on any
# failure (geats's own, a DDL refusal, a command that cannot run): the
# failure is in statuscode and statusmsg ("Failed to run CMD: MESSAGE
# [errorcode]"). A client that takes non-empty data for success, as
# Vagoth's GeatsMcollective driver does, then sees every failure as one.
#
# geats/systemu_fix.rb makes implemented_by work on Ruby 3 (Debian 12): see
# docs/operations.md. It lives in a subdirectory because mcollectived loads
# every agent/*.rb as an agent.
require File.expand_path("geats/systemu_fix.rb", File.dirname(__FILE__))

module MCollective
  module Agent
    class Geats < RPC::Agent
      DEFAULT_COMMAND = "{DEFAULT_COMMAND}"

      def self.command
        Config.instance.pluginconf.fetch("geats.command", DEFAULT_COMMAND)
      end

      %w[{names}].each do |name|
        action(name) {{ implemented_by(Geats.command) }}
      end

      # Drop the DDL's nil pre-fill: the data is what geats writes.
      def before_processing_hook(msg, connection)
        reply.data.clear
      end

      # Runs after every request, also one the DDL refused.
      def after_processing_hook
        reply.data.clear unless reply.statuscode == 0
      end
    end
  end
end
"#,
        names = names.join(" ")
    )
}

/// Every generated file, in a stable order.
pub fn generate() -> Result<Vec<GeneratedFile>, DdlError> {
    let acts = actions()?;
    Ok(vec![
        GeneratedFile { path: "geats.ddl", text: ruby_ddl(&acts) },
        GeneratedFile { path: "geats.json", text: choria_ddl(&acts) },
        GeneratedFile { path: "geats.rb", text: ruby_agent(&acts) },
        GeneratedFile { path: "geats/systemu_fix.rb", text: SYSTEMU_FIX.to_string() },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_in_both_ddls() {
        let files = generate().unwrap();
        let ddl = &files[0].text;
        let json: Value = serde_json::from_str(&files[1].text).unwrap();
        for a in Action::NAMES {
            assert!(ddl.contains(&format!("action \"{a}\"")), "{a}");
            assert!(json["actions"].as_array().unwrap().iter().any(|x| x["action"] == a), "{a}");
        }
        assert!(!ddl.contains("input :definition"), "definition must stay an undeclared input in the Ruby DDL");
        assert!(ddl.contains("output :definition"), "it is an output of define and info");
        let define = json["actions"].as_array().unwrap().iter().find(|x| x["action"] == "define").unwrap();
        assert_eq!(define["input"]["definition"]["type"], "hash");
        assert!(define["input"].get("process_results").is_none());
    }

    #[test]
    fn ruby_literals_escape() {
        assert_eq!(rq("a'b\\"), "'a\\'b\\\\'");
        assert_eq!(rdq("#{x}\""), "\"\\#{x}\\\"\"");
    }
}
