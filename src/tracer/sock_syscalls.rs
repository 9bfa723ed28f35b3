//! Socket options and queue sizes of TCP and UDP sockets, wrapped once: the integer and
//! struct options nix does not type (`TCP_REPAIR_*`, `TCP_INFO`, `IPV6_V6ONLY` ...), the
//! queue ioctls (`SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`) and the address conversions.

use nix::errno::Errno;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Bytes of data not yet sent (`SIOCOUTQNSD`, linux/sockios.h).
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// An int option.
pub fn get_int(fd: BorrowedFd, level: i32, name: i32) -> Result<i32, Errno> {
    let mut value = [0u8; 4];
    let n = get_bytes(fd, level, name, &mut value)?;
    if n != 4 {
        return Err(Errno::EINVAL);
    }
    Ok(i32::from_ne_bytes(value))
}

pub fn set_int(fd: BorrowedFd, level: i32, name: i32, value: i32) -> Result<(), Errno> {
    set_bytes(fd, level, name, &value.to_ne_bytes())
}

/// An option as bytes; returns the length the kernel wrote.
pub fn get_bytes(fd: BorrowedFd, level: i32, name: i32, out: &mut [u8]) -> Result<usize, Errno> {
    let mut len = libc::socklen_t::try_from(out.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the kernel writes at most `len` bytes into `out`, live for the call, and
    // updates `len`.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            out.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    Errno::result(ret)?;
    Ok(len as usize)
}

pub fn set_bytes(fd: BorrowedFd, level: i32, name: i32, value: &[u8]) -> Result<(), Errno> {
    let len = libc::socklen_t::try_from(value.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the kernel reads `len` bytes from `value`, live for the call.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), len) };
    Errno::result(ret).map(drop)
}

fn ioctl_int(fd: BorrowedFd, request: libc::c_ulong) -> Result<usize, Errno> {
    let mut n: libc::c_int = 0;
    // SAFETY: these requests write one int to the pointer, live for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, &raw mut n) };
    Errno::result(ret)?;
    usize::try_from(n).map_err(|_| Errno::EINVAL)
}

/// Bytes in the receive queue not read yet (`SIOCINQ`).
pub fn bytes_to_read(fd: BorrowedFd) -> Result<usize, Errno> {
    ioctl_int(fd, libc::FIONREAD)
}

/// Bytes in the send queue not acknowledged yet (`SIOCOUTQ`), and of those, bytes not
/// sent yet (`SIOCOUTQNSD`).
pub fn bytes_to_send(fd: BorrowedFd) -> Result<(usize, usize), Errno> {
    Ok((ioctl_int(fd, libc::TIOCOUTQ)?, ioctl_int(fd, SIOCOUTQNSD)?))
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` into `buf`; 0 when nothing is queued.
pub fn peek(fd: BorrowedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, live for the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match Errno::result(n) {
        Err(Errno::EAGAIN) => Ok(0),
        Err(e) => Err(e),
        Ok(n) => Ok(n as usize),
    }
}

/// The next datagram of a UDP socket, left in place (`recvfrom(MSG_PEEK)`; with
/// `SO_PEEK_OFF` set, each call moves on to the next one): its length and sender, or None
/// when the queue is empty.
pub fn peek_datagram(fd: BorrowedFd, buf: &mut [u8]) -> Result<Option<(usize, SocketAddr)>, Errno> {
    // SAFETY: zeroed sockaddr_storage is a valid empty address, filled in by the kernel.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf` and at most `len`
    // into `from`, both live for the call.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            (&raw mut from).cast(),
            &raw mut len,
        )
    };
    let n = match Errno::result(n) {
        Err(Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e),
        Ok(n) => n as usize,
    };
    if n > buf.len() {
        return Err(Errno::EMSGSIZE);
    }
    let from = from_storage(&from).ok_or(Errno::EAFNOSUPPORT)?;
    Ok(Some((n, from)))
}

