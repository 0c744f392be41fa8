//! The JSON Schemas of `schemas/`, embedded in the binary, and a small
//! validator for the subset of draft-07 they use.
//!
//! Why not the `jsonschema` crate at run time: building its validator for one
//! small schema costs about a millisecond per request (it also checks the
//! schema against the meta-schema), more than the rest of a request together
//! (see `bench/`). This interpreter only parses the one schema the action
//! needs and walks it. The `jsonschema` crate is still the reference: a test
//! (`tests/schemas.rs`) runs both on every fixture and fails on any
//! disagreement, and another fails if a schema uses a keyword not handled
//! here.

use std::sync::OnceLock;

use serde_json::Value;

/// The schema files, by their path under `schemas/`.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("definition.json", include_str!("../schemas/definition.json")),
    ("request/status.json", include_str!("../schemas/request/status.json")),
    ("request/info.json", include_str!("../schemas/request/info.json")),
    ("request/define.json", include_str!("../schemas/request/define.json")),
    ("request/provision.json", include_str!("../schemas/request/provision.json")),
    ("request/start.json", include_str!("../schemas/request/start.json")),
    ("request/stop.json", include_str!("../schemas/request/stop.json")),
    ("request/shutdown.json", include_str!("../schemas/request/shutdown.json")),
    ("request/reboot.json", include_str!("../schemas/request/reboot.json")),
    ("request/undefine.json", include_str!("../schemas/request/undefine.json")),
    ("request/deprovision.json", include_str!("../schemas/request/deprovision.json")),
    ("request/lock.json", include_str!("../schemas/request/lock.json")),
    ("request/unlock.json", include_str!("../schemas/request/unlock.json")),
    ("request/migrate.json", include_str!("../schemas/request/migrate.json")),
    ("request/snapshot.json", include_str!("../schemas/request/snapshot.json")),
    ("request/restore.json", include_str!("../schemas/request/restore.json")),
    ("request/delete_snapshot.json", include_str!("../schemas/request/delete_snapshot.json")),
    ("request/events.json", include_str!("../schemas/request/events.json")),
    ("request/reconcile.json", include_str!("../schemas/request/reconcile.json")),
    ("reply/status.json", include_str!("../schemas/reply/status.json")),
    ("reply/info.json", include_str!("../schemas/reply/info.json")),
    ("reply/define.json", include_str!("../schemas/reply/define.json")),
    ("reply/provision.json", include_str!("../schemas/reply/provision.json")),
    ("reply/start.json", include_str!("../schemas/reply/start.json")),
    ("reply/stop.json", include_str!("../schemas/reply/stop.json")),
    ("reply/shutdown.json", include_str!("../schemas/reply/shutdown.json")),
    ("reply/reboot.json", include_str!("../schemas/reply/reboot.json")),
    ("reply/undefine.json", include_str!("../schemas/reply/undefine.json")),
    ("reply/deprovision.json", include_str!("../schemas/reply/deprovision.json")),
    ("reply/lock.json", include_str!("../schemas/reply/lock.json")),
    ("reply/unlock.json", include_str!("../schemas/reply/unlock.json")),
    ("reply/migrate.json", include_str!("../schemas/reply/migrate.json")),
    ("reply/snapshot.json", include_str!("../schemas/reply/snapshot.json")),
    ("reply/restore.json", include_str!("../schemas/reply/restore.json")),
    ("reply/delete_snapshot.json", include_str!("../schemas/reply/delete_snapshot.json")),
    ("reply/events.json", include_str!("../schemas/reply/events.json")),
    ("reply/reconcile.json", include_str!("../schemas/reply/reconcile.json")),
    ("reply/error.json", include_str!("../schemas/reply/error.json")),
];

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer to the offending value (relative to the validated value).
    pub pointer: String,
    /// True when a required key is absent.
    pub missing: bool,
    /// What is wrong.
    pub message: String,
}

/// The text of an embedded schema.
pub fn source(name: &str) -> Option<&'static str> {
    SCHEMAS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The embedded schema `name`, parsed once per process and kept for its
/// life: a validation borrows the schema and every document its `$ref`s
/// reach instead of copying them (the definition's schema, copied and
/// dropped per `$ref`, cost a `define` more instructions than parsing
/// it; docs/performance.md, eleventh pass).
fn parsed(name: &str) -> Option<(&'static str, &'static Value)> {
    static PARSED: [OnceLock<Option<Value>>; SCHEMAS.len()] = [const { OnceLock::new() }; SCHEMAS.len()];
    let i = SCHEMAS.iter().position(|(n, _)| *n == name)?;
    let (n, text) = SCHEMAS[i];
    PARSED[i].get_or_init(|| serde_json::from_str(text).ok()).as_ref().map(|v| (n, v))
}

