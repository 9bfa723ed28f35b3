//! TCP and UDP sockets, IPv4 and IPv6: what they share. The kernel lists the sockets of
//! the network namespace with their state, addresses and queue sizes through `sock_diag`
//! (netlink, `inet_diag`); a socket no table shows (created, never bound) is identified
//! from a copy of it (`SO_DOMAIN`, `SO_PROTOCOL`). This module sorts the job's sockets
//! into the objects `tcp` and `udp` capture: TCP sockets that are listening or not
//! connected, TCP connections with both ends in the job (restored with their queues by
//! `TCP_REPAIR`), connections of the job still waiting in its listener's accept queue
//! (connected anew), TCP connections to a peer outside the job (restored reset), and UDP
//! sockets. It also holds the socket options both protocols share, and the sockets a
//! checkpoint leaves in repair mode until the job is killed or let go.

use super::{ByInode, IdAllocator, JobFiles, ObjectError, ObjectKind, OpenFd, SharedObject};
use crate::tracer::sock_syscalls as so;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// TCP states (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One TCP or UDP socket as `sock_diag` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetEntry {
    pub protocol: Protocol,
    /// An `AF_INET6` socket (its addresses may be IPv4-mapped).
    pub ipv6: bool,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Listening: connections waiting to be accepted; else bytes to read.
    pub rqueue: u32,
    /// Listening: the backlog; else bytes to send.
    pub wqueue: u32,
    /// 0: no file refers to it (a connection not accepted yet, or closed).
    pub inode: u64,
}

/// The TCP and UDP sockets of this network namespace.
#[derive(Debug, Default)]
pub struct InetTable {
    entries: Vec<InetEntry>,
    by_inode: BTreeMap<u64, usize>,
    /// Why the kernel could not list TCP sockets (no `inet_diag` for TCP), if it could not:
    /// a TCP socket of the job is then refused, since its peer cannot be found.
    tcp_unlisted: Option<Errno>,
}

impl InetTable {
    pub fn get(&self, inode: u64) -> Option<&InetEntry> {
        self.by_inode.get(&inode).map(|&i| &self.entries[i])
    }

    /// The TCP socket at the other end of connection `e` on this host, if any.
    fn tcp_peer(&self, e: &InetEntry) -> Option<&InetEntry> {
        let (local, remote) = (canonical(e.local), canonical(e.remote));
        self.entries.iter().find(|p| {
            p.protocol == Protocol::Tcp
                && p.state != TCP_LISTEN
                && canonical(p.local) == remote
                && canonical(p.remote) == local
        })
    }

    /// The listener in whose accept queue connection `w` waits.
    fn listener_of(&self, w: &InetEntry) -> Option<&InetEntry> {
        self.entries
            .iter()
            .filter(|l| l.protocol == Protocol::Tcp && l.state == TCP_LISTEN)
            .find(|l| self.waiting(l).any(|x| x == w))
    }

    /// Connections waiting in the accept queue of listener `l` (no file refers to them).
    fn waiting(&self, l: &InetEntry) -> impl Iterator<Item = &InetEntry> {
        let at = canonical(l.local);
        self.entries.iter().filter(move |e| {
            e.protocol == Protocol::Tcp
                && e.inode == 0
                && e.state == TCP_ESTABLISHED
                && e.local.port() == at.port()
                && (at.ip().is_unspecified() || canonical(e.local).ip() == at.ip())
        })
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (how the peer sees it).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        a => a,
    }
}

/// Every TCP and UDP socket of this network namespace. A kernel without `inet_diag` for a
/// protocol lists none of it: UDP sockets are then identified from copies of them (all a
/// UDP socket's state is read from itself), TCP ones are refused.
pub fn table() -> Result<InetTable, Errno> {
    let mut t = InetTable::default();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        for ipv6 in [false, true] {
            let mut found = Vec::new();
            match dump(protocol, ipv6, &mut found) {
                Ok(()) => t.entries.extend(found),
                Err(e) if protocol == Protocol::Tcp => t.tcp_unlisted = Some(e),
                Err(_) => {}
            }
        }
    }
    for (i, e) in t.entries.iter().enumerate() {
        if e.inode != 0 {
            t.by_inode.insert(e.inode, i);
        }
    }
    Ok(t)
}

