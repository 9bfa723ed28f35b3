//! Netlink sockets to the kernel (`NETLINK_ROUTE` of glibc's `getaddrinfo` and
//! `if_nameindex`, a udev monitor's `NETLINK_KOBJECT_UEVENT`, generic netlink ...):
//! `sock_diag` tells the protocol, port id, multicast groups and options of each. At
//! restore a new socket of that protocol is bound to the same port id (or, if another
//! socket has it, to one the kernel chooses; the restore says so) and joins the same
//! groups. Messages queued at checkpoint time are dropped: multicast notifications are
//! lossy anyway, and a socket waiting for the reply to a request is refused (the
//! checkpoint fails and the next one, a moment later, finds it done).

use super::{OpenFd, Refusal};
use crate::tracer::sys;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetlinkState {
    pub protocol: u8,
    /// `SOCK_RAW` or `SOCK_DGRAM`.
    pub socket_type: u8,
    /// Its port id (0: not bound yet, the kernel binds it at its first send).
    pub port: u32,
    /// `connect()`ed to this port and group (0, 0: not connected).
    pub peer_port: u32,
    pub peer_group: u32,
    /// The multicast groups it listens to (1-based group numbers).
    pub groups: Vec<u32>,
    /// `NETLINK_*` options set on it, as `sock_diag`'s flags (`NDIAG_FLAG_*`).
    pub options: u32,
    pub send_buffer: u32,
    pub receive_buffer: u32,
    /// File status flags (`O_NONBLOCK`).
    pub flags: i32,
}

/// What `sock_diag` says of one netlink socket.
#[derive(Debug, Clone, Default)]
pub struct DiagEntry {
    pub socket_type: u8,
    pub protocol: u8,
    pub port: u32,
    pub peer_port: u32,
    pub peer_group: u32,
    pub groups: Vec<u32>,
    pub flags: u32,
    /// Bytes of messages waiting to be read.
    pub queued: u32,
}

const NDIAG_FLAG_CB_RUNNING: u32 = 0x1;
/// The options mlckpt sets again: `NDIAG_FLAG_*` bit -> `NETLINK_*` socket option.
const OPTIONS: [(u32, i32); 5] = [
    (0x2, 3),   // PKTINFO
    (0x4, 4),   // BROADCAST_ERROR
    (0x8, 5),   // NO_ENOBUFS
    (0x10, 8),  // LISTEN_ALL_NSID
    (0x20, 10), // CAP_ACK
];
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

/// Protocols a new socket can stand in for the old one: the kernel keeps no state per
/// socket beyond port and groups (not audit, netfilter queues or user sockets).
pub const PROTOCOLS: [(u8, &str); 8] = [
    (0, "route"),
    (4, "sock_diag"),
    (6, "xfrm"),
    (7, "selinux"),
    (10, "fib_lookup"),
    (15, "kobject_uevent"),
    (16, "generic"),
    (21, "crypto"),
];

/// At most this many groups per socket (generic netlink numbers its groups past 32).
pub const MAX_GROUPS: usize = 1 << 16;

/// Every netlink socket of this network namespace, by inode.
pub fn diag_table() -> Result<BTreeMap<u64, DiagEntry>, Errno> {
    const NDIAG_PROTO_ALL: u8 = 255;
    const NDIAG_SHOW_MEMINFO: u32 = 1;
    const NDIAG_SHOW_GROUPS: u32 = 2;
    const NDIAG_SHOW_FLAGS: u32 = 8;
    // struct netlink_diag_req (20 bytes).
    let mut req = Vec::with_capacity(20);
    let family = u8::try_from(libc::AF_NETLINK).expect("AF_NETLINK fits a byte");
    req.extend_from_slice(&[family, NDIAG_PROTO_ALL, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes()); // inode: any
    let show = NDIAG_SHOW_MEMINFO | NDIAG_SHOW_GROUPS | NDIAG_SHOW_FLAGS;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    let mut table = BTreeMap::new();
    use super::unix::read_u32;
    // struct netlink_diag_msg (28 bytes): family, type, protocol, state, portid,
    // dst_portid, dst_group, inode, cookie[2].
    super::unix::sock_diag_dump(&req, 28, |msg, attrs| {
        let mut entry = DiagEntry {
            socket_type: msg[1],
            protocol: msg[2],
            port: read_u32(msg, 4),
            peer_port: read_u32(msg, 8),
            peer_group: read_u32(msg, 12),
            ..DiagEntry::default()
        };
        for &(kind, data) in attrs {
            match kind {
                0 => entry.queued = read_u32(data, 0), // MEMINFO: SK_MEMINFO_RMEM_ALLOC
                1 => entry.groups = group_numbers(data),
                4 => entry.flags = read_u32(data, 0),
                _ => {}
            }
        }
        table.insert(u64::from(read_u32(msg, 16)), entry);
    })?;
    Ok(table)
}

/// The 1-based numbers of the bits set in a group bitmap (bytes of `unsigned long`s).
fn group_numbers(bitmap: &[u8]) -> Vec<u32> {
    let mut groups = Vec::new();
    for (byte_index, &byte) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                groups.push(u32::try_from(byte_index * 8 + bit + 1).unwrap_or(u32::MAX));
            }
        }
    }
    groups
}

