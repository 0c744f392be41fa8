//! Writing the reply: the reply file (atomically) or the stdout envelope,
//! and the exit code. With the CLI renderers, the only writer of stdout.

use std::io::Write;

use serde_json::{json, Value};

use super::{error_object, Served, Transport};
use crate::error::ExitClass;
use crate::sys::fsutil::write_replace;

/// The reply file is read as soon as geats exits and is worthless after a
/// crash: atomic (rename), not durable (no fsync).
fn write_reply(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    write_replace(path, data, 0o600, false)
}

/// A reply as JSON bytes. Straight into a byte buffer: `Value`'s
/// `Display` goes through `fmt::Write` and cost a `status` of 100 VMs
/// about 0.45M instructions more (callgrind).
fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| v.to_string().into_bytes())
}

/// Deliver the outcome; returns the exit code.
///
/// Called once per process, right before it exits: the reply and its JSON
/// tree are not freed (`mem::forget`), the exit returns the memory. Freeing
/// them one node at a time was a quarter of a `status` of 1000 VMs
/// (callgrind: `drop_in_place<Value>`, 20M of 63M instructions).
pub fn deliver(transport: &Transport, served: Served) -> u8 {
    let code = deliver_ref(transport, &served);
    std::mem::forget(served);
    code
}

fn deliver_ref(transport: &Transport, served: &Served) -> u8 {
    match transport {
        Transport::Stdio => {
            let envelope = match served {
                Ok(reply) => json!({"success": true, "data": reply.to_json()}),
                Err(e) => {
                    let mut o = error_object(e);
                    if let Some(m) = o.as_object_mut() {
                        m.insert("success".into(), Value::Bool(false));
                    }
                    o
                }
            };
            if let Err(e) = served {
                eprintln!("geats: {} [{}]", e.message(), e.code());
            }
            let mut out = std::io::stdout().lock();
            let text = bytes(&envelope);
            std::mem::forget(envelope);
            match out.write_all(&text).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush()) {
                Ok(()) => 0,
                Err(_) => ExitClass::Other.code(),
            }
        }
        Transport::Mcollective { reply, .. } => {
            let (body, class) = match served {
                Ok(reply) => (reply.to_json(), ExitClass::Ok),
                Err(e) => {
                    // stderr becomes MCollective's statusmsg.
                    eprintln!("{} [{}]", e.message(), e.code());
                    (error_object(e), e.code().exit_class())
                }
            };
            let text = bytes(&body);
            std::mem::forget(body);
            match write_reply(reply, &text) {
                Ok(()) => class.code(),
                Err(e) => {
                    eprintln!("cannot write reply file {}: {e}", reply.display());
                    ExitClass::Other.code()
                }
            }
        }
        Transport::Choria { reply, .. } => {
            let body = match served {
                Ok(reply) => json!({"statuscode": 0, "statusmsg": "OK", "data": reply.to_json()}),
                Err(e) => {
                    eprintln!("{} [{}]", e.message(), e.code());
                    json!({"statuscode": e.code().exit_class().code(), "statusmsg": e.message(), "data": error_object(e)})
                }
            };
            let text = bytes(&body);
            std::mem::forget(body);
            match write_reply(reply, &text) {
                // Choria ignores the reply file on any non-zero exit.
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cannot write reply file {}: {e}", reply.display());
                    ExitClass::Other.code()
                }
            }
        }
    }
}

/// Answer Choria's activation check; always exit 0 (a non-zero exit also
/// means "not activated", but with a warning in Choria's log).
pub fn activation(reply: &std::path::Path, activate: bool) -> u8 {
    match write_reply(reply, json!({"activate": activate}).to_string().as_bytes()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cannot write reply file {}: {e}", reply.display());
            ExitClass::Other.code()
        }
    }
}