/// Validate `instance` against the embedded schema `name`.
pub fn validate(name: &str, instance: &Value) -> Result<(), Vec<Violation>> {
    let mut v = Validator { docs: Vec::new(), out: Vec::new() };
    let root = v.load(name);
    match root {
        Some(i) => {
            let schema = v.docs[i].1;
            v.check(i, schema, instance, &mut String::new());
        }
        None => v.out.push(Violation { pointer: String::new(), missing: false, message: format!("no embedded schema {name}") }),
    }
    if v.out.is_empty() {
        Ok(())
    } else {
        Err(v.out)
    }
}

struct Validator {
    /// Loaded documents: (file name, parsed schema).
    docs: Vec<(&'static str, &'static Value)>,
    out: Vec<Violation>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn escape_pointer(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        let t: String = s.chars().take(57).collect();
        format!("{t}...")
    } else {
        s
    }
}

impl Validator {
    fn load(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.docs.iter().position(|(n, _)| *n == name) {
            return Some(i);
        }
        self.docs.push(parsed(name)?);
        Some(self.docs.len() - 1)
    }

    fn fail(&mut self, ptr: &str, message: String) {
        self.out.push(Violation { pointer: ptr.to_string(), missing: false, message });
    }

    /// Resolve `$ref` relative to document `doc`: `#/definitions/x`,
    /// `other.json` or `other.json#/definitions/x`.
    fn resolve(&mut self, doc: usize, r: &str) -> Option<(usize, &'static Value)> {
        let (file, frag) = r.split_once('#').unwrap_or((r, ""));
        let d = if file.is_empty() {
            doc
        } else {
            // Sibling files resolve against the referring file's directory.
            let base = self.docs[doc].0.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            let mut path = file.to_string();
            let mut dir = base.to_string();
            while let Some(rest) = path.strip_prefix("../") {
                path = rest.to_string();
                dir = dir.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
            }
            let full = if dir.is_empty() { path } else { format!("{dir}/{path}") };
            self.load(&full)?
        };
        let doc_value: &'static Value = self.docs[d].1;
        let target = if frag.is_empty() { Some(doc_value) } else { doc_value.pointer(frag) };
        target.map(|t| (d, t))
    }

