//! Terminals. Two cases:
//!
//! - **The job's terminal**, held outside the job (the shell's, `script`'s, tmux's): one of
//!   the job's standard streams (`stdio`). The image records its termios, window size,
//!   which of the job's sessions it controls and its foreground group. A restore started
//!   from a terminal hands the job that terminal instead (the fds follow the restoring
//!   command's, as every standard stream does) with the image's termios (a program that
//!   set raw mode keeps it) and the restoring terminal's window size (the right one for
//!   that window; the job gets SIGWINCH when it differs from the image's), and gives the
//!   foreground to the job's group that had it, when the restore itself runs in the
//!   foreground. A restore without a terminal gives the job the restoring command's
//!   streams (a pipe, a file) and warns: terminal requests then fail with ENOTTY.
//! - **A pty pair the job owns** (its own `script`, `screen`, `expect`): a new pair with
//!   the same termios, window size, packet mode, lock and exclusive state, the data queued
//!   in both directions, the same open file descriptions of the slave, and the same pts
//!   index when it is free (`/dev/pts/N`; else the lowest free one, with a warning). The
//!   sessions it controlled get it back as controlling terminal (`TIOCSCTTY` in their
//!   leader) and its foreground group is set again (`tcsetpgrp` in that group's leader).
//!
//! Other terminals (the console, virtual consoles, serial lines, a pts whose master is
//! outside the job and is not the job's terminal) are refused. `/dev/tty` is reopened by
//! path: it names the restored process's controlling terminal.

use super::{IdAllocator, ObjectError, ObjectKind, OpenFd, Opened, Refusal, SharedObject};
use crate::tracer::tty_sys::{self, KERNEL_NCCS, KernelTermios, WinSize};
use nix::errno::Errno;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// Most bytes of queued data an image may hold per direction (the kernel queues at most a
/// few pages; anything larger is not from a checkpoint).
pub const MAX_QUEUED: usize = 1 << 20;
/// Highest pts index devpts hands out.
pub const MAX_INDEX: u32 = (1 << 20) - 1;
/// Pairs opened (and closed again) at most to get the original pts index back.
const INDEX_TRIES: usize = 64;

/// The kernel's termios of a terminal.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    /// The control characters (`VINTR` ...), 19 of them.
    pub cc: Vec<u8>,
}

impl Termios {
    fn of(k: &KernelTermios) -> Termios {
        Termios {
            iflag: k.iflag,
            oflag: k.oflag,
            cflag: k.cflag,
            lflag: k.lflag,
            line: k.line,
            cc: k.cc.to_vec(),
        }
    }

    /// The kernel's struct; None when `cc` has the wrong length (a bad image).
    pub fn kernel(&self) -> Option<KernelTermios> {
        Some(KernelTermios {
            iflag: self.iflag,
            oflag: self.oflag,
            cflag: self.cflag,
            lflag: self.lflag,
            line: self.line,
            cc: self.cc.as_slice().try_into().ok()?,
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

impl WindowSize {
    fn of(w: WinSize) -> WindowSize {
        WindowSize {
            rows: w.rows,
            cols: w.cols,
            xpixel: w.xpixel,
            ypixel: w.ypixel,
        }
    }

    fn kernel(self) -> WinSize {
        WinSize {
            rows: self.rows,
            cols: self.cols,
            xpixel: self.xpixel,
            ypixel: self.ypixel,
        }
    }
}

/// What the job's processes see of a terminal besides its data.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct TerminalState {
    pub termios: Termios,
    pub winsize: WindowSize,
    /// The job's sessions (by leader PID) whose controlling terminal it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<i32>,
    /// Its foreground process group, when the job's processes are in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreground: Option<i32>,
    /// The job's processes in the foreground group: they get SIGWINCH after a restore onto
    /// a terminal of another size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreground_processes: Vec<i32>,
}

/// An open file description of the slave: its flags and the fds (pid, fd) that share it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlaveOpen {
    pub flags: i32,
    pub fds: Vec<(i32, i32)>,
}

/// A pty pair whose master a process of the job holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PtyPair {
    /// The pts index at checkpoint time (`/dev/pts/<index>`).
    pub index: u32,
    pub terminal: TerminalState,
    pub packet_mode: bool,
    /// `TIOCSPTLCK`: the slave cannot be opened until it is unlocked.
    pub locked: bool,
    /// `TIOCEXCL` on the slave.
    #[serde(default)]
    pub exclusive: bool,
    /// Status flags of the master's open file description (`O_NONBLOCK`).
    pub master_flags: i32,
    pub slaves: Vec<SlaveOpen>,
    /// Written on the master, not yet read from the slave (typed input).
    #[serde(with = "crate::image::format::base64_bytes")]
    pub input: Vec<u8>,
    /// Written on the slave, not yet read from the master (program output).
    #[serde(with = "crate::image::format::base64_bytes")]
    pub output: Vec<u8>,
}

/// Slots of a pair's opened fds: the master, a slave description of the restorer's (the
/// controlling terminal and foreground group are set through it), then `slaves` in order.
const MASTER: usize = 0;
const PEER: usize = 1;
const FIRST_SLAVE: usize = 2;

const PTMX: (u32, u32) = (5, 2);
/// The kernel's `O_LARGEFILE` (fdinfo shows it; libc's constant is 0 on x86-64).
const O_LARGEFILE: i32 = 0o100000;
const DEV_TTY: (u32, u32) = (5, 0);

/// What kind of terminal a character device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// `/dev/tty`: the opener's controlling terminal.
    ControllingAlias,
    /// `/dev/ptmx`: a pty master.
    Multiplexer,
    /// `/dev/pts/N`.
    PtySlave,
    /// The console, a virtual console, a serial line ...
    Other,
}

