//! Unix sockets that are not plain pairs: listening sockets, sockets bound to a path or an
//! abstract name, the connections made to a listener (the client and the accepted socket),
//! connections still waiting in a listener's queue, connected and unconnected datagram
//! sockets. They refer to each other by name, so one object holds all of a job's, and its
//! restore makes them in dependency order:
//!
//! 1. every socket but the accepted ones is created and bound to its own name. A path left
//!    by the dead original is replaced only if it is the socket file the image recorded
//!    (inode and device) and nothing listens on it any more; anything else is refused;
//! 2. queued datagrams are sent again, from the job's socket bound to the sender's name
//!    when there is one (so `recvfrom` gives the same address), before anything connects;
//! 3. each accepted socket comes from a real `connect` to its listener (the job's, or a
//!    temporary one bound to the listener's name when the job no longer holds it) and an
//!    `accept`, so `getsockname`/`getpeername` give the names they gave before; then the
//!    data queued in both directions is sent again;
//! 4. connections that were waiting to be accepted connect again, in their order, after
//!    the accepted ones; then each listener gets its backlog back, datagram sockets
//!    connect to their peers' names, and flags, buffers and shutdowns are set.
//!
//! A peer held outside the job follows `[image] outside_peers`: the connection comes back
//! with that end closed. The sockets are made by the restorer, so `SO_PEERCRED` of a
//! restored connection names the restorer's process, not the job's.

use super::unix::{self, DiagEntry, SocketType, TCP_ESTABLISHED, TCP_LISTEN};
use super::{ByInode, JobFiles, ObjectError, OpenFd, Opened};
use crate::image::format::base64_bytes;
use nix::errno::Errno;
use nix::sys::socket::{self as sock, MsgFlags, SockFlag, UnixAddr, sockopt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// The job's unix sockets other than pairs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnixSockets {
    pub sockets: Vec<NamedSocket>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamedSocket {
    /// Its inode at checkpoint time (`socket:[inode]`).
    pub inode: u64,
    #[serde(rename = "type")]
    pub kind: SocketType,
    /// File status flags (`O_NONBLOCK`).
    pub flags: i32,
    pub send_buffer: u32,
    pub receive_buffer: u32,
    /// `shutdown()` done on it: bit 0 receive, bit 1 send.
    pub shutdown: u8,
    /// `SO_PASSCRED`.
    #[serde(default)]
    pub passcred: bool,
    /// The name it bound itself to (an accepted socket's is its listener's, in `state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<BoundName>,
    pub state: Role,
    /// Data waiting to be read from it, oldest first: one entry per datagram or
    /// seqpacket message, all bytes in one for a stream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<Queued>,
}

/// A socket name and, for a path, the socket file its `bind` made.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BoundName {
    #[serde(flatten)]
    pub name: UnixName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SocketFile>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[serde(tag = "space", content = "name", rename_all = "snake_case")]
pub enum UnixName {
    /// A path in the file system (absolute).
    Path(String),
    /// An abstract name: the bytes after the leading 0 byte.
    Abstract(#[serde(with = "base64_bytes")] Vec<u8>),
}

/// The socket file at a path name, as it was at checkpoint time.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SocketFile {
    pub inode: u64,
    pub device: u64,
    /// Whether the path still led to it (else the job had removed it: the restored name
    /// is removed again).
    pub present: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// Not connected (a datagram socket sending with `sendto`, a socket not used yet).
    Unconnected,
    /// Listening with `backlog`; `pending`: the connecting sockets not accepted yet, in
    /// queue order.
    Listening { backlog: u32, pending: Vec<u64> },
    /// Accepted from a listener named `listener`; `peer`: the connecting socket (0: closed).
    Accepted { listener: BoundName, peer: u64 },
    /// A stream or seqpacket socket connected to the accepted socket `peer`.
    Connected { peer: u64 },
    /// Connecting to `listener` (a socket inode), not accepted yet.
    Waiting { listener: u64 },
    /// A datagram socket connected to the socket named `peer`.
    ConnectedTo { peer: UnixName },
}

/// One queued message and the name of its sender (datagrams only; None: unnamed).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Queued {
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<UnixName>,
}

/// The longest name `sockaddr_un` holds (108 bytes of `sun_path`, one kept for the 0 byte
/// of a path or the leading 0 of an abstract name).
pub const MAX_NAME: usize = 107;