/// The `inet_diag` dump of one protocol and family into `out`.
fn dump(protocol: Protocol, ipv6: bool, out: &mut Vec<InetEntry>) -> Result<(), Errno> {
    const MSG_LEN: usize = 72; // struct inet_diag_msg
    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    let proto = match protocol {
        Protocol::Tcp => libc::IPPROTO_TCP,
        Protocol::Udp => libc::IPPROTO_UDP,
    };
    // struct inet_diag_req_v2 (56 bytes).
    let mut req = Vec::with_capacity(56);
    let byte = |v: i32| u8::try_from(v).expect("address families and protocols fit a byte");
    req.extend_from_slice(&[byte(family), byte(proto), 0, 0]); // family, protocol, ext, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&[0; 48]); // struct inet_diag_sockid: any
    super::unix::sock_diag_dump(&req, MSG_LEN, |message, _| {
        out.push(parse_diag(&message[..MSG_LEN], protocol));
    })
}

/// One `struct inet_diag_msg`: family, state, timer, retrans, id (sport, dport, src[16],
/// dst[16], if, cookie[8]), expires, rqueue, wqueue, uid, inode. Ports and addresses are
/// in network order.
fn parse_diag(m: &[u8], protocol: Protocol) -> InetEntry {
    let u32_at = |i: usize| u32::from_ne_bytes(m[i..i + 4].try_into().expect("4"));
    let port = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
    let ipv6 = i32::from(m[0]) == libc::AF_INET6;
    let ip = |i: usize| -> IpAddr {
        if ipv6 {
            let octets: [u8; 16] = m[i..i + 16].try_into().expect("16");
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            IpAddr::V4(Ipv4Addr::new(m[i], m[i + 1], m[i + 2], m[i + 3]))
        }
    };
    InetEntry {
        protocol,
        ipv6,
        state: m[1],
        local: SocketAddr::new(ip(8), port(4)),
        remote: SocketAddr::new(ip(24), port(6)),
        rqueue: u32_at(56),
        wqueue: u32_at(60),
        inode: u64::from(u32_at(68)),
    }
}

/// Whether `fd` (a socket no table of the job knows) is a TCP or UDP socket: one created
/// and not bound, or bound and not listening, is in no table `sock_diag` dumps.
pub fn is_unlisted_inet(fd: &OpenFd) -> bool {
    let Ok(copy) = fd.copy_here("the socket") else {
        return false;
    };
    identify(copy.as_fd()).is_some()
}

/// (protocol, IPv6) of a TCP or UDP socket.
fn identify(fd: BorrowedFd) -> Option<(Protocol, bool)> {
    let domain = so::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok()?;
    let proto = so::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    let ipv6 = match domain {
        libc::AF_INET => false,
        libc::AF_INET6 => true,
        _ => return None,
    };
    match proto {
        libc::IPPROTO_TCP => Some((Protocol::Tcp, ipv6)),
        libc::IPPROTO_UDP => Some((Protocol::Udp, ipv6)),
        _ => None,
    }
}

/// The entry of a socket `sock_diag` does not list, from the socket itself.
fn unlisted_entry(copy: BorrowedFd, inode: u64) -> Option<InetEntry> {
    let (protocol, ipv6) = identify(copy)?;
    let any = if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    let local = so::address(copy, false).unwrap_or(SocketAddr::new(any, 0));
    let remote = so::address(copy, true).ok();
    Some(InetEntry {
        protocol,
        ipv6,
        state: if remote.is_some() {
            TCP_ESTABLISHED
        } else {
            TCP_CLOSE
        },
        local,
        remote: remote.unwrap_or(SocketAddr::new(any, 0)),
        rqueue: 0,
        wqueue: 0,
        inode,
    })
}

/// Whether a connection of the job waiting to be accepted (`waiting`, the server's side,
/// which has no fd yet; `client`, the job's end) can be made again by connecting anew at
/// restore: nothing was sent on it yet either way, so its sequence numbers do not matter.
fn connects_again(waiting: &InetEntry, client: &InetEntry) -> bool {
    waiting.state == TCP_ESTABLISHED
        && client.state == TCP_ESTABLISHED
        && waiting.rqueue == 0
        && waiting.wqueue == 0
        && client.rqueue == 0
        && client.wqueue == 0
}

fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

/// What becomes of one socket of the job.
pub enum Plan<'t> {
    /// A TCP socket listening, or not connected.
    TcpSocket(&'t InetEntry),
    /// A TCP connection with both ends in the job (each end's inode, in inode order).
    TcpPair(u64, u64),
    /// A TCP connection of the job waiting in the accept queue of a listener of the job,
    /// nothing sent on it yet: connected anew at restore.
    TcpPending,
    /// A TCP connection whose peer is outside the job: restored reset.
    TcpReset,
    Udp,
}

