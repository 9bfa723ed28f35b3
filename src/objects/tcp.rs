//! TCP sockets: listening or not connected (`TcpSocket`: address, backlog, options),
//! connections with both ends in the job (`TcpPair`), connections of the job waiting in
//! its listener's accept queue (`TcpPending`), and connections to a peer outside the job
//! (`TcpReset`).
//!
//! A connection inside the job is captured as CRIU does, with the kernel's repair mode
//! (`TCP_REPAIR`, see the kernel's net/ipv4/tcp.c): on a copy of each socket
//! (`pidfd_getfd`), the sequence numbers of both queues (`TCP_QUEUE_SEQ`), the data in
//! them (`MSG_PEEK` of the receive queue and, in repair mode, of the send queue, which
//! holds data sent and not yet acknowledged and data not sent yet), the options agreed in
//! the handshake (MSS, window scaling, SACK, timestamps), the timestamp clock and the
//! windows (`TCP_REPAIR_WINDOW`). The job is frozen but the kernel still moves packets (a
//! delayed ACK, a retransmission): both ends are read until what one has sent and the
//! other has received agree. At restore each end is a new socket in repair mode, bound
//! to its old address (repair mode may reuse it), given its sequence numbers, "connected"
//! without a handshake, refilled; then repair mode is turned off and the data not sent
//! yet is sent.
//!
//! A connection to a peer outside the job comes back reset: its first read fails with
//! `ECONNRESET`, later reads see end-of-file, writes fail with `EPIPE`, as after a
//! network failure (the peer's state is not in the image).

use super::inet::{self, Protocol, RepairHold, SocketOptions};
use super::{ObjectError, OpenFd, Opened};
use crate::tracer::sock_syscalls as so;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

// include/uapi/linux/tcp.h
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// `TCP_MAX_WSCALE` (include/net/tcp.h).
const MAX_WSCALE: u8 = 14;

/// A TCP socket that is listening, or bound, or new.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpSocket {
    pub ipv6: bool,
    /// File status flags (`O_NONBLOCK`).
    pub flags: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    /// Listening, with this backlog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u32>,
    pub options: SocketOptions,
}

/// A connection to a peer outside the job: restored reset.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpReset {
    pub ipv6: bool,
    pub flags: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A connection of the job waiting in the accept queue of a listener of the job, nothing
/// sent on it yet: at restore the job's end connects again (a real handshake) once the
/// listener listens again, and the new connection waits in its queue as the old one did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpPending {
    pub ipv6: bool,
    pub flags: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub options: SocketOptions,
}

/// A connection with both ends in the job.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpPair {
    pub ends: [TcpEnd; 2],
}

/// One end of a connection, as repair mode shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpEnd {
    /// Its inode at checkpoint time (`socket:[inode]`).
    pub inode: u64,
    pub ipv6: bool,
    pub flags: i32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub options: SocketOptions,
    /// Sequence number of the first byte of `send_queue` (the oldest unacknowledged).
    pub send_seq: u32,
    /// Data sent and not acknowledged, then data not sent yet (its last `unsent` bytes).
    #[serde(with = "inet::bytes")]
    pub send_queue: Vec<u8>,
    pub unsent: u32,
    /// Sequence number of the first byte of `receive_queue` (the next the process reads).
    pub receive_seq: u32,
    #[serde(with = "inet::bytes")]
    pub receive_queue: Vec<u8>,
    /// The options agreed in the handshake.
    pub mss: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_scale: Option<(u8, u8)>,
    pub sack: bool,
    pub timestamps: bool,
    /// The TCP timestamp clock (`TCP_TIMESTAMP`).
    pub timestamp: u32,
    /// `struct tcp_repair_window`: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
}

pub fn capture_socket(fd: &OpenFd, e: &inet::InetEntry) -> Result<TcpSocket, ObjectError> {
    let copy = fd.copy_here("the socket")?;
    let options = SocketOptions::capture(copy.as_fd(), Protocol::Tcp, e.ipv6)
        .map_err(fd.capture_failed("its options"))?;
    let listening = e.state == inet::TCP_LISTEN;
    Ok(TcpSocket {
        ipv6: e.ipv6,
        flags: fd.flags & libc::O_NONBLOCK,
        local: (listening || e.local.port() != 0).then_some(e.local),
        backlog: listening.then_some(e.wqueue),
        options,
    })
}