impl UnixName {
    /// The name in `sun_path` bytes as the kernel reports them; None if mlckpt cannot bind
    /// it again (empty, relative, not UTF-8, too long).
    pub fn parse(raw: &[u8]) -> Option<UnixName> {
        match raw.split_first() {
            Some((0, rest)) if rest.len() <= MAX_NAME => Some(UnixName::Abstract(rest.to_vec())),
            Some((b'/', _)) => {
                let path = raw.split(|&b| b == 0).next().unwrap_or(raw);
                let path = std::str::from_utf8(path).ok()?;
                (path.len() <= MAX_NAME).then(|| UnixName::Path(path.to_string()))
            }
            _ => None,
        }
    }

    /// Why this name cannot be bound, if so (a check of an image's value).
    pub fn problem(&self) -> Option<&'static str> {
        match self {
            UnixName::Path(p) if !p.starts_with('/') => Some("is not an absolute path"),
            UnixName::Path(p) if p.len() > MAX_NAME || p.contains('\0') => {
                Some("is longer than a unix socket name, or holds a 0 byte")
            }
            UnixName::Abstract(a) if a.len() > MAX_NAME => {
                Some("is longer than a unix socket name")
            }
            _ => None,
        }
    }

    fn address(&self) -> Result<UnixAddr, Errno> {
        match self {
            UnixName::Path(p) => UnixAddr::new(p.as_str()),
            UnixName::Abstract(a) => UnixAddr::new_abstract(a),
        }
    }
}

impl std::fmt::Display for UnixName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnixName::Path(p) => f.write_str(p),
            UnixName::Abstract(a) => write!(f, "@{}", String::from_utf8_lossy(a)),
        }
    }
}

/// Why a socket of this module's class cannot be checkpointed, if so (beyond what
/// [`unix::class_of`] checks): what `sock_diag` shows is enough to tell.
pub fn refusal(inode: u64, table: &BTreeMap<u64, DiagEntry>) -> Option<String> {
    let e = table.get(&inode)?;
    if e.named && UnixName::parse(&e.name).is_none() {
        return Some(format!(
            "a unix socket whose name mlckpt cannot bind again ({:?})",
            String::from_utf8_lossy(&e.name)
        ));
    }
    let kind = SocketType::of(e.kind)?;
    if kind == SocketType::Datagram && e.state == TCP_ESTABLISHED && e.peer != 0 {
        let peer_named = table.get(&e.peer).is_some_and(|p| p.named);
        if !peer_named {
            return Some("a datagram socket connected to an unnamed socket".into());
        }
    }
    let waiting = e.peer == 0
        && e.state == TCP_ESTABLISHED
        && table
            .values()
            .any(|l| l.state == TCP_LISTEN && l.pending.contains(&inode));
    if waiting && e.queues.1 > 0 {
        return Some(
            "a connection to a unix socket not accepted yet, with data sent on it (the data \
             cannot be read before the listener accepts it)"
                .into(),
        );
    }
    None
}

/// Whether the connected stream socket `inode` is the accepted side of its connection:
/// that side has its listener's name. When both sides have a name (a client that bound
/// before connecting), a listener with that name tells, else the later socket (the
/// kernel makes the accepted one when the client connects).
fn is_accepted(inode: u64, e: &DiagEntry, table: &BTreeMap<u64, DiagEntry>) -> bool {
    let Some(peer) = table.get(&e.peer) else {
        return e.named;
    };
    if !e.named || !peer.named {
        return e.named;
    }
    let listened = |name: &[u8]| {
        table
            .values()
            .any(|l| l.state == TCP_LISTEN && l.name == name)
    };
    match (listened(&e.name), listened(&peer.name)) {
        (true, false) => true,
        (false, true) => false,
        _ => inode > e.peer,
    }
}