/// Sorts the job's TCP and UDP sockets (socket inode -> plan); the fds the job holds that cannot be restored go
/// to `problems`, the connections that will not come back as they were to `warnings`.
pub fn plan<'t>(
    sockets: &ByInode,
    table: &'t InetTable,
    unlisted: &'t BTreeMap<u64, InetEntry>,
    problems: &mut Vec<super::Unsupported>,
    warnings: &mut Vec<String>,
) -> BTreeMap<u64, Plan<'t>> {
    let mut plans = BTreeMap::new();
    for (inode, fds) in sockets.iter() {
        let Some(e) = table.get(inode).or_else(|| unlisted.get(&inode)) else {
            continue;
        };
        let fd = fds[0];
        let who = format!(
            "fd {} of process {} ({})",
            fd.fd,
            fd.pid,
            super::command_of(fd.pid)
        );
        let refuse = |problems: &mut Vec<super::Unsupported>, what: String| {
            problems.push(super::unsupported(fd, what, REFUSED_HINT));
        };
        let plan = match e.protocol {
            Protocol::Udp => Plan::Udp,
            Protocol::Tcp if table.tcp_unlisted.is_some() => {
                refuse(
                    problems,
                    format!(
                        "a TCP socket, and the kernel does not list TCP sockets (inet_diag: {}), \
                         so its peer cannot be found",
                        table.tcp_unlisted.unwrap_or(Errno::ENOENT)
                    ),
                );
                continue;
            }
            Protocol::Tcp if e.state == TCP_LISTEN => {
                let mut inside = Vec::new();
                for w in table.waiting(e) {
                    match table.tcp_peer(w) {
                        Some(client) if sockets.get(client.inode).is_some() => {
                            if !connects_again(w, client) {
                                inside.push(format!("from {} (held by the job)", client.local));
                            }
                        }
                        _ => warnings.push(format!(
                            "{who} is a TCP socket listening on {} with a connection from {} \
                             not accepted yet: it is not in the image (after a restore that \
                             client sees its connection reset)",
                            e.local, w.remote
                        )),
                    }
                }
                if !inside.is_empty() {
                    refuse(
                        problems,
                        format!(
                            "a TCP socket listening on {} with connections of the job waiting \
                             to be accepted, with data sent on them: {}",
                            e.local,
                            inside.join(", ")
                        ),
                    );
                    continue;
                }
                Plan::TcpSocket(e)
            }
            Protocol::Tcp if e.state == TCP_CLOSE => Plan::TcpSocket(e),
            Protocol::Tcp => match table.tcp_peer(e) {
                Some(peer) if sockets.get(peer.inode).is_some() => {
                    if e.state != TCP_ESTABLISHED || peer.state != TCP_ESTABLISHED {
                        refuse(
                            problems,
                            format!(
                                "a TCP connection {} -> {} of the job in state {} (its peer: {}); \
                                 mlckpt restores established connections only",
                                e.local,
                                e.remote,
                                state_name(e.state),
                                state_name(peer.state)
                            ),
                        );
                        continue;
                    }
                    Plan::TcpPair(inode.min(peer.inode), inode.max(peer.inode))
                }
                Some(waiting)
                    if waiting.inode == 0
                        && table
                            .listener_of(waiting)
                            .is_some_and(|l| sockets.get(l.inode).is_some()) =>
                {
                    if !connects_again(waiting, e) {
                        refuse(
                            problems,
                            format!(
                                "a TCP connection {} -> {} of the job not accepted yet by its \
                                 listener (of the job), with data sent on it",
                                e.local, e.remote
                            ),
                        );
                        continue;
                    }
                    Plan::TcpPending
                }
                _ => {
                    warnings.push(format!(
                        "{who} is a TCP connection {} -> {} to a peer outside the job: after \
                         a restore it is reset, as after a network failure (reads see \
                         ECONNRESET then end-of-file, writes fail)",
                        e.local, e.remote
                    ));
                    Plan::TcpReset
                }
            },
        };
        plans.insert(inode, plan);
    }
    plans
}

const REFUSED_HINT: &str = "mlckpt cannot checkpoint it in this state; checkpoint when the \
                            connection is established or closed, or run the job without it";

