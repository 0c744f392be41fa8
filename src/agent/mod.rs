//! The one-shot agent: read one request, run it, write one reply.
//!
//! Three transports share everything but the envelope:
//! - MCollective (`geats agent REQ REPLY`, or the `MCOLLECTIVE_*_FILE`
//!   variables): the reply file holds the reply data (or the error object),
//!   the exit code is the class, the message goes to stderr;
//! - Choria (`CHORIA_EXTERNAL_PROTOCOL` set, or a third argument): the reply
//!   file holds `{statuscode, statusmsg, data}` and the exit code is 0;
//! - stdio (`geats agent --stdio`, or the `geats_jsonagent` name): request
//!   on stdin, `{"success": ...}` envelope on stdout, exit 0 whenever the
//!   envelope was written.
//!
//! Only this module knows envelopes, and with [`crate::error`] the mapping
//! from errors to codes.

mod envelope;
mod reply;

use std::path::PathBuf;

use crate::config::Config;
use crate::error::{Error, ErrorCode, ExitClass};
use crate::manager::Manager;
use crate::request::RequestError;

/// Choria's protocol names.
pub const CHORIA_RPC: &str = "io.choria.mcorpc.external.v1.rpc_request";
/// Choria's activation check.
pub const CHORIA_ACTIVATION: &str = "io.choria.mcorpc.external.v1.activation_request";

/// Where the request comes from and the reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// MCollective's `implemented_by`.
    Mcollective {
        /// The request file.
        request: PathBuf,
        /// The reply file.
        reply: PathBuf,
    },
    /// Choria's external agent protocol.
    Choria {
        /// The request file.
        request: PathBuf,
        /// The reply file.
        reply: PathBuf,
        /// `CHORIA_EXTERNAL_PROTOCOL` (or the third argument).
        protocol: String,
    },
    /// stdin/stdout.
    Stdio,
}

/// The agent's command line, parsed by hand: this is the hot path, and
/// clap's setup is not needed for it.
#[derive(Debug, Clone, Default)]
pub struct AgentArgs {
    /// `--stdio`.
    pub stdio: bool,
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// Positional arguments.
    pub positional: Vec<String>,
    /// `--help`.
    pub help: bool,
}

/// Usage text of `geats agent`.
pub const USAGE: &str = "usage: geats agent [--config PATH] REQUEST_FILE REPLY_FILE [PROTOCOL]
       geats agent [--config PATH] --stdio
       geats agent            (reads MCOLLECTIVE_REQUEST_FILE / MCOLLECTIVE_REPLY_FILE,
                               or CHORIA_EXTERNAL_REQUEST / CHORIA_EXTERNAL_REPLY)

Runs one request as an MCollective or Choria external agent, or as a
stdin/stdout JSON agent. See docs/contract.md.";

impl AgentArgs {
    /// Parse the arguments after `agent`.
    pub fn parse(args: &[String]) -> Result<AgentArgs, String> {
        let mut a = AgentArgs::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--stdio" => a.stdio = true,
                "-h" | "--help" => a.help = true,
                "--config" => a.config = Some(it.next().ok_or("--config needs a path")?.into()),
                s if s.starts_with("--config=") => a.config = Some(s["--config=".len()..].into()),
                "-v" | "-vv" | "-vvv" | "--verbose" | "-q" | "--quiet" => {}
                s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
                s => a.positional.push(s.to_string()),
            }
        }
        Ok(a)
    }

    /// Decide the transport from the arguments and the environment.
    pub fn transport(&self, env: impl Fn(&str) -> Option<String>) -> Result<Transport, String> {
        if self.stdio {
            if !self.positional.is_empty() {
                return Err("--stdio takes no files".into());
            }
            return Ok(Transport::Stdio);
        }
        let choria_protocol = env("CHORIA_EXTERNAL_PROTOCOL").filter(|s| !s.is_empty());
        match self.positional.as_slice() {
            [req, rep] => Ok(match choria_protocol {
                Some(protocol) => Transport::Choria { request: req.into(), reply: rep.into(), protocol },
                None => Transport::Mcollective { request: req.into(), reply: rep.into() },
            }),
            // Choria passes its protocol as a third argument, but names the
            // rpc protocol even for the activation check: the environment
            // wins when it is set.
            [req, rep, proto] => Ok(Transport::Choria {
                request: req.into(),
                reply: rep.into(),
                protocol: choria_protocol.unwrap_or_else(|| proto.clone()),
            }),
            [] => {
                if let (Some(req), Some(rep)) = (env("CHORIA_EXTERNAL_REQUEST"), env("CHORIA_EXTERNAL_REPLY")) {
                    let protocol = choria_protocol.unwrap_or_else(|| CHORIA_RPC.to_string());
                    return Ok(Transport::Choria { request: req.into(), reply: rep.into(), protocol });
                }
                match (env("MCOLLECTIVE_REQUEST_FILE"), env("MCOLLECTIVE_REPLY_FILE")) {
                    (Some(req), Some(rep)) => Ok(Transport::Mcollective { request: req.into(), reply: rep.into() }),
                    _ => Err("no request: give REQUEST_FILE REPLY_FILE, --stdio, or set MCOLLECTIVE_REQUEST_FILE and MCOLLECTIVE_REPLY_FILE".into()),
                }
            }
            _ => Err(format!("expected REQUEST_FILE REPLY_FILE [PROTOCOL], got {} arguments", self.positional.len())),
        }
    }
}