fn protocol_name(protocol: u8) -> Option<&'static str> {
    PROTOCOLS
        .iter()
        .find(|(p, _)| *p == protocol)
        .map(|(_, n)| *n)
}

/// Why a netlink socket cannot be checkpointed at all, if so.
pub fn refusal(e: &DiagEntry) -> Option<Refusal> {
    if protocol_name(e.protocol).is_none() {
        return Some((
            format!(
                "a netlink socket of protocol {} (mlckpt restores {})",
                e.protocol,
                PROTOCOLS.map(|(_, n)| n).join(", ")
            ),
            "the kernel keeps state for it that a new socket would not have; close it \
             before the checkpoint",
        ));
    }
    if !matches!(i32::from(e.socket_type), libc::SOCK_RAW | libc::SOCK_DGRAM) {
        return Some((
            "a netlink socket of an unknown type".into(),
            "close it before the checkpoint",
        ));
    }
    None
}

/// The socket behind `fd` (a netlink socket: its inode is in `table`).
pub fn capture(fd: &OpenFd, depth: super::Depth) -> Result<NetlinkState, Refusal> {
    let unreadable = || super::unreadable("netlink socket", fd);
    let table = diag_table().map_err(|_| unreadable())?;
    let unbound;
    let e = match table.get(&super::link_inode(&fd.target)) {
        Some(e) => e,
        None => {
            unbound = unbound_entry(fd).ok_or_else(unreadable)?;
            &unbound
        }
    };
    if let Some(refused) = refusal(e) {
        return Err(refused);
    }
    let mut state = NetlinkState {
        protocol: e.protocol,
        socket_type: e.socket_type,
        port: e.port,
        peer_port: e.peer_port,
        peer_group: e.peer_group,
        groups: e.groups.clone(),
        options: e.flags & OPTIONS.iter().fold(0, |all, (bit, _)| all | bit),
        send_buffer: 0,
        receive_buffer: 0,
        flags: fd.flags & libc::O_NONBLOCK,
    };
    if depth == super::Depth::Check {
        return Ok(state);
    }
    const RETRY: &str = "the process is in the middle of a request to the kernel; the next \
                         checkpoint, a moment later, finds it done";
    if e.flags & NDIAG_FLAG_CB_RUNNING != 0 || (e.queued > 0 && e.groups.is_empty()) {
        return Err((
            "a netlink socket with a reply being read (it would not come back)".into(),
            RETRY,
        ));
    }
    let copy = fd.copy_here("the socket").map_err(|_| unreadable())?;
    use nix::sys::socket::{getsockopt, sockopt};
    let send = getsockopt(&copy, sockopt::SndBuf).map_err(|_| unreadable())?;
    let receive = getsockopt(&copy, sockopt::RcvBuf).map_err(|_| unreadable())?;
    state.send_buffer = u32::try_from(send / 2).unwrap_or(u32::MAX);
    state.receive_buffer = u32::try_from(receive / 2).unwrap_or(u32::MAX);
    Ok(state)
}

/// What a netlink socket that `sock_diag` does not list (not bound yet) is: its
/// protocol and type, from a copy.
fn unbound_entry(fd: &OpenFd) -> Option<DiagEntry> {
    use nix::sys::socket::{getsockopt, sockopt};
    let copy = fd.copy_here("the socket").ok()?;
    let protocol =
        sys::int_socket_option(copy.as_fd(), libc::SOL_SOCKET, libc::SO_PROTOCOL).ok()?;
    let socket_type = getsockopt(&copy, sockopt::SockType).ok()?;
    Some(DiagEntry {
        socket_type: u8::try_from(socket_type as i32).ok()?,
        protocol: u8::try_from(protocol).ok()?,
        ..DiagEntry::default()
    })
}

/// Whether `fd` is a netlink socket, from its socket's `system.sockprotoname` attribute
/// (for sockets `sock_diag` does not list).
pub fn is_netlink(fd: &OpenFd) -> bool {
    let Ok(path) = std::ffi::CString::new(format!("/proc/{}/fd/{}", fd.pid, fd.fd)) else {
        return false;
    };
    let mut value = [0u8; 32];
    // SAFETY: path is a NUL-terminated string; value is a live buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    usize::try_from(n).is_ok_and(|n| value[..n].starts_with(b"NETLINK"))
}