    fn check(&mut self, doc: usize, schema: &Value, inst: &Value, ptr: &mut String) {
        let Some(s) = schema.as_object() else {
            if schema == &Value::Bool(false) {
                self.fail(ptr, "no value is allowed here".into());
            }
            return;
        };
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            match self.resolve(doc, r) {
                Some((d, t)) => self.check(d, t, inst, ptr),
                None => self.fail(ptr, format!("schema reference {r} cannot be resolved")),
            }
            return;
        }
        if let Some(t) = s.get("type") {
            let actual = type_name(inst);
            let ok = |t: &str| t == actual || (t == "number" && actual == "integer");
            let matches = match t {
                Value::String(t) => ok(t),
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(ok),
                _ => true,
            };
            if !matches {
                let want = match t {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                self.fail(ptr, format!("expected {want}, got {actual} {}", shown(inst)));
                return;
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(inst) {
                let list: Vec<String> = e.iter().map(|v| v.to_string()).collect();
                self.fail(ptr, format!("{} is not one of {}", shown(inst), list.join(", ")));
            }
        }
        if let Some(c) = s.get("const") {
            if c != inst {
                self.fail(ptr, format!("{} must be {c}", shown(inst)));
            }
        }
        match inst {
            Value::String(text) => self.check_string(s, text, ptr),
            Value::Number(n) => {
                if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), n.as_f64()) {
                    if x < min {
                        self.fail(ptr, format!("{n} is less than the minimum {min}"));
                    }
                }
                if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), n.as_f64()) {
                    if x > max {
                        self.fail(ptr, format!("{n} is more than the maximum {max}"));
                    }
                }
            }
            Value::Array(items) => {
                if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                    if (items.len() as u64) < min {
                        self.fail(ptr, format!("needs at least {min} item(s), has {}", items.len()));
                    }
                }
                if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
                    if items.len() as u64 > max {
                        self.fail(ptr, format!("allows at most {max} item(s), has {}", items.len()));
                    }
                }
                if let Some(item_schema) = s.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        let len = ptr.len();
                        ptr.push_str(&format!("/{i}"));
                        self.check(doc, item_schema, item, ptr);
                        ptr.truncate(len);
                    }
                }
            }
            Value::Object(map) => self.check_object(doc, s, map, ptr),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn check_string(&mut self, s: &serde_json::Map<String, Value>, text: &str, ptr: &str) {
        let n = text.chars().count() as u64;
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
            if n > max {
                self.fail(ptr, format!("is {n} characters long; at most {max} are allowed"));
                return;
            }
        }
        if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
            if n < min {
                self.fail(ptr, format!("is {n} characters long; at least {min} are needed"));
            }
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            if let Some(m) = simple_match(p, text) {
                if !m {
                    self.fail(ptr, format!("{} does not match {p}", shown(&Value::String(text.to_string()))));
                }
                return;
            }
            match regex_lite::Regex::new(p) {
                Ok(re) if re.is_match(text) => {}
                Ok(_) => self.fail(ptr, format!("{} does not match {p}", shown(&Value::String(text.to_string())))),
                Err(e) => self.fail(ptr, format!("schema pattern {p} is invalid: {e}")),
            }
        }
    }

    fn check_object(&mut self, doc: usize, s: &serde_json::Map<String, Value>, map: &serde_json::Map<String, Value>, ptr: &mut String) {
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for k in req.iter().filter_map(Value::as_str) {
                if !map.contains_key(k) {
                    self.out.push(Violation {
                        pointer: format!("{ptr}/{}", escape_pointer(k)),
                        missing: true,
                        message: format!("required key {k} is missing"),
                    });
                }
            }
        }
        if let Some(max) = s.get("maxProperties").and_then(Value::as_u64) {
            if map.len() as u64 > max {
                self.fail(ptr, format!("has {} keys; at most {max} are allowed", map.len()));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        let pattern_props = s.get("patternProperties").and_then(Value::as_object);
        let additional = s.get("additionalProperties");
        for (k, v) in map {
            let len = ptr.len();
            ptr.push('/');
            ptr.push_str(&escape_pointer(k));
            let mut matched = false;
            if let Some(ps) = props.and_then(|p| p.get(k)) {
                matched = true;
                self.check(doc, ps, v, ptr);
            }
            if let Some(pp) = pattern_props {
                for (pat, ps) in pp {
                    if regex_lite::Regex::new(pat).map(|re| re.is_match(k)).unwrap_or(false) {
                        matched = true;
                        self.check(doc, ps, v, ptr);
                    }
                }
            }
            if !matched {
                match additional {
                    Some(Value::Bool(false)) => {
                        let allowed: Vec<&str> = props.map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default();
                        let msg = if allowed.is_empty() {
                            format!("key {k:?} is not allowed")
                        } else {
                            format!("key {k:?} is not allowed (allowed: {})", allowed.join(", "))
                        };
                        self.fail(ptr, msg);
                    }
                    Some(extra @ Value::Object(_)) => self.check(doc, extra, v, ptr),
                    _ => {}
                }
            }
            ptr.truncate(len);
        }
    }
}