/// The terminal kind of a file, if it is one. Terminals are the devices `/proc/tty/drivers`
/// lists (virtual consoles and serial lines included).
pub fn device(meta: &std::fs::Metadata) -> Option<Device> {
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_char_device() {
        return None;
    }
    let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    match (major, minor) {
        DEV_TTY => Some(Device::ControllingAlias),
        PTMX => Some(Device::Multiplexer),
        (136..=143, _) => Some(Device::PtySlave),
        (4, _) | (5, 1) => Some(Device::Other),
        _ if tty_drivers().iter().any(|d| d.covers(major, minor)) => Some(Device::Other),
        _ => None,
    }
}

struct DriverRange {
    major: u32,
    minors: (u32, u32),
}

impl DriverRange {
    fn covers(&self, major: u32, minor: u32) -> bool {
        self.major == major && (self.minors.0..=self.minors.1).contains(&minor)
    }
}

/// The terminal drivers' device ranges, from `/proc/tty/drivers` (name, node, major,
/// minor or minor range, type), read once.
fn tty_drivers() -> &'static [DriverRange] {
    static DRIVERS: std::sync::OnceLock<Vec<DriverRange>> = std::sync::OnceLock::new();
    DRIVERS.get_or_init(read_tty_drivers)
}

fn read_tty_drivers() -> Vec<DriverRange> {
    let text = std::fs::read_to_string("/proc/tty/drivers").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let major = words.get(2)?.parse().ok()?;
            let range = words.get(3)?;
            let minors = match range.split_once('-') {
                Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
                None => (range.parse().ok()?, range.parse().ok()?),
            };
            Some(DriverRange { major, minors })
        })
        .collect()
}

/// The device number of `/dev/pts/<index>` (devpts: major 136, the index as minor).
pub fn slave_device(index: u32) -> u64 {
    libc::makedev(136, index)
}

/// The pts index of a slave fd (`/dev/pts/N`).
fn slave_index(fd: &OpenFd) -> Option<u32> {
    fd.target.rsplit_once('/')?.1.parse().ok()
}

/// The pts index of a master fd, from its fdinfo.
fn master_index(fd: &OpenFd) -> Option<u32> {
    super::info_field(&fd.info, "tty-index:")?.parse().ok()
}

/// Whether `fd` is a pty master.
fn is_master(fd: &OpenFd) -> bool {
    fd.meta
        .as_ref()
        .is_some_and(|m| device(m) == Some(Device::Multiplexer))
}

/// The pts indexes of the pairs whose master a process of the job holds.
pub fn job_pairs<'a>(fds: impl Iterator<Item = &'a OpenFd>) -> BTreeSet<u32> {
    fds.filter(|f| is_master(f))
        .filter_map(master_index)
        .collect()
}

/// Whether `fd` is the slave of one of the job's pairs (`pairs`): never a standard stream
/// leading outside the job.
pub fn is_job_slave(fd: &OpenFd, pairs: &BTreeSet<u32>) -> bool {
    fd.target.starts_with("/dev/pts/") && slave_index(fd).is_some_and(|i| pairs.contains(&i))
}

const NOT_OURS: &str = "mlckpt restores a terminal only as the job's standard stream or as a pty pair \
     whose master the job holds; close it before the checkpoint, or run the job without it";

