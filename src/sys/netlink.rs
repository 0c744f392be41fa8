//! rtnetlink, for one question: the IPv4 addresses of other network
//! namespaces, asked through one socket for any number of them.
//!
//! `geats list` shows an address for every running container. Read from
//! `/proc/PID/net/fib_trie`, each costs an open, two reads and a close,
//! and the kernel formats that namespace's whole routing trie as text
//! (about 26 µs a container on the bench host, docs/performance.md, tenth
//! pass). Through rtnetlink the same answer is two small messages on a
//! socket opened once (about 14 µs):
//!
//! - `RTM_GETNSID` with a process id gives the id under which this
//!   process's namespace knows the process's namespace. LXC gives one to
//!   every container it starts; geats never assigns one (a read changes
//!   nothing), and a namespace without an id is answered with `None`.
//! - An `RTM_GETADDR` dump with `IFA_TARGET_NETNSID` lists the addresses
//!   of the namespace with that id (Linux 4.20).
//!
//! Strict checking (`NETLINK_GET_STRICT_CHK`, Linux 4.20) makes a kernel
//! that does not know an attribute refuse the request rather than ignore
//! it, and every address the kernel sends must carry the id asked for; a
//! dump that would have answered for this process's own namespace is an
//! error. On any error the caller reads `fib_trie` instead.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

// From <linux/netlink.h>, <linux/rtnetlink.h>, <linux/net_namespace.h>
// and <linux/if_addr.h>.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NETNSA_NSID: u16 = 1;
const NETNSA_PID: u16 = 2;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
/// An attribute type's flag bits (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `struct rtgenmsg` padded to 4 bytes, family `AF_UNSPEC`.
const RTGENMSG: [u8; 4] = [0; 4];
/// `struct ifaddrmsg` (family, prefix length, flags, scope, index): every
/// IPv4 address.
const IFADDRMSG_INET: [u8; 8] = [libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0];
/// The receive buffer. The kernel sizes each datagram of a dump to the
/// largest buffer the socket has read with (at most 32 KiB less its
/// overhead), and at least `NLMSG_GOODSIZE` (a page less the socket
/// buffer's overhead, 3776 bytes with 4 KiB pages, at most 8 KiB less 320
/// bytes). 8 KiB less 320 holds any datagram and keeps the kernel's
/// allocations in its 8 KiB slab: with 32 KiB, each dump allocated 32 KiB
/// pages, 0.1 ms more for 50 containers. A larger datagram is reported
/// (`MSG_TRUNC`), not cut: the caller reads `fib_trie` instead.
const BUFFER: usize = 8192 - 320;
/// `RTM_GETNSID` requests sent in one datagram. Each answer takes about
/// a kilobyte of the socket's receive buffer (212992 bytes by default)
/// until it is read, and one that does not fit is dropped.
const BATCH: usize = 32;
/// How long one answer may take before the caller gives up on netlink.
const TIMEOUT_S: i64 = 1;

