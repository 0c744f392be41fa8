//! LXC's command protocol, the client side of the one command geats speaks
//! itself: `stop`, what `lxc-stop -k` sends (`c->stop()` →
//! `lxc_cmd_stop()`), without starting `lxc-stop` (which loads liblxc,
//! parses the container's config and makes three round trips: try, state,
//! stop).
//!
//! As LXC 5.0.2 speaks it (`src/lxc/commands.c`, `af_unix.c`; the same in
//! 3.0, 4.0 and main):
//!
//! - The container's monitor listens on an abstract unix stream socket,
//!   [`super::state::command_socket`]; the address is a NUL and the name,
//!   without a trailing NUL (`lxc_abstract_unix_connect`). Nothing
//!   listening (`ECONNREFUSED`) means the container is not running.
//! - A request is `struct lxc_cmd_req { lxc_cmd_t cmd; int datalen; const
//!   void *data; }` in the host's layout (x86_64: 4 + 4 + 8 bytes, no
//!   padding), sent in one `sendmsg` with `SCM_CREDENTIALS` (pid, uid,
//!   gid). The monitor refuses a sender whose uid is neither 0 nor its
//!   own (`lxc_abstract_unix_rcv_credential`: answer `-EPERM`). `stop` is
//!   `cmd` 2, `datalen` 0, `data` NULL.
//! - The monitor sends init `lxc.signal.stop` (SIGKILL by default)
//!   through its pidfd, thaws the cgroup (a frozen container dies too) and
//!   answers nothing: the connection stays open until the monitor process
//!   exits, after its teardown (network, cgroups, the command socket, the
//!   pid file). End of stream (or `ECONNRESET`) therefore means stopped.
//! - An answer, `struct lxc_cmd_rsp { int ret; int datalen; void *data; }`,
//!   means it did not stop: `ret` is `-errno` (the signal failed, or the
//!   credentials were refused).

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials};

/// `LXC_CMD_STOP` (the value since LXC 3.0).
pub const LXC_CMD_STOP: i32 = 2;

/// A pointer's size: the `data` field of requests and answers.
const PTR: usize = std::mem::size_of::<usize>();

/// `sizeof(struct lxc_cmd_req)`: two ints and a pointer (which follows the
/// ints with no padding on 32- and 64-bit Linux).
pub const REQ_LEN: usize = 8 + PTR;

/// `sizeof(struct lxc_cmd_rsp)`: the same shape.
pub const RSP_LEN: usize = 8 + PTR;

/// The request for `cmd` without data (`datalen` 0, `data` NULL).
pub fn request(cmd: i32) -> [u8; REQ_LEN] {
    let mut b = [0u8; REQ_LEN];
    b[..4].copy_from_slice(&cmd.to_ne_bytes());
    b
}

/// An answer the monitor sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// 0 or `-errno`.
    pub ret: i32,
    /// The length of the data that follows.
    pub datalen: i32,
}

/// Decode `struct lxc_cmd_rsp` (the pointer field means nothing here).
pub fn answer(b: &[u8; RSP_LEN]) -> Answer {
    let int = |i: usize| i32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Answer { ret: int(0), datalen: int(4) }
}

/// How a stop ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing listens on the socket: not running (already stopped).
    NotRunning,
    /// The monitor took the command and closed the connection as it
    /// exited: the container has stopped.
    Closed,
}

/// Why the protocol did not stop the container.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A socket call failed.
    #[error("{step} on LXC's command socket @{socket} failed: {errno}")]
    Socket { step: &'static str, socket: String, errno: Errno },
    /// The monitor answered, which it does only when it did not stop.
    #[error("LXC's monitor answered the stop command with {} (datalen {})", describe(answer.ret), answer.datalen)]
    Answered { answer: Answer },
    /// A partial answer, then the end of the stream.
    #[error("LXC's monitor sent {0} bytes of an answer of {RSP_LEN}, then closed the connection")]
    Short(usize),
    /// No end of stream before the deadline.
    #[error("LXC's monitor took the stop command but did not finish within {} s", .0.as_secs())]
    Timeout(Duration),
}

fn describe(ret: i32) -> String {
    if ret < 0 {
        let e = Errno::from_raw(-ret);
        format!("-{e:?} ({})", e.desc())
    } else {
        ret.to_string()
    }
}

/// Send `stop` to the monitor listening on the abstract socket `name`
/// (without its `@`) and wait until it closes the connection, at most
/// `timeout`.
pub fn stop(name: &str, timeout: Duration) -> Result<Stopped, CommandError> {
    let deadline = Instant::now() + timeout;
    let fail = |step: &'static str| move |errno: Errno| CommandError::Socket { step, socket: name.to_string(), errno };
    let addr = UnixAddr::new_abstract(name.as_bytes()).map_err(fail("address"))?;
    let fd: OwnedFd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(fail("socket"))?;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(Errno::EINTR) => continue,
            // No listener: not running (LXC's `*stopped = 1`).
            Err(Errno::ECONNREFUSED | Errno::ENOENT) => return Ok(Stopped::NotRunning),
            Err(e) => return Err(fail("connect")(e)),
        }
    }
    let req = request(LXC_CMD_STOP);
    let creds = UnixCredentials::new();
    let sent = loop {
        match socket::sendmsg::<()>(fd.as_raw_fd(), &[IoSlice::new(&req)], &[ControlMessage::ScmCredentials(&creds)], MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            // The monitor went away meanwhile (LXC's EPIPE case).
            Err(Errno::EPIPE | Errno::ECONNRESET) => return Ok(Stopped::NotRunning),
            other => break other.map_err(fail("sendmsg"))?,
        }
    };
    if sent != REQ_LEN {
        // The monitor reads the request in one recvmsg and ignores a short one.
        return Err(fail("sendmsg")(Errno::EMSGSIZE));
    }
    let mut buf = [0u8; RSP_LEN];
    let mut got = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CommandError::Timeout(timeout));
        }
        let ms = u16::try_from(left.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
        match poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(fail("poll")(e)),
        }
        match socket::recv(fd.as_raw_fd(), &mut buf[got..], MsgFlags::MSG_DONTWAIT) {
            Ok(0) | Err(Errno::ECONNRESET) if got == 0 => return Ok(Stopped::Closed),
            Ok(0) | Err(Errno::ECONNRESET) => return Err(CommandError::Short(got)),
            Ok(n) => {
                got += n;
                if got == RSP_LEN {
                    return Err(CommandError::Answered { answer: answer(&buf) });
                }
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(fail("recv")(e)),
        }
    }
}