/// The kind of a terminal fd that is not one of the job's standard streams, or why it
/// cannot be checkpointed. None: not a terminal.
pub fn classify(
    fd: &OpenFd,
    pairs: &BTreeSet<u32>,
) -> Option<Result<crate::image::format::FdKind, Refusal>> {
    use crate::image::format::FdKind;
    let kind = device(fd.meta.as_ref()?)?;
    Some(match kind {
        Device::ControllingAlias => Ok(FdKind::CharDevice),
        Device::Multiplexer if master_index(fd).is_some() => Ok(FdKind::PtyMaster),
        Device::Multiplexer => Err(super::unreadable("pty master", fd)),
        Device::PtySlave if is_job_slave(fd, pairs) => Ok(FdKind::PtySlave),
        Device::PtySlave => Err((
            "a terminal whose pty master is outside the job and that is not the job's \
             standard stream"
                .into(),
            NOT_OURS,
        )),
        Device::Other => Err((
            "a terminal device (console, virtual console or serial line) whose state \
             mlckpt cannot restore"
                .into(),
            NOT_OURS,
        )),
    })
}

/// Where each process of the job is: session, group, controlling terminal and its
/// foreground group (`/proc/PID/stat`).
pub struct Sessions(Vec<crate::tracer::tree::ProcStat>);

impl Sessions {
    pub fn read(pids: &[Pid]) -> Sessions {
        Sessions(
            pids.iter()
                .filter_map(|p| crate::tracer::tree::stat(p.as_raw()))
                .collect(),
        )
    }

    /// Leaders of the job's sessions whose controlling terminal is device `rdev`.
    fn controlled_by(&self, rdev: u64) -> Vec<i32> {
        self.0
            .iter()
            .filter(|s| s.pid == s.links.sid && tty_nr_is(s.tty_nr, rdev))
            .map(|s| s.pid)
            .collect()
    }

    /// `group` if some process of the job is in it.
    fn job_group(&self, group: i32) -> Option<i32> {
        (group > 0 && self.0.iter().any(|s| s.links.pgid == group)).then_some(group)
    }

    fn members_of(&self, group: Option<i32>) -> Vec<i32> {
        self.0
            .iter()
            .filter(|s| Some(s.links.pgid) == group)
            .map(|s| s.pid)
            .collect()
    }

    /// Sessions of the job whose controlling terminal is none of `known` (devices):
    /// they will have none after a restore.
    pub fn lost_terminals(&self, known: &[u64]) -> Vec<String> {
        self.0
            .iter()
            .filter(|s| s.pid == s.links.sid && s.tty_nr != 0)
            .filter(|s| !known.iter().any(|&d| tty_nr_is(s.tty_nr, d)))
            .map(|s| {
                format!(
                    "process {} ({}) leads a session whose controlling terminal (device {}:{}) \
                     is not one the job holds: after a restore the session has none",
                    s.pid,
                    super::command_of(s.pid),
                    (s.tty_nr >> 8) & 0xfff,
                    (s.tty_nr & 0xff) | ((s.tty_nr >> 12) & 0xfff00)
                )
            })
            .collect()
    }
}

/// Whether `tty_nr` (`/proc/PID/stat` encoding) is device `rdev`.
fn tty_nr_is(tty_nr: i32, rdev: u64) -> bool {
    let nr = tty_nr.cast_unsigned();
    let major = (nr >> 8) & 0xfff;
    let minor = (nr & 0xff) | ((nr >> 12) & 0xfff00);
    tty_nr != 0 && major == libc::major(rdev) && minor == libc::minor(rdev)
}

/// The state of the job's terminal `fd` (a standard stream of the job's root, leading
/// outside the job), read through a copy of it.
pub fn outside_terminal(fd: &OpenFd, sessions: &Sessions) -> Result<TerminalState, ObjectError> {
    let copy = fd.copy_here("the terminal")?;
    let termios = tty_sys::get_termios(copy.as_fd()).map_err(fd.capture_failed("termios"))?;
    let winsize =
        tty_sys::get_winsize(copy.as_fd()).map_err(fd.capture_failed("the window size"))?;
    let rdev = fd.meta.as_ref().map_or(0, MetadataExt::rdev);
    let root = crate::tracer::tree::stat(fd.pid);
    let foreground = root
        .filter(|s| tty_nr_is(s.tty_nr, rdev))
        .and_then(|s| sessions.job_group(s.tpgid));
    Ok(TerminalState {
        termios: Termios::of(&termios),
        winsize: WindowSize::of(winsize),
        sessions: sessions.controlled_by(rdev),
        foreground,
        foreground_processes: sessions.members_of(foreground),
    })
}