/// The job's TCP and UDP sockets that `sock_diag` does not list, from copies of them.
pub fn unlisted(sockets: &ByInode, table: &InetTable) -> BTreeMap<u64, InetEntry> {
    sockets
        .iter()
        .filter(|(inode, _)| table.get(*inode).is_none())
        .filter_map(|(inode, fds)| {
            let copy = fds[0].copy_here("the socket").ok()?;
            Some((inode, unlisted_entry(copy.as_fd(), inode)?))
        })
        .collect()
}

/// One object per socket (per connection for a pair inside the job); returns socket
/// inode -> object id. Listening and unconnected sockets come first: at restore they
/// bind before the connections that share their port. Connections inside the job stay in
/// repair mode in `files.repair` until the job is killed or let go.
pub fn objects(
    plans: &BTreeMap<u64, Plan>,
    sockets: &ByInode,
    table: &InetTable,
    unlisted: &BTreeMap<u64, InetEntry>,
    depth: super::Depth,
    ids: &mut IdAllocator,
    files: &mut JobFiles,
) -> Result<BTreeMap<u64, u64>, ObjectError> {
    let mut by_inode = BTreeMap::new();
    if depth == super::Depth::Check {
        return Ok(by_inode);
    }
    let entry = |inode: u64| table.get(inode).or_else(|| unlisted.get(&inode));
    let order = |p: &Plan| match p {
        Plan::TcpSocket(_) => 0,
        Plan::Udp => 1,
        Plan::TcpPair(..) => 2,
        Plan::TcpPending => 3,
        Plan::TcpReset => 4,
    };
    let mut sorted: Vec<(&u64, &Plan)> = plans.iter().collect();
    sorted.sort_by_key(|(inode, p)| (order(p), **inode));
    for (&inode, plan) in sorted {
        if by_inode.contains_key(&inode) {
            continue;
        }
        let fds = sockets.get(inode).unwrap_or_default();
        let Some(first) = fds.first() else { continue };
        let Some(e) = entry(inode) else { continue };
        let object = match plan {
            Plan::TcpSocket(e) => ObjectKind::TcpSocket(super::tcp::capture_socket(first, e)?),
            Plan::Udp => ObjectKind::Udp(super::udp::capture(first, e)?),
            Plan::TcpReset => {
                ObjectKind::TcpReset(super::tcp::capture_reset(first, e, &mut files.repair)?)
            }
            Plan::TcpPending => {
                ObjectKind::TcpPending(super::tcp::capture_pending(first, e, &mut files.repair)?)
            }
            &Plan::TcpPair(a, b) => {
                let (Some(fa), Some(fb), Some(ea), Some(eb)) = (
                    sockets.get(a).and_then(|f| f.first()),
                    sockets.get(b).and_then(|f| f.first()),
                    entry(a),
                    entry(b),
                ) else {
                    continue;
                };
                let pair = super::tcp::capture_pair([fa, fb], [ea, eb], &mut files.repair)?;
                let id = ids.allocate();
                by_inode.insert(a, id);
                by_inode.insert(b, id);
                files.objects.push(SharedObject {
                    id,
                    object: ObjectKind::TcpPair(Box::new(pair)),
                });
                continue;
            }
        };
        let id = ids.allocate();
        by_inode.insert(inode, id);
        files.objects.push(SharedObject { id, object });
    }
    Ok(by_inode)
}

/// Socket options TCP and UDP sockets share, and TCP's own.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SocketOptions {
    #[serde(default)]
    pub reuse_address: bool,
    #[serde(default)]
    pub reuse_port: bool,
    #[serde(default)]
    pub keepalive: bool,
    #[serde(default)]
    pub broadcast: bool,
    /// `SO_LINGER` on, with this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<i32>,
    /// `SO_SNDBUF`/`SO_RCVBUF` as the kernel reports them (twice what was asked), when
    /// they differ from the defaults (set explicitly, or grown by TCP's autotuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_buffer: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_buffer: Option<u32>,
    /// `IPV6_V6ONLY` of an IPv6 socket.
    #[serde(default)]
    pub v6only: bool,
    /// TCP only.
    #[serde(default)]
    pub nodelay: bool,
    /// `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT` (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_timing: Option<[i32; 3]>,
    /// `TCP_CORK` (TCP only).
    #[serde(default)]
    pub cork: bool,
    /// `TCP_DEFER_ACCEPT` in seconds as the kernel reports it, when set (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defer_accept: Option<i32>,
    /// `TCP_FASTOPEN`: a listener's queue of fast-open requests, when set (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fastopen_queue: Option<i32>,
    /// `TCP_USER_TIMEOUT` in ms, when set (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_timeout_ms: Option<i32>,
    /// `TCP_CONGESTION`, when it is not the system's default (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion: Option<String>,
    /// `IP_TOS` (IPv4) or `IPV6_TCLASS` (IPv6), when not 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tos: Option<i32>,
    /// `IP_TTL` (IPv4) or `IPV6_UNICAST_HOPS` (IPv6), when not the system's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i32>,
}