/// The socket's own address (`getsockname`) or its peer's (`getpeername`).
pub fn address(fd: BorrowedFd, peer: bool) -> Result<SocketAddr, Errno> {
    // SAFETY: zeroed sockaddr_storage is a valid empty address, filled in by the kernel.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let call = if peer {
        libc::getpeername
    } else {
        libc::getsockname
    };
    // SAFETY: the kernel writes at most `len` bytes into `storage`, live for the call.
    let ret = unsafe { call(fd.as_raw_fd(), (&raw mut storage).cast(), &raw mut len) };
    Errno::result(ret)?;
    from_storage(&storage).ok_or(Errno::EAFNOSUPPORT)
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can hold.
            let a: &libc::sockaddr_in = unsafe { &*std::ptr::from_ref(s).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it can hold.
            let a: &libc::sockaddr_in6 = unsafe { &*std::ptr::from_ref(s).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::new(IpAddr::V6(ip), u16::from_be(a.sin6_port)))
        }
        _ => None,
    }
}

/// `addr` as the family of the socket it is used with: an IPv4 address for an IPv6
/// socket is written as IPv4-mapped (`::ffff:a.b.c.d`).
fn to_storage(addr: SocketAddr, ipv6: bool) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed sockaddr_storage is a valid empty address, filled in below.
    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let addr = match (addr, ipv6) {
        (SocketAddr::V4(a), true) => SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port()),
        (a, _) => a,
    };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let sin: &mut libc::sockaddr_in = unsafe { &mut *std::ptr::from_mut(&mut s).cast() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (
                s,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let sin6: &mut libc::sockaddr_in6 = unsafe { &mut *std::ptr::from_mut(&mut s).cast() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            (
                s,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// `bind(addr)`; `ipv6`: the socket is an IPv6 one.
pub fn bind(fd: BorrowedFd, addr: SocketAddr, ipv6: bool) -> Result<(), Errno> {
    let (s, len) = to_storage(addr, ipv6);
    // SAFETY: `s` holds an address of `len` bytes, live for the call.
    let ret = unsafe { libc::bind(fd.as_raw_fd(), (&raw const s).cast(), len) };
    Errno::result(ret).map(drop)
}

/// `connect(addr)` (for TCP in repair mode: no handshake, the socket is established).
pub fn connect(fd: BorrowedFd, addr: SocketAddr, ipv6: bool) -> Result<(), Errno> {
    let (s, len) = to_storage(addr, ipv6);
    // SAFETY: `s` holds an address of `len` bytes, live for the call.
    let ret = unsafe { libc::connect(fd.as_raw_fd(), (&raw const s).cast(), len) };
    Errno::result(ret).map(drop)
}

/// `sendto(addr)` without waiting; returns the bytes sent.
pub fn send_to(fd: BorrowedFd, data: &[u8], addr: SocketAddr, ipv6: bool) -> Result<usize, Errno> {
    let (s, len) = to_storage(addr, ipv6);
    // SAFETY: `data` and `s` are live for the call and hold what their lengths say.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            (&raw const s).cast(),
            len,
        )
    };
    Errno::result(n).map(|n| n as usize)
}

/// `send` without waiting; returns the bytes sent.
pub fn send(fd: BorrowedFd, data: &[u8]) -> Result<usize, Errno> {
    // SAFETY: `data` is live for the call and holds `data.len()` bytes.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    Errno::result(n).map(|n| n as usize)
}

/// `SO_LINGER` as (on, seconds).
pub fn set_linger(fd: BorrowedFd, on: bool, seconds: i32) -> Result<(), Errno> {
    // struct linger: int l_onoff, int l_linger.
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&i32::from(on).to_ne_bytes());
    bytes[4..].copy_from_slice(&seconds.to_ne_bytes());
    set_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, &bytes)
}

pub fn linger(fd: BorrowedFd) -> Result<Option<i32>, Errno> {
    let mut bytes = [0u8; 8];
    get_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, &mut bytes)?;
    let on = i32::from_ne_bytes(bytes[0..4].try_into().map_err(|_| Errno::EINVAL)?);
    let seconds = i32::from_ne_bytes(bytes[4..8].try_into().map_err(|_| Errno::EINVAL)?);
    Ok((on != 0).then_some(seconds))
}

/// `listen(backlog)`.
pub fn listen(fd: BorrowedFd, backlog: i32) -> Result<(), Errno> {
    // SAFETY: plain integers.
    let ret = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    Errno::result(ret).map(drop)
}

/// A raw socket that sends whole IP packets (`IPPROTO_RAW`: the caller writes the IP
/// header; nix has no name for that protocol). Needs `CAP_NET_RAW`.
pub fn raw_ip_socket(ipv6: bool) -> Result<std::os::fd::OwnedFd, Errno> {
    let family = if ipv6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain integers.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    let fd = Errno::result(fd)?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