/// Whether `fd` (a root's standard stream) is a terminal: its state is then recorded.
pub fn is_terminal_stream(fd: &OpenFd) -> bool {
    fd.meta.as_ref().and_then(device).is_some()
}

/// One object per pair of the job (`fds`: its masters and the slaves of its pairs);
/// returns (pid, fd) -> object id.
pub fn objects(
    fds: &[&OpenFd],
    sessions: &Sessions,
    depth: super::Depth,
    ids: &mut IdAllocator,
    out: &mut Vec<SharedObject>,
) -> Result<BTreeMap<(i32, i32), u64>, ObjectError> {
    let mut by_index: BTreeMap<u32, (Vec<&OpenFd>, Vec<&OpenFd>)> = BTreeMap::new();
    for &fd in fds {
        if is_master(fd) {
            if let Some(i) = master_index(fd) {
                by_index.entry(i).or_default().0.push(fd);
            }
        } else if let Some(i) = slave_index(fd) {
            by_index.entry(i).or_default().1.push(fd);
        }
    }
    let mut result = BTreeMap::new();
    for (index, (masters, slaves)) in by_index {
        let Some(&master) = masters.first() else {
            continue;
        };
        let slaves: Vec<SlaveOpen> = super::descriptions(&slaves)
            .into_iter()
            .map(|group| SlaveOpen {
                flags: group[0].flags & !libc::O_CLOEXEC,
                fds: group.iter().map(|f| (f.pid, f.fd)).collect(),
            })
            .collect();
        let pair = match depth {
            super::Depth::Capture => capture_pair(master, index, slaves, sessions)?,
            super::Depth::Check => PtyPair {
                index,
                terminal: TerminalState::default(),
                packet_mode: false,
                locked: false,
                exclusive: false,
                master_flags: 0,
                slaves,
                input: Vec::new(),
                output: Vec::new(),
            },
        };
        let id = ids.allocate();
        for f in masters.iter() {
            result.insert((f.pid, f.fd), id);
        }
        for s in &pair.slaves {
            for &(pid, fd) in &s.fds {
                result.insert((pid, fd), id);
            }
        }
        out.push(SharedObject {
            id,
            object: ObjectKind::PtyPair(pair),
        });
    }
    Ok(result)
}

/// Reads the state of the pair whose master is `master` (the job is frozen). Its queued
/// data is read out and put back at once: the job goes on with it if it is not killed.
fn capture_pair(
    master: &OpenFd,
    index: u32,
    slaves: Vec<SlaveOpen>,
    sessions: &Sessions,
) -> Result<PtyPair, ObjectError> {
    let fail = |what| master.capture_failed(what);
    let m = master.copy_here("the pty master")?;
    let termios = tty_sys::get_termios(m.as_fd()).map_err(fail("termios"))?;
    let winsize = tty_sys::get_winsize(m.as_fd()).map_err(fail("the window size"))?;
    let packet_mode = tty_sys::packet_mode(m.as_fd()).map_err(fail("packet mode"))?;
    let locked = tty_sys::pty_locked(m.as_fd()).map_err(fail("the lock"))?;
    let group = tty_sys::foreground_group(m.as_fd()).map_err(fail("the foreground group"))?;
    // A slave description of our own: non-blocking reads that do not touch the job's flags.
    let peer = with_unlocked(m.as_fd(), locked, || {
        tty_sys::open_peer(m.as_fd(), libc::O_RDWR | libc::O_NONBLOCK)
    })
    .map_err(fail("the slave"))?;
    let exclusive = tty_sys::exclusive(peer.as_fd()).map_err(fail("exclusive mode"))?;
    let output = drain_output(m.as_fd(), packet_mode).map_err(fail("the output queue"))?;
    let input = drain_input(m.as_fd(), peer.as_fd(), &termios).map_err(fail("the input queue"))?;
    put_data(m.as_fd(), peer.as_fd(), &termios, &input, &output)
        .map_err(fail("the queued data back"))?;
    let rdev = nix::sys::stat::fstat(peer.as_fd())
        .map(|st| st.st_rdev)
        .unwrap_or_else(|_| slave_device(index));
    let foreground = sessions.job_group(group);
    Ok(PtyPair {
        index,
        terminal: TerminalState {
            termios: Termios::of(&termios),
            winsize: WindowSize::of(winsize),
            sessions: sessions.controlled_by(rdev),
            foreground,
            foreground_processes: sessions.members_of(foreground),
        },
        packet_mode,
        locked,
        exclusive,
        master_flags: master.flags & libc::O_NONBLOCK,
        slaves,
        input,
        output,
    })
}

