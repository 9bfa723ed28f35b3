//! Unix socket pairs: `socketpair()` between the job's processes (stream, datagram,
//! seqpacket), with the data queued in them. The kernel tells which socket is whose peer
//! through `sock_diag` (netlink); queued data is read without taking it out (`MSG_PEEK`
//! with `SO_PEEK_OFF`, message after message) from a copy of the socket (`pidfd_getfd`).
//! At restore a new pair gets the same data, sent from the other end. A pair whose other
//! end is held outside the job comes back with that end closed, as if the process outside
//! had exited (the policy for pipes); a pair whose other end was closed comes back so too.
//! Named, listening and unconnected sockets are `unix_named`'s; the `sock_diag` reading
//! here serves both (and `netlink`).

use super::{
    ByInode, IdAllocator, JobFiles, ObjectError, ObjectKind, OpenFd, Opened, SharedObject,
};
use crate::tracer::sys;
use nix::errno::Errno;
use nix::sys::socket::{self as sock, MsgFlags, SockFlag, SockType, sockopt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SocketType {
    Stream,
    Datagram,
    Seqpacket,
}

impl SocketType {
    pub(crate) fn of(raw: u8) -> Option<SocketType> {
        match i32::from(raw) {
            libc::SOCK_STREAM => Some(SocketType::Stream),
            libc::SOCK_DGRAM => Some(SocketType::Datagram),
            libc::SOCK_SEQPACKET => Some(SocketType::Seqpacket),
            _ => None,
        }
    }

    pub(crate) fn nix(self) -> SockType {
        match self {
            SocketType::Stream => SockType::Stream,
            SocketType::Datagram => SockType::Datagram,
            SocketType::Seqpacket => SockType::SeqPacket,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnixPair {
    #[serde(rename = "type")]
    pub kind: SocketType,
    pub ends: [UnixEnd; 2],
}

/// One socket of a pair.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnixEnd {
    /// Its inode at checkpoint time (`socket:[inode]`).
    pub inode: u64,
    /// Whether a process of the job held it (else it is closed after the restore).
    pub held: bool,
    /// File status flags (`O_NONBLOCK`).
    pub flags: i32,
    pub send_buffer: u32,
    pub receive_buffer: u32,
    /// `shutdown()` done on it: bit 0 receive, bit 1 send.
    pub shutdown: u8,
    /// Data waiting to be read from it, oldest first: one entry per message (datagram,
    /// seqpacket), or all bytes in one (stream).
    #[serde(with = "messages")]
    pub queued: Vec<Vec<u8>>,
}

/// What `sock_diag` says of one unix socket.
#[derive(Debug, Clone, Default)]
pub struct DiagEntry {
    pub kind: u8,
    pub state: u8,
    pub peer: u64,
    pub named: bool,
    pub shutdown: u8,
    /// The `sun_path` bytes of its address (abstract names start with a 0 byte); an
    /// accepted socket has its listener's.
    pub name: Vec<u8>,
    /// The socket file of a path name: (inode, device as `stat` gives it).
    pub file: Option<(u64, u64)>,
    /// A listener's connections not accepted yet: the inode of each connecting socket
    /// (the kernel's `icons`), oldest first.
    pub pending: Vec<u64>,
    /// For a listener: connections waiting, backlog. Else: bytes readable, and the memory
    /// of what it sent that its peer has not read yet.
    pub queues: (u32, u32),
}

pub(crate) const TCP_ESTABLISHED: u8 = 1;
pub(crate) const TCP_CLOSE: u8 = 7;
pub(crate) const TCP_LISTEN: u8 = 10;

/// Sends one `sock_diag` dump request (`request`: the family's struct after the netlink
/// header) and calls `each(message, attributes)` for every answer: the family's struct
/// (`answer_len` bytes) and its attributes as (type, payload).
pub(crate) fn sock_diag_dump(
    request: &[u8],
    answer_len: usize,
    mut each: impl FnMut(&[u8], &[(u16, &[u8])]),
) -> Result<(), Errno> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let fd = sock::socket(
        sock::AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        sock::SockProtocol::NetlinkSockDiag,
    )?;
    let total = u32::try_from(16 + request.len()).map_err(|_| Errno::EINVAL)?;
    let mut req = Vec::with_capacity(16 + request.len());
    req.extend_from_slice(&total.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&[0; 8]); // seq, pid
    req.extend_from_slice(request);
    sock::sendto(
        fd.as_raw_fd(),
        &req,
        &sock::NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = sock::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let buf = &buf[..n];
        let mut attrs = Vec::new();
        let mut at = 0;
        while at + 16 <= n {
            let len = read_u32(buf, at) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if kind == NLMSG_DONE {
                return Ok(());
            }
            if kind == NLMSG_ERROR || len < 16 || at + len > n {
                return Err(Errno::EPROTO);
            }
            let message = &buf[at + 16..at + len];
            if message.len() < answer_len {
                return Err(Errno::EPROTO);
            }
            attrs.clear();
            each(message, attributes(message, answer_len, &mut attrs));
            at += len.next_multiple_of(4);
        }
    }
}

/// The netlink attributes after the first `skip` bytes (the fixed struct) of `message`.
fn attributes<'a, 'b>(
    message: &'a [u8],
    skip: usize,
    out: &'b mut Vec<(u16, &'a [u8])>,
) -> &'b [(u16, &'a [u8])] {
    let mut at = skip;
    while at + 4 <= message.len() {
        let len = usize::from(u16::from_ne_bytes([message[at], message[at + 1]]));
        let kind = u16::from_ne_bytes([message[at + 2], message[at + 3]]);
        if len < 4 || at + len > message.len() {
            break;
        }
        out.push((kind, &message[at + 4..at + len]));
        at += len.next_multiple_of(4);
    }
    out
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Every unix socket of this network namespace, by inode.
pub fn diag_table() -> Result<BTreeMap<u64, DiagEntry>, Errno> {
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_VFS: u32 = 2;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UDIAG_SHOW_ICONS: u32 = 8;
    const UDIAG_SHOW_RQLEN: u32 = 0x10;
    // struct unix_diag_req (24 bytes).
    let mut req = Vec::with_capacity(24);
    let family = u8::try_from(libc::AF_UNIX).expect("AF_UNIX fits a byte");
    req.extend_from_slice(&[family, 0, 0, 0]); // family, protocol, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // inode: any
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    let mut table = BTreeMap::new();
    // struct unix_diag_msg (16 bytes): family, type, state, pad, inode, cookie[2].
    sock_diag_dump(&req, 16, |msg, attrs| {
        let mut entry = DiagEntry {
            kind: msg[1],
            state: msg[2],
            ..DiagEntry::default()
        };
        for &(kind, data) in attrs {
            match kind {
                0 => {
                    entry.named = true; // UNIX_DIAG_NAME
                    entry.name = data.to_vec();
                }
                1 if data.len() >= 8 => {
                    // UNIX_DIAG_VFS: the device is the kernel's own dev_t (major << 20 |
                    // minor), not `stat`'s encoding.
                    let dev = read_u32(data, 4);
                    let dev = libc::makedev(dev >> 20, dev & 0xf_ffff);
                    entry.file = Some((read_u32(data, 0).into(), dev));
                }
                2 if data.len() >= 4 => entry.peer = read_u32(data, 0).into(), // UNIX_DIAG_PEER
                3 => {
                    entry.pending = data
                        .chunks_exact(4)
                        .map(|c| u64::from(read_u32(c, 0)))
                        .collect(); // UNIX_DIAG_ICONS
                }
                4 if data.len() >= 8 => entry.queues = (read_u32(data, 0), read_u32(data, 4)),
                6 if !data.is_empty() => entry.shutdown = data[0], // UNIX_DIAG_SHUTDOWN
                _ => {}
            }
        }
        table.insert(u64::from(read_u32(msg, 4)), entry);
    })?;
    Ok(table)
}

/// Which module restores a unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// One end of a `socketpair()` (or a connection whose other end is closed): `UnixPair`.
    Pair,
    /// Bound to a name, listening, connected to a named socket, not connected, or waiting
    /// to be accepted: `unix_named`.
    Named,
}