pub fn capture_reset(
    fd: &OpenFd,
    e: &inet::InetEntry,
    hold: &mut RepairHold,
) -> Result<TcpReset, ObjectError> {
    hold.add_outside(fd.copy_here("the socket")?);
    Ok(TcpReset {
        ipv6: e.ipv6,
        flags: fd.flags & libc::O_NONBLOCK,
        local: e.local,
        remote: e.remote,
    })
}

pub fn capture_pending(
    fd: &OpenFd,
    e: &inet::InetEntry,
    hold: &mut RepairHold,
) -> Result<TcpPending, ObjectError> {
    let copy = fd.copy_here("the socket")?;
    let options = SocketOptions::capture(copy.as_fd(), Protocol::Tcp, e.ipv6)
        .map_err(fd.capture_failed("its options"))?;
    // Ended with a reset by a kill: no TIME_WAIT on its port, which the restore binds.
    hold.add_outside(copy);
    Ok(TcpPending {
        ipv6: e.ipv6,
        flags: fd.flags & libc::O_NONBLOCK,
        local: e.local,
        remote: e.remote,
        options,
    })
}

/// Tries at reading both ends until they agree (the kernel may be acknowledging or
/// retransmitting meanwhile).
const CAPTURE_TRIES: u32 = 200;

pub fn capture_pair(
    fds: [&OpenFd; 2],
    entries: [&inet::InetEntry; 2],
    hold: &mut RepairHold,
) -> Result<TcpPair, ObjectError> {
    let mut copies = Vec::with_capacity(2);
    for fd in fds {
        let copy = fd.copy_here("the socket")?;
        repair_on(copy.as_fd()).map_err(fd.capture_failed("repair mode (TCP_REPAIR)"))?;
        // The hold turns repair mode off again (job goes on) or keeps it (kill).
        let kept = crate::tracer::sys::dup_at_least(std::os::fd::AsRawFd::as_raw_fd(&copy), 0)
            .map_err(fd.capture_failed("repair mode (TCP_REPAIR)"))?;
        hold.add_repairing(kept);
        copies.push(copy);
    }
    let read = |i: usize| read_queues(copies[i].as_fd());
    let mut tries = 0;
    let queues = loop {
        tries += 1;
        match (read(0), read(1)) {
            (Ok(a), Ok(b)) if agree(&a, &b) && agree(&b, &a) => break [a, b],
            (Err(e), _) | (_, Err(e)) if e != Errno::EAGAIN => {
                return Err(fds[0].capture_failed("its queues")(e));
            }
            _ if tries >= CAPTURE_TRIES => {
                let what = "its queues, which kept changing";
                return Err(fds[0].capture_failed(what)(Errno::EAGAIN));
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    };
    let mut ends = Vec::with_capacity(2);
    for (i, q) in queues.into_iter().enumerate() {
        let copy = copies[i].as_fd();
        let fail = fds[i].capture_failed("its connection state");
        let agreed = read_agreed(copy).map_err(fail)?;
        let options = SocketOptions::capture(copy, Protocol::Tcp, entries[i].ipv6)
            .map_err(fds[i].capture_failed("its options"))?;
        ends.push(TcpEnd {
            inode: entries[i].inode,
            ipv6: entries[i].ipv6,
            flags: fds[i].flags & libc::O_NONBLOCK,
            local: entries[i].local,
            remote: entries[i].remote,
            options,
            send_seq: q.send_seq,
            send_queue: q.send_queue,
            unsent: q.unsent,
            receive_seq: q.receive_seq,
            receive_queue: q.receive_queue,
            mss: agreed.mss,
            window_scale: agreed.window_scale,
            sack: agreed.sack,
            timestamps: agreed.timestamps,
            timestamp: agreed.timestamp,
            window: agreed.window,
        });
    }
    let [a, b]: [TcpEnd; 2] = ends
        .try_into()
        .map_err(|_| fds[0].capture_failed("its connection state")(Errno::EINVAL))?;
    Ok(TcpPair { ends: [a, b] })
}

/// What one end holds in its queues.
struct Queues {
    send_seq: u32,
    send_queue: Vec<u8>,
    unsent: u32,
    receive_seq: u32,
    receive_queue: Vec<u8>,
}

/// Whether what `from` has sent and `to` has received fit together: `to` has received
/// everything `from` forgot (acknowledged), and nothing `from` never had.
fn agree(from: &Queues, to: &Queues) -> bool {
    let received_up_to = to.receive_seq.wrapping_add(seq_len(&to.receive_queue));
    let ahead = received_up_to.wrapping_sub(from.send_seq);
    ahead as usize <= from.send_queue.len()
}

/// The length of a queue in sequence numbers (which wrap at 2^32; a queue is far shorter).
fn seq_len(queue: &[u8]) -> u32 {
    u32::try_from(queue.len()).unwrap_or(u32::MAX)
}

/// Both queues of a socket in repair mode; `EAGAIN` if they changed while being read.
fn read_queues(fd: BorrowedFd) -> Result<Queues, Errno> {
    let tcp = libc::IPPROTO_TCP;
    so::set_int(fd, tcp, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    let write_seq = so::get_int(fd, tcp, libc::TCP_QUEUE_SEQ)?.cast_unsigned();
    let (outq, unsent) = so::bytes_to_send(fd)?;
    // The kernel copies whole buffers of the send queue: room for all of it, and more.
    let mut send_queue = vec![0u8; outq + 4096];
    let n = so::peek(fd, &mut send_queue)?;
    if n != outq || so::bytes_to_send(fd)? != (outq, unsent) {
        so::set_int(fd, tcp, libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
        return Err(Errno::EAGAIN);
    }
    send_queue.truncate(n);
    so::set_int(fd, tcp, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    let rcv_nxt = so::get_int(fd, tcp, libc::TCP_QUEUE_SEQ)?.cast_unsigned();
    let inq = so::bytes_to_read(fd)?;
    let mut receive_queue = vec![0u8; inq + 1];
    // The process's peek offset (if it enabled one) would make the peek start there, and
    // the peek would move it: start from the head, and put it back.
    let was = crate::tracer::sys::peek_offset(fd)?;
    if was >= 0 {
        crate::tracer::sys::set_peek_offset(fd, 0)?;
    }
    let peeked = so::peek(fd, &mut receive_queue);
    if was >= 0 {
        crate::tracer::sys::set_peek_offset(fd, was)?;
    }
    let n = peeked?;
    let unchanged = so::get_int(fd, tcp, libc::TCP_QUEUE_SEQ)?.cast_unsigned() == rcv_nxt;
    so::set_int(fd, tcp, libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    if n != inq || !unchanged {
        return Err(Errno::EAGAIN);
    }
    receive_queue.truncate(n);
    Ok(Queues {
        send_seq: write_seq.wrapping_sub(seq_len(&send_queue)),
        send_queue,
        unsent: u32::try_from(unsent).map_err(|_| Errno::EOVERFLOW)?,
        receive_seq: rcv_nxt.wrapping_sub(seq_len(&receive_queue)),
        receive_queue,
    })
}

/// The handshake's options, the timestamp clock and the windows of a socket in repair
/// mode.
struct Agreed {
    mss: u32,
    window_scale: Option<(u8, u8)>,
    sack: bool,
    timestamps: bool,
    timestamp: u32,
    window: [u32; 5],
}

fn read_agreed(fd: BorrowedFd) -> Result<Agreed, Errno> {
    let tcp = libc::IPPROTO_TCP;
    // struct tcp_info: state, ca_state, retransmits, probes, backoff, options, then the
    // window scales (send in the low nibble, receive in the high one).
    let mut info = [0u8; 256];
    let n = so::get_bytes(fd, tcp, libc::TCP_INFO, &mut info)?;
    if n < 8 {
        return Err(Errno::EPROTO);
    }
    let options = info[5];
    let mut window = [0u8; 20];
    if so::get_bytes(fd, tcp, libc::TCP_REPAIR_WINDOW, &mut window)? != 20 {
        return Err(Errno::EPROTO);
    }
    let word = |i: usize| u32::from_ne_bytes(window[i * 4..i * 4 + 4].try_into().expect("4"));
    Ok(Agreed {
        // In repair mode this is the MSS agreed in the handshake (`mss_clamp`).
        mss: so::get_int(fd, tcp, libc::TCP_MAXSEG)?.cast_unsigned(),
        window_scale: (options & TCPI_OPT_WSCALE != 0).then_some((info[6] & 0xf, info[6] >> 4)),
        sack: options & TCPI_OPT_SACK != 0,
        timestamps: options & TCPI_OPT_TIMESTAMPS != 0,
        timestamp: so::get_int(fd, tcp, libc::TCP_TIMESTAMP)?.cast_unsigned(),
        window: [word(0), word(1), word(2), word(3), word(4)],
    })
}

fn repair_on(fd: BorrowedFd) -> Result<(), Errno> {
    so::set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, 1)
}

/// Turns repair mode off; `probe`: with a window probe, which makes the peer tell at once
/// what it has received (a restored connection), else without a packet (a capture).
pub fn repair_off(fd: BorrowedFd, probe: bool) -> Result<(), Errno> {
    let tcp = libc::IPPROTO_TCP;
    so::set_int(fd, tcp, libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE)?;
    so::set_int(
        fd,
        tcp,
        libc::TCP_REPAIR,
        if probe { 0 } else { TCP_REPAIR_OFF_NO_WP },
    )
}

/// Largest queue an image may hold per direction and end.
pub const MAX_QUEUE: usize = 64 << 20;

impl TcpSocket {
    pub fn problem(&self) -> Option<String> {
        if let Some(a) = &self.local
            && let Some(p) = inet::address_problem(a, self.ipv6)
        {
            return Some(p);
        }
        if self.backlog.is_some_and(|b| b > i32::MAX as u32) {
            return Some("a backlog beyond what listen() takes".into());
        }
        self.options.problem()
    }

    pub fn open(&self) -> Result<OwnedFd, ObjectError> {
        let what = match (&self.local, self.backlog) {
            (Some(a), Some(_)) => format!("a TCP socket listening on {a}"),
            (Some(a), None) => format!("a TCP socket bound to {a}"),
            _ => "a TCP socket".to_string(),
        };
        let what: &str = &what;
        let fail = |step: &'static str| move |e: Errno| inet::recreate_failed(what, step, e);
        let s = inet::bound_socket(Protocol::Tcp, self.ipv6, &self.options, self.local)
            .map_err(|(step, e)| fail(step)(e))?;
        if let Some(backlog) = self.backlog {
            let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
            so::listen(s.as_fd(), backlog).map_err(fail("listen"))?;
        }
        inet::set_flags(s.as_fd(), self.flags).map_err(fail("flags"))?;
        Ok(s)
    }
}

impl TcpReset {
    pub fn problem(&self) -> Option<String> {
        inet::connection_problem(&self.local, &self.remote, self.ipv6)
    }

    /// A socket whose connection was reset: connected to a listener of our own on the
    /// loopback, which answers with a reset (`SO_LINGER` 0).
    pub fn open(&self) -> Result<OwnedFd, ObjectError> {
        let what = format!(
            "the reset connection {} -> {} (its peer was outside the job)",
            self.local, self.remote
        );
        reset_socket(self.ipv6, self.flags).map_err(|e| ObjectError::Recreate {
            what,
            source: e.into(),
        })
    }
}

impl TcpPending {
    pub fn problem(&self) -> Option<String> {
        inet::connection_problem(&self.local, &self.remote, self.ipv6)
            .or_else(|| self.options.problem())
    }

    /// Bound to its old address and connected to the restored listener (created before
    /// it: listeners come first among the objects).
    pub fn open(&self) -> Result<OwnedFd, ObjectError> {
        let what = format!(
            "the TCP connection {} -> {} waiting to be accepted",
            self.local, self.remote
        );
        let what: &str = &what;
        let fail = |step: &'static str| move |e: Errno| inet::recreate_failed(what, step, e);
        // Its port may still be taken by a connection closing (TIME_WAIT).
        let binding = SocketOptions {
            reuse_address: true,
            ..self.options.clone()
        };
        let s = inet::bound_socket(Protocol::Tcp, self.ipv6, &binding, Some(self.local))
            .map_err(|(step, e)| fail(step)(e))?;
        so::connect(s.as_fd(), self.remote, self.ipv6).map_err(fail("connect"))?;
        self.options
            .apply(s.as_fd(), Protocol::Tcp)
            .map_err(fail("options"))?;
        inet::set_flags(s.as_fd(), self.flags).map_err(fail("flags"))?;
        Ok(s)
    }
}

fn reset_socket(ipv6: bool, flags: i32) -> Result<OwnedFd, Errno> {
    use std::net::{Ipv4Addr, SocketAddr};
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listener = inet::new_socket(Protocol::Tcp, false)?;
    so::bind(listener.as_fd(), loopback, false)?;
    so::listen(listener.as_fd(), 1)?;
    let at = so::address(listener.as_fd(), false)?;
    let client = inet::new_socket(Protocol::Tcp, ipv6)?;
    if ipv6 {
        so::set_int(client.as_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    so::connect(client.as_fd(), at, ipv6)?;
    let accepted = nix::sys::socket::accept(&listener)?;
    so::set_linger(accepted.as_fd(), true, 0)?;
    drop(accepted);
    // The reset travels through the loopback: wait until it arrived.
    let mut poll = [nix::poll::PollFd::new(
        client.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    nix::poll::poll(&mut poll, nix::poll::PollTimeout::from(1000u16))?;
    inet::set_flags(client.as_fd(), flags)?;
    Ok(client)
}

impl TcpPair {
    /// Which end an fd whose `/proc` target is `target` holds.
    pub fn slot(&self, target: &str) -> usize {
        usize::from(self.ends[1].inode == super::link_inode(target))
    }

    pub fn problem(&self) -> Option<String> {
        for e in &self.ends {
            let p = inet::connection_problem(&e.local, &e.remote, e.ipv6)
                .or_else(|| e.options.problem());
            if p.is_some() {
                return p;
            }
            if e.send_queue.len() > MAX_QUEUE || e.receive_queue.len() > MAX_QUEUE {
                return Some(format!("a queue above {MAX_QUEUE} bytes"));
            }
            if e.unsent as usize > e.send_queue.len() {
                return Some("more data not sent than its send queue holds".into());
            }
            if e.window_scale
                .is_some_and(|(s, r)| s > MAX_WSCALE || r > MAX_WSCALE)
            {
                return Some(format!("a window scale above {MAX_WSCALE}"));
            }
            if !(64..=65535).contains(&e.mss) {
                return Some(format!("an MSS of {} bytes", e.mss));
            }
        }
        let [a, b] = &self.ends;
        if inet::canonical(a.local) != inet::canonical(b.remote)
            || inet::canonical(a.remote) != inet::canonical(b.local)
        {
            return Some("ends that are not each other's peer".into());
        }
        None
    }

    /// Both ends, in repair mode until both are complete.
    pub fn open(&self) -> Result<Opened, ObjectError> {
        let what = format!(
            "the TCP connection {} -> {}",
            self.ends[0].local, self.ends[0].remote
        );
        let what: &str = &what;
        let fail = |step: &'static str| move |e: Errno| inet::recreate_failed(what, step, e);
        let mut sockets = Vec::with_capacity(2);
        for end in &self.ends {
            sockets.push(end.create().map_err(|(step, e)| fail(step)(e))?);
        }
        for (end, s) in self.ends.iter().zip(&sockets) {
            end.finish(s.as_fd()).map_err(|(step, e)| fail(step)(e))?;
        }
        Ok(Opened {
            slots: sockets.into_iter().map(Some).collect(),
            mapping: None,
        })
    }
}

type Step<T> = Result<T, (&'static str, Errno)>;

fn step<T>(name: &'static str, r: Result<T, Errno>) -> Step<T> {
    r.map_err(|e| (name, e))
}

impl TcpEnd {
    fn sent(&self) -> &[u8] {
        let sent = self.send_queue.len() - self.unsent as usize;
        &self.send_queue[..sent]
    }

    /// The socket in repair mode, connected and refilled.
    fn create(&self) -> Step<OwnedFd> {
        let tcp = libc::IPPROTO_TCP;
        let s = step("socket", inet::new_socket(Protocol::Tcp, self.ipv6))?;
        let fd = s.as_fd();
        step("options", self.options.apply_before_bind(fd, self.ipv6))?;
        step("repair mode", repair_on(fd))?;
        step("bind", so::bind(fd, self.local, self.ipv6))?;
        for (queue, seq) in [
            (TCP_SEND_QUEUE, self.send_seq),
            (TCP_RECV_QUEUE, self.receive_seq),
        ] {
            step(
                "sequence numbers",
                so::set_int(fd, tcp, libc::TCP_REPAIR_QUEUE, queue)
                    .and_then(|()| so::set_int(fd, tcp, libc::TCP_QUEUE_SEQ, seq.cast_signed())),
            )?;
        }
        step("connect", so::connect(fd, self.remote, self.ipv6))?;
        let mut options = vec![(TCPOPT_MSS, self.mss)];
        if let Some((send, receive)) = self.window_scale {
            options.push((TCPOPT_WINDOW, u32::from(send) | (u32::from(receive) << 16)));
        }
        if self.sack {
            options.push((TCPOPT_SACK_PERM, 0));
        }
        if self.timestamps {
            options.push((TCPOPT_TIMESTAMP, 0));
        }
        let bytes: Vec<u8> = options
            .iter()
            .flat_map(|&(code, value)| code.to_ne_bytes().into_iter().chain(value.to_ne_bytes()))
            .collect();
        step(
            "handshake options",
            so::set_bytes(fd, tcp, libc::TCP_REPAIR_OPTIONS, &bytes),
        )?;
        if self.timestamps {
            step(
                "timestamp",
                so::set_int(fd, tcp, libc::TCP_TIMESTAMP, self.timestamp.cast_signed()),
            )?;
        }
        for (queue, data) in [
            (TCP_RECV_QUEUE, &self.receive_queue[..]),
            (TCP_SEND_QUEUE, self.sent()),
        ] {
            step(
                "refill its queues",
                so::set_int(fd, tcp, libc::TCP_REPAIR_QUEUE, queue)
                    .and_then(|()| send_all(fd, data, false)),
            )?;
        }
        let window: Vec<u8> = self.window.iter().flat_map(|w| w.to_ne_bytes()).collect();
        step(
            "windows",
            so::set_bytes(fd, tcp, libc::TCP_REPAIR_WINDOW, &window),
        )?;
        Ok(s)
    }

    /// Repair mode off, options, the data not sent yet, flags.
    fn finish(&self, fd: BorrowedFd) -> Step<()> {
        step("repair mode off", repair_off(fd, true))?;
        step("options", self.options.apply(fd, Protocol::Tcp))?;
        step(
            "send the data not sent yet",
            send_all(fd, &self.send_queue[self.sent().len()..], true),
        )?;
        step("flags", inet::set_flags(fd, self.flags))
    }
}

/// Sends all of `data` in pieces the kernel takes; `wait`: a full buffer is waited on (a
/// second at most) instead of failing (in repair mode nothing would ever empty it).
fn send_all(fd: BorrowedFd, mut data: &[u8], wait: bool) -> Result<(), Errno> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while !data.is_empty() {
        let piece = &data[..data.len().min(64 << 10)];
        match so::send(fd, piece) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => data = &data[n..],
            Err(Errno::EAGAIN) if wait && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    fn queues(seq: u32, send: &[u8], rseq: u32, received: &[u8]) -> Queues {
        Queues {
            send_seq: seq,
            send_queue: send.to_vec(),
            unsent: 0,
            receive_seq: rseq,
            receive_queue: received.to_vec(),
        }
    }

    #[test]
    fn queues_agree_across_the_wrap() {
        let a = queues(u32::MAX - 2, b"abcdef", 0, b"");
        // b received 4 of a's 6 bytes: fits.
        let b = queues(7, b"", u32::MAX - 4, b"xyzw");
        assert!(agree(&a, &b));
        // b received beyond what a ever had.
        let b = queues(7, b"", 0, b"0123456789");
        assert!(!agree(&a, &b));
        // a forgot (acknowledged) bytes b does not hold.
        let b = queues(7, b"", u32::MAX - 8, b"");
        assert!(!agree(&a, &b));
    }

    /// A loopback connection captured in repair mode and made again as a new pair, with
    /// the data in flight both ways.
    #[test]
    fn a_connection_is_captured_and_made_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"to the server").unwrap();
        server.write_all(b"to the client, longer").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let copies: Vec<OwnedFd> = [client.try_clone().unwrap(), server.try_clone().unwrap()]
            .into_iter()
            .map(OwnedFd::from)
            .collect();
        let mut hold = RepairHold::default();
        let mut got = Vec::new();
        for c in &copies {
            repair_on(c.as_fd()).unwrap();
            hold.add_repairing(c.try_clone().unwrap());
            got.push(read_queues(c.as_fd()).unwrap());
        }
        assert_eq!(got[0].receive_queue, b"to the client, longer");
        assert_eq!(got[1].receive_queue, b"to the server");
        assert!(agree(&got[0], &got[1]) && agree(&got[1], &got[0]));
        let agreed = read_agreed(copies[0].as_fd()).unwrap();
        assert!(agreed.mss >= 64, "mss {}", agreed.mss);
        drop(hold);
        // Still working after repair mode went off again.
        client.write_all(b"!").unwrap();
        let mut buf = [0u8; 14];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"to the server!");
    }

    #[test]
    fn a_reset_socket_reads_econnreset_then_eof() {
        let s = reset_socket(true, 0).unwrap();
        let mut buf = [0u8; 4];
        let read = |buf: &mut [u8]| nix::unistd::read(&s, buf);
        assert_eq!(read(&mut buf), Err(Errno::ECONNRESET));
        assert_eq!(read(&mut buf), Ok(0));
    }
}