/// The sockets `inodes` (of the class [`unix::Class::Named`]), held by the job's fds in
/// `sockets`. Peers outside the job are named in `files.warnings`.
pub fn capture(
    inodes: &[u64],
    sockets: &ByInode,
    table: &BTreeMap<u64, DiagEntry>,
    depth: super::Depth,
    files: &mut JobFiles,
) -> Result<UnixSockets, ObjectError> {
    let mut out = Vec::with_capacity(inodes.len());
    for &inode in inodes {
        let (Some(e), Some(fds)) = (table.get(&inode), sockets.get(inode)) else {
            continue;
        };
        let first = fds[0];
        let kind = SocketType::of(e.kind).unwrap_or(SocketType::Stream);
        let held = |inode: u64| sockets.get(inode).is_some();
        let mut warn = |outside: bool| {
            if outside {
                files
                    .warnings
                    .push(unix::outside_peer(first, "unix socket"));
            }
        };
        let own_name = e.named.then(|| bound_name(e)).flatten();
        let (name, state) = match (e.state, kind) {
            (TCP_LISTEN, _) => {
                if e.pending.iter().any(|&c| !held(c)) {
                    files.warnings.push(format!(
                        "fd {} of process {} ({}) is a unix socket listening on {} with \
                         connections from outside the job not accepted yet: after a restore \
                         they are closed by their peer",
                        first.fd,
                        first.pid,
                        super::command_of(first.pid),
                        own_name.as_ref().map_or("?".into(), |n| n.name.to_string())
                    ));
                }
                let state = Role::Listening {
                    backlog: e.queues.1,
                    pending: e.pending.clone(),
                };
                (own_name, state)
            }
            (TCP_ESTABLISHED, SocketType::Datagram) => match table.get(&e.peer) {
                Some(peer) if e.peer != 0 => {
                    let peer = UnixName::parse(&peer.name).ok_or_else(|| not_capturable(first))?;
                    (own_name, Role::ConnectedTo { peer })
                }
                // Its peer was closed: sending would fail and disconnect it.
                _ => (own_name, Role::Unconnected),
            },
            (TCP_ESTABLISHED, _) if e.peer == 0 => {
                let listener = table
                    .iter()
                    .find(|(_, l)| l.state == TCP_LISTEN && l.pending.contains(&inode));
                match listener {
                    Some((&listener, _)) => {
                        warn(!held(listener));
                        (own_name, Role::Waiting { listener })
                    }
                    // The client of this accepted socket closed its end.
                    None => {
                        let listener = own_name.ok_or_else(|| not_capturable(first))?;
                        (None, Role::Accepted { listener, peer: 0 })
                    }
                }
            }
            (TCP_ESTABLISHED, _) => {
                warn(!held(e.peer));
                if is_accepted(inode, e, table) {
                    let listener = own_name.ok_or_else(|| not_capturable(first))?;
                    (
                        None,
                        Role::Accepted {
                            listener,
                            peer: e.peer,
                        },
                    )
                } else {
                    (own_name, Role::Connected { peer: e.peer })
                }
            }
            _ => (own_name, Role::Unconnected),
        };
        if e.named && name.is_none() && !matches!(state, Role::Accepted { .. }) {
            return Err(not_capturable(first));
        }
        let mut socket = NamedSocket {
            inode,
            kind,
            flags: first.flags & libc::O_NONBLOCK,
            send_buffer: 0,
            receive_buffer: 0,
            shutdown: e.shutdown,
            passcred: false,
            name,
            state,
            queued: Vec::new(),
        };
        if depth == super::Depth::Capture {
            read_state(&mut socket, first)?;
        }
        out.push(socket);
    }
    Ok(UnixSockets { sockets: out })
}

fn not_capturable(fd: &OpenFd) -> ObjectError {
    ObjectError::Unsupported(vec![super::unsupported(
        fd,
        "a unix socket whose name mlckpt cannot bind again".into(),
        "bind it to an absolute path or an abstract name",
    )])
}

/// The socket's name as `sock_diag` shows it, with its file for a path name.
fn bound_name(e: &DiagEntry) -> Option<BoundName> {
    let name = UnixName::parse(&e.name)?;
    let file = match (&name, e.file) {
        (UnixName::Path(path), Some((inode, device))) => {
            let meta = std::fs::symlink_metadata(path).ok();
            let present = meta.as_ref().is_some_and(|m| {
                m.file_type().is_socket() && m.ino() == inode && m.dev() == device
            });
            let (mode, uid, gid) = match meta.filter(|_| present) {
                Some(m) => (m.mode() & 0o7777, m.uid(), m.gid()),
                None => (0o755, 0, 0),
            };
            Some(SocketFile {
                inode,
                device,
                present,
                mode,
                uid,
                gid,
            })
        }
        _ => None,
    };
    Some(BoundName { name, file })
}

/// Buffers, options and queued data, from a copy of the socket.
fn read_state(socket: &mut NamedSocket, fd: &OpenFd) -> Result<(), ObjectError> {
    let fail = |what| fd.capture_failed(what);
    let copy = fd.copy_here("the socket")?;
    let send = sock::getsockopt(&copy, sockopt::SndBuf).map_err(fail("its buffers"))?;
    let receive = sock::getsockopt(&copy, sockopt::RcvBuf).map_err(fail("its buffers"))?;
    // The kernel reports twice what was set (its bookkeeping); setting half gives it back.
    socket.send_buffer = u32::try_from(send / 2).unwrap_or(u32::MAX);
    socket.receive_buffer = u32::try_from(receive / 2).unwrap_or(u32::MAX);
    socket.passcred = sock::getsockopt(&copy, sockopt::PassCred).map_err(fail("its options"))?;
    if matches!(socket.state, Role::Listening { .. }) {
        return Ok(());
    }
    let queued = unix::peek_queue_from(&copy, socket.kind).map_err(fail("its queued data"))?;
    if socket.kind == SocketType::Stream {
        let bytes: Vec<u8> = queued.into_iter().flat_map(|(data, _)| data).collect();
        if !bytes.is_empty() {
            socket.queued.push(Queued {
                data: bytes,
                from: None,
            });
        }
    } else {
        socket.queued = queued
            .into_iter()
            .map(|(data, from)| Queued {
                data,
                from: UnixName::parse(&from),
            })
            .collect();
    }
    if socket.kind == SocketType::Datagram && !socket.queued.is_empty() && socket.name.is_none() {
        return Err(ObjectError::Unsupported(vec![super::unsupported(
            fd,
            "an unnamed unix datagram socket with queued datagrams".into(),
            "read them before the checkpoint",
        )]));
    }
    Ok(())
}