/// How the socket with `inode` is restored, or why it is not.
pub fn class_of(
    inode: u64,
    table: &BTreeMap<u64, DiagEntry>,
) -> Result<Class, (String, &'static str)> {
    const LATER: &str = "mlckpt cannot checkpoint it yet; close it before the checkpoint, or run the job without it";
    let Some(e) = table.get(&inode) else {
        return Err((
            "a socket other than a unix or netlink socket (TCP, UDP ...)".into(),
            LATER,
        ));
    };
    let Some(kind) = SocketType::of(e.kind) else {
        return Err(("a unix socket of an unknown type".into(), LATER));
    };
    if !matches!(e.state, TCP_ESTABLISHED | TCP_CLOSE | TCP_LISTEN) {
        return Err((
            format!("a unix socket in state {} (connecting?)", e.state),
            LATER,
        ));
    }
    if e.named && e.name.first().is_some_and(|&b| b != 0 && b != b'/') {
        return Err((
            format!(
                "a unix socket named by a relative path ({})",
                String::from_utf8_lossy(&e.name)
            ),
            "mlckpt restores unix socket names given as absolute paths or abstract names; \
             bind to an absolute path",
        ));
    }
    let unnamed_peer_of_this = table
        .get(&e.peer)
        .is_some_and(|p| !p.named && p.peer == inode);
    let peer_closed = e.peer == 0
        && e.state == TCP_ESTABLISHED
        && kind != SocketType::Datagram
        && !table
            .values()
            .any(|l| l.state == TCP_LISTEN && l.pending.contains(&inode));
    if !e.named && e.state != TCP_LISTEN && (unnamed_peer_of_this || peer_closed) {
        return Ok(Class::Pair);
    }
    Ok(Class::Named)
}

