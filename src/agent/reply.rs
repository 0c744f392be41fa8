//! Writing the reply: the reply file (atomically) or the stdout envelope,
//! and the exit code. With the CLI renderers, the only writer of stdout.

use std::io::Write;

use serde_json::{json, Value};

use super::{error_object, Served, Transport};
use crate::error::ExitClass;
use crate::manager::reply::Reply;
use crate::sys::fsutil::write_whole_into;

/// The reply file is read as soon as geats exits and is worthless after a
/// crash (not durable, no fsync), but a kill must never leave half of it
/// (issue 11): [`write_whole_into`] writes a reply of at most a page into
/// the empty file the caller made (or one it reuses, of at most a page)
/// in place, with one `write(2)` that a kill cannot cut, and a longer one
/// as a temp file renamed over it.
fn write_reply(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    write_whole_into(path, data, 0o600)
}

/// A reply as JSON bytes. Straight into a byte buffer: `Value`'s
/// `Display` goes through `fmt::Write` and cost a `status` of 100 VMs
/// about 0.45M instructions more (callgrind).
fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| v.to_string().into_bytes())
}

/// A successful reply as JSON bytes: `status` written straight from its
/// types (`Reply::to_json_bytes`); any other through its `Value` tree,
/// which is left to the exit like the reply itself (see [`deliver`]:
/// freeing it cost `info` 20k instructions).
fn reply_bytes(reply: &Reply) -> Vec<u8> {
    if matches!(reply, Reply::Status(_)) {
        return reply.to_json_bytes();
    }
    let v = reply.to_json();
    let text = bytes(&v);
    std::mem::forget(v);
    text
}

/// A successful reply inside its envelope, as the bytes of the envelope's
/// `Value` (keys sorted: `data` comes first in both envelopes), with the
/// reply's bytes copied in rather than its tree.
fn enveloped(reply: &Reply, before: &[u8], after: &[u8]) -> Vec<u8> {
    let data = reply_bytes(reply);
    let mut out = Vec::with_capacity(before.len() + data.len() + after.len() + 1);
    out.extend_from_slice(before);
    out.extend_from_slice(&data);
    out.extend_from_slice(after);
    out
}

/// `{"success": true, "data": REPLY}`.
fn stdio_ok(reply: &Reply) -> Vec<u8> {
    enveloped(reply, b"{\"data\":", b",\"success\":true}")
}

/// `{"statuscode": 0, "statusmsg": "OK", "data": REPLY}`.
fn choria_ok(reply: &Reply) -> Vec<u8> {
    enveloped(reply, b"{\"data\":", b",\"statuscode\":0,\"statusmsg\":\"OK\"}")
}

/// Deliver the outcome; returns the exit code.
///
/// Called once per process, right before it exits: the reply is not freed
/// (`mem::forget`), the exit returns the memory. Freeing a `status` of
/// 1000 VMs one node at a time was a quarter of it (callgrind:
/// `drop_in_place<Value>`, 20M of 63M instructions, when its JSON tree
/// was still built).
pub fn deliver(transport: &Transport, served: Served) -> u8 {
    let code = deliver_ref(transport, &served);
    std::mem::forget(served);
    code
}

fn deliver_ref(transport: &Transport, served: &Served) -> u8 {
    match transport {
        Transport::Stdio => {
            let text = match served {
                Ok(reply) => stdio_ok(reply),
                Err(e) => {
                    eprintln!("geats: {} [{}]", e.message(), e.code());
                    let mut o = error_object(e);
                    if let Some(m) = o.as_object_mut() {
                        m.insert("success".into(), Value::Bool(false));
                    }
                    bytes(&o)
                }
            };
            let mut out = std::io::stdout().lock();
            match out.write_all(&text).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush()) {
                Ok(()) => 0,
                Err(_) => ExitClass::Other.code(),
            }
        }
        Transport::Mcollective { reply, .. } => {
            let (text, class) = match served {
                Ok(reply) => (reply_bytes(reply), ExitClass::Ok),
                Err(e) => {
                    // stderr becomes MCollective's statusmsg.
                    eprintln!("{} [{}]", e.message(), e.code());
                    (bytes(&error_object(e)), e.code().exit_class())
                }
            };
            match write_reply(reply, &text) {
                Ok(()) => class.code(),
                Err(e) => {
                    eprintln!("cannot write reply file {}: {e}", reply.display());
                    ExitClass::Other.code()
                }
            }
        }
        Transport::Choria { reply, .. } => {
            let text = match served {
                Ok(reply) => choria_ok(reply),
                Err(e) => {
                    eprintln!("{} [{}]", e.message(), e.code());
                    bytes(&json!({"statuscode": e.code().exit_class().code(), "statusmsg": e.message(), "data": error_object(e)}))
                }
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::reply::{RemovedReply, StatusReply};

    /// The envelopes written around the reply's bytes are the bytes of
    /// the envelopes' `Value`s.
    #[test]
    fn envelopes_are_those_of_the_value() {
        let status = Reply::Status(StatusReply { vms: Default::default(), kept: Default::default(), status: Default::default() });
        for r in [status, Reply::Removed(RemovedReply { changed: false })] {
            assert_eq!(stdio_ok(&r), bytes(&json!({"success": true, "data": r.to_json()})));
            assert_eq!(choria_ok(&r), bytes(&json!({"statuscode": 0, "statusmsg": "OK", "data": r.to_json()})));
        }
    }
}
