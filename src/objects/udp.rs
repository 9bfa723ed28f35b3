//! UDP sockets: bound address, connected peer, options, and the datagrams waiting to be
//! read (CRIU drops them; mlckpt keeps them). The queue is read without taking anything
//! out (`MSG_PEEK` walked with `SO_PEEK_OFF`, as for unix sockets), each datagram with its
//! sender. At restore each one is sent again to the new socket with its original sender
//! address, through a raw socket that writes the IP and UDP headers itself (the sender's
//! port may belong to another socket of the job, bound already): the process reads the
//! same datagrams from the same senders. A raw socket needs `CAP_NET_RAW`: a restore
//! without it refuses a socket with queued datagrams. Multicast groups and sending
//! options: [`super::multicast`].

use super::inet::{self, Protocol, SocketOptions};
use super::multicast::Multicast;
use super::{ObjectError, OpenFd};
use crate::tracer::sock_syscalls as so;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UdpSocket {
    pub ipv6: bool,
    pub flags: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    pub options: SocketOptions,
    #[serde(default, skip_serializing_if = "Multicast::is_unset")]
    pub multicast: Multicast,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queued: Vec<Datagram>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Datagram {
    pub from: SocketAddr,
    #[serde(with = "inet::bytes")]
    pub data: Vec<u8>,
}

/// `IPPROTO_UDP`, as the byte of an IP header.
const UDP: u8 = 17;

/// Largest UDP payload (over IPv4; IPv6 jumbograms are not restored).
const MAX_DATAGRAM: usize = 65507;
/// Datagrams beyond this many in one queue are taken for a peek that does not move on.
const MAX_QUEUED: usize = 1 << 16;

pub fn capture(fd: &OpenFd, e: &inet::InetEntry) -> Result<UdpSocket, ObjectError> {
    let copy = fd.copy_here("the socket")?;
    let options = SocketOptions::capture(copy.as_fd(), Protocol::Udp, e.ipv6)
        .map_err(fd.capture_failed("its options"))?;
    let multicast = Multicast::capture(copy.as_fd(), e.ipv6)
        .map_err(fd.capture_failed("its multicast groups"))?;
    let connected = e.state == inet::TCP_ESTABLISHED;
    let bound = e.local.port() != 0;
    let queued = peek_queue(copy.as_fd()).map_err(fd.capture_failed("its queued datagrams"))?;
    Ok(UdpSocket {
        ipv6: e.ipv6,
        flags: fd.flags & libc::O_NONBLOCK,
        local: bound.then_some(e.local),
        remote: connected.then_some(e.remote),
        options,
        multicast,
        queued,
    })
}

/// Every datagram waiting in the socket, left in place (the peek offset, shared with the
/// process, is put back as it was).
fn peek_queue(fd: BorrowedFd) -> Result<Vec<Datagram>, Errno> {
    use crate::tracer::sys::{peek_offset, set_peek_offset};
    let was = peek_offset(fd)?;
    set_peek_offset(fd, 0)?;
    let mut queued = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let result = loop {
        if queued.len() >= MAX_QUEUED {
            break Err(Errno::EOVERFLOW);
        }
        match so::peek_datagram(fd, &mut buf) {
            Ok(Some((n, from))) => queued.push(Datagram {
                from,
                data: buf[..n].to_vec(),
            }),
            Ok(None) => break Ok(queued),
            Err(e) => break Err(e),
        }
    };
    set_peek_offset(fd, was)?;
    result
}

impl UdpSocket {
    pub fn problem(&self) -> Option<String> {
        let addresses = self.local.iter().chain(&self.remote);
        if let Some(p) = addresses
            .filter_map(|a| inet::address_problem(a, self.ipv6))
            .next()
        {
            return Some(p);
        }
        if self.remote.is_some_and(|r| r.port() == 0) {
            return Some("connected to port 0".into());
        }
        if self.queued.len() > MAX_QUEUED {
            return Some(format!("more than {MAX_QUEUED} queued datagrams"));
        }
        if self.queued.iter().any(|d| d.data.len() > MAX_DATAGRAM) {
            return Some(format!("a datagram above {MAX_DATAGRAM} bytes"));
        }
        if self.queued.iter().any(|d| d.from.port() == 0) {
            return Some("a datagram from port 0".into());
        }
        self.options
            .problem()
            .or_else(|| self.multicast.problem(self.ipv6))
    }

    pub fn open(&self) -> Result<OwnedFd, ObjectError> {
        let what = match self.local {
            Some(a) => format!("a UDP socket bound to {a}"),
            None => "a UDP socket".to_string(),
        };
        let what: &str = &what;
        let fail = |step: &'static str| move |e: Errno| inet::recreate_failed(what, step, e);
        let s = inet::bound_socket(Protocol::Udp, self.ipv6, &self.options, self.local)
            .map_err(|(step, e)| fail(step)(e))?;
        let fd = s.as_fd();
        if !self.queued.is_empty() {
            // Before connect, which would filter out other senders, and before the groups
            // are joined, whose traffic would come in between.
            self.requeue(fd)
                .map_err(fail("queue its datagrams again"))?;
        }
        self.multicast
            .apply(fd, self.ipv6)
            .map_err(|(step, e)| ObjectError::Recreate {
                what: format!("{what} ({step})"),
                source: e.into(),
            })?;
        if let Some(a) = self.remote {
            so::connect(fd, a, self.ipv6).map_err(fail("connect"))?;
        }
        inet::set_flags(fd, self.flags).map_err(fail("flags"))?;
        Ok(s)
    }

    /// Sends the queued datagrams to the new socket `fd` from their senders' addresses,
    /// and waits until all are queued.
    fn requeue(&self, fd: BorrowedFd) -> Result<(), Errno> {
        let at = so::address(fd, false)?;
        let mut raw4 = None;
        let mut raw6 = None;
        for d in &self.queued {
            let from = inet::canonical(d.from);
            let to = destination(inet::canonical(at), from.is_ipv6());
            let packet = packet(from, to, &d.data).ok_or(Errno::EAFNOSUPPORT)?;
            let raw = if from.is_ipv6() { &mut raw6 } else { &mut raw4 };
            if raw.is_none() {
                *raw = Some(so::raw_ip_socket(from.is_ipv6())?);
            }
            let raw = raw.as_ref().ok_or(Errno::EBADF)?;
            let sent = so::send_to(
                raw.as_fd(),
                &packet,
                SocketAddr::new(to.ip(), 0),
                to.is_ipv6(),
            )?;
            if sent != packet.len() {
                return Err(Errno::EMSGSIZE);
            }
        }
        // The loopback delivers through a soft interrupt: see them all arrive.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            if peek_queue(fd)?.len() >= self.queued.len() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Errno::ETIMEDOUT);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
}

/// Where a datagram from a sender of the given family reaches a socket bound to `at`: at
/// its address, or, bound to any address, at the loopback.
fn destination(at: SocketAddr, ipv6: bool) -> SocketAddr {
    match (at.ip().is_unspecified() || at.is_ipv6() != ipv6, ipv6) {
        (false, _) => at,
        (true, false) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), at.port()),
        (true, true) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), at.port()),
    }
}

