//! The reference validator: the `jsonschema` crate over the same embedded
//! schema files. Used to prove the built-in validator agrees with it, and
//! to validate every reply the test suite produces.

use jsonschema::{Retrieve, Uri};
use serde_json::Value;

const BASE: &str = "file:///geats/schemas/";

struct Embedded;

impl Retrieve for Embedded {
    fn retrieve(&self, uri: &Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri.as_str().strip_prefix(BASE).ok_or_else(|| format!("unexpected schema URI {}", uri.as_str()))?;
        let text = geats::schema::source(name).ok_or_else(|| format!("no embedded schema {name}"))?;
        Ok(serde_json::from_str(text)?)
    }
}

/// Build the reference validator for an embedded schema.
pub fn reference(name: &str) -> jsonschema::Validator {
    let text = geats::schema::source(name).unwrap_or_else(|| panic!("no schema {name}"));
    let schema: Value = serde_json::from_str(text).expect("schema JSON");
    jsonschema::options()
        .with_base_uri(format!("{BASE}{name}"))
        .with_retriever(Embedded)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {name} does not compile: {e}"))
}

/// Reference verdict: `Ok` or the list of (instance pointer, is "required").
pub fn reference_validate(name: &str, instance: &Value) -> Result<(), Vec<(String, bool)>> {
    let v = reference(name);
    let errs: Vec<(String, bool)> = v
        .iter_errors(instance)
        .map(|e| (e.instance_path().to_string(), matches!(e.kind(), jsonschema::error::ValidationErrorKind::Required { .. })))
        .collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Panic unless `data` is a valid reply of `action`.
pub fn check_reply(action: &str, data: &Value) {
    if geats::schema::source(&format!("reply/{action}.json")).is_none() {
        panic!("reply of unknown action {action}");
    }
    if let Err(e) = reference_validate(&format!("reply/{action}.json"), data) {
        panic!("reply of {action} violates reply/{action}.json: {e:?}\nreply: {data:#}");
    }
}

/// Panic unless `obj` is a valid failure object.
pub fn check_error(obj: &Value) {
    if let Err(e) = reference_validate("reply/error.json", obj) {
        panic!("failure violates reply/error.json: {e:?}\nobject: {obj:#}");
    }
}