/// `TCP_CA_NAME_MAX` (include/net/tcp.h): the longest congestion control name, with its NUL.
const CONGESTION_NAME_MAX: usize = 16;

/// Upper bound of a buffer size or queue read back from an image (the kernel's own limit
/// is `INT_MAX`; a queue this big would not be checkpointed).
pub const MAX_BUFFER: u32 = 1 << 30;
/// Bounds of the keepalive timing (include/net/tcp.h: `MAX_TCP_KEEPIDLE`,
/// `MAX_TCP_KEEPINTVL`, `MAX_TCP_KEEPCNT`).
const MAX_KEEPALIVE: [i32; 3] = [32767, 32767, 127];

impl SocketOptions {
    pub fn capture(fd: BorrowedFd, protocol: Protocol, ipv6: bool) -> Result<Self, Errno> {
        let flag = |level, name| so::get_int(fd, level, name).map(|v| v != 0);
        let sol = libc::SOL_SOCKET;
        let tcp = protocol == Protocol::Tcp;
        let (wmem, rmem) = default_buffers(protocol);
        let buffer = |name, default: Option<u32>| -> Result<Option<u32>, Errno> {
            let v = u32::try_from(so::get_int(fd, sol, name)?).unwrap_or(0);
            Ok((Some(v) != default).then_some(v))
        };
        // A TCP int option that is off (0) unless the program set it.
        let tcp_set = |name| -> Result<Option<i32>, Errno> {
            if !tcp {
                return Ok(None);
            }
            Ok(Some(so::get_int(fd, libc::IPPROTO_TCP, name)?).filter(|&v| v != 0))
        };
        Ok(SocketOptions {
            reuse_address: flag(sol, libc::SO_REUSEADDR)?,
            reuse_port: flag(sol, libc::SO_REUSEPORT)?,
            keepalive: flag(sol, libc::SO_KEEPALIVE)?,
            broadcast: flag(sol, libc::SO_BROADCAST)?,
            linger: so::linger(fd)?,
            send_buffer: buffer(libc::SO_SNDBUF, wmem)?,
            receive_buffer: buffer(libc::SO_RCVBUF, rmem)?,
            v6only: ipv6 && flag(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?,
            nodelay: tcp && flag(libc::IPPROTO_TCP, libc::TCP_NODELAY)?,
            keepalive_timing: if tcp {
                let t = |name| so::get_int(fd, libc::IPPROTO_TCP, name);
                Some([
                    t(libc::TCP_KEEPIDLE)?,
                    t(libc::TCP_KEEPINTVL)?,
                    t(libc::TCP_KEEPCNT)?,
                ])
            } else {
                None
            },
            cork: tcp && flag(libc::IPPROTO_TCP, libc::TCP_CORK)?,
            defer_accept: tcp_set(libc::TCP_DEFER_ACCEPT)?,
            fastopen_queue: tcp_set(libc::TCP_FASTOPEN)?,
            user_timeout_ms: tcp_set(libc::TCP_USER_TIMEOUT)?,
            congestion: if tcp { congestion(fd)? } else { None },
            tos: {
                let (level, name) = tos_option(ipv6);
                Some(so::get_int(fd, level, name)?).filter(|&v| v != 0)
            },
            ttl: {
                let (level, name, default) = ttl_option(ipv6);
                let ttl = so::get_int(fd, level, name)?;
                (Some(ttl) != sysctl_field(default, 0)).then_some(ttl)
            },
        })
    }

    /// Why these options cannot be a socket's, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let too_big = |b: Option<u32>| b.is_some_and(|b| b > MAX_BUFFER);
        if too_big(self.send_buffer) || too_big(self.receive_buffer) {
            return Some(format!("a buffer size above {MAX_BUFFER} bytes"));
        }
        if let Some(t) = self.keepalive_timing
            && t.iter()
                .zip(MAX_KEEPALIVE)
                .any(|(&v, max)| !(1..=max).contains(&v))
        {
            return Some(format!("keepalive timing {t:?} out of range"));
        }
        if self.linger.is_some_and(|s| s < 0) {
            return Some("a negative linger time".into());
        }
        let negative = [self.defer_accept, self.fastopen_queue, self.user_timeout_ms];
        if negative.iter().flatten().any(|&v| v < 0) {
            return Some("a negative TCP option".into());
        }
        if self.tos.is_some_and(|t| !(0..=255).contains(&t))
            || self.ttl.is_some_and(|t| !(0..=255).contains(&t))
        {
            return Some("a TOS or TTL out of range".into());
        }
        if let Some(name) = &self.congestion
            && (name.is_empty()
                || name.len() >= CONGESTION_NAME_MAX
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Some(format!("a congestion control named {name:?}"));
        }
        None
    }

