//! The syscalls that create kernel objects behind fds (eventfd, timerfd, signalfd, epoll,
//! inotify, memfd, pidfd) and query or set their state, wrapped once. Those the restore
//! child calls between `clone3` and the stub (`epoll_add`, `pidfd_open_raw`) only pass
//! numbers: no allocation, no locks.

use super::sys::int_syscall;
use nix::errno::Errno;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: callers pass an fd the kernel has just returned; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// A new eventfd holding `count` (`EFD_*` flags; close-on-exec always).
pub fn eventfd(count: u64, flags: i32) -> Result<OwnedFd, Errno> {
    let fd = owned(int_syscall(
        libc::SYS_eventfd2,
        [0, (flags | libc::EFD_CLOEXEC) as u64, 0, 0, 0, 0],
    )?);
    // eventfd2 takes a 32-bit initial value; a write adds any 64-bit count.
    if count > 0 {
        let n = nix::unistd::write(&fd, &count.to_ne_bytes())?;
        if n != 8 {
            return Err(Errno::EIO);
        }
    }
    Ok(fd)
}

/// A new timerfd on `clock` (`TFD_*` flags; close-on-exec always).
pub fn timerfd_create(clock: i32, flags: i32) -> Result<OwnedFd, Errno> {
    let flags = (flags | libc::TFD_CLOEXEC) as u64;
    Ok(owned(int_syscall(
        libc::SYS_timerfd_create,
        [clock as u64, flags, 0, 0, 0, 0],
    )?))
}

/// Arms a timerfd: first expiry `value` (relative, or absolute with `TFD_TIMER_ABSTIME`),
/// then every `interval`.
pub fn timerfd_settime(
    fd: BorrowedFd,
    flags: i32,
    value: libc::timespec,
    interval: libc::timespec,
) -> Result<(), Errno> {
    let spec = libc::itimerspec {
        it_interval: interval,
        it_value: value,
    };
    // SAFETY: `spec` is live for the call; the old value is not asked for (NULL).
    let ret = unsafe {
        libc::timerfd_settime(fd.as_raw_fd(), flags, &raw const spec, std::ptr::null_mut())
    };
    Errno::result(ret).map(drop)
}

/// `timerfd_gettime`, for its side effect: a periodic timer that expired and was not read
/// yet is re-armed (and its expirations counted) only when asked, and fdinfo shows it
/// disarmed until then.
pub fn timerfd_update(fd: BorrowedFd) -> Result<(), Errno> {
    let mut spec = std::mem::MaybeUninit::<libc::itimerspec>::uninit();
    // SAFETY: the kernel writes one itimerspec through the pointer, live for the call.
    let ret = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), spec.as_mut_ptr()) };
    Errno::result(ret).map(drop)
}

/// `TFD_IOC_SET_TICKS`: the expirations a read will return (after `timerfd_settime`,
/// which clears them).
pub fn timerfd_set_ticks(fd: BorrowedFd, ticks: u64) -> Result<(), Errno> {
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    // SAFETY: the ioctl reads one u64 through the pointer, live for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &raw const ticks) };
    Errno::result(ret).map(drop)
}

/// A new signalfd for the signals of `mask` (bit N-1 for signal N; `SFD_*` flags).
pub fn signalfd(mask: u64, flags: i32) -> Result<OwnedFd, Errno> {
    let flags = (flags | libc::SFD_CLOEXEC) as u64;
    // SAFETY: the kernel reads 8 bytes of sigset through the pointer, live for the call.
    let ret = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &raw const mask, 8usize, flags) };
    Errno::result(ret).map(owned)
}

/// A new epoll instance (close-on-exec).
pub fn epoll_create() -> Result<OwnedFd, Errno> {
    let flags = libc::EPOLL_CLOEXEC as u64;
    Ok(owned(int_syscall(
        libc::SYS_epoll_create1,
        [flags, 0, 0, 0, 0, 0],
    )?))
}