impl UnixSockets {
    /// Which socket an fd whose `/proc` target is `target` holds.
    pub fn slot(&self, target: &str) -> usize {
        let inode = super::link_inode(target);
        self.sockets
            .iter()
            .position(|s| s.inode == inode)
            .unwrap_or(usize::MAX)
    }

    /// Problems of an image's values: (field under the object, problem).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let name = |field: String, n: &UnixName, out: &mut Vec<(String, String)>| {
            if let Some(p) = n.problem() {
                out.push((field, p.to_string()));
            }
        };
        for (i, s) in self.sockets.iter().enumerate() {
            if !seen.insert(s.inode) {
                out.push((format!("sockets[{i}].inode"), "is listed twice".into()));
            }
            if let Some(n) = &s.name {
                name(format!("sockets[{i}].name"), &n.name, &mut out);
            }
            match &s.state {
                Role::Accepted { listener, .. } => {
                    name(
                        format!("sockets[{i}].state.listener"),
                        &listener.name,
                        &mut out,
                    );
                }
                Role::ConnectedTo { peer } => {
                    name(format!("sockets[{i}].state.peer"), peer, &mut out);
                }
                Role::Listening { pending, .. } if pending.len() > MAX_PENDING => {
                    out.push((
                        format!("sockets[{i}].state.pending"),
                        format!("holds more than {MAX_PENDING} connections"),
                    ));
                }
                _ => {}
            }
            if s.kind == SocketType::Datagram && !s.queued.is_empty() && s.name.is_none() {
                out.push((
                    format!("sockets[{i}].queued"),
                    "datagrams queued on an unnamed socket cannot be sent again".into(),
                ));
            }
            for (k, q) in s.queued.iter().enumerate() {
                if let Some(from) = &q.from {
                    name(format!("sockets[{i}].queued[{k}].from"), from, &mut out);
                }
            }
        }
        out
    }

    /// The sockets again (see the module's documentation for the order).
    pub fn open(&self, id: u64) -> Result<Opened, ObjectError> {
        let mut rebuild = Rebuild::new(self, id);
        rebuild.create_and_bind()?;
        rebuild.queue_datagrams()?;
        rebuild.listen()?;
        rebuild.accept_connections()?;
        rebuild.peer_gone()?;
        rebuild.queue_streams()?;
        rebuild.connect_waiting()?;
        rebuild.finish()?;
        let slots = rebuild.fds;
        Ok(Opened {
            slots,
            mapping: None,
        })
    }
}

/// At most this many connections waiting on one listener (the kernel's `somaxconn` cap
/// on a backlog is 4096).
const MAX_PENDING: usize = 1 << 16;

/// The state of one restore of a [`UnixSockets`].
struct Rebuild<'a> {
    set: &'a UnixSockets,
    id: u64,
    /// The job's sockets, as `set.sockets`.
    fds: Vec<Option<OwnedFd>>,
    /// Ends standing in for peers outside the job or closed: they are closed at the end,
    /// after the data they send is queued.
    stand_ins: BTreeMap<usize, OwnedFd>,
    by_inode: BTreeMap<u64, usize>,
}

impl<'a> Rebuild<'a> {
    fn new(set: &'a UnixSockets, id: u64) -> Self {
        let by_inode = set
            .sockets
            .iter()
            .enumerate()
            .map(|(i, s)| (s.inode, i))
            .collect();
        Rebuild {
            set,
            id,
            fds: set.sockets.iter().map(|_| None).collect(),
            stand_ins: BTreeMap::new(),
            by_inode,
        }
    }

    fn fail(&self, i: usize, what: &str) -> impl FnOnce(Errno) -> ObjectError + use<> {
        let s = &self.set.sockets[i];
        let name = s
            .name
            .as_ref()
            .map(|n| format!(" {}", n.name))
            .unwrap_or_default();
        let what = format!(
            "unix socket{name} (object {}, was socket:[{}]): {what}",
            self.id, s.inode
        );
        move |e: Errno| ObjectError::Recreate {
            what,
            source: e.into(),
        }
    }