    /// The options that must be set before `bind` (they decide whether it succeeds).
    pub fn apply_before_bind(&self, fd: BorrowedFd, ipv6: bool) -> Result<(), Errno> {
        let sol = libc::SOL_SOCKET;
        so::set_int(fd, sol, libc::SO_REUSEADDR, i32::from(self.reuse_address))?;
        so::set_int(fd, sol, libc::SO_REUSEPORT, i32::from(self.reuse_port))?;
        if ipv6 {
            so::set_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                i32::from(self.v6only),
            )?;
        }
        self.apply_buffers(fd)
    }

    /// Buffer sizes: before queues are filled, which must fit.
    pub fn apply_buffers(&self, fd: BorrowedFd) -> Result<(), Errno> {
        let sol = libc::SOL_SOCKET;
        for (size, forced, plain) in [
            (self.send_buffer, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (self.receive_buffer, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            let Some(size) = size else { continue };
            // The kernel doubles what it is given (its bookkeeping): half gives it back.
            let half = i32::try_from(size / 2).unwrap_or(i32::MAX);
            // Beyond the sysctl maximum only with CAP_NET_ADMIN.
            so::set_int(fd, sol, forced, half).or_else(|_| so::set_int(fd, sol, plain, half))?;
        }
        Ok(())
    }

    /// The other options (after `bind`, and for TCP after repair mode is off: it resets
    /// `SO_REUSEADDR`).
    pub fn apply(&self, fd: BorrowedFd, protocol: Protocol) -> Result<(), Errno> {
        let sol = libc::SOL_SOCKET;
        so::set_int(fd, sol, libc::SO_REUSEADDR, i32::from(self.reuse_address))?;
        so::set_int(fd, sol, libc::SO_KEEPALIVE, i32::from(self.keepalive))?;
        so::set_int(fd, sol, libc::SO_BROADCAST, i32::from(self.broadcast))?;
        if let Some(seconds) = self.linger {
            so::set_linger(fd, true, seconds)?;
        }
        if protocol == Protocol::Tcp {
            let tcp = libc::IPPROTO_TCP;
            so::set_int(fd, tcp, libc::TCP_NODELAY, i32::from(self.nodelay))?;
            if let Some([idle, interval, count]) = self.keepalive_timing {
                so::set_int(fd, tcp, libc::TCP_KEEPIDLE, idle)?;
                so::set_int(fd, tcp, libc::TCP_KEEPINTVL, interval)?;
                so::set_int(fd, tcp, libc::TCP_KEEPCNT, count)?;
            }
            if self.cork {
                so::set_int(fd, tcp, libc::TCP_CORK, 1)?;
            }
            for (value, name) in [
                (self.defer_accept, libc::TCP_DEFER_ACCEPT),
                (self.fastopen_queue, libc::TCP_FASTOPEN),
                (self.user_timeout_ms, libc::TCP_USER_TIMEOUT),
            ] {
                if let Some(v) = value {
                    so::set_int(fd, tcp, name, v)?;
                }
            }
            if let Some(name) = &self.congestion {
                // ENOENT: the algorithm is not available on this host (a module not loaded).
                so::set_bytes(fd, tcp, libc::TCP_CONGESTION, name.as_bytes())?;
            }
        }
        let ipv6 = so::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)? == libc::AF_INET6;
        if let Some(tos) = self.tos {
            let (level, name) = tos_option(ipv6);
            so::set_int(fd, level, name, tos)?;
        }
        if let Some(ttl) = self.ttl {
            let (level, name, _) = ttl_option(ipv6);
            so::set_int(fd, level, name, ttl)?;
        }
        Ok(())
    }
}