/// Run the agent; returns the process exit code.
pub fn run(args: &AgentArgs) -> u8 {
    let env = |k: &str| std::env::var(k).ok();
    let transport = match args.transport(env) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("geats agent: {e}\n{USAGE}");
            return ExitClass::Other.code();
        }
    };
    // Choria may hand us a config file; it need not exist.
    let config_path = args.config.clone().or_else(|| match &transport {
        Transport::Choria { .. } => env("CHORIA_EXTERNAL_CONFIG").map(PathBuf::from).filter(|p| p.is_file()),
        _ => None,
    });
    if let Transport::Choria { protocol, reply, .. } = &transport {
        if protocol == CHORIA_ACTIVATION {
            return reply::activation(reply, activate(config_path.as_deref()));
        }
    }
    let result = std::panic::catch_unwind(|| serve(&transport, config_path.as_deref()));
    let reply = result.unwrap_or_else(|p| {
        let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        tracing::error!("a panic was caught and reported as an internal error");
        Err(Error::Internal(format!("geats panicked: {what}")))
    });
    reply::deliver(&transport, reply)
}

/// Parse request bytes as the agent does (size limit, UTF-8, JSON,
/// envelope keys, schema, names, definition types): the whole input side
/// of a request, without reading a file. For other front ends and for the
/// property tests (`tests/fuzz.rs`).
pub fn parse_request(bytes: &[u8], limit: usize) -> Result<crate::request::Request, RequestError> {
    envelope::parse(bytes, limit)
}

/// Outcome of one request: the reply, or the error.
pub type Served = Result<crate::manager::Reply, Error>;

/// Choria's activation check: must answer within 2 s, so it only asks each
/// configured VM type whether its tools exist. A broken config says no.
fn activate(config_path: Option<&std::path::Path>) -> bool {
    match Config::load(config_path) {
        Ok(c) => c.vm_types.keys().any(|t| crate::vm::build(&c, t).map(|v| v.available()).unwrap_or(false)),
        Err(e) => {
            eprintln!("geats: not activating: {}", crate::error::chain(&e));
            false
        }
    }
}

fn serve(transport: &Transport, config_path: Option<&std::path::Path>) -> Served {
    let config = Config::load(config_path)?;
    let bytes = envelope::read(transport, config.request_limit)?;
    let req = envelope::parse(&bytes, config.request_limit)?;
    let manager = Manager::new(config);
    let out = manager.execute(&req);
    match &out {
        Ok(_) => tracing::info!(action = req.action.name(), "ok"),
        // The message itself is written once, by the reply writer.
        Err(e) => tracing::debug!(action = req.action.name(), code = e.code().as_str(), "failed"),
    }
    out
}

/// The error object every failure carries.
pub fn error_object(e: &Error) -> serde_json::Value {
    let code: ErrorCode = e.code();
    serde_json::json!({"errorcode": code.as_str(), "message": e.message(), "retryable": code.retryable()})
}

impl From<std::io::Error> for RequestError {
    fn from(source: std::io::Error) -> Self {
        RequestError::Unreadable { path: "<stdin>".into(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str], env: &[(&str, &str)]) -> Result<Transport, String> {
        let a = AgentArgs::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        a.transport(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn transports() {
        assert_eq!(t(&["--stdio"], &[]).unwrap(), Transport::Stdio);
        assert!(matches!(t(&["a", "b"], &[]).unwrap(), Transport::Mcollective { .. }));
        assert!(matches!(t(&[], &[("MCOLLECTIVE_REQUEST_FILE", "a"), ("MCOLLECTIVE_REPLY_FILE", "b")]).unwrap(), Transport::Mcollective { .. }));
        let c = t(&["a", "b", CHORIA_RPC], &[("CHORIA_EXTERNAL_PROTOCOL", CHORIA_ACTIVATION)]).unwrap();
        assert_eq!(c, Transport::Choria { request: "a".into(), reply: "b".into(), protocol: CHORIA_ACTIVATION.into() });
        assert!(t(&[], &[]).is_err());
        assert!(t(&["--bogus"], &[]).is_err());
    }
}