/// Runs `f` with the pair unlocked (a locked pair's slave cannot be opened).
fn with_unlocked<T>(
    master: BorrowedFd,
    locked: bool,
    f: impl FnOnce() -> Result<T, Errno>,
) -> Result<T, Errno> {
    if !locked {
        return f();
    }
    tty_sys::set_pty_locked(master, false)?;
    let result = f();
    tty_sys::set_pty_locked(master, true)?;
    result
}

/// Reads what the master has to read (the slave's output), through `master` (the job's
/// description: blocking, but only the bytes `FIONREAD` says are there are read). In
/// packet mode every read starts with a status byte, which is dropped.
fn drain_output(master: BorrowedFd, packet_mode: bool) -> Result<Vec<u8>, Errno> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let queued = crate::tracer::sys::bytes_queued(master)?;
        if queued == 0 || data.len() > MAX_QUEUED {
            return Ok(data);
        }
        let want = (queued + usize::from(packet_mode)).min(buf.len());
        let n = nix::unistd::read(master, &mut buf[..want])?;
        let skip = usize::from(packet_mode).min(n);
        data.extend_from_slice(&buf[skip..n]);
        if n == 0 {
            return Ok(data);
        }
    }
}

/// Reads the slave's input queue through `peer` (non-blocking), the partial line of
/// canonical mode included: the terminal is switched to non-canonical mode for the read.
fn drain_input(
    master: BorrowedFd,
    peer: BorrowedFd,
    termios: &KernelTermios,
) -> Result<Vec<u8>, Errno> {
    let mut raw = *termios;
    raw.lflag &= !libc::ICANON;
    raw.cc[libc::VMIN] = 0;
    raw.cc[libc::VTIME] = 0;
    tty_sys::set_termios(master, &raw)?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let read = loop {
        match nix::unistd::read(peer, &mut buf) {
            Ok(0) | Err(Errno::EAGAIN) => break Ok(()),
            Ok(n) if data.len() + n <= MAX_QUEUED => data.extend_from_slice(&buf[..n]),
            Ok(_) => break Err(Errno::EOVERFLOW),
            Err(Errno::EINTR) => {}
            Err(e) => break Err(e),
        }
    };
    let back = tty_sys::set_termios(master, termios);
    read.and(back).map(|()| data)
}

/// Puts queued data into a pair as it was: `input` into the slave's input queue (no echo,
/// no signals, no translation; in canonical mode its complete lines become lines again and
/// the rest the line being edited), `output` into the master's (no output processing
/// again). The terminal is left with `termios`.
fn put_data(
    master: BorrowedFd,
    peer: BorrowedFd,
    termios: &KernelTermios,
    input: &[u8],
    output: &[u8],
) -> Result<(), Errno> {
    if !input.is_empty() {
        let mut plain = *termios;
        plain.iflag = 0;
        plain.lflag &= !(libc::ECHO | libc::ECHONL | libc::ISIG | libc::IEXTEN);
        // In canonical mode the kernel keeps an end-of-file (^D) as a NUL byte that ends
        // a line: it is typed again as VEOF, which stays enabled for that.
        let canonical = termios.lflag & libc::ICANON != 0;
        let eof = termios.cc[libc::VEOF];
        for c in [
            libc::VEOL,
            libc::VEOL2,
            libc::VERASE,
            libc::VKILL,
            libc::VWERASE,
            libc::VREPRINT,
            libc::VLNEXT,
        ] {
            plain.cc[c] = 0; // _POSIX_VDISABLE
        }
        if !(canonical && eof != 0) {
            plain.cc[libc::VEOF] = 0;
        }
        tty_sys::set_termios(master, &plain)?;
        // TIOCSTI runs the line discipline at once, with these settings; a write on the
        // master would be processed later, by a kernel worker, maybe with the final ones.
        let injected = input.iter().try_for_each(|&b| {
            let b = if b == 0 && canonical && eof != 0 {
                eof
            } else {
                b
            };
            tty_sys::inject_input(peer, b)
        });
        tty_sys::set_termios(master, termios)?;
        injected?;
    }
    if !output.is_empty() {
        let mut plain = *termios;
        plain.oflag &= !libc::OPOST;
        tty_sys::set_termios(master, &plain)?;
        let written = write_all(peer, output);
        tty_sys::set_termios(master, termios)?;
        written?;
    }
    Ok(())
}