/// Match the common pattern shape `^[CLASS][CLASS]{m,n}$` (or
/// `^[CLASS]{m,n}$`) without compiling a regex; `None` for any other
/// pattern. Classes hold literal characters and `a-z` ranges.
pub fn simple_match(pattern: &str, text: &str) -> Option<bool> {
    fn class(p: &str) -> Option<(Vec<(char, char)>, &str)> {
        let rest = p.strip_prefix('[')?;
        let end = rest.find(']')?;
        let body: Vec<char> = rest[..end].chars().collect();
        if body.is_empty() || body[0] == '^' || body.contains(&'\\') || body.contains(&'[') {
            return None;
        }
        let mut ranges = Vec::new();
        let mut i = 0;
        while i < body.len() {
            if i + 2 < body.len() && body[i + 1] == '-' {
                ranges.push((body[i], body[i + 2]));
                i += 3;
            } else {
                ranges.push((body[i], body[i]));
                i += 1;
            }
        }
        Some((ranges, &rest[end + 1..]))
    }
    fn quant(p: &str) -> Option<((usize, usize), &str)> {
        let Some(rest) = p.strip_prefix('{') else { return Some(((1, 1), p)) };
        let end = rest.find('}')?;
        let (a, b) = rest[..end].split_once(',')?;
        Some(((a.parse().ok()?, b.parse().ok()?), &rest[end + 1..]))
    }
    let inner = pattern.strip_prefix('^')?.strip_suffix('$')?;
    let mut parts = Vec::new();
    let mut p = inner;
    while !p.is_empty() {
        let (ranges, rest) = class(p)?;
        let (q, rest) = quant(rest)?;
        parts.push((ranges, q));
        p = rest;
    }
    if parts.is_empty() {
        return None;
    }
    // Greedy matching is exact when every part but the last matches
    // exactly one character, as in the name patterns.
    if parts[..parts.len().saturating_sub(1)].iter().any(|(_, q)| *q != (1, 1)) {
        return None;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut pos = 0;
    for (ranges, (min, max)) in &parts {
        let inside = |c: &char| ranges.iter().any(|(a, b)| a <= c && c <= b);
        let mut n = 0;
        while pos < chars.len() && n < *max && inside(&chars[pos]) {
            pos += 1;
            n += 1;
        }
        if n < *min {
            return Some(false);
        }
    }
    Some(pos == chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

/// The keywords this validator understands; any other is a test failure.
const KEYWORDS: &[&str] = &[
    "$schema", "$id", "$comment", "$ref", "title", "description", "definitions", "examples", "default",
    "type", "properties", "required", "additionalProperties", "patternProperties", "items", "minItems",
    "maxItems", "pattern", "minLength", "maxLength", "minimum", "maximum", "enum", "const", "maxProperties",
];

/// Every keyword used anywhere in `schema` that [`KEYWORDS`] lacks
/// (property names under `properties`/`patternProperties`/`definitions`
/// are names, not keywords).
fn unsupported_keywords(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        let Some(m) = v.as_object() else { return };
        for (k, sub) in m {
            if !KEYWORDS.contains(&k.as_str()) {
                out.push(k.clone());
            }
            match k.as_str() {
                "properties" | "patternProperties" | "definitions" => {
                    if let Some(children) = sub.as_object() {
                        for c in children.values() {
                            walk(c, out);
                        }
                    }
                }
                "items" | "additionalProperties" => walk(sub, out),
                _ => {}
            }
        }
    }
    walk(schema, &mut out);
    out
}


    #[test]
    fn every_schema_parses_and_uses_known_keywords() {
        for (name, text) in SCHEMAS {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let bad = unsupported_keywords(&v);
            // Reply schemas are checked by the jsonschema crate only and may use more.
            if name.starts_with("request/") || *name == "definition.json" {
                assert!(bad.is_empty(), "{name} uses {bad:?}");
            }
        }
    }

    #[test]
    fn simple_patterns_agree_with_regex() {
        let patterns = [crate::names::NAME_PATTERN, crate::names::IFNAME_PATTERN, "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"];
        let texts = ["", "a", "web1", "-a", ".a", "a/b", "a b", "a\nb", "é", "a:b", &"a".repeat(15), &"a".repeat(16), &"a".repeat(63), &"a".repeat(64), &"a".repeat(200)];
        for p in patterns {
            let re = regex_lite::Regex::new(p).unwrap();
            for t in texts {
                assert_eq!(simple_match(p, t), Some(re.is_match(t)), "{p} on {t:?}");
            }
        }
        assert_eq!(simple_match("^[0-9]{1,3}(\\.[0-9]{1,3}){3}$", "1.2.3.4"), None);
    }

    #[test]
    fn missing_and_invalid_are_told_apart() {
        let e = validate("request/start.json", &json!({})).unwrap_err();
        assert!(e[0].missing && e[0].pointer == "/vm_name", "{e:?}");
        let e = validate("request/start.json", &json!({"vm_name": "a/b"})).unwrap_err();
        assert!(!e[0].missing && e[0].pointer == "/vm_name", "{e:?}");
        let e = validate("request/start.json", &json!({"vm_name": 5})).unwrap_err();
        assert!(e[0].message.contains("expected string"), "{e:?}");
    }

    #[test]
    fn pointers_reach_into_the_definition() {
        let req = json!({"vm_name": "a", "definition": {"network": [{"name": "eth0", "ipaddr": "x y"}]}});
        let e = validate("request/define.json", &req).unwrap_err();
        assert_eq!(e[0].pointer, "/definition/network/0/ipaddr", "{e:?}");
        let req = json!({"vm_name": "a", "definition": {"bogus": 1}});
        let e = validate("request/define.json", &req).unwrap_err();
        assert_eq!(e[0].pointer, "/definition/bogus", "{e:?}");
    }
}
