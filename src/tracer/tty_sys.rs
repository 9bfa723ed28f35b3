//! Terminal ioctls, wrapped once: termios and window size, the pty requests (`TIOCGPTPEER`,
//! lock, packet mode), controlling terminal and foreground group. The termios struct is the
//! kernel's own (`TCGETS`: 19 control characters on x86-64), not glibc's larger one, so
//! that what an image records is exactly what the kernel holds.
//!
//! The functions taking a raw fd number run in a restored child before its memory is
//! replaced: they make one syscall each and allocate nothing.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Control characters in the kernel's `struct termios` (x86-64).
pub const KERNEL_NCCS: usize = 19;

/// The kernel's `struct termios` (`TCGETS`/`TCSETS`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelTermios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; KERNEL_NCCS],
}

/// `struct winsize`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// An ioctl whose argument points at `arg`.
///
/// # Safety
/// `T` must be the type (layout) request `request` reads or writes.
unsafe fn ioctl_ptr<T>(fd: i32, request: libc::c_ulong, arg: *mut T) -> Result<i32, Errno> {
    // SAFETY: forwarded to the caller; `arg` is valid for the call.
    let ret = unsafe { libc::ioctl(fd, request, arg) };
    Errno::result(ret)
}

/// An ioctl whose argument is an integer value (not a pointer).
fn ioctl_value(fd: i32, request: libc::c_ulong, value: libc::c_ulong) -> Result<i32, Errno> {
    // SAFETY: the requests passed here take their argument by value; no memory is touched.
    let ret = unsafe { libc::ioctl(fd, request, value) };
    Errno::result(ret)
}

/// An int the kernel fills through a pointer (`TIOCGPKT`, `TIOCGPGRP` ...).
fn get_int(fd: BorrowedFd, request: libc::c_ulong) -> Result<i32, Errno> {
    let mut value: libc::c_int = 0;
    // SAFETY: these requests write one int to the pointer.
    unsafe { ioctl_ptr(fd.as_raw_fd(), request, &raw mut value) }?;
    Ok(value)
}

/// An int the kernel reads through a pointer (`TIOCSPTLCK`, `TIOCPKT`, `TIOCSPGRP` ...).
fn set_int(fd: i32, request: libc::c_ulong, value: i32) -> Result<(), Errno> {
    let mut value: libc::c_int = value;
    // SAFETY: these requests read one int through the pointer.
    unsafe { ioctl_ptr(fd, request, &raw mut value) }.map(drop)
}

pub fn get_termios(fd: BorrowedFd) -> Result<KernelTermios, Errno> {
    let mut t = KernelTermios::default();
    // SAFETY: TCGETS writes the kernel's struct termios, which `KernelTermios` mirrors.
    unsafe { ioctl_ptr(fd.as_raw_fd(), libc::TCGETS, &raw mut t) }?;
    Ok(t)
}

/// `TCSETS`: at once, without waiting for output to drain.
pub fn set_termios(fd: BorrowedFd, t: &KernelTermios) -> Result<(), Errno> {
    let mut t = *t;
    // SAFETY: TCSETS reads the kernel's struct termios, which `KernelTermios` mirrors.
    unsafe { ioctl_ptr(fd.as_raw_fd(), libc::TCSETS, &raw mut t) }.map(drop)
}

pub fn get_winsize(fd: BorrowedFd) -> Result<WinSize, Errno> {
    let mut w = WinSize::default();
    // SAFETY: TIOCGWINSZ writes a struct winsize.
    unsafe { ioctl_ptr(fd.as_raw_fd(), libc::TIOCGWINSZ, &raw mut w) }?;
    Ok(w)
}

pub fn set_winsize(fd: BorrowedFd, w: &WinSize) -> Result<(), Errno> {
    let mut w = *w;
    // SAFETY: TIOCSWINSZ reads a struct winsize.
    unsafe { ioctl_ptr(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw mut w) }.map(drop)
}

/// Whether `fd` is a terminal (it answers `TCGETS`).
pub fn is_terminal(fd: BorrowedFd) -> bool {
    get_termios(fd).is_ok()
}