/// One object per pair of `sockets`, and one for all the others (`unix_named`); returns
/// socket inode -> object id (both ends of a pair).
pub fn objects(
    sockets: &ByInode,
    diag: &BTreeMap<u64, DiagEntry>,
    depth: super::Depth,
    ids: &mut IdAllocator,
    files: &mut JobFiles,
) -> Result<BTreeMap<u64, u64>, ObjectError> {
    let mut by_inode = BTreeMap::new();
    let mut named = Vec::new();
    for (inode, fds) in sockets.iter() {
        if by_inode.contains_key(&inode) {
            continue; // the other end of a pair already made
        }
        let Some(entry) = diag.get(&inode) else {
            continue;
        };
        if class_of(inode, diag) == Ok(Class::Named) {
            named.push(inode);
            continue;
        }
        let kind = SocketType::of(entry.kind).unwrap_or(SocketType::Stream);
        let peer = entry.peer;
        let peer_fds = sockets.get(peer);
        // A peer 0 is closed already: its end comes back closed, which is as it was.
        if peer_fds.is_none() && peer != 0 {
            files.warnings.push(outside_peer(fds[0], "unix socket"));
        }
        let peer_entry = diag.get(&peer).cloned().unwrap_or_default();
        let ends = [
            end(inode, Some(fds), entry, depth)?,
            end(peer, peer_fds, &peer_entry, depth)?,
        ];
        let id = ids.allocate();
        files.objects.push(SharedObject {
            id,
            object: ObjectKind::UnixPair(UnixPair { kind, ends }),
        });
        by_inode.insert(inode, id);
        by_inode.insert(peer, id);
    }
    if !named.is_empty() {
        let set = super::unix_named::capture(&named, sockets, diag, depth, files)?;
        let id = ids.allocate();
        for inode in named {
            by_inode.insert(inode, id);
        }
        files.objects.push(SharedObject {
            id,
            object: ObjectKind::UnixSockets(set),
        });
    }
    Ok(by_inode)
}

/// The warning for `fd`, a `what` whose peer is held outside the job.
pub(crate) fn outside_peer(fd: &OpenFd, what: &str) -> String {
    format!(
        "fd {} of process {} ({}) is a {what} ({}) whose peer is outside the job: after a \
         restore its peer is gone, as if it had exited (reads see end-of-file, writes fail)",
        fd.fd,
        fd.pid,
        super::command_of(fd.pid),
        fd.target
    )
}

