//! Reading the request envelope: MCollective's six keys, Choria's eleven,
//! or the stdio form `{"action", "data"}`. Only the documented envelope keys
//! are tolerated.

use std::io::Read;

use serde_json::Value;

use super::Transport;
use crate::request::{self, Request, RequestError};

/// Keys an envelope may carry besides `action` and `data`.
pub const ENVELOPE_KEYS: &[&str] = &[
    // MCollective 2.x (rpc/request.rb to_json)
    "agent", "sender", "callerid", "uniqid",
    // Choria external rpc_request
    "$schema", "protocol", "requestid", "senderid", "collective", "ttl", "msgtime",
    // geats' own name for the caller
    "caller",
];

/// Read the request bytes, refusing more than `limit`.
pub fn read(transport: &Transport, limit: usize) -> Result<Vec<u8>, RequestError> {
    let mut buf = Vec::new();
    match transport {
        Transport::Stdio => {
            std::io::stdin().lock().take(limit as u64 + 1).read_to_end(&mut buf).map_err(RequestError::from)?;
        }
        Transport::Mcollective { request, .. } | Transport::Choria { request, .. } => {
            let f = std::fs::File::open(request)
                .map_err(|source| RequestError::Unreadable { path: request.display().to_string(), source })?;
            f.take(limit as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(|source| RequestError::Unreadable { path: request.display().to_string(), source })?;
        }
    }
    Ok(buf)
}

/// Parse an envelope into a request.
pub fn parse(bytes: &[u8], limit: usize) -> Result<Request, RequestError> {
    if bytes.len() > limit {
        return Err(RequestError::invalid("/", format!("the request is larger than the limit of {limit} bytes (request_limit)")));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| RequestError::invalid("/", format!("the request is not UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(RequestError::invalid("/", "the request is empty"));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| RequestError::invalid("/", format!("the request is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(RequestError::invalid("/", format!("the request must be a JSON object, got {}", request::kind(&v))));
    };
    for k in obj.keys() {
        if k != "action" && k != "data" && !ENVELOPE_KEYS.contains(&k.as_str()) {
            return Err(RequestError::invalid(format!("/{k}"), format!("request key {k:?} is not allowed (allowed: action, data, {})", ENVELOPE_KEYS.join(", "))));
        }
    }
    let action = match obj.remove("action") {
        Some(Value::String(a)) => a,
        Some(other) => return Err(RequestError::invalid("/action", format!("expected a string, got {}", request::kind(&other)))),
        None => return Err(RequestError::missing("/action", "required key action is missing")),
    };
    let data = match obj.remove("data") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(d) => d,
    };
    let text_of = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    // MCollective always writes callerid null (a bug in its to_json), so
    // fall back on the sender's identity.
    let caller = text_of("callerid").or_else(|| text_of("caller")).or_else(|| text_of("sender")).or_else(|| text_of("senderid"));
    let envelope_id = text_of("uniqid").or_else(|| text_of("requestid"));
    if let Some(id) = &envelope_id {
        if id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c)) {
            return Err(RequestError::invalid("/uniqid", "the request id must be at most 128 letters, digits, '_', '.', ':' or '-'"));
        }
    }
    request::parse(&action, data, caller, envelope_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_mcollective_request_is_accepted() {
        let r = br#"{"agent":"geats","action":"start","data":{"vm_name":"web1","process_results":true},"sender":"ops.client","callerid":null,"uniqid":"a5da634ae25d5f9fa1fd15b2c67d7a56"}"#;
        let req = parse(r, 1 << 20).unwrap();
        assert_eq!(req.caller.as_deref(), Some("ops.client"));
        assert_eq!(req.request_id.as_deref(), Some("a5da634ae25d5f9fa1fd15b2c67d7a56"));
    }

    #[test]
    fn malformed_is_invalid() {
        for bad in [&b""[..], b"   ", b"{", b"[]", b"\xff\xfe", b"{\"action\":\"start\",\"evil\":1}"] {
            assert!(matches!(parse(bad, 1 << 20), Err(RequestError::Invalid(_))), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(deep.as_bytes(), 1 << 20), Err(RequestError::Invalid(_))));
        assert!(matches!(parse(b"{\"data\":{}}", 1 << 20), Err(RequestError::Missing(_))));
    }
}
