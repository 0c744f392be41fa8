//! Processes a test starts (sshd, RabbitMQ, mcollectived): a guard that
//! stops them by pid when the test ends or fails, free ports, and waits.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};


/// A process the test started; killed by its pid and reaped on drop, so
/// nothing is left running when the test fails.
pub struct Guard {
    pub name: &'static str,
    pub child: Option<Child>,
}

impl Guard {
    pub fn new(name: &'static str, child: Child) -> Guard {
        Guard { name, child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} (pid {}) ignored SIGTERM; killing it", self.name, child.id());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Wait until something accepts on 127.0.0.1:port.
pub fn wait_port(port: u16, timeout: Duration, guard: &mut Guard) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Some(c) = guard.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                eprintln!("{} exited early: {st}", guard.name);
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Paths that go into a remote shell command line must need no quoting.
pub fn shell_safe(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)), "unsafe path for a remote command: {s:?}");
    s
}

/// A pid the test caused to exist but did not spawn (the Erlang VM behind
/// rabbitmq-server's shell, its epmd): SIGTERM, then SIGKILL.
pub fn kill_pid(name: &str, pid: i32) {
    use nix::sys::signal::{kill, Signal};
    let p = nix::unistd::Pid::from_raw(pid);
    if kill(p, None).is_err() {
        return;
    }
    let _ = kill(p, Signal::SIGTERM);
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if kill(p, None).is_err() || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
            return;
        }
    }
    eprintln!("{name} (pid {pid}) ignored SIGTERM; killing it");
    let _ = kill(p, Signal::SIGKILL);
}
