//! `stop` speaks LXC's command protocol itself (issue 15): what
//! `lxc-stop -k` sends, without starting it. On real busybox containers: a
//! running one, a frozen one, one on an lxcpath so long that LXC hashes the
//! socket name; each stopped natively (the debug log says so), STOPPED for
//! `lxc-info`, and started again. And the fallback to `lxc-stop -k` when
//! the monitor answers the stop command (it answers only when it did not
//! stop): a listener on the container's command socket plays a monitor
//! that refuses, and records what geats and then `lxc-stop` itself send,
//! which must be the same bytes.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags};
use serde_json::{json, Value};

use crate::common::lxc::{busybox_template, missing, run, Containers};
use crate::common::{skip, Env};

fn unique(tag: &str) -> String {
    format!("gs{}{tag}", std::process::id())
}

fn definition() -> Value {
    json!({"template": "busybox", "ram": 64, "storage": [{"name": "root", "type": "dir"}]})
}

/// An env whose LXC containers live in `lxcpath` (default: ROOT/var/lib/lxc).
fn lxc_env(lxcpath: Option<&str>, names: &[&str]) -> (Env, Containers) {
    let env = Env::new();
    let lp = match lxcpath {
        Some(rel) => {
            let lp = env.root().join(rel);
            std::fs::write(&env.config, format!("[vm_types.lxc]\ndriver = \"lxc\"\nlxcpath = \"{}\"\n", lp.display())).unwrap();
            lp
        }
        None => env.root().join("var/lib/lxc"),
    };
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let guard = Containers::new(&lp, names);
    (env, guard)
}