fn write_all(fd: BorrowedFd, mut data: &[u8]) -> Result<(), Errno> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => return Err(Errno::EAGAIN),
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl PtyPair {
    /// A new pair as the image has it: slots master, the restorer's slave, then the job's
    /// slave descriptions.
    pub fn open(&self, id: u64, warnings: &mut Vec<String>) -> Result<Opened, ObjectError> {
        let fail = |what: &str| {
            let what = format!("pty pair {id} (was /dev/pts/{}): {what}", self.index);
            move |e: Errno| ObjectError::Recreate {
                what,
                source: e.into(),
            }
        };
        let termios = self
            .terminal
            .termios
            .kernel()
            .ok_or_else(|| fail("termios")(Errno::EINVAL))?;
        let master = open_master(self.index).map_err(fail("open /dev/ptmx"))?;
        let index = tty_sys::pty_index(master.as_fd()).map_err(fail("its index"))?;
        if index != self.index {
            warnings.push(format!(
                "the job's pty /dev/pts/{} is /dev/pts/{index} after the restore (the old \
                 name is taken); a program that remembered the name finds another terminal",
                self.index
            ));
        }
        tty_sys::set_pty_locked(master.as_fd(), false).map_err(fail("unlock"))?;
        let peer =
            tty_sys::open_peer(master.as_fd(), libc::O_RDWR).map_err(fail("open the slave"))?;
        let mut slots = vec![None, None];
        for s in &self.slaves {
            let flags = s.flags & (libc::O_ACCMODE | libc::O_NONBLOCK);
            let slave =
                tty_sys::open_peer(master.as_fd(), flags).map_err(fail("open the slave"))?;
            slots.push(Some(slave));
        }
        tty_sys::set_termios(master.as_fd(), &termios).map_err(fail("set termios"))?;
        put_data(
            master.as_fd(),
            peer.as_fd(),
            &termios,
            &self.input,
            &self.output,
        )
        .map_err(fail("put the queued data back"))?;
        tty_sys::set_winsize(master.as_fd(), &self.terminal.winsize.kernel())
            .map_err(fail("set the window size"))?;
        tty_sys::set_packet_mode(master.as_fd(), self.packet_mode)
            .map_err(fail("set packet mode"))?;
        if self.exclusive {
            tty_sys::set_exclusive(peer.as_fd()).map_err(fail("set exclusive mode"))?;
        }
        if self.locked {
            tty_sys::set_pty_locked(master.as_fd(), true).map_err(fail("lock"))?;
        }
        let flags = nix::fcntl::OFlag::from_bits_truncate(self.master_flags & libc::O_NONBLOCK);
        nix::fcntl::fcntl(master.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(fail("set the master's flags"))?;
        slots[MASTER] = Some(master);
        slots[PEER] = Some(peer);
        Ok(Opened {
            slots,
            mapping: None,
        })
    }

    /// Which slot fd `fd` of process `pid` duplicates.
    pub fn slot(&self, pid: i32, fd: i32) -> usize {
        self.slaves
            .iter()
            .position(|s| s.fds.contains(&(pid, fd)))
            .map_or(MASTER, |i| FIRST_SLAVE + i)
    }

    /// What is wrong with it, as (field, problem): for the image validator.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.index > MAX_INDEX {
            p.push(("index", format!("{} is not a pts index", self.index)));
        }
        p.extend(self.terminal.problems());
        if self.input.len() > MAX_QUEUED || self.output.len() > MAX_QUEUED {
            p.push(("input", "holds more data than a terminal queues".into()));
        }
        let flags =
            libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND | libc::O_NOCTTY | O_LARGEFILE;
        for s in &self.slaves {
            if s.flags & !flags != 0 || s.flags & libc::O_ACCMODE == libc::O_ACCMODE {
                p.push((
                    "slaves",
                    format!("flags {:#o} are not a terminal's", s.flags),
                ));
            }
            if s.fds.is_empty() {
                p.push(("slaves", "an open file description without fds".into()));
            }
        }
        p
    }
}

impl TerminalState {
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.termios.cc.len() != KERNEL_NCCS {
            p.push((
                "termios.cc",
                format!(
                    "has {} control characters, not {KERNEL_NCCS}",
                    self.termios.cc.len()
                ),
            ));
        }
        let ids = self.sessions.iter().chain(&self.foreground_processes);
        if ids.chain(&self.foreground).any(|&id| id <= 0) {
            p.push(("sessions", "names a process id that is not one".into()));
        }
        p
    }
}

