//! The only place geats spawns processes.
//!
//! A command is an argv, never a shell string. The child gets a fixed,
//! minimal environment (`LC_ALL=C` so the stderr we match is stable, a fixed
//! `PATH`), a defined stdin, and a timeout after which it is killed. A failure
//! carries the argv, the exit status and both output streams.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `PATH` every child gets.
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A finished command's output.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// A command that could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// argv[0].
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited non-zero or was killed.
    #[error("`{argv}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed {
        /// The command line, for humans.
        argv: String,
        /// "exit status N" or "killed by signal".
        status: String,
        /// Its stdout.
        stdout: String,
        /// Its stderr.
        stderr: String,
    },
    /// It ran longer than allowed and was killed.
    #[error("`{argv}` did not finish within {secs} s and was killed{}", stderr_suffix(.stderr))]
    Timeout {
        /// The command line.
        argv: String,
        /// The limit.
        secs: u64,
        /// What it wrote to stderr so far.
        stderr: String,
    },
}

fn stderr_suffix(s: &str) -> String {
    let t = s.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {}", t.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; "))
    }
}

impl ExecError {
    /// The child's stderr, if it ran.
    pub fn stderr(&self) -> &str {
        match self {
            ExecError::Spawn { .. } => "",
            ExecError::Failed { stderr, .. } | ExecError::Timeout { stderr, .. } => stderr,
        }
    }
}

/// How to run a command.
#[derive(Debug, Clone)]
pub struct Cmd {
    argv: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    group: bool,
}

impl Cmd {
    /// A command from an argv; the timeout defaults to 60 s.
    /// Arguments are passed as they are, paths included: a non-UTF-8 path
    /// reaches the tool unchanged.
    pub fn new<I, S>(argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd { argv: argv.into_iter().map(|a| a.as_ref().to_os_string()).collect(), stdin: None, timeout: Duration::from_secs(60), group: false }
    }

    /// Append one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Cmd {
        self.argv.push(a.as_ref().to_os_string());
        self
    }

    /// Feed these bytes on stdin (otherwise stdin is /dev/null).
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(data.into());
        self
    }

    /// Kill the child after this long.
    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    /// Run it in a process group of its own, and make the timeout cover
    /// everything in that group: when it passes, the whole group is
    /// killed, also processes the command left behind holding its output
    /// open (a hook script's `sleep`). For programs geats does not know.
    pub fn own_group(mut self) -> Cmd {
        self.group = true;
        self
    }

    /// The command line for messages.
    pub fn shown(&self) -> String {
        self.argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }

    fn program(&self) -> String {
        self.argv.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// The error for this command having finished with `out` when that is
    /// not success: `status` says how (`exit status 3`, `unexpected
    /// output`).
    pub fn failure(&self, status: impl Into<String>, out: Output) -> ExecError {
        ExecError::Failed { argv: self.shown(), status: status.into(), stdout: out.stdout, stderr: out.stderr }
    }

    fn command(&self) -> Result<Command, ExecError> {
        let program = self.argv.first().ok_or_else(|| ExecError::Spawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"),
        })?;
        #[allow(clippy::disallowed_methods)]
        let mut c = Command::new(program);
        c.args(&self.argv[1..]).env_clear().env("LC_ALL", "C").env("PATH", CHILD_PATH);
        Ok(c)
    }

    /// Run to completion; a non-zero exit is an error.
    pub fn run(&self) -> Result<Output, ExecError> {
        let out = self.output()?;
        match out.code {
            Some(0) => Ok(out),
            Some(c) => Err(self.failure(format!("exit status {c}"), out)),
            None => Err(self.failure("killed by a signal", out)),
        }
    }

    /// Run to completion and return the output whatever the exit status.
    pub fn output(&self) -> Result<Output, ExecError> {
        let mut c = self.command()?;
        c.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.group {
            use std::os::unix::process::CommandExt;
            c.process_group(0);
        }
        let mut child = c.spawn().map_err(|source| ExecError::Spawn { program: self.program(), source })?;
        if let (Some(data), Some(mut sin)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = sin.write_all(&data);
            });
        }
        let mut so = child.stdout.take();
        let mut se = child.stderr.take();
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(s) = so.as_mut() {
                let _ = s.read_to_end(&mut b);
            }
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(s) = se.as_mut() {
                let _ = s.read_to_end(&mut b);
            }
            b
        });
        let start = Instant::now();
        let mut sleep = Duration::from_micros(200);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if start.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    self.kill_group(child.id());
                    let _ = child.wait();
                    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
                    return Err(ExecError::Timeout { argv: self.shown(), secs: self.timeout.as_secs(), stderr });
                }
                Ok(None) => {
                    std::thread::sleep(sleep);
                    sleep = (sleep * 2).min(Duration::from_millis(20));
                }
                Err(source) => return Err(ExecError::Spawn { program: self.program(), source }),
            }
        };
        if self.group {
            // Whatever it left behind may hold the output open: wait for
            // that only until the timeout.
            while !(t_out.is_finished() && t_err.is_finished()) {
                if start.elapsed() >= self.timeout {
                    self.kill_group(child.id());
                    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
                    return Err(ExecError::Timeout { argv: self.shown(), secs: self.timeout.as_secs(), stderr });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
        Ok(Output { code: status.code(), stdout, stderr })
    }

    /// Kill the process group of a command run with [`Cmd::own_group`]
    /// (its id is the child's pid).
    fn kill_group(&self, pid: u32) {
        if self.group {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Run with the terminal attached (console, ssh, exec): stdin, stdout
    /// and stderr are inherited, no timeout. Returns the exit code.
    pub fn interactive(&self) -> Result<i32, ExecError> {
        let mut c = self.command()?;
        if let Ok(term) = std::env::var("TERM") {
            c.env("TERM", term);
        }
        let st = c.status().map_err(|source| ExecError::Spawn { program: self.program(), source })?;
        Ok(st.code().unwrap_or(128 + 9))
    }
}

/// Is `program` on the child `PATH`?
pub fn have(program: &str) -> bool {
    CHILD_PATH.split(':').any(|d| std::path::Path::new(d).join(program).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr_and_status() {
        let e = Cmd::new(["ls", "/nonexistent-geats"]).run().unwrap_err();
        let s = e.to_string();
        assert!(s.contains("exit status") && s.contains("No such file"), "{s}");
    }

    #[test]
    fn stdin_and_env_are_controlled() {
        let o = Cmd::new(["cat"]).stdin("hello").run().unwrap();
        assert_eq!(o.stdout, "hello");
        let o = Cmd::new(["env"]).run().unwrap();
        assert!(o.stdout.contains("LC_ALL=C") && !o.stdout.contains("HOME="), "{}", o.stdout);
    }

    #[test]
    fn own_group_timeout_covers_what_the_command_left_behind() {
        let t = Instant::now();
        let e = Cmd::new(["sh", "-c", "sleep 30 & exit 0"]).own_group().timeout(Duration::from_millis(300)).run().unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let t = Instant::now();
        let e = Cmd::new(["sh", "-c", "sleep 30"]).own_group().timeout(Duration::from_millis(300)).run().unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn timeout_kills() {
        let e = Cmd::new(["sleep", "5"]).timeout(Duration::from_millis(100)).run().unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
    }
}