/// An IP packet carrying a UDP datagram from `from` to `to` (same family).
fn packet(from: SocketAddr, to: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(8 + data.len()).ok()?;
    let mut udp = Vec::with_capacity(8 + data.len());
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // checksum, below
    udp.extend_from_slice(data);
    match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = u16::try_from(20 + udp.len()).ok()?;
            let mut p = Vec::with_capacity(usize::from(total));
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&total.to_be_bytes());
            // Identification and header checksum: the kernel fills them in.
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, UDP, 0, 0]);
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            // An IPv4 UDP checksum of 0 means none.
            p.extend_from_slice(&udp);
            Some(p)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut pseudo = Vec::with_capacity(40 + udp.len());
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, UDP]);
            pseudo.extend_from_slice(&udp);
            // Mandatory over IPv6; 0 is sent as all ones.
            let sum = match checksum(&pseudo) {
                0 => 0xffff,
                s => s,
            };
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            let mut p = Vec::with_capacity(40 + udp.len());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&udp_len.to_be_bytes());
            p.extend_from_slice(&[UDP, 64]);
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&udp);
            Some(p)
        }
        _ => None,
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded: it fits 16 bits now.
    !u16::try_from(sum).unwrap_or(0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_of_rfc1071s_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2 (one's complement 220d).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    /// Datagrams come back with their senders, on both families.
    #[test]
    fn queued_datagrams_are_sent_again_from_their_senders() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let a = std::net::UdpSocket::bind(any).unwrap();
            let b = std::net::UdpSocket::bind(any).unwrap();
            a.send_to(b"one", b.local_addr().unwrap()).unwrap();
            a.send_to(b"", b.local_addr().unwrap()).unwrap();
            a.send_to(b"three", b.local_addr().unwrap()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            let queued = peek_queue(b.as_fd()).unwrap();
            assert_eq!(queued.len(), 3);
            let target = b.local_addr().unwrap();
            drop(b);
            let restored = UdpSocket {
                ipv6: target.is_ipv6(),
                flags: 0,
                local: Some(target),
                remote: None,
                options: SocketOptions::default(),
                multicast: Multicast::default(),
                queued,
            };
            let s = std::net::UdpSocket::from(restored.open().unwrap());
            let mut buf = [0u8; 16];
            for want in [&b"one"[..], b"", b"three"] {
                let (n, from) = s.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], want);
                assert_eq!(from, a.local_addr().unwrap());
            }
        }
    }
}