/// One `NETLINK_ROUTE` socket, strict.
#[derive(Debug)]
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    /// Open it; an error on a kernel without strict checking.
    pub fn open() -> io::Result<Rtnl> {
        let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)?;
        let on: libc::c_int = 1;
        // SAFETY: `fd` is the socket just opened; the option's value is
        // one int read through a pointer to a local that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_GET_STRICT_CHK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(TIMEOUT_S, 0))?;
        Ok(Rtnl { fd, seq: 0, buf: vec![0; BUFFER] })
    }

    /// The id of each of `pids`' network namespaces in this process's;
    /// `None` for one that has none (or is this process's own), or whose
    /// process is gone. The requests go [`BATCH`] to a datagram.
    pub fn nsids_of(&mut self, pids: &[i32]) -> io::Result<Vec<Option<i32>>> {
        let mut out = Vec::with_capacity(pids.len());
        for chunk in pids.chunks(BATCH) {
            let mut msg = Vec::with_capacity(chunk.len() * (NLMSG_HDRLEN + RTGENMSG.len() + 8));
            let first = self.seq.wrapping_add(1);
            for &pid in chunk {
                self.seq = self.seq.wrapping_add(1);
                request(&mut msg, RTM_GETNSID, NLM_F_REQUEST, self.seq, &RTGENMSG, NETNSA_PID, pid);
            }
            self.send(&msg)?;
            let mut ids = vec![None; chunk.len()];
            let mut left = chunk.len();
            while left > 0 {
                let n = self.recv()?;
                for m in messages(&self.buf[..n]) {
                    let i = m.seq.wrapping_sub(first) as usize;
                    if i >= chunk.len() || ids[i].is_some() {
                        continue;
                    }
                    ids[i] = match m.kind {
                        // One process gone (ESRCH) leaves the others.
                        NLMSG_ERROR => Some(None),
                        RTM_NEWNSID => {
                            let id = m.payload.get(RTGENMSG.len()..).and_then(|a| attrs(a).find(|(k, _)| *k == NETNSA_NSID)).and_then(|(_, v)| int(v));
                            Some(id.filter(|id| *id >= 0))
                        }
                        _ => continue,
                    };
                    left -= 1;
                }
            }
            out.extend(ids.into_iter().map(Option::flatten));
        }
        Ok(out)
    }

    /// The IPv4 addresses in the namespace with id `nsid`, loopback
    /// addresses left out, in ascending order (as `fib_trie` lists them).
    pub fn ipv4s_in(&mut self, nsid: i32) -> io::Result<Vec<Ipv4Addr>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + IFADDRMSG_INET.len() + 8);
        request(&mut msg, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, &IFADDRMSG_INET, IFA_TARGET_NETNSID, nsid);
        self.send(&msg)?;
        let mut out = Vec::new();
        loop {
            let n = self.recv()?;
            for m in messages(&self.buf[..n]).filter(|m| m.seq == seq) {
                match m.kind {
                    NLMSG_DONE => {
                        // Its payload is the dump's error, 0 when whole.
                        error_of(m.payload)?;
                        out.sort_unstable();
                        out.dedup();
                        return Ok(out);
                    }
                    NLMSG_ERROR => error_of(m.payload)?,
                    RTM_NEWADDR => {
                        if let Some(a) = address_in(m.payload, nsid)? {
                            if !a.is_loopback() {
                                out.push(a);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        let sent = socket::send(self.fd.as_raw_fd(), msg, MsgFlags::empty())?;
        if sent != msg.len() {
            return Err(bad("a request sent in part"));
        }
        Ok(())
    }

    /// One datagram into the buffer; its length (0 after a signal).
    fn recv(&mut self) -> io::Result<usize> {
        match socket::recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
            Err(nix::errno::Errno::EINTR) => Ok(0),
            Err(e) => Err(e.into()),
            Ok(n) if n > self.buf.len() => Err(bad("a message larger than the buffer")),
            Ok(n) => Ok(n),
        }
    }
}

/// Append one request to `msg`: a header, `body`, and one 32-bit attribute.
fn request(msg: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, body: &[u8], attr: u16, value: i32) {
    let len = NLMSG_HDRLEN + body.len() + 8;
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&attr.to_ne_bytes());
    msg.extend_from_slice(&value.to_ne_bytes());
}

/// One netlink message of a datagram.
#[derive(Debug, PartialEq)]
struct Message<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of a datagram, up to the first malformed header.
fn messages(mut data: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(data.get(4..6)?.try_into().ok()?);
        let seq = u32::from_ne_bytes(data.get(8..12)?.try_into().ok()?);
        let m = Message { kind, seq, payload: &data[NLMSG_HDRLEN..len] };
        data = data.get(align(len)..).unwrap_or_default();
        Some(m)
    })
}

/// The attributes (type, value) of a message's tail, up to the first
/// malformed one.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(data.get(0..2)?.try_into().ok()?) as usize;
        if len < 4 || len > data.len() {
            return None;
        }
        let kind = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = &data[4..len];
        data = data.get(align(len)..).unwrap_or_default();
        Some((kind, value))
    })
}

/// Netlink's 4-byte alignment.
fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn int(v: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(v.get(0..4)?.try_into().ok()?))
}

/// The address of an `RTM_NEWADDR` payload (`IFA_LOCAL`, else
/// `IFA_ADDRESS`); an error if it is not from the namespace `nsid`.
fn address_in(payload: &[u8], nsid: i32) -> io::Result<Option<Ipv4Addr>> {
    let Some(tail) = payload.get(IFADDRMSG_INET.len()..) else { return Err(bad("a short RTM_NEWADDR")) };
    if payload.first() != Some(&(libc::AF_INET as u8)) {
        return Ok(None);
    }
    let (mut local, mut address, mut target) = (None, None, None);
    for (kind, v) in attrs(tail) {
        let v4 = || <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
        match kind {
            IFA_LOCAL => local = v4(),
            IFA_ADDRESS => address = v4(),
            IFA_TARGET_NETNSID => target = int(v),
            _ => {}
        }
    }
    if target != Some(nsid) {
        return Err(bad("an address from another namespace than the one asked for"));
    }
    Ok(local.or(address))
}