/// The pts index of a pty master (`TIOCGPTN`).
pub fn pty_index(master: BorrowedFd) -> Result<u32, Errno> {
    get_int(master, libc::TIOCGPTN).map(|n| n.cast_unsigned())
}

/// Whether the pair is locked (`TIOCGPTLCK`): its slave cannot be opened.
pub fn pty_locked(master: BorrowedFd) -> Result<bool, Errno> {
    get_int(master, libc::TIOCGPTLCK).map(|n| n != 0)
}

pub fn set_pty_locked(master: BorrowedFd, locked: bool) -> Result<(), Errno> {
    set_int(master.as_raw_fd(), libc::TIOCSPTLCK, i32::from(locked))
}

/// Packet mode of a master (`TIOCGPKT`).
pub fn packet_mode(master: BorrowedFd) -> Result<bool, Errno> {
    get_int(master, libc::TIOCGPKT).map(|n| n != 0)
}

pub fn set_packet_mode(master: BorrowedFd, on: bool) -> Result<(), Errno> {
    set_int(master.as_raw_fd(), libc::TIOCPKT, i32::from(on))
}

/// Exclusive mode of a terminal (`TIOCGEXCL`): further opens fail with EBUSY.
pub fn exclusive(fd: BorrowedFd) -> Result<bool, Errno> {
    get_int(fd, libc::TIOCGEXCL).map(|n| n != 0)
}

pub fn set_exclusive(fd: BorrowedFd) -> Result<(), Errno> {
    ioctl_value(fd.as_raw_fd(), libc::TIOCEXCL, 0).map(drop)
}

/// The foreground process group of the slave of `master` (0: none). Asked through the
/// master, the caller need not have the terminal as its controlling terminal.
pub fn foreground_group(master: BorrowedFd) -> Result<i32, Errno> {
    get_int(master, libc::TIOCGPGRP)
}

/// The session whose controlling terminal `fd` is (ENOTTY: none, or not the caller's).
pub fn terminal_session(fd: BorrowedFd) -> Result<i32, Errno> {
    get_int(fd, libc::TIOCGSID)
}

/// The foreground group of the caller's controlling terminal `fd` (`tcgetpgrp`).
pub fn own_foreground_group(fd: BorrowedFd) -> Result<i32, Errno> {
    get_int(fd, libc::TIOCGPGRP)
}

/// Opens the slave of `master` (`TIOCGPTPEER`) as a new open file description with
/// `flags`; `O_NOCTTY` is always added, so that it never becomes the caller's terminal.
pub fn open_peer(master: BorrowedFd, flags: i32) -> Result<OwnedFd, Errno> {
    let flags = flags | libc::O_NOCTTY | libc::O_CLOEXEC;
    let fd = ioctl_value(
        master.as_raw_fd(),
        libc::TIOCGPTPEER,
        libc::c_ulong::from(flags.cast_unsigned()),
    )?;
    // SAFETY: TIOCGPTPEER returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Puts one byte into the terminal's input, through its line discipline at once
/// (`TIOCSTI`; needs CAP_SYS_ADMIN unless it is the caller's controlling terminal).
pub fn inject_input(fd: BorrowedFd, byte: u8) -> Result<(), Errno> {
    let mut b = byte;
    // SAFETY: TIOCSTI reads one byte through the pointer.
    unsafe { ioctl_ptr(fd.as_raw_fd(), libc::TIOCSTI, &raw mut b) }.map(drop)
}

/// `TIOCSCTTY` on fd number `fd` (no stealing): makes it the controlling terminal of the
/// caller's session, whose leader the caller must be. Runs in a restored child.
pub fn take_controlling_terminal(fd: i32) -> Result<(), Errno> {
    ioctl_value(fd, libc::TIOCSCTTY, 0).map(drop)
}

/// `tcsetpgrp(fd, group)`: makes `group` the foreground group of the caller's controlling
/// terminal `fd`. Runs in a restored child (signals blocked: no SIGTTOU stops it).
pub fn set_foreground_group(fd: i32, group: i32) -> Result<(), Errno> {
    set_int(fd, libc::TIOCSPGRP, group)
}