/// Wait until process `pid` has exited, at most until `deadline` (through
/// its pidfd; without one, not at all). Returns whether it is gone.
pub fn wait_exit(pid: i32, deadline: Instant) -> bool {
    let Some(fd) = u32::try_from(pid).ok().and_then(crate::sys::proc::pidfd_open) else { return false };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = u16::try_from(left.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
        match poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => {}
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn layout_is_lxc_cmd_req() {
        // struct lxc_cmd_req / lxc_cmd_rsp: int, int, pointer.
        #[repr(C)]
        struct Req {
            cmd: i32,
            datalen: i32,
            data: *const u8,
        }
        assert_eq!(REQ_LEN, std::mem::size_of::<Req>());
        assert_eq!(RSP_LEN, std::mem::size_of::<Req>());
        #[cfg(target_pointer_width = "64")]
        assert_eq!(REQ_LEN, 16);
        let r = request(LXC_CMD_STOP);
        assert_eq!(&r[..4], &2i32.to_ne_bytes(), "LXC_CMD_STOP is 2");
        assert!(r[4..].iter().all(|b| *b == 0), "datalen 0, data NULL: {r:?}");
    }

    #[test]
    fn answers_decode() {
        let mut b = [0u8; RSP_LEN];
        b[..4].copy_from_slice(&(-1i32).to_ne_bytes());
        b[4..8].copy_from_slice(&7i32.to_ne_bytes());
        b[8] = 0xff;
        assert_eq!(answer(&b), Answer { ret: -1, datalen: 7 });
        let e = CommandError::Answered { answer: Answer { ret: -libc::EPERM, datalen: 0 } };
        assert!(e.to_string().contains("EPERM (Operation not permitted)"), "{e}");
    }

    /// A listener on a fresh abstract name of this test.
    fn listener(tag: &str) -> (String, UnixListener) {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("geats-test/{}/{tag}/command", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        (name.clone(), UnixListener::bind_addr(&addr).unwrap())
    }

    #[test]
    fn nothing_listening_is_not_running() {
        let name = format!("geats-test/{}/none/command", std::process::id());
        assert_eq!(stop(&name, Duration::from_secs(5)).unwrap(), Stopped::NotRunning);
    }

    /// The request arrives whole with our credentials; a close is a stop,
    /// an answer is an error with its errno, a silent peer a timeout.
    #[test]
    fn the_monitor_side() {
        use std::io::{Read, Write};
        let (name, l) = listener("closed");
        let t = std::thread::spawn(move || {
            // As lxc_cmd_accept and lxc_abstract_unix_rcv_credential: one
            // recvmsg of the whole request, credentials beside it.
            let (c, _) = l.accept().unwrap();
            socket::setsockopt(&c, socket::sockopt::PassCred, &true).unwrap();
            let mut b = [0u8; REQ_LEN];
            let mut iov = [std::io::IoSliceMut::new(&mut b)];
            let mut space = nix::cmsg_space!(libc::ucred);
            let msg = socket::recvmsg::<()>(c.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
            assert_eq!(msg.bytes, REQ_LEN);
            let creds: Vec<UnixCredentials> = msg
                .cmsgs()
                .unwrap()
                .filter_map(|m| match m {
                    socket::ControlMessageOwned::ScmCredentials(c) => Some(c),
                    _ => None,
                })
                .collect();
            drop(c);
            (b, creds)
        });
        assert_eq!(stop(&name, Duration::from_secs(5)).unwrap(), Stopped::Closed);
        let (req, creds) = t.join().unwrap();
        assert_eq!(req, request(LXC_CMD_STOP));
        assert_eq!(creds.len(), 1, "one SCM_CREDENTIALS");
        assert_eq!((creds[0].pid(), creds[0].uid(), creds[0].gid()), (std::process::id() as i32, nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()));

        let (name, l) = listener("answered");
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; REQ_LEN];
            c.read_exact(&mut b).unwrap();
            let mut rsp = [0u8; RSP_LEN];
            rsp[..4].copy_from_slice(&(-libc::ESRCH).to_ne_bytes());
            c.write_all(&rsp).unwrap();
        });
        match stop(&name, Duration::from_secs(5)) {
            Err(CommandError::Answered { answer }) => assert_eq!(answer, Answer { ret: -libc::ESRCH, datalen: 0 }),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();

        let (name, l) = listener("short");
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.write_all(&[1, 2, 3]).unwrap();
        });
        assert!(matches!(stop(&name, Duration::from_secs(5)), Err(CommandError::Short(3))));
        t.join().unwrap();

        // Accepted by the kernel, never served: the deadline ends the wait.
        let (name, _l) = listener("hung");
        let t = Instant::now();
        assert!(matches!(stop(&name, Duration::from_millis(300)), Err(CommandError::Timeout(_))));
        assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
