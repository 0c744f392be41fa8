//! The only place geats spawns processes.
//!
//! A command is an argv, never a shell string. The child gets a fixed,
//! minimal environment (`LC_ALL=C` so the stderr we match is stable, a fixed
//! `PATH`, and only the variables a caller adds with [`Cmd::env`]), a
//! defined stdin, and a timeout after which it is killed. A failure carries
//! the argv, the exit status and both output streams.
//!
//! A command run with [`Cmd::process_group`] (an exec plugin) leads a
//! process group of its own: on a timeout the whole group is killed, and so
//! is whatever is left in the group once the leader exits, so nothing it
//! started outlives it unless it left the group on purpose (`setsid`).
//! Its output is read only until the deadline, so a child that keeps the
//! pipes open cannot hang geats either.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
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
    env: Vec<(OsString, OsString)>,
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
        Cmd {
            argv: argv.into_iter().map(|a| a.as_ref().to_os_string()).collect(),
            stdin: None,
            timeout: Duration::from_secs(60),
            env: Vec::new(),
            group: false,
        }
    }

    /// Add one variable to the child's (otherwise fixed) environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Run the child as the leader of a new process group, and kill the
    /// group on a timeout and once the leader has exited.
    pub fn process_group(mut self) -> Cmd {
        self.group = true;
        self
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
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if self.group {
            c.process_group(0);
        }
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
        let mut child = c.spawn().map_err(|source| ExecError::Spawn { program: self.program(), source })?;
        let deadline = Instant::now() + self.timeout;
        if let (Some(data), Some(mut sin)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = sin.write_all(&data);
            });
        }
        let out = reader(child.stdout.take());
        let err = reader(child.stderr.take());
        let status = match self.wait(&mut child, deadline) {
            Ok(Some(status)) => status,
            Ok(None) => {
                let stderr = String::from_utf8_lossy(&collect(&err, Instant::now() + Duration::from_millis(200)).unwrap_or_default()).into_owned();
                return Err(ExecError::Timeout { argv: self.shown(), secs: self.timeout.as_secs(), stderr });
            }
            Err(source) => return Err(ExecError::Spawn { program: self.program(), source }),
        };
        // Both pipes reach end-of-file once every process holding them is
        // gone; one that outlives the deadline (a child of the child, not
        // in its group) counts as a timeout.
        let stdout = collect(&out, deadline);
        let stderr = collect(&err, deadline);
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(ExecError::Timeout { argv: self.shown(), secs: self.timeout.as_secs(), stderr: String::new() });
        };
        Ok(Output { code: status.code(), stdout: String::from_utf8_lossy(&stdout).into_owned(), stderr: String::from_utf8_lossy(&stderr).into_owned() })
    }

    /// Wait for the child until `deadline`; `None` when it was killed for
    /// running too long. In group mode the leader's exit is observed
    /// without reaping it, so its pid (the group's id) cannot be reused
    /// while the rest of the group is killed.
    fn wait(&self, child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
        let start = Instant::now();
        let pidfd = super::proc::pidfd_open(child.id());
        loop {
            let exited = if self.group { exited_unreaped(child.id())? } else { child.try_wait()?.is_some() };
            if exited {
                if self.group {
                    kill_group(child.id());
                }
                return child.wait().map(Some);
            }
            if Instant::now() >= deadline {
                if self.group {
                    kill_group(child.id());
                } else {
                    let _ = child.kill();
                }
                let _ = child.wait();
                return Ok(None);
            }
            pause(pidfd.as_ref(), start, deadline);
        }
    }

    /// Start the command with its stdin and stdout as pipes the caller
    /// streams through (a migration transport), in a process group of its
    /// own. stderr is collected in the background for the error message.
    /// The timeout applies to [`Streaming::finish`].
    pub fn spawn_streaming(&self) -> Result<Streaming, ExecError> {
        let mut c = self.command()?;
        c.process_group(0).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| ExecError::Spawn { program: self.program(), source })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let err = reader(child.stderr.take());
        Ok(Streaming { cmd: self.clone(), child, stdin, stdout, err })
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

/// A running child whose stdin and stdout the caller streams through
/// ([`Cmd::spawn_streaming`]). Dropping it kills its process group.
#[derive(Debug)]
pub struct Streaming {
    cmd: Cmd,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    err: mpsc::Receiver<Vec<u8>>,
}

impl Streaming {
    /// The child's stdin, until [`Streaming::close_stdin`].
    pub fn stdin(&mut self) -> Option<&mut std::process::ChildStdin> {
        self.stdin.as_mut()
    }