/// One end as the job holds it (`fds` empty or None: held outside, or by nobody).
fn end(
    inode: u64,
    fds: Option<&[&OpenFd]>,
    entry: &DiagEntry,
    depth: super::Depth,
) -> Result<UnixEnd, ObjectError> {
    let unheld = UnixEnd {
        inode,
        held: false,
        flags: 0,
        send_buffer: 0,
        receive_buffer: 0,
        shutdown: entry.shutdown,
        queued: Vec::new(),
    };
    let Some(first) = fds.and_then(|f| f.first()) else {
        return Ok(unheld);
    };
    if depth == super::Depth::Check {
        // Only the kinds matter for a check: the socket's state is not read.
        return Ok(UnixEnd {
            held: true,
            ..unheld
        });
    }
    let fail = |what| first.capture_failed(what);
    let socket = first.copy_here("the socket")?;
    let send_buffer = sock::getsockopt(&socket, sockopt::SndBuf).map_err(fail("its buffers"))?;
    let receive_buffer = sock::getsockopt(&socket, sockopt::RcvBuf).map_err(fail("its buffers"))?;
    let kind = SocketType::of(entry.kind).unwrap_or(SocketType::Stream);
    let queued = peek_queue(&socket, kind).map_err(fail("its queued data"))?;
    Ok(UnixEnd {
        inode,
        held: true,
        flags: first.flags & libc::O_NONBLOCK,
        // The kernel reports twice what was set (its bookkeeping); setting half gives it back.
        send_buffer: u32::try_from(send_buffer / 2).unwrap_or(u32::MAX),
        receive_buffer: u32::try_from(receive_buffer / 2).unwrap_or(u32::MAX),
        shutdown: entry.shutdown,
        queued,
    })
}

/// Every message waiting in the socket's receive queue, left in place: the peek offset
/// walks the queue (and is put back as it was: the process shares it).
fn peek_queue(socket: &OwnedFd, kind: SocketType) -> Result<Vec<Vec<u8>>, Errno> {
    let queued = peek_queue_from(socket, kind)?;
    Ok(queued.into_iter().map(|(data, _)| data).collect())
}

/// [`peek_queue`] with the sender's `sun_path` of each message (empty: unnamed).
pub(crate) fn peek_queue_from(socket: &OwnedFd, kind: SocketType) -> Result<Vec<Message>, Errno> {
    let was = sys::peek_offset(socket.as_fd())?;
    sys::set_peek_offset(socket.as_fd(), 0)?;
    let result = peek_all(socket, kind);
    sys::set_peek_offset(socket.as_fd(), was)?;
    result
}

/// A queued message and the `sun_path` of its sender (empty: unnamed).
pub(crate) type Message = (Vec<u8>, Vec<u8>);

/// Messages beyond this many in one queue are taken for a peek that does not move on.
const MAX_QUEUED_MESSAGES: usize = 1 << 20;

fn peek_all(socket: &OwnedFd, kind: SocketType) -> Result<Vec<Message>, Errno> {
    thread_local! {
        // One buffer for every socket of a checkpoint: a job may hold thousands.
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buf| {
        if buf.is_empty() {
            buf.resize(256 << 10, 0);
        }
        peek_each(socket, kind, buf)
    })
}

fn peek_each(socket: &OwnedFd, kind: SocketType, buf: &mut [u8]) -> Result<Vec<Message>, Errno> {
    let mut queued = Vec::new();
    let mut sender = Vec::new();
    loop {
        if queued.len() >= MAX_QUEUED_MESSAGES {
            return Err(Errno::EOVERFLOW);
        }
        match sys::peek_message(socket.as_fd(), buf, &mut sender) {
            // The end of a stream whose peer shut down.
            Ok(sys::Peeked::Data(0)) if kind == SocketType::Stream => return Ok(queued),
            Ok(sys::Peeked::Data(n)) => queued.push((buf[..n].to_vec(), sender.clone())),
            // Fds in flight would be installed here by the peek itself (and closed again):
            // they cannot be captured.
            Ok(sys::Peeked::CarriesFds) => return Err(Errno::EOPNOTSUPP),
            Ok(sys::Peeked::Empty) => return Ok(queued),
            Err(e) => return Err(e),
        }
    }
}