impl NetlinkState {
    /// Problems of an image's values.
    pub fn problem(&self) -> Option<String> {
        if protocol_name(self.protocol).is_none() {
            return Some(format!(
                "protocol {} is not one mlckpt restores",
                self.protocol
            ));
        }
        if !matches!(
            i32::from(self.socket_type),
            libc::SOCK_RAW | libc::SOCK_DGRAM
        ) {
            return Some(format!(
                "socket type {} is not raw or datagram",
                self.socket_type
            ));
        }
        if self.groups.len() > MAX_GROUPS || self.groups.contains(&0) {
            return Some("groups are not multicast group numbers".into());
        }
        None
    }

    /// A new socket standing in for the old one.
    pub fn open(&self) -> Result<OwnedFd, super::ObjectError> {
        let name = protocol_name(self.protocol).unwrap_or("?");
        let fail = |what: &str| {
            let what = format!("netlink socket ({name}, port {}): {what}", self.port);
            move |e: Errno| super::ObjectError::Recreate {
                what,
                source: e.into(),
            }
        };
        let fd = netlink_socket(self.socket_type, self.protocol).map_err(fail("socket"))?;
        for (bit, option) in OPTIONS {
            if self.options & bit != 0 {
                sys::set_int_socket_option(fd.as_fd(), SOL_NETLINK, option, 1)
                    .map_err(fail("set its options"))?;
            }
        }
        if self.port != 0 {
            match bind_port(&fd, self.port) {
                Ok(()) => {}
                Err(Errno::EADDRINUSE) => {
                    bind_port(&fd, 0).map_err(fail("bind"))?;
                    crate::info!(
                        "note: netlink socket ({name}) port {} is taken by another \
                         socket: the restored one has a port the kernel chose",
                        self.port
                    );
                }
                Err(e) => return Err(fail("bind")(e)),
            }
        }
        for &group in &self.groups {
            let group = i32::try_from(group).map_err(|_| fail("join its groups")(Errno::EINVAL))?;
            sys::set_int_socket_option(fd.as_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
                .map_err(fail("join its groups"))?;
        }
        if self.peer_port != 0 || self.peer_group != 0 {
            let peer = nix::sys::socket::NetlinkAddr::new(self.peer_port, self.peer_group);
            nix::sys::socket::connect(fd.as_raw_fd(), &peer).map_err(fail("connect"))?;
        }
        super::unix_named::set_buffers(&fd, self.send_buffer, self.receive_buffer)
            .map_err(fail("set its buffers"))?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(self.flags & libc::O_NONBLOCK);
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(fail("set its flags"))?;
        Ok(fd)
    }
}

fn netlink_socket(socket_type: u8, protocol: u8) -> Result<OwnedFd, Errno> {
    // SAFETY: socket() takes no pointers; a non-negative result is a new fd nothing owns.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            i32::from(socket_type) | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    Errno::result(fd)?;
    // SAFETY: as above: fd is a new, open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind_port(fd: &OwnedFd, port: u32) -> Result<(), Errno> {
    let address = nix::sys::socket::NetlinkAddr::new(port, 0);
    nix::sys::socket::bind(fd.as_raw_fd(), &address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_socket_comes_back_with_its_port_and_groups() {
        let fd = netlink_socket(u8::try_from(libc::SOCK_RAW).unwrap(), 0).unwrap();
        bind_port(&fd, 0).unwrap();
        sys::set_int_socket_option(fd.as_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 1).unwrap();
        sys::set_int_socket_option(fd.as_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, 40)
            .unwrap_or(());
        let ino = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let table = diag_table().unwrap();
        let e = &table[&ino];
        assert_eq!(e.protocol, 0);
        assert!(e.groups.contains(&1), "{:?}", e.groups);
        assert!(refusal(e).is_none());
        let port = e.port;
        drop(fd);
        let state = NetlinkState {
            protocol: 0,
            socket_type: e.socket_type,
            port,
            peer_port: 0,
            peer_group: 0,
            groups: e.groups.clone(),
            options: 0,
            send_buffer: 0,
            receive_buffer: 0,
            flags: 0,
        };
        let again = state.open().unwrap();
        let address: nix::sys::socket::NetlinkAddr =
            nix::sys::socket::getsockname(again.as_raw_fd()).unwrap();
        assert_eq!(address.pid(), port);
    }

    #[test]
    fn protocols_with_kernel_state_are_refused() {
        let audit = DiagEntry {
            socket_type: u8::try_from(libc::SOCK_RAW).unwrap(),
            protocol: 9,
            ..DiagEntry::default()
        };
        let (what, _) = refusal(&audit).expect("audit is refused");
        assert!(what.contains("protocol 9"), "{what}");
    }

    #[test]
    fn group_bitmaps_give_one_based_numbers() {
        assert_eq!(group_numbers(&[0b101, 0, 0x80]), vec![1, 3, 24]);
    }
}