/// A new pty master, at pts index `want` if that is free: devpts hands out the lowest
/// free index, so pairs are opened until it comes (the others are closed again).
fn open_master(want: u32) -> Result<OwnedFd, Errno> {
    let open = || {
        nix::fcntl::open(
            "/dev/ptmx",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
    };
    let taken = std::path::Path::new(&format!("/dev/pts/{want}")).exists();
    let first = open()?;
    if taken || tty_sys::pty_index(first.as_fd())? >= want {
        return Ok(first);
    }
    // Held until the wanted one comes, then closed again.
    let mut lower: Vec<OwnedFd> = Vec::new();
    while lower.len() < INDEX_TRIES {
        let next = open()?;
        match tty_sys::pty_index(next.as_fd())? {
            i if i == want => return Ok(next),
            i if i < want => lower.push(next),
            _ => break,
        }
    }
    Ok(first)
}

/// The job's terminal at restore: each standard stream that was a terminal, as the
/// restoring command has it.
pub struct Handover {
    /// Terminals to give the image's termios just before the job runs.
    settings: Vec<(OwnedFd, KernelTermios)>,
    /// Processes to tell (SIGWINCH) that the window size is not the image's.
    resized: Vec<i32>,
    /// Standard stream objects (by id) handed the restoring command's terminal while it
    /// runs in the foreground: only then does the job take the foreground.
    foreground: Vec<u64>,
}

impl Handover {
    /// Looks at the restoring command's stream `fd` for a job's terminal `state`; warns
    /// when there is no terminal there.
    pub fn add(&mut self, id: u64, fd: i32, state: &TerminalState, warnings: &mut Vec<String>) {
        let own = crate::tracer::sys::dup_at_least(fd, 0)
            .ok()
            .filter(|f| tty_sys::is_terminal(f.as_fd()));
        let Some(own) = own else {
            warnings.push(format!(
                "the job's stream {fd} was a terminal; this restore has none there, so the \
                 job gets the restoring command's stream {fd} (terminal requests fail with \
                 ENOTTY). Restore from a terminal to hand it one"
            ));
            return;
        };
        if !state.sessions.is_empty() {
            warnings.push(format!(
                "process {} led a session controlled by the job's terminal; the restoring \
                 terminal belongs to the restoring command's session, so that session has no \
                 controlling terminal after the restore",
                state.sessions[0]
            ));
        }
        let Some(termios) = state.termios.kernel() else {
            return;
        };
        let size = tty_sys::get_winsize(own.as_fd()).map(WindowSize::of);
        if size.is_ok_and(|s| s != state.winsize) {
            self.resized.extend(&state.foreground_processes);
        }
        let group = tty_sys::own_foreground_group(own.as_fd());
        if !group.is_ok_and(|g| g == nix::unistd::getpgrp().as_raw()) {
            // Setting a terminal from the background would stop the restore (SIGTTOU), and
            // would change it under whatever has the foreground.
            warnings.push(format!(
                "the restore does not run in the foreground of its terminal (stream {fd}): \
                 the terminal keeps its settings and the job stays in the background"
            ));
            return;
        }
        self.foreground.push(id);
        if !self.settings.iter().any(|(_, t)| *t == termios) {
            self.settings.push((own, termios));
        }
    }

    pub fn new() -> Handover {
        Handover {
            settings: Vec::new(),
            resized: Vec::new(),
            foreground: Vec::new(),
        }
    }

    /// Every standard stream of the image that was a terminal, as the restoring command
    /// has it.
    pub fn prepare(objects: &[SharedObject], warnings: &mut Vec<String>) -> Handover {
        let mut handover = Handover::new();
        for o in objects {
            if let ObjectKind::Stdio(s) = &o.object
                && let Some(state) = &s.terminal
            {
                handover.add(o.id, s.fd, state, warnings);
            }
        }
        handover
    }

    /// The terminal steps of process `pid` (leading its session or group at restore):
    /// `fd_of(id, slot)` is the inherited fd of an object's slot, `own_session` whether
    /// the process is in a session of the job (not the restoring command's).
    pub fn steps(
        &self,
        objects: &[SharedObject],
        pid: i32,
        own_session: bool,
        fd_of: impl Fn(u64, usize) -> Option<i32>,
    ) -> crate::tracer::child::TerminalSteps {
        let mut steps = crate::tracer::child::TerminalSteps::default();
        for o in objects {
            match &o.object {
                ObjectKind::PtyPair(p) => {
                    let Some(fd) = fd_of(o.id, PEER) else {
                        continue;
                    };
                    if p.terminal.sessions.contains(&pid) {
                        steps.controlling = Some(fd);
                    }
                    if p.terminal.foreground == Some(pid) {
                        steps.foreground = Some((fd, pid));
                    }
                }
                ObjectKind::Stdio(s) if !own_session && self.foreground.contains(&o.id) => {
                    let Some(fd) = fd_of(o.id, 0) else { continue };
                    if s.terminal.as_ref().and_then(|t| t.foreground) == Some(pid) {
                        steps.foreground = Some((fd, pid));
                    }
                }
                _ => {}
            }
        }
        steps
    }

    /// Gives the terminals the image's termios (the job is about to run). A group of the
    /// job may have taken the foreground already: SIGTTOU is blocked meanwhile, which lets
    /// a background process set a terminal (else it fails with EIO or stops).
    pub fn apply(&self) -> Result<(), ObjectError> {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
        let fail = |e: Errno| ObjectError::Recreate {
            what: "the terminal's settings".into(),
            source: e.into(),
        };
        let mut old = SigSet::empty();
        let ttou = SigSet::from(Signal::SIGTTOU);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old)).map_err(fail)?;
        let set = self
            .settings
            .iter()
            .try_for_each(|(fd, termios)| tty_sys::set_termios(fd.as_fd(), termios));
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).map_err(fail)?;
        set.map_err(fail)
    }

    /// Tells the job's foreground processes that the window changed (they run now).
    pub fn announce_size(&self) {
        for &pid in &self.resized {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::SIGWINCH);
        }
    }
}