/// `TCP_CONGESTION` of a TCP socket, unless it is the system's default
/// (`net.ipv4.tcp_congestion_control`).
fn congestion(fd: BorrowedFd) -> Result<Option<String>, Errno> {
    let mut name = [0u8; CONGESTION_NAME_MAX];
    let n = so::get_bytes(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, &mut name)?;
    let name = &name[..n.min(CONGESTION_NAME_MAX)];
    let name = String::from_utf8_lossy(name.split(|&b| b == 0).next().unwrap_or_default());
    let default: Option<String> = sysctl_field("/proc/sys/net/ipv4/tcp_congestion_control", 0);
    Ok((Some(name.as_ref()) != default.as_deref()).then(|| name.into_owned()))
}

/// The hop limit option of unicast packets, and the sysctl file of its default.
fn ttl_option(ipv6: bool) -> (i32, i32, &'static str) {
    if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_UNICAST_HOPS,
            "/proc/sys/net/ipv6/conf/all/hop_limit",
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_TTL,
            "/proc/sys/net/ipv4/ip_default_ttl",
        )
    }
}

/// The type-of-service option: `IP_TOS`, or IPv6's traffic class.
fn tos_option(ipv6: bool) -> (i32, i32) {
    if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
    } else {
        (libc::IPPROTO_IP, libc::IP_TOS)
    }
}

/// Field `field` (from 0, split at white space) of the sysctl file `path`.
fn sysctl_field<T: std::str::FromStr>(path: &str, field: usize) -> Option<T> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .nth(field)?
        .parse()
        .ok()
}

/// The buffer sizes a new socket of `protocol` gets (as `SO_SNDBUF`/`SO_RCVBUF` report
/// them): TCP's from `tcp_wmem`/`tcp_rmem`, UDP's from `wmem_default`/`rmem_default`.
fn default_buffers(protocol: Protocol) -> (Option<u32>, Option<u32>) {
    let read = sysctl_field::<u32>;
    match protocol {
        Protocol::Tcp => (
            read("/proc/sys/net/ipv4/tcp_wmem", 1),
            read("/proc/sys/net/ipv4/tcp_rmem", 1),
        ),
        Protocol::Udp => (
            read("/proc/sys/net/core/wmem_default", 0).map(|v: u32| v.saturating_mul(2)),
            read("/proc/sys/net/core/rmem_default", 0).map(|v: u32| v.saturating_mul(2)),
        ),
    }
}

/// Why an address read from an image cannot be a socket's, if it cannot.
pub fn address_problem(a: &SocketAddr, ipv6: bool) -> Option<String> {
    if a.is_ipv6() && !ipv6 {
        return Some(format!("{a} is an IPv6 address of an IPv4 socket"));
    }
    match a.ip() {
        IpAddr::V4(ip) if ip.is_multicast() || ip.is_broadcast() => Some(format!(
            "{a} is not an address a socket is bound or connected to"
        )),
        IpAddr::V6(ip) if ip.is_multicast() => Some(format!(
            "{a} is not an address a socket is bound or connected to"
        )),
        _ => None,
    }
}

/// Why the two addresses of a connection cannot be, if they cannot: each must be one a
/// socket has (see `address_problem`), with a port.
pub fn connection_problem(local: &SocketAddr, remote: &SocketAddr, ipv6: bool) -> Option<String> {
    if local.port() == 0 || remote.port() == 0 {
        return Some(format!("a connection {local} -> {remote} on port 0"));
    }
    address_problem(local, ipv6).or_else(|| address_problem(remote, ipv6))
}

/// A new TCP or UDP socket (close-on-exec).
pub fn new_socket(protocol: Protocol, ipv6: bool) -> Result<OwnedFd, Errno> {
    use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockProtocol, SockType};
    let family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let (kind, proto) = match protocol {
        Protocol::Tcp => (SockType::Stream, SockProtocol::Tcp),
        Protocol::Udp => (SockType::Datagram, SockProtocol::Udp),
    };
    sock::socket(family, kind, SockFlag::SOCK_CLOEXEC, proto)
}