impl UnixPair {
    /// Which end an fd whose `/proc` target is `target` holds.
    pub fn slot(&self, target: &str) -> usize {
        usize::from(self.ends[1].inode == super::link_inode(target))
    }

    /// A new pair with each end's queued data, sent from the other end.
    pub fn open(&self, id: u64) -> Result<Opened, ObjectError> {
        let fail = |what: &str| {
            let what = format!(
                "unix socket pair {id} (was socket:[{}]): {what}",
                self.ends[0].inode
            );
            move |e: Errno| ObjectError::Recreate {
                what,
                source: e.into(),
            }
        };
        let (a, b) = sock::socketpair(
            sock::AddressFamily::Unix,
            self.kind.nix(),
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(fail("socketpair"))?;
        let pair = [a, b];
        for (k, end) in self.ends.iter().enumerate() {
            if end.receive_buffer > 0 {
                let size = usize::try_from(end.receive_buffer).unwrap_or(usize::MAX);
                sock::setsockopt(&pair[k], sockopt::RcvBuf, &size)
                    .map_err(fail("set its buffers"))?;
            }
            if end.send_buffer > 0 {
                let size = usize::try_from(end.send_buffer).unwrap_or(usize::MAX);
                sock::setsockopt(&pair[k], sockopt::SndBuf, &size)
                    .map_err(fail("set its buffers"))?;
            }
        }
        for (k, end) in self.ends.iter().enumerate() {
            let from = &pair[1 - k];
            for message in &end.queued {
                let sent = sock::send(from.as_raw_fd(), message, MsgFlags::MSG_DONTWAIT)
                    .map_err(fail("queue its data"))?;
                if sent != message.len() {
                    return Err(fail("queue its data")(Errno::EAGAIN));
                }
            }
        }
        let mut slots = Vec::with_capacity(2);
        for (end, fd) in self.ends.iter().zip(pair) {
            if !end.held {
                slots.push(None);
                continue;
            }
            let flags = nix::fcntl::OFlag::from_bits_truncate(end.flags & libc::O_NONBLOCK);
            nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
                .map_err(fail("set its flags"))?;
            let how = match end.shutdown & 3 {
                1 => Some(sock::Shutdown::Read),
                2 => Some(sock::Shutdown::Write),
                3 => Some(sock::Shutdown::Both),
                _ => None,
            };
            if let Some(how) = how {
                sock::shutdown(fd.as_raw_fd(), how).map_err(fail("shut it down"))?;
            }
            slots.push(Some(fd));
        }
        Ok(Opened {
            slots,
            mapping: None,
        })
    }
}

pub(crate) mod messages {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(messages: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(messages.len()))?;
        for m in messages {
            seq.serialize_element(&STANDARD.encode(m))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socketpair_is_found_with_its_peer() {
        let (a, b) = sock::socketpair(
            sock::AddressFamily::Unix,
            SockType::Datagram,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let ino = |fd: &OwnedFd| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let table = diag_table().unwrap();
        let entry = &table[&ino(&a)];
        assert_eq!(entry.peer, ino(&b));
        assert_eq!(i32::from(entry.kind), libc::SOCK_DGRAM);
        assert_eq!(class_of(ino(&a), &table), Ok(Class::Pair));
    }

    #[test]
    fn queued_messages_are_peeked_in_order_and_left_in_place() {
        let (a, b) = sock::socketpair(
            sock::AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        for m in [&b"one"[..], b"", b"three"] {
            sock::send(b.as_raw_fd(), m, MsgFlags::empty()).unwrap();
        }
        let queued = peek_queue(&a, SocketType::Seqpacket).unwrap();
        assert_eq!(queued, vec![b"one".to_vec(), Vec::new(), b"three".to_vec()]);
        let mut buf = [0u8; 16];
        let n = sock::recv(a.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        assert_eq!(&buf[..n], b"one");
    }
}