    /// Take the child's stdout, to read it (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.stdout.take()
    }

    /// Close the child's stdin (it reads end-of-file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The command line, for messages.
    pub fn shown(&self) -> String {
        self.cmd.shown()
    }

    /// Close stdin, wait for the child until the command's timeout (then
    /// kill its group), kill what is left of its group, and return its
    /// exit code and stderr.
    pub fn wait(&mut self) -> Result<Output, ExecError> {
        self.stdin = None;
        let start = Instant::now();
        let deadline = start + self.cmd.timeout;
        let pid = self.child.id();
        let pidfd = super::proc::pidfd_open(pid);
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => pause(pidfd.as_ref(), start, deadline),
                Err(source) => return Err(ExecError::Spawn { program: self.cmd.program(), source }),
            }
        };
        kill_group(pid);
        let stderr = String::from_utf8_lossy(&collect(&self.err, Instant::now() + Duration::from_millis(500)).unwrap_or_default()).into_owned();
        match status {
            Some(st) => Ok(Output { code: st.code(), stdout: String::new(), stderr }),
            None => {
                let _ = self.child.wait();
                Err(ExecError::Timeout { argv: self.cmd.shown(), secs: self.cmd.timeout.as_secs(), stderr })
            }
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill_group(self.child.id());
            let _ = self.child.wait();
        }
    }
}

/// A thread that reads a pipe to its end and sends what it read.
fn reader(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut b);
        }
        let _ = tx.send(b);
    });
    rx
}

/// What a [`reader`] read, if it reached the end of its pipe by `deadline`.
fn collect(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Option<Vec<u8>> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok()
}

/// Has the child `pid` exited? Leaves it unreaped (`WNOWAIT`).
fn exited_unreaped(pid: u32) -> std::io::Result<bool> {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), flags) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Between two looks at a child started at `start`: with its pidfd, until
/// it exits (or `deadline`); without one (Linux < 5.3), a tenth of the time
/// it has run, so its exit is noticed at most ~10% late (doubling the pause
/// instead made a 30 ms tool cost up to 45 ms, most of a snapshot's
/// overhead, issue 18).
fn pause(pidfd: Option<&std::os::fd::OwnedFd>, start: Instant, deadline: Instant) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    match pidfd {
        Some(fd) => {
            let limit = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(limit.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
            let _ = poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], PollTimeout::from(ms));
        }
        None => std::thread::sleep((start.elapsed() / 10).clamp(Duration::from_micros(200), Duration::from_millis(20))),
    }
}

/// SIGKILL every process of the group `pgid` (there may be none left).
fn kill_group(pgid: u32) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), nix::sys::signal::Signal::SIGKILL);
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
    fn extra_env_reaches_the_child() {
        let o = Cmd::new(["env"]).env("GEATS_PLUGIN_OP", "create").run().unwrap();
        assert!(o.stdout.contains("GEATS_PLUGIN_OP=create") && o.stdout.contains("LC_ALL=C"), "{}", o.stdout);
    }

    /// Is a process whose command line contains `marker` alive?
    fn alive_with(marker: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).contains(marker)).unwrap_or(false)
        })
    }

    #[test]
    fn group_timeout_kills_the_children_too() {
        // `sleep 31.337` in the background holds no pipe; the leader hangs.
        let marker = format!("3{}.5", std::process::id());
        let t = Instant::now();
        let e = Cmd::new(["sh", "-c", &format!("sleep {marker} >/dev/null 2>&1 & sleep {marker}")])
            .process_group()
            .timeout(Duration::from_millis(300))
            .run()
            .unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
        assert!(!alive_with(&format!("sleep {marker}")), "a child of the group survived");
    }

    #[test]
    fn group_leftovers_are_killed_when_the_leader_exits() {
        let marker = format!("4{}.5", std::process::id());
        let o = Cmd::new(["sh", "-c", &format!("sleep {marker} >/dev/null 2>&1 & echo done")]).process_group().run().unwrap();
        assert_eq!(o.stdout, "done\n");
        std::thread::sleep(Duration::from_millis(100));
        assert!(!alive_with(&format!("sleep {marker}")), "a leftover of the group survived");
    }

    #[test]
    fn a_child_holding_the_pipe_cannot_outlast_the_deadline() {
        // Not a group: the background sleep keeps stdout open after sh exits.
        let t = Instant::now();
        let e = Cmd::new(["sh", "-c", "sleep 5 & echo started"]).timeout(Duration::from_millis(300)).run().unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn streaming_child_pipes_both_ways() {
        let mut s = Cmd::new(["cat"]).spawn_streaming().unwrap();
        s.stdin().unwrap().write_all(b"ping").unwrap();
        s.close_stdin();
        let mut got = String::new();
        s.take_stdout().unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "ping");
        assert_eq!(s.wait().unwrap().code, Some(0));
    }

    #[test]
    fn timeout_kills() {
        let e = Cmd::new(["sleep", "5"]).timeout(Duration::from_millis(100)).run().unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
    }
}