impl Default for Handover {
    fn default() -> Self {
        Handover::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        let master = open_master(0).unwrap();
        tty_sys::set_pty_locked(master.as_fd(), false).unwrap();
        let peer = tty_sys::open_peer(master.as_fd(), libc::O_RDWR | libc::O_NONBLOCK).unwrap();
        (master, peer)
    }

    /// Queued data read out of a pair and put back is there again, in canonical mode as
    /// a line and a partial line, the output unprocessed.
    #[test]
    fn queued_data_survives_drain_and_put_back() {
        if !nix::unistd::geteuid().is_root() {
            return; // TIOCSTI on a terminal that is not ours needs CAP_SYS_ADMIN
        }
        let (master, peer) = pair();
        let mut termios = tty_sys::get_termios(master.as_fd()).unwrap();
        assert!(termios.lflag & libc::ICANON != 0);
        termios.lflag &= !libc::ECHO; // the echo would be output too
        tty_sys::set_termios(master.as_fd(), &termios).unwrap();
        write_all(master.as_fd(), b"line\npart").unwrap();
        write_all(peer.as_fd(), b"out\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let output = drain_output(master.as_fd(), false).unwrap();
        let input = drain_input(master.as_fd(), peer.as_fd(), &termios).unwrap();
        assert_eq!(output, b"out\r\n");
        assert_eq!(input, b"line\npart");
        put_data(master.as_fd(), peer.as_fd(), &termios, &input, &output).unwrap();
        assert_eq!(tty_sys::get_termios(master.as_fd()).unwrap(), termios);
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(peer.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"line\n", "a complete line first");
        assert_eq!(
            nix::unistd::read(peer.as_fd(), &mut buf),
            Err(Errno::EAGAIN),
            "the partial line is still being edited"
        );
        let n = nix::unistd::read(master.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"out\r\n", "output is not processed twice");
    }

    #[test]
    fn bad_values_are_problems() {
        let mut p = PtyPair {
            index: MAX_INDEX + 1,
            terminal: TerminalState::default(),
            packet_mode: false,
            locked: false,
            exclusive: false,
            master_flags: 0,
            slaves: vec![SlaveOpen {
                flags: libc::O_ACCMODE,
                fds: Vec::new(),
            }],
            input: Vec::new(),
            output: vec![0; MAX_QUEUED + 1],
        };
        p.terminal.sessions.push(-3);
        let fields: Vec<&str> = p.problems().iter().map(|(f, _)| *f).collect();
        for want in ["index", "termios.cc", "sessions", "input", "slaves"] {
            assert!(fields.contains(&want), "{want} not in {fields:?}");
        }
        assert!(p.terminal.termios.kernel().is_none());
    }

    #[test]
    fn tty_nr_decodes_major_and_minor() {
        // /dev/pts/3: major 136, minor 3; tty_nr packs minor bits 0-7 and 20-31.
        assert!(tty_nr_is((136 << 8) | 3, libc::makedev(136, 3)));
        assert!(!tty_nr_is((136 << 8) | 3, libc::makedev(136, 4)));
        assert!(!tty_nr_is(0, libc::makedev(0, 0)));
        assert!(tty_nr_is(
            (136 << 8) | (1 << 20) | 2,
            libc::makedev(136, 0x102)
        ));
    }

    #[test]
    fn drivers_list_parses() {
        assert!(
            tty_drivers().iter().any(|d| d.covers(5, 0)),
            "/dev/tty is a terminal"
        );
    }
}