/// Run one action through `geats agent --stdio` with `GEATS_LOG=debug`:
/// (the agent's pid, the envelope, stderr).
fn logged(env: &Env, action: &str, name: &str) -> (u32, Value, String) {
    let mut c = env.cmd();
    c.env("GEATS_LOG", "debug").args(["agent", "--stdio"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let pid = child.id();
    let req = json!({"action": action, "data": {"vm_name": name}}).to_string();
    child.stdin.take().unwrap().write_all(req.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{action}: not an envelope ({e}); stderr {stderr}"));
    (pid, v, stderr)
}

const NATIVE: &str = "stopped through LXC's command socket";
const FALLBACK: &str = "running lxc-stop -k";

/// Stop natively, then check LXC agrees, and start again.
fn stop_natively_and_restart(env: &Env, lxc: &Containers, name: &str) {
    let (_, v, err) = logged(env, "stop", name);
    assert_eq!(v["success"], json!(true), "{v}\n{err}");
    assert_eq!(v["data"]["state"], json!(["stopped", "stopped"]), "{v}");
    assert!(err.contains(NATIVE), "the native path was not taken:\n{err}");
    assert!(!err.contains(FALLBACK), "fell back to lxc-stop:\n{err}");
    assert_eq!(lxc.lxc_state(name), "STOPPED");
    assert!(!lxc.lxcpath.join(name).join("geats.pid").exists(), "the monitor has exited (its pid file is gone)");
    let d = env.ok("start", json!({"vm_name": name}));
    assert_eq!(d["state"], json!(["running", "running"]));
    assert_eq!(lxc.lxc_state(name), "RUNNING");
}

#[test]
fn issue_15_native_stop_of_running_and_frozen_containers() {
    if let Some(why) = missing() {
        return skip("issue_15_native_stop_of_running_and_frozen_containers", &why);
    }
    let name = unique("n");
    let (env, lxc) = lxc_env(None, &[&name]);
    env.ok("define", json!({"vm_name": name, "definition": definition()}));
    env.ok("start", json!({"vm_name": name}));
    stop_natively_and_restart(&env, &lxc, &name);

    // A frozen container: the monitor thaws it after the SIGKILL.
    let lp = lxc.lxcpath.to_string_lossy().into_owned();
    let (c, _, e) = run(&["lxc-freeze", "-P", &lp, "-n", &name]);
    assert_eq!(c, 0, "lxc-freeze: {e}");
    assert_eq!(lxc.lxc_state(&name), "FROZEN");
    assert_eq!(env.ok("info", json!({"vm_name": name}))["state"], json!(["paused", "frozen"]));
    stop_natively_and_restart(&env, &lxc, &name);

    // Already stopped: nothing listens, a no-op.
    env.ok("stop", json!({"vm_name": name}));
    let (_, v, err) = logged(&env, "stop", &name);
    assert_eq!(v["data"], json!({"changed": false, "state": ["stopped", "stopped"]}), "{err}");
    env.ok("deprovision", json!({"vm_name": name}));
}

#[test]
fn issue_15_native_stop_on_a_long_lxcpath() {
    if let Some(why) = missing() {
        return skip("issue_15_native_stop_on_a_long_lxcpath", &why);
    }
    let name = unique("h");
    let (env, lxc) = lxc_env(Some(&format!("lxc-{}", "x".repeat(90))), &[&name]);
    let plain = format!("{}/{name}/command", lxc.lxcpath.display());
    assert!(plain.len() >= 106, "LXC hashes names of 106 bytes or more: {plain}");
    env.ok("define", json!({"vm_name": name, "definition": definition()}));
    let d = env.ok("start", json!({"vm_name": name}));
    assert_eq!(d["state"], json!(["running", "running"]));
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    assert!(!unix.contains(&format!("@{plain}")), "LXC did not hash the socket name");
    assert_eq!(lxc.lxc_state(&name), "RUNNING");
    stop_natively_and_restart(&env, &lxc, &name);
    let (_, v, err) = logged(&env, "stop", &name);
    assert!(err.contains(NATIVE) && v["data"]["state"] == json!(["stopped", "stopped"]), "{v}\n{err}");
    assert_eq!(lxc.lxc_state(&name), "STOPPED");
    env.ok("deprovision", json!({"vm_name": name}));
}

/// One request a monitor received.
#[derive(Debug, Clone)]
struct Seen {
    bytes: Vec<u8>,
    creds: Option<(i32, u32, u32)>,
}

impl Seen {
    fn cmd(&self) -> i32 {
        i32::from_ne_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }
}

/// A stand-in for a container's monitor on its command socket, answering
/// as LXC 5.0's does: `get_init_pid` and `get_state` (RUNNING), and each
/// `stop` as `stops` says: `Some(ret)` answers `ret` (a monitor that did
/// not stop), `None` closes the connection and the socket without an
/// answer (the monitor stopped the container and exited). It serves until
/// `quit` or that close.
fn monitor(name: String, mut stops: Vec<Option<i32>>, quit: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Seen>> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let l = UnixListener::bind_addr(&addr).unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let end = Instant::now() + Duration::from_secs(60);
        while !quit.load(Ordering::SeqCst) && Instant::now() < end {
            let Ok((c, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            c.set_nonblocking(false).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            socket::setsockopt(&c, socket::sockopt::PassCred, &true).unwrap();
            let mut b = [0u8; 16];
            let mut iov = [std::io::IoSliceMut::new(&mut b)];
            let mut space = nix::cmsg_space!(libc::ucred);
            let Ok(msg) = socket::recvmsg::<()>(c.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()) else { continue };
            let n = msg.bytes;
            if n == 0 {
                // End of stream before a request: geats asking whether the
                // socket listens. LXC's `lxc_cmd_handler` closes such a
                // connection without a word (TRACE only), and so does this.
                continue;
            }
            let creds = msg.cmsgs().ok().and_then(|mut it| {
                it.find_map(|m| match m {
                    ControlMessageOwned::ScmCredentials(c) => Some(c),
                    _ => None,
                })
            });
            let s = Seen { bytes: b[..n].to_vec(), creds: creds.map(|c| (c.pid(), c.uid(), c.gid())) };
            let rsp = |ret: i32, data: usize| {
                let mut r = Vec::new();
                r.extend_from_slice(&ret.to_ne_bytes());
                r.extend_from_slice(&0i32.to_ne_bytes());
                r.extend_from_slice(&data.to_ne_bytes());
                r
            };
            let answer = match s.cmd() {
                4 => Some(rsp(0, std::process::id() as usize)),
                3 => Some(rsp(0, 2)),
                2 => stops.remove(0).map(|ret| rsp(ret, 0)),
                _ => Some(rsp(-libc::ENOSYS, 0)),
            };
            seen.push(s);
            match answer {
                Some(r) => {
                    let _ = (&c).write_all(&r);
                }
                None => return seen,
            }
        }
        seen
    })
}

/// A defined (not started) container, and a monitor stand-in on its socket.
fn refusing_monitor(tag: &str, stops: Vec<Option<i32>>) -> (Env, Containers, String, Arc<AtomicBool>, std::thread::JoinHandle<Vec<Seen>>) {
    let name = unique(tag);
    let (env, lxc) = lxc_env(None, &[&name]);
    env.ok("define", json!({"vm_name": name, "definition": definition()}));
    let sock = format!("{}/{name}/command", lxc.lxcpath.display());
    let quit = Arc::new(AtomicBool::new(false));
    let t = monitor(sock, stops, quit.clone());
    (env, lxc, name, quit, t)
}

fn check_same_requests(seen: &[Seen], agent: u32) {
    let cmds: Vec<i32> = seen.iter().map(Seen::cmd).collect();
    // geats' stop, then lxc-stop's try (get_init_pid), state, stop.
    assert_eq!(cmds, [2, 4, 3, 2], "{seen:?}");
    let (ours, theirs) = (&seen[0], &seen[3]);
    assert_eq!(ours.bytes, theirs.bytes, "geats' stop request differs from lxc-stop's");
    assert_eq!(ours.bytes.len(), std::mem::size_of::<usize>() + 8);
    let (o, t) = (ours.creds.expect("geats sent credentials"), theirs.creds.expect("lxc-stop sent credentials"));
    assert_eq!(o.0, agent as i32, "the first stop came from the agent itself");
    assert_ne!(t.0, agent as i32, "the second from another process (lxc-stop)");
    assert_eq!((o.1, o.2), (t.1, t.2), "same uid and gid");
}

#[test]
fn issue_15_stop_falls_back_to_lxc_stop_when_the_monitor_refuses() {
    if let Some(why) = missing() {
        return skip("issue_15_stop_falls_back_to_lxc_stop_when_the_monitor_refuses", &why);
    }
    // A monitor that refuses every stop (-EPERM, its answer to credentials
    // it does not accept): the fallback runs, and lxc-stop's failure is the reply.
    let (env, _lxc, name, quit, t) = refusing_monitor("r", vec![Some(-libc::EPERM), Some(-libc::EPERM)]);
    let (pid, v, err) = logged(&env, "stop", &name);
    quit.store(true, Ordering::SeqCst);
    let seen = t.join().unwrap();
    assert_eq!(v["success"], json!(false), "{v}\n{err}");
    assert!(err.contains(FALLBACK) && err.contains("EPERM"), "{err}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("Failed to stop"), "lxc-stop's own error is the reply: {v}");
    check_same_requests(&seen, pid);
}

#[test]
fn issue_15_stop_falls_back_to_lxc_stop_which_stops() {
    if let Some(why) = missing() {
        return skip("issue_15_stop_falls_back_to_lxc_stop_which_stops", &why);
    }
    // The monitor answers geats' stop (it could not signal init), then
    // takes lxc-stop's and exits: the fallback's success is the reply.
    let (env, lxc, name, quit, t) = refusing_monitor("s", vec![Some(-libc::ESRCH), None]);
    let (pid, v, err) = logged(&env, "stop", &name);
    quit.store(true, Ordering::SeqCst);
    let seen = t.join().unwrap();
    assert_eq!(v["success"], json!(true), "{v}\n{err}");
    assert_eq!(v["data"]["state"], json!(["stopped", "stopped"]), "{v}");
    assert!(err.contains(FALLBACK) && err.contains("ESRCH"), "{err}");
    assert!(!err.contains(NATIVE), "{err}");
    check_same_requests(&seen, pid);
    assert_eq!(lxc.lxc_state(&name), "STOPPED");
}