    fn index(&self, inode: u64) -> Option<usize> {
        self.by_inode.get(&inode).copied()
    }

    fn fd(&self, i: usize) -> Result<&OwnedFd, ObjectError> {
        self.fds[i]
            .as_ref()
            .ok_or_else(|| self.fail(i, "it was not made in order")(Errno::EINVAL))
    }

    /// The socket it connects from is made when it connects (a client) or accepts.
    fn made_later(&self, s: &NamedSocket) -> bool {
        match s.state {
            Role::Accepted { .. } => true,
            Role::Connected { peer } => self.index(peer).is_none(),
            Role::Waiting { listener } => self.index(listener).is_none(),
            _ => false,
        }
    }

    fn create_and_bind(&mut self) -> Result<(), ObjectError> {
        for (i, s) in self.set.sockets.iter().enumerate() {
            if self.made_later(s) {
                continue;
            }
            let fd = new_socket(s.kind).map_err(self.fail(i, "socket"))?;
            self.setup(i, &fd)?;
            if let Some(name) = &s.name {
                bind_name(&fd, s.kind, name).map_err(|e| self.named_failure(i, name, e))?;
            }
            self.fds[i] = Some(fd);
        }
        Ok(())
    }

    fn named_failure(&self, i: usize, name: &BoundName, e: BindError) -> ObjectError {
        match e {
            BindError::Sys(errno) => self.fail(i, "bind it to its name")(errno),
            BindError::Refused(why) => ObjectError::Recreate {
                what: format!(
                    "unix socket bound to {} (was socket:[{}])",
                    name.name, self.set.sockets[i].inode
                ),
                source: std::io::Error::other(why),
            },
        }
    }

    /// Options of the socket (buffers at the end: data queued now may need more).
    fn setup(&self, i: usize, fd: &OwnedFd) -> Result<(), ObjectError> {
        let s = &self.set.sockets[i];
        if s.passcred {
            sock::setsockopt(fd, sockopt::PassCred, &true).map_err(self.fail(i, "SO_PASSCRED"))?;
        }
        Ok(())
    }

    fn queue_datagrams(&mut self) -> Result<(), ObjectError> {
        let mut unnamed: Option<OwnedFd> = None;
        for (i, s) in self.set.sockets.iter().enumerate() {
            if s.kind != SocketType::Datagram || s.queued.is_empty() {
                continue;
            }
            let Some(to) = &s.name else {
                return Err(self.fail(i, "queue datagrams on an unnamed socket")(
                    Errno::EINVAL,
                ));
            };
            let to = to.name.address().map_err(self.fail(i, "its name"))?;
            for q in &s.queued {
                let sender = q.from.as_ref().and_then(|from| {
                    self.set.sockets.iter().position(|o| {
                        o.kind == SocketType::Datagram
                            && o.name.as_ref().is_some_and(|n| &n.name == from)
                    })
                });
                let from = match sender.and_then(|k| self.fds[k].as_ref()) {
                    Some(fd) => fd,
                    None => {
                        if unnamed.is_none() {
                            unnamed = Some(
                                new_socket(SocketType::Datagram)
                                    .map_err(self.fail(i, "a sender for its datagrams"))?,
                            );
                        }
                        unnamed.as_ref().expect("made above")
                    }
                };
                make_room(from, q.data.len());
                let sent = sock::sendto(from.as_raw_fd(), &q.data, &to, MsgFlags::MSG_DONTWAIT)
                    .map_err(self.fail(i, "queue its datagrams"))?;
                if sent != q.data.len() {
                    return Err(self.fail(i, "queue its datagrams")(Errno::EMSGSIZE));
                }
            }
        }
        Ok(())
    }

    fn listen(&self) -> Result<(), ObjectError> {
        for (i, s) in self.set.sockets.iter().enumerate() {
            if let Role::Listening { .. } = s.state {
                // The largest backlog while the connections are made again: the waiting
                // ones must all fit, whatever the listener's own backlog.
                sock::listen(self.fd(i)?, sock::Backlog::MAXCONN)
                    .map_err(self.fail(i, "listen"))?;
            }
        }
        Ok(())
    }

    /// The job's listener with this name, if it has one.
    fn listener_named(&self, name: &UnixName) -> Option<usize> {
        self.set.sockets.iter().position(|s| {
            matches!(s.state, Role::Listening { .. })
                && s.name.as_ref().is_some_and(|n| &n.name == name)
        })
    }