/// `epoll_ctl(EPOLL_CTL_ADD)` of `fd` with `events` and user `data` (restore child: raw).
pub fn epoll_add(epfd: i32, fd: i32, events: u32, data: u64) -> Result<(), Errno> {
    let event = libc::epoll_event { events, u64: data };
    // SAFETY: the kernel reads the event through the pointer, live for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_epoll_ctl,
            epfd,
            libc::EPOLL_CTL_ADD,
            fd,
            &raw const event,
        )
    };
    Errno::result(ret).map(drop)
}

/// A new inotify instance (`IN_*` flags; close-on-exec always).
pub fn inotify_init(flags: i32) -> Result<OwnedFd, Errno> {
    let flags = (flags | libc::IN_CLOEXEC) as u64;
    Ok(owned(int_syscall(
        libc::SYS_inotify_init1,
        [flags, 0, 0, 0, 0, 0],
    )?))
}

/// Adds (or updates) the watch on `path`; its watch descriptor.
pub fn inotify_add_watch(fd: BorrowedFd, path: &CStr, mask: u32) -> Result<i32, Errno> {
    // SAFETY: `path` is a NUL-terminated string live for the call.
    let ret = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    Errno::result(ret)
}

pub fn inotify_rm_watch(fd: BorrowedFd, wd: i32) -> Result<(), Errno> {
    int_syscall(
        libc::SYS_inotify_rm_watch,
        [fd.as_raw_fd() as u64, wd as u64, 0, 0, 0, 0],
    )
    .map(drop)
}

/// A new memfd named `name` (`MFD_*` flags; close-on-exec always).
pub fn memfd_create(name: &CStr, flags: u32) -> Result<OwnedFd, Errno> {
    let flags = flags | libc::MFD_CLOEXEC;
    // SAFETY: `name` is a NUL-terminated string live for the call.
    let ret = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), flags) };
    Errno::result(ret).map(owned)
}

/// The seals of a memfd (`F_GET_SEALS`).
pub fn seals(fd: BorrowedFd) -> Result<i32, Errno> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GET_SEALS)
}

pub fn add_seals(fd: BorrowedFd, seals: i32) -> Result<(), Errno> {
    let args = [
        fd.as_raw_fd() as u64,
        libc::F_ADD_SEALS as u64,
        seals as u64,
        0,
        0,
        0,
    ];
    int_syscall(libc::SYS_fcntl, args).map(drop)
}

/// A pidfd of `pid` (`PIDFD_NONBLOCK` in `flags`), as a bare fd number: the restore child
/// moves it into place itself.
pub fn pidfd_open_raw(pid: i32, flags: i32) -> Result<i32, Errno> {
    int_syscall(libc::SYS_pidfd_open, [pid as u64, flags as u64, 0, 0, 0, 0]).map(|fd| fd as i32)
}

/// `struct kcmp_epoll_slot`.
#[repr(C)]
struct EpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// Whether fd `fd` of process `pid` is the file that the item `tfd` of epoll `epfd` (an
/// fd of the same process) watches (`KCMP_EPOLL_TFD`).
pub fn epoll_item_is(pid: i32, epfd: i32, tfd: i32) -> Result<bool, Errno> {
    const KCMP_EPOLL_TFD: i32 = 7;
    let slot = EpollSlot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff: 0,
    };
    // SAFETY: the kernel reads the slot through the pointer, live for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            tfd,
            &raw const slot,
        )
    };
    Errno::result(ret).map(|r| r == 0)
}

/// Opens the file a file handle (from inotify's fdinfo) names, on the file system of
/// `mount` (an fd on any of its files), without following it (`O_PATH`).
pub fn open_by_handle(
    mount: BorrowedFd,
    handle_type: i32,
    handle: &[u8],
) -> Result<OwnedFd, Errno> {
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    let flags = libc::O_PATH | libc::O_CLOEXEC;
    // SAFETY: `buf` is a `struct file_handle` (bytes, type, then the handle) live for the
    // call; the kernel only reads it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            buf.as_ptr(),
            flags,
        )
    };
    Errno::result(ret).map(owned)
}