/// The error for a failure at `step` of making `what` again; an address in use most
/// likely means the checkpointed job (or a restore of it) still holds it.
pub fn recreate_failed(what: &str, step: &str, e: Errno) -> ObjectError {
    let why = match e {
        Errno::EADDRINUSE => ": the address is in use (does the checkpointed job still run?)",
        Errno::EADDRNOTAVAIL => {
            ": the connection exists on this host (does the checkpointed job still run?)"
        }
        _ => "",
    };
    ObjectError::Recreate {
        what: format!("{what} ({step}){why}"),
        source: e.into(),
    }
}

/// A new socket with its options, bound to `local` if given.
pub fn bound_socket(
    protocol: Protocol,
    ipv6: bool,
    options: &SocketOptions,
    local: Option<SocketAddr>,
) -> Result<OwnedFd, (&'static str, Errno)> {
    let s = new_socket(protocol, ipv6).map_err(|e| ("socket", e))?;
    options
        .apply_before_bind(s.as_fd(), ipv6)
        .map_err(|e| ("options", e))?;
    if protocol == Protocol::Tcp {
        // The job's old connections on this port may linger in TIME_WAIT (it was killed
        // without mlckpt, or crashed): they must not keep its listener from coming back.
        // Another listener on the address still makes bind fail. `apply` below sets the
        // job's own value again.
        so::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
            .map_err(|e| ("options", e))?;
    }
    if let Some(a) = local {
        crate::tracer::sock_syscalls::bind(s.as_fd(), a, ipv6).map_err(|e| ("bind", e))?;
    }
    options
        .apply(s.as_fd(), protocol)
        .map_err(|e| ("options", e))?;
    Ok(s)
}

/// Sets the file status flags of a restored socket (`O_NONBLOCK`).
pub fn set_flags(fd: BorrowedFd, flags: i32) -> Result<(), Errno> {
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags & libc::O_NONBLOCK);
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map(drop)
}

/// Copies of the job's TCP sockets a checkpoint touched: connections inside the job, in
/// repair mode (so that a kill closes them without a word to the network, and the restore
/// can bind their addresses again), and connections to outside peers. Dropped, it turns
/// repair mode off: the job goes on with its sockets as they were. `leave_for_kill` keeps
/// repair mode on and makes the outside connections end with a reset (no `TIME_WAIT`
/// left on the job's ports).
#[derive(Debug, Default)]
pub struct RepairHold {
    repairing: Vec<OwnedFd>,
    outside: Vec<OwnedFd>,
}

impl RepairHold {
    pub fn add_repairing(&mut self, fd: OwnedFd) {
        self.repairing.push(fd);
    }

    pub fn add_outside(&mut self, fd: OwnedFd) {
        self.outside.push(fd);
    }

    pub fn is_empty(&self) -> bool {
        self.repairing.is_empty() && self.outside.is_empty()
    }

    /// Turns repair mode off now (the job is about to run on).
    pub fn release(mut self) {
        self.turn_off();
    }

    /// The job is about to be killed: its connections close silently.
    pub fn leave_for_kill(mut self) {
        for fd in &self.outside {
            let _ = so::set_linger(fd.as_fd(), true, 0);
        }
        self.repairing.clear();
        self.outside.clear();
    }

    fn turn_off(&mut self) {
        for fd in self.repairing.drain(..) {
            let _ = super::tcp::repair_off(fd.as_fd(), false);
        }
        self.outside.clear();
    }
}

impl Drop for RepairHold {
    fn drop(&mut self) {
        self.turn_off();
    }
}

/// Bytes as base64 in the manifest.
pub mod bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::unix::fs::MetadataExt;

    fn inode(fd: &impl std::os::fd::AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    #[test]
    fn sockets_are_listed_with_their_peers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let waiting = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("[::1]:0").unwrap();
        let t = table().unwrap();
        let l = t.get(inode(&listener)).unwrap();
        assert_eq!(l.state, TCP_LISTEN);
        assert_eq!(l.local, listener.local_addr().unwrap());
        let c = t.get(inode(&client)).unwrap();
        assert_eq!(t.tcp_peer(c).unwrap().inode, inode(&server));
        let w = t.get(inode(&waiting)).unwrap();
        assert_eq!(t.tcp_peer(w).unwrap().inode, 0, "not accepted yet");
        assert_eq!(t.waiting(l).count(), 1);
        let u = t.get(inode(&udp)).unwrap();
        assert!(u.ipv6 && u.protocol == Protocol::Udp);
        assert_eq!(u.local, udp.local_addr().unwrap());
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let a: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(a), "127.0.0.1:80".parse().unwrap());
    }
}