    fn accept_connections(&mut self) -> Result<(), ObjectError> {
        // Temporary listeners, by name, for listeners the job no longer holds.
        let mut temporary: BTreeMap<UnixName, (OwnedFd, BoundName)> = BTreeMap::new();
        for (i, s) in self.set.sockets.iter().enumerate() {
            let Role::Accepted { listener, peer } = &s.state else {
                continue;
            };
            let listening = match self.listener_named(&listener.name) {
                Some(k) => self
                    .fd(k)?
                    .try_clone()
                    .map_err(|e| self.fail(i, "dup")(errno_of(&e)))?,
                None => {
                    if !temporary.contains_key(&listener.name) {
                        let fd = new_socket(s.kind).map_err(self.fail(i, "socket"))?;
                        bind_name(&fd, s.kind, listener)
                            .map_err(|e| self.named_failure(i, listener, e))?;
                        sock::listen(&fd, sock::Backlog::MAXCONN)
                            .map_err(self.fail(i, "listen on its listener's name"))?;
                        temporary.insert(listener.name.clone(), (fd, listener.clone()));
                    }
                    let (fd, _) = &temporary[&listener.name];
                    fd.try_clone()
                        .map_err(|e| self.fail(i, "dup")(errno_of(&e)))?
                }
            };
            // The job's client was made (and bound) with the others; a stand-in otherwise.
            let client_index = self.index(*peer).filter(|&c| {
                matches!(self.set.sockets[c].state, Role::Connected { peer } if peer == s.inode)
            });
            let client = match client_index {
                Some(c) => self.fds[c].take(),
                None => None,
            };
            let client = match client {
                Some(fd) => fd,
                None => new_socket(s.kind).map_err(self.fail(i, "socket"))?,
            };
            let address = listener.name.address().map_err(self.fail(i, "its name"))?;
            sock::connect(client.as_raw_fd(), &address)
                .map_err(self.fail(i, "connect to its listener"))?;
            let accepted = accept_own(&listening).map_err(self.fail(i, "accept"))?;
            self.setup(i, &accepted)?;
            self.fds[i] = Some(accepted);
            match client_index {
                Some(c) => self.fds[c] = Some(client),
                None => {
                    self.stand_ins.insert(i, client);
                }
            }
        }
        for (name, (fd, bound)) in temporary {
            drop(fd);
            if let (UnixName::Path(path), Some(file)) = (&name, bound.file)
                && !file.present
            {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// Connections whose peer is outside the job or closed: a pair whose other end is a
    /// stand-in, closed at the end.
    fn peer_gone(&mut self) -> Result<(), ObjectError> {
        for (i, s) in self.set.sockets.iter().enumerate() {
            if self.fds[i].is_some() || !self.made_later(s) {
                continue;
            }
            let (a, b) = sock::socketpair(
                sock::AddressFamily::Unix,
                s.kind.nix(),
                None,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            )
            .map_err(self.fail(i, "socketpair"))?;
            self.setup(i, &a)?;
            if let Some(name) = &s.name {
                bind_name(&a, s.kind, name).map_err(|e| self.named_failure(i, name, e))?;
            }
            self.fds[i] = Some(a);
            self.stand_ins.insert(i, b);
        }
        Ok(())
    }

    /// The socket that sends socket `i`'s queued stream data: its stand-in, or its peer.
    fn stream_peer(&self, i: usize) -> Option<&OwnedFd> {
        if let Some(fd) = self.stand_ins.get(&i) {
            return Some(fd);
        }
        match self.set.sockets[i].state {
            Role::Accepted { peer, .. } | Role::Connected { peer } => {
                self.fds[self.index(peer)?].as_ref()
            }
            _ => None,
        }
    }

    fn queue_streams(&self) -> Result<(), ObjectError> {
        for (i, s) in self.set.sockets.iter().enumerate() {
            if s.kind == SocketType::Datagram || s.queued.is_empty() {
                continue;
            }
            let Some(from) = self.stream_peer(i) else {
                return Err(self.fail(i, "queue its data: no peer")(Errno::ENOTCONN));
            };
            for q in &s.queued {
                make_room(from, q.data.len());
                let sent = sock::send(from.as_raw_fd(), &q.data, MsgFlags::MSG_DONTWAIT)
                    .map_err(self.fail(i, "queue its data"))?;
                if sent != q.data.len() {
                    return Err(self.fail(i, "queue its data")(Errno::EAGAIN));
                }
            }
        }
        Ok(())
    }

    fn connect_waiting(&mut self) -> Result<(), ObjectError> {
        for (l, s) in self.set.sockets.iter().enumerate() {
            let Role::Listening { pending, .. } = &s.state else {
                continue;
            };
            let Some(name) = &s.name else {
                return Err(self.fail(l, "connections waiting on an unnamed listener")(
                    Errno::EINVAL,
                ));
            };
            let address = name.name.address().map_err(self.fail(l, "its name"))?;
            for &client in pending {
                match self.index(client) {
                    Some(c) => sock::connect(self.fd(c)?.as_raw_fd(), &address)
                        .map_err(self.fail(c, "connect to its listener again"))?,
                    None => {
                        // A client outside the job: the connection is there, its peer gone.
                        let fd = new_socket(s.kind).map_err(self.fail(l, "socket"))?;
                        sock::connect(fd.as_raw_fd(), &address)
                            .map_err(self.fail(l, "queue a waiting connection"))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ObjectError> {
        for (i, s) in self.set.sockets.iter().enumerate() {
            let fd = self.fd(i)?;
            match &s.state {
                Role::Listening { backlog, .. } => {
                    let backlog = i32::try_from(*backlog).unwrap_or(i32::MAX);
                    let backlog = sock::Backlog::new(backlog).unwrap_or(sock::Backlog::MAXCONN);
                    sock::listen(fd, backlog).map_err(self.fail(i, "listen"))?;
                }
                Role::ConnectedTo { peer } => {
                    let address = peer.address().map_err(self.fail(i, "its peer's name"))?;
                    if let Err(e) = sock::connect(fd.as_raw_fd(), &address) {
                        crate::info!(
                            "note: unix datagram socket socket:[{}] could not connect \
                             to {peer} again ({e}): it comes back unconnected",
                            s.inode
                        );
                    }
                }
                _ => {}
            }
            set_buffers(fd, s.send_buffer, s.receive_buffer)
                .map_err(self.fail(i, "set its buffers"))?;
            let flags = nix::fcntl::OFlag::from_bits_truncate(s.flags & libc::O_NONBLOCK);
            nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
                .map_err(self.fail(i, "set its flags"))?;
            let how = match s.shutdown & 3 {
                1 => Some(sock::Shutdown::Read),
                2 => Some(sock::Shutdown::Write),
                3 => Some(sock::Shutdown::Both),
                _ => None,
            };
            if let Some(how) = how
                && !matches!(s.state, Role::Listening { .. } | Role::Unconnected)
            {
                sock::shutdown(fd.as_raw_fd(), how).map_err(self.fail(i, "shut it down"))?;
            }
        }
        self.stand_ins.clear();
        for s in &self.set.sockets {
            if let Some(BoundName {
                name: UnixName::Path(path),
                file: Some(file),
            }) = &s.name
                && !file.present
            {
                std::fs::remove_file(path).map_err(|e| {
                    self.fail(0, "remove the name the job had removed")(errno_of(&e))
                })?;
            }
        }
        Ok(())
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn new_socket(kind: SocketType) -> Result<OwnedFd, Errno> {
    sock::socket(
        sock::AddressFamily::Unix,
        kind.nix(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
}

/// Accepts the next connection, which must be one this process made: a process outside
/// the job that connected meanwhile would take a place in the queue.
fn accept_own(listener: &OwnedFd) -> Result<OwnedFd, Errno> {
    let fd = sock::accept4(listener, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)?;
    let peer = sock::getsockopt(&fd, sockopt::PeerCredentials)?;
    if peer.pid() != nix::unistd::getpid().as_raw() {
        return Err(Errno::EADDRINUSE);
    }
    Ok(fd)
}

/// Lets `fd` send `bytes` without waiting (the restorer's peers have default buffers).
fn make_room(fd: &OwnedFd, bytes: usize) {
    let want = bytes.saturating_mul(2).saturating_add(64 << 10);
    let now = sock::getsockopt(fd, sockopt::SndBuf).unwrap_or(0);
    if now < want {
        // Above `wmem_max` only with CAP_NET_ADMIN; a failure leaves the send to tell.
        if sock::setsockopt(fd, sockopt::SndBufForce, &want).is_err() {
            let _ = sock::setsockopt(fd, sockopt::SndBuf, &want);
        }
    }
}

pub(crate) fn set_buffers(fd: &OwnedFd, send: u32, receive: u32) -> Result<(), Errno> {
    if receive > 0 {
        let size = usize::try_from(receive).unwrap_or(usize::MAX);
        if sock::setsockopt(fd, sockopt::RcvBufForce, &size).is_err() {
            sock::setsockopt(fd, sockopt::RcvBuf, &size)?;
        }
    }
    if send > 0 {
        let size = usize::try_from(send).unwrap_or(usize::MAX);
        if sock::setsockopt(fd, sockopt::SndBufForce, &size).is_err() {
            sock::setsockopt(fd, sockopt::SndBuf, &size)?;
        }
    }
    Ok(())
}

enum BindError {
    Sys(Errno),
    Refused(String),
}

impl From<Errno> for BindError {
    fn from(e: Errno) -> Self {
        BindError::Sys(e)
    }
}

/// Binds `fd` to `name`. A path is bound only where nothing is, or where the socket file
/// the image recorded is left by a socket nobody listens on any more (the dead original):
/// that file is replaced. Then the file gets its owner and mode back (if the job had
/// removed it, `Rebuild::finish` removes it again).
fn bind_name(fd: &OwnedFd, kind: SocketType, bound: &BoundName) -> Result<(), BindError> {
    let address = bound.name.address()?;
    let UnixName::Path(path) = &bound.name else {
        return match sock::bind(fd.as_raw_fd(), &address) {
            Err(Errno::EADDRINUSE) => Err(BindError::Refused(format!(
                "the abstract name {} is in use by another socket (is the checkpointed job \
                 still running?)",
                bound.name
            ))),
            other => Ok(other?),
        };
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BindError::Sys(errno_of(&e))),
        Ok(meta) => {
            let recorded = bound.file.is_some_and(|f| {
                meta.file_type().is_socket() && f.inode == meta.ino() && f.device == meta.dev()
            });
            if !recorded {
                return Err(BindError::Refused(format!(
                    "{path} exists and is not the socket file the job left (inode {}); it is \
                     not replaced: remove it if it is stale",
                    meta.ino()
                )));
            }
            if someone_listens(&address, kind) {
                return Err(BindError::Refused(format!(
                    "{path} is the socket of a process that still listens on it (is the \
                     checkpointed job still running?)"
                )));
            }
            std::fs::remove_file(path).map_err(|e| BindError::Sys(errno_of(&e)))?;
        }
    }
    sock::bind(fd.as_raw_fd(), &address)?;
    if let Some(file) = bound.file {
        if !file.present {
            // Removed at the end ([`Rebuild::finish`]): connections are made by path first.
            return Ok(());
        }
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::lchown(path, Some(file.uid), Some(file.gid))
            .map_err(|e| BindError::Sys(errno_of(&e)))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(|e| BindError::Sys(errno_of(&e)))?;
    }
    Ok(())
}

/// Whether a socket answers at `address`: only a refused connection means the file is
/// left by a closed socket.
fn someone_listens(address: &UnixAddr, kind: SocketType) -> bool {
    let Ok(probe) = new_socket(kind) else {
        return true;
    };
    !matches!(
        sock::connect(probe.as_raw_fd(), address),
        Err(Errno::ECONNREFUSED)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_the_kernel_reports_them() {
        assert_eq!(
            UnixName::parse(b"/tmp/x.sock"),
            Some(UnixName::Path("/tmp/x.sock".into()))
        );
        assert_eq!(
            UnixName::parse(b"\0abc"),
            Some(UnixName::Abstract(b"abc".to_vec()))
        );
        assert_eq!(UnixName::parse(b"relative"), None);
        assert_eq!(UnixName::parse(b""), None);
        assert!(UnixName::Path("x".into()).problem().is_some());
        assert!(UnixName::Abstract(vec![1; 200]).problem().is_some());
    }

    #[test]
    fn hostile_values_are_named() {
        let socket = |inode, name: UnixName| NamedSocket {
            inode,
            kind: SocketType::Datagram,
            flags: 0,
            send_buffer: 0,
            receive_buffer: 0,
            shutdown: 0,
            passcred: false,
            name: Some(BoundName { name, file: None }),
            state: Role::ConnectedTo {
                peer: UnixName::Path("../../etc/x".into()),
            },
            queued: Vec::new(),
        };
        let set = UnixSockets {
            sockets: vec![
                socket(1, UnixName::Path("relative".into())),
                socket(1, UnixName::Abstract(vec![7; 500])),
            ],
        };
        let fields: Vec<String> = set.problems().into_iter().map(|(f, _)| f).collect();
        for field in [
            "sockets[0].name",
            "sockets[0].state.peer",
            "sockets[1].inode",
            "sockets[1].name",
        ] {
            assert!(fields.iter().any(|f| f == field), "{field}: {fields:?}");
        }
    }

    #[test]
    fn a_dead_socket_file_is_told_from_a_live_one() {
        let dir = std::env::temp_dir().join(format!("mlckpt-un-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let address = UnixAddr::new(&path).unwrap();
        assert!(someone_listens(&address, SocketType::Stream));
        drop(listener);
        assert!(!someone_listens(&address, SocketType::Stream));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