/// The error of an `NLMSG_ERROR` or `NLMSG_DONE` payload (a negative
/// errno; 0 is none).
fn error_of(payload: &[u8]) -> io::Result<()> {
    match int(payload) {
        Some(0) => Ok(()),
        Some(e) => Err(io::Error::from_raw_os_error(e.saturating_neg())),
        None => Err(bad("an error message without its code")),
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align(m.len()), 0);
        m
    }

    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(v);
        a.resize(align(a.len()), 0);
        a
    }

    fn newaddr(local: [u8; 4], nsid: Option<i32>) -> Vec<u8> {
        let mut p = IFADDRMSG_INET.to_vec();
        p.extend(attr(IFA_ADDRESS, &[10, 0, 0, 255]));
        p.extend(attr(IFA_LOCAL, &local));
        if let Some(id) = nsid {
            p.extend(attr(IFA_TARGET_NETNSID | 0x8000, &id.to_ne_bytes()));
        }
        p
    }

    #[test]
    fn messages_and_attributes_are_split() {
        let mut d = message(RTM_NEWADDR, 7, &newaddr([10, 0, 0, 2], Some(3)));
        d.extend(message(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        let ms: Vec<_> = messages(&d).collect();
        assert_eq!(ms.len(), 2);
        assert_eq!((ms[0].kind, ms[0].seq, ms[1].kind), (RTM_NEWADDR, 7, NLMSG_DONE));
        assert_eq!(address_in(ms[0].payload, 3).unwrap(), Some(Ipv4Addr::new(10, 0, 0, 2)));
        error_of(ms[1].payload).unwrap();
    }

    #[test]
    fn an_address_of_another_namespace_is_refused() {
        // A kernel that ignored the target id would answer for this
        // process's own namespace, without the attribute.
        assert!(address_in(&newaddr([10, 0, 0, 2], None), 3).is_err());
        assert!(address_in(&newaddr([10, 0, 0, 2], Some(4)), 3).is_err());
    }

    #[test]
    fn errors_carry_the_errno() {
        let e = error_of(&(-libc::EINVAL).to_ne_bytes()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        assert!(error_of(&[1, 2]).is_err());
    }

    #[test]
    fn malformed_input_ends_the_walk_without_a_panic() {
        let good = message(RTM_NEWADDR, 1, &newaddr([10, 0, 0, 2], Some(1)));
        for cut in 0..good.len() {
            let ms: Vec<_> = messages(&good[..cut]).collect();
            assert!(ms.is_empty(), "a message cut at {cut} was read");
        }
        // A header claiming less than itself, or more than there is.
        let mut d = good.clone();
        d[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(messages(&d).count(), 0);
        d[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert_eq!(messages(&d).count(), 0);
        // Attributes cut anywhere: no panic, no address past the cut.
        let p = newaddr([10, 0, 0, 2], Some(1));
        for cut in 0..p.len() {
            let _ = address_in(&p[..cut], 1);
            let _ = attrs(&p[cut..]).count();
        }
    }

    #[test]
    fn the_addresses_of_another_namespace_by_its_id() {
        let Some(ns) = testing::ThreadNetns::new(&[[10, 77, 0, 1]], true) else { return };
        let mut r = Rtnl::open().unwrap();
        let ids = r.nsids_of(&[ns.tid, std::process::id() as i32]).unwrap();
        let Some(id) = ids[0] else { panic!("the namespace was given an id: {ids:?}") };
        assert_eq!(r.ipv4s_in(id).unwrap(), vec![Ipv4Addr::new(10, 77, 0, 1)]);
        // This process's own namespace has no id in itself.
        assert_eq!(ids[1], None);
        // A process that is gone has none either, and spoils no other answer.
        assert_eq!(r.nsids_of(&[i32::MAX, ns.tid]).unwrap(), vec![None, Some(id)]);
    }

    #[test]
    fn a_dump_longer_than_one_datagram_is_read_whole() {
        // 300 addresses: about 25 KB of answers, several datagrams of the
        // receive buffer's size.
        let addrs: Vec<[u8; 4]> = (0..300u32).map(|i| [10, 78, (i / 250) as u8, (i % 250 + 1) as u8]).collect();
        let Some(ns) = testing::ThreadNetns::new(&addrs, true) else { return };
        let mut r = Rtnl::open().unwrap();
        let Some(id) = r.nsids_of(&[ns.tid]).unwrap()[0] else { panic!("no id") };
        let got = r.ipv4s_in(id).unwrap();
        let want: Vec<Ipv4Addr> = addrs.iter().map(|a| Ipv4Addr::from(*a)).collect();
        assert_eq!(got, want);
        // The socket is whole after it: the next dump answers too.
        assert_eq!(r.ipv4s_in(id).unwrap().len(), 300);
    }

    #[test]
    fn a_namespace_without_an_id_has_none() {
        let Some(ns) = testing::ThreadNetns::new(&[[10, 77, 0, 2]], false) else { return };
        assert_eq!(Rtnl::open().unwrap().nsids_of(&[ns.tid]).unwrap(), vec![None]);
    }
}

/// A network namespace to read, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::sync::mpsc;

    const RTM_NEWLINK: u16 = 16;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;

    /// A thread in a network namespace of its own, its loopback up and
    /// holding more addresses; the namespace ends with the thread, when
    /// this is dropped.
    pub struct ThreadNetns {
        pub tid: i32,
        done: Option<mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl ThreadNetns {
        /// `None`, with a line on stderr, where this process may not make
        /// a namespace (not root). `nsid`: give it an id in this process's
        /// namespace, as LXC does for a container's.
        pub fn new(addrs: &[[u8; 4]], nsid: bool) -> Option<ThreadNetns> {
            let addrs = addrs.to_vec();
            let (tx, rx) = mpsc::channel();
            let (done, wait) = mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                let made = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()).and_then(|_| {
                    // A socket made now belongs to the new namespace.
                    let mut r = Rtnl::open().map_err(|e| e.to_string())?;
                    // lo: up (ifinfomsg: family, type, index 1, flags, change).
                    let mut link = vec![0u8; 4];
                    link.extend(1i32.to_ne_bytes());
                    link.extend((libc::IFF_UP as u32).to_ne_bytes());
                    link.extend((libc::IFF_UP as u32).to_ne_bytes());
                    ack(&mut r, RTM_NEWLINK, NLM_F_ACK, &link, &[])?;
                    let mut ifa = vec![libc::AF_INET as u8, 32, 0, 0];
                    ifa.extend(1u32.to_ne_bytes());
                    for addr in &addrs {
                        ack(&mut r, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &ifa, &[(IFA_LOCAL, addr), (IFA_ADDRESS, addr)])?;
                    }
                    Ok(nix::unistd::gettid().as_raw())
                });
                let ok = made.is_ok();
                let _ = tx.send(made);
                if ok {
                    let _ = wait.recv();
                }
            });
            let ns = match rx.recv() {
                Ok(Ok(tid)) => ThreadNetns { tid, done: Some(done), thread: Some(thread) },
                Ok(Err(e)) => {
                    eprintln!("skipped: cannot make a network namespace ({e})");
                    let _ = thread.join();
                    return None;
                }
                Err(e) => panic!("the namespace thread ended: {e}"),
            };
            if nsid {
                let mut r = Rtnl::open().unwrap();
                ack(&mut r, RTM_NEWNSID, NLM_F_ACK, &RTGENMSG, &[(NETNSA_PID, &ns.tid.to_ne_bytes()), (NETNSA_NSID, &(-1i32).to_ne_bytes())]).unwrap();
            }
            Some(ns)
        }
    }

    impl Drop for ThreadNetns {
        fn drop(&mut self) {
            drop(self.done.take());
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Send a request that asks for an acknowledgement, and read it.
    fn ack(r: &mut Rtnl, kind: u16, flags: u16, body: &[u8], attributes: &[(u16, &[u8])]) -> Result<(), String> {
        r.seq += 1;
        let mut msg = Vec::new();
        for (k, v) in attributes {
            msg.extend(((4 + v.len()) as u16).to_ne_bytes());
            msg.extend(k.to_ne_bytes());
            msg.extend_from_slice(v);
            msg.resize(align(msg.len()), 0);
        }
        let mut head = Vec::new();
        head.extend(((NLMSG_HDRLEN + body.len() + msg.len()) as u32).to_ne_bytes());
        head.extend(kind.to_ne_bytes());
        head.extend((NLM_F_REQUEST | flags).to_ne_bytes());
        head.extend(r.seq.to_ne_bytes());
        head.extend(0u32.to_ne_bytes());
        head.extend_from_slice(body);
        head.extend(msg);
        r.send(&head).map_err(|e| e.to_string())?;
        let n = r.recv().map_err(|e| e.to_string())?;
        let m = messages(&r.buf[..n]).find(|m| m.seq == r.seq && m.kind == NLMSG_ERROR).ok_or("no acknowledgement")?;
        error_of(m.payload).map_err(|e| format!("request {kind}: {e}"))
    }
}
