//! Raw syscalls mlckpt itself makes that neither libc's safe surface nor nix wrap; each is
//! wrapped here once and used through a safe function.

use crate::image::format::Rlimit;
use nix::errno::Errno;
use nix::unistd::Pid;

/// Number of `RLIMIT_*` resources (RLIMIT_NLIMITS).
pub const RLIMIT_COUNT: u32 = 16;

/// Another process's limit for `resource` (`prlimit(pid, resource, NULL, &old)`).
pub fn get_rlimit(pid: Pid, resource: u32) -> Result<Rlimit, Errno> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a NULL new limit only reads; `old` is a live rlimit64 the kernel fills.
    let ret = unsafe {
        libc::prlimit64(
            pid.as_raw(),
            resource as libc::__rlimit_resource_t,
            std::ptr::null(),
            &raw mut old,
        )
    };
    Errno::result(ret)?;
    Ok(Rlimit {
        resource,
        soft: old.rlim_cur,
        hard: old.rlim_max,
    })
}

/// Sets a thread's CPU affinity from mask words (CPUs absent here are ignored by the kernel
/// as long as one allowed CPU exists).
pub fn set_affinity(tid: Pid, words: &[u64]) -> Result<(), Errno> {
    // SAFETY: the kernel reads exactly `words.len() * 8` bytes from `words`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid.as_raw(),
            words.len() * 8,
            words.as_ptr(),
        )
    };
    Errno::result(ret).map(drop)
}

/// The nice value of thread `tid` (0 = the calling thread).
pub fn thread_nice(tid: i32) -> Result<i32, Errno> {
    Errno::clear();
    // SAFETY: getpriority touches no memory of ours.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS as _, tid as libc::id_t) };
    // -1 is a valid nice value: only errno tells an error.
    match (nice, Errno::last_raw()) {
        (-1, errno) if errno != 0 => Err(Errno::from_raw(errno)),
        _ => Ok(nice),
    }
}

/// Sets the nice value of thread `tid` (0 = the calling thread).
pub fn set_thread_nice(tid: i32, nice: i32) -> Result<(), Errno> {
    // SAFETY: setpriority touches no memory of ours.
    let ret = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, tid as libc::id_t, nice) };
    Errno::result(ret).map(drop)
}

/// XCR0: the xsave state components this CPU and kernel enable.
pub fn xcr0() -> u64 {
    // SAFETY: CPUID leaf 1 exists on every x86-64 CPU; XGETBV runs only when CPUID says
    // the OS enabled XSAVE (OSXSAVE), the one case in which it cannot fault.
    unsafe {
        let osxsave = std::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
        if !osxsave {
            return 0x3; // x87 + SSE, saved with FXSAVE.
        }
        std::arch::x86_64::_xgetbv(0)
    }
}

/// Bytes of the XSAVE area for the features XCR0 enables (CPUID leaf 0xD, EBX): the
/// largest xstate this kernel accepts for a thread (0 without XSAVE).
pub fn xstate_size() -> u32 {
    let xsave = std::arch::x86_64::__cpuid(1).ecx & (1 << 26) != 0;
    if !xsave {
        return 0;
    }
    std::arch::x86_64::__cpuid_count(0xd, 0).ebx
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `clone3` as a plain fork (`exit_signal = SIGCHLD`), optionally with the child's PID
/// chosen (`set_tid`, needs CAP_CHECKPOINT_RESTORE). Returns 0 in the child.
pub fn clone3_fork(pid: Option<i32>) -> Result<i32, Errno> {
    clone3_process(pid, libc::SIGCHLD, false)
}

/// `clone3` of a new process (a copy of this one) that signals its parent with
/// `exit_signal` when it ends; `untraced` keeps a tracer's auto-attach off it
/// (`CLONE_UNTRACED`). Allocation-free: the restore child forks the job's processes with it.
pub fn clone3_process(pid: Option<i32>, exit_signal: i32, untraced: bool) -> Result<i32, Errno> {
    let mut wanted: libc::pid_t = pid.unwrap_or(0);
    // SAFETY: clone_args is plain data; zeroed is its documented "no options" value.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.exit_signal = exit_signal as u64;
    if untraced {
        args.flags = libc::CLONE_UNTRACED as u64;
    }
    if pid.is_some() {
        args.set_tid = (&raw mut wanted) as u64;
        args.set_tid_size = 1;
    }
    // SAFETY: without CLONE_VM the child gets a copy of this address space and returns
    // here like fork(); `args` and `wanted` are live for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    Errno::result(ret).map(|r| r as i32)
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
pub fn set_child_subreaper() -> Result<(), Errno> {
    int_syscall(
        libc::SYS_prctl,
        [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0, 0],
    )
    .map(drop)
}

/// `prctl(PR_SET_PDEATHSIG, signo)`.
pub fn set_parent_death_signal(signo: i32) -> Result<(), Errno> {
    int_syscall(
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, signo as u64, 0, 0, 0, 0],
    )
    .map(drop)
}

/// `setsid()`: the caller leads a new session (and process group).
pub fn new_session() -> Result<(), Errno> {
    int_syscall(libc::SYS_setsid, [0; 6]).map(drop)
}

/// `tgkill(tgid, tid, signo)`: a signal to one thread (real-time signals included).
pub fn tgkill(tgid: i32, tid: i32, signo: i32) -> Result<(), Errno> {
    int_syscall(
        libc::SYS_tgkill,
        [tgid as u64, tid as u64, signo as u64, 0, 0, 0],
    )
    .map(drop)
}

/// `kill(pid, signo)` with any signal number (nix's `Signal` has no real-time ones).
pub fn kill_any(pid: i32, signo: i32) -> Result<(), Errno> {
    int_syscall(libc::SYS_kill, [pid as u64, signo as u64, 0, 0, 0, 0]).map(drop)
}

/// `setpgid(pid, pgid)` (0 means the caller, and a group named after it).
pub fn set_process_group(pid: i32, pgid: i32) -> Result<(), Errno> {
    int_syscall(libc::SYS_setpgid, [pid as u64, pgid as u64, 0, 0, 0, 0]).map(drop)
}

/// `waitpid(pid, &status, flags)`: the raw status, or None when `WNOHANG` found nothing.
/// Raw, because nix's `WaitStatus` cannot hold a real-time signal (its conversion fails
/// after the status was already collected).
pub fn wait_status(pid: Pid, flags: i32) -> Result<Option<i32>, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a live c_int the kernel writes; nothing else is touched.
    let ret = unsafe { libc::waitpid(pid.as_raw(), &raw mut status, flags) };
    Ok((Errno::result(ret)? != 0).then_some(status))
}

/// `waitpid(pid, &status, flags)` for any `pid` (-1: any child or tracee): who reported,
/// and the raw status; None when `WNOHANG` found nothing.
pub fn wait_any_status(pid: i32, flags: i32) -> Result<Option<(i32, i32)>, Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a live c_int the kernel writes; nothing else is touched.
    let ret = unsafe { libc::waitpid(pid, &raw mut status, flags) };
    Ok((Errno::result(ret)? != 0).then_some((ret, status)))
}

/// Waits until child `pid` has exited, leaving it a zombie (`waitid(WEXITED | WNOWAIT)`).
pub fn wait_exited_keep(pid: i32) -> Result<(), Errno> {
    let mut info = [0u8; 128];
    let args = [
        libc::P_PID as u64,
        pid as u64,
        (&raw mut info) as u64,
        (libc::WEXITED | libc::WNOWAIT) as u64,
        0,
        0,
    ];
    loop {
        // SAFETY: the kernel writes one siginfo_t (128 bytes) into `info`.
        match unsafe { raw_syscall(libc::SYS_waitid, args) } {
            Err(Errno::EINTR) => continue,
            other => return other.map(drop),
        }
    }
}

/// The PID of an exited child of the caller, left unreaped (`waitid(P_ALL, WEXITED |
/// WNOHANG | WNOWAIT)`); None when none has exited. Raw: nix's `waitid` fails on a child
/// killed by a real-time signal, which would then never be reaped.
pub fn exited_child() -> Option<i32> {
    /// `si_pid` in a SIGCHLD `siginfo_t` (after signo, errno, code and padding).
    const SI_PID: usize = 16;
    let mut info = [0u8; 128];
    let args = [
        libc::P_ALL as u64,
        0,
        (&raw mut info) as u64,
        (libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) as u64,
        0,
        0,
    ];
    // SAFETY: the kernel writes one siginfo_t (128 bytes) into `info`.
    unsafe { raw_syscall(libc::SYS_waitid, args) }.ok()?;
    let pid = i32::from_ne_bytes(info[SI_PID..SI_PID + 4].try_into().ok()?);
    (pid > 0).then_some(pid)
}

/// Takes every pending (blocked) `signo` off the calling thread and its process.
pub fn discard_pending(signo: i32) {
    let set: u64 = 1 << (signo - 1);
    let zero = [0i64; 2]; // struct timespec { 0, 0 }: do not wait
    let args = [
        (&raw const set) as u64,
        0,
        (&raw const zero) as u64,
        8,
        0,
        0,
    ];
    // SAFETY: `set` and `zero` are live for the call; no siginfo is asked for.
    while unsafe { raw_syscall(libc::SYS_rt_sigtimedwait, args) }.is_ok() {}
}

/// Ends the calling process by signal `signo` (default action, unblocked), for a zombie
/// whose parent must see it killed by that signal. No core file: the rlimit is 0.
pub fn die_by_signal(signo: i32) -> ! {
    let _ = set_rlimit(libc::RLIMIT_CORE, 0, 0);
    let _ = set_signal_action(signo, &[0; 4]);
    let set: u64 = 1 << (signo - 1);
    let args = [
        libc::SIG_UNBLOCK as u64,
        (&raw const set) as u64,
        0,
        8,
        0,
        0,
    ];
    // SAFETY: `set` is a live 8-byte mask; the old mask is not asked for.
    let _ = unsafe { raw_syscall(libc::SYS_rt_sigprocmask, args) };
    let pid = int_syscall(libc::SYS_getpid, [0; 6]).unwrap_or(0);
    let _ = int_syscall(libc::SYS_kill, [pid as u64, signo as u64, 0, 0, 0, 0]);
    exit_now(128 + signo)
}

/// Closes every fd in `[first, last]`.
pub fn close_fd_range(first: i32, last: i32) -> Result<(), Errno> {
    if last < first {
        return Ok(());
    }
    int_syscall(
        libc::SYS_close_range,
        [first as u64, last as u64, 0, 0, 0, 0],
    )
    .map(drop)
}

/// A system call with integer arguments; -1 becomes the errno.
///
/// # Safety
/// Every argument the kernel reads as a pointer must point at memory valid for what call
/// `nr` reads or writes there, for the duration of the call, and the call must not unmap
/// or overwrite memory Rust still uses.
unsafe fn raw_syscall(nr: libc::c_long, args: [u64; 6]) -> Result<i64, Errno> {
    // SAFETY: forwarded to the caller (see above).
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    Errno::result(ret)
}

/// A syscall whose arguments are all plain integers: it cannot touch this process's memory.
pub(super) fn int_syscall(nr: libc::c_long, args: [u64; 6]) -> Result<i64, Errno> {
    // SAFETY: callers pass no pointers, only numbers and fds.
    unsafe { raw_syscall(nr, args) }
}

// The calls the restore child makes between `clone3` and the stub. It is a fork of a
// possibly multi-threaded process, so they are raw syscalls: no allocation, no locks.

/// Blocks every signal in the calling thread.
pub fn block_all_signals() -> Result<(), Errno> {
    let all: u64 = u64::MAX;
    let args = [
        libc::SIG_SETMASK as u64,
        (&raw const all) as u64,
        0,
        8,
        0,
        0,
    ];
    // SAFETY: `all` is a live 8-byte mask; the old mask is not asked for.
    unsafe { raw_syscall(libc::SYS_rt_sigprocmask, args) }.map(drop)
}

/// Reads one byte from `fd`: Ok(true) for a byte, Ok(false) at end of file.
pub fn read_byte(fd: i32) -> Result<bool, Errno> {
    let mut byte = 0u8;
    // SAFETY: the kernel writes at most 1 byte into `byte`.
    let n = unsafe {
        raw_syscall(
            libc::SYS_read,
            [fd as u64, (&raw mut byte) as u64, 1, 0, 0, 0],
        )
    }?;
    Ok(n == 1)
}

/// Closes every fd from `first` on.
pub fn close_from(first: u32) -> Result<(), Errno> {
    int_syscall(
        libc::SYS_close_range,
        [u64::from(first), u64::from(u32::MAX), 0, 0, 0, 0],
    )
    .map(drop)
}

pub fn close(fd: i32) -> Result<(), Errno> {
    int_syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]).map(drop)
}

/// `openat(AT_FDCWD, path, flags)`; returns the new fd.
pub fn open_path(path: &std::ffi::CStr, flags: i32) -> Result<i32, Errno> {
    let args = [
        libc::AT_FDCWD as u64,
        path.as_ptr() as u64,
        flags as u64,
        0,
        0,
        0,
    ];
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    unsafe { raw_syscall(libc::SYS_openat, args) }.map(|fd| fd as i32)
}

/// `openat2(AT_FDCWD, path, flags, mode)` that fails (`ELOOP`) where any component of
/// `path` is a symlink, the magic links of `/proc` included: paths an image recorded come
/// from `/proc/PID/fd` and `maps`, already resolved, so a symlink on the way is one that
/// was put there since.
pub fn open_no_symlinks(path: &std::ffi::CStr, flags: i32, mode: u32) -> Result<i32, Errno> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: flags as u64,
        mode: u64::from(mode),
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    let args = [
        libc::AT_FDCWD as u64,
        path.as_ptr() as u64,
        (&raw const how) as u64,
        std::mem::size_of::<OpenHow>() as u64,
        0,
        0,
    ];
    // SAFETY: `path` is a live NUL-terminated string and `how` a live open_how of the size
    // passed; the kernel only reads both.
    unsafe { raw_syscall(libc::SYS_openat2, args) }.map(|fd| fd as i32)
}

/// Inode number and owner of what `fd` refers to (a raw `fstat`, safe after `fork`).
pub fn inode_and_owner(fd: i32) -> Result<(u64, u32), Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    let args = [fd as u64, st.as_mut_ptr() as u64, 0, 0, 0, 0];
    // SAFETY: `st` is a live, writable `struct stat` the kernel fills.
    unsafe { raw_syscall(libc::SYS_fstat, args) }?;
    // SAFETY: zero-initialised and filled by a successful fstat: every field is plain data.
    let st = unsafe { st.assume_init() };
    Ok((st.st_ino, st.st_uid))
}

/// Puts `from` at number `to` (close-on-exec).
pub fn dup_onto(from: i32, to: i32) -> Result<(), Errno> {
    int_syscall(
        libc::SYS_dup3,
        [from as u64, to as u64, libc::O_CLOEXEC as u64, 0, 0, 0],
    )
    .map(drop)
}

pub fn clear_cloexec(fd: i32) -> Result<(), Errno> {
    int_syscall(
        libc::SYS_fcntl,
        [fd as u64, libc::F_SETFD as u64, 0, 0, 0, 0],
    )
    .map(drop)
}

pub fn seek_to(fd: i32, offset: u64) -> Result<(), Errno> {
    int_syscall(
        libc::SYS_lseek,
        [fd as u64, offset, libc::SEEK_SET as u64, 0, 0, 0],
    )
    .map(drop)
}

pub fn change_dir(path: &std::ffi::CStr) -> Result<(), Errno> {
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    unsafe { raw_syscall(libc::SYS_chdir, [path.as_ptr() as u64, 0, 0, 0, 0, 0]) }.map(drop)
}

pub fn set_umask(mask: u32) {
    let _ = int_syscall(libc::SYS_umask, [u64::from(mask), 0, 0, 0, 0, 0]);
}

/// Installs a kernel `struct sigaction` (handler, flags, restorer, mask). The handler need
/// not be mapped yet: the kernel only stores the address.
pub fn set_signal_action(signo: i32, action: &[u64; 4]) -> Result<(), Errno> {
    let args = [signo as u64, action.as_ptr() as u64, 0, 8, 0, 0];
    // SAFETY: `action` is a live 32-byte kernel sigaction the kernel only reads.
    unsafe { raw_syscall(libc::SYS_rt_sigaction, args) }.map(drop)
}

/// Sets the calling process's limit for `resource`.
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
    let limit = [soft, hard];
    let args = [0, u64::from(resource), limit.as_ptr() as u64, 0, 0, 0];
    // SAFETY: `limit` is a live rlimit64 the kernel only reads; the old limit is not asked.
    unsafe { raw_syscall(libc::SYS_prlimit64, args) }.map(drop)
}

/// Unregisters the calling thread's rseq area (registered with `len` and `signature`).
pub fn rseq_unregister(area: u64, len: u32, signature: u32) -> Result<(), Errno> {
    const RSEQ_FLAG_UNREGISTER: u64 = 1;
    let args = [
        area,
        u64::from(len),
        RSEQ_FLAG_UNREGISTER,
        u64::from(signature),
        0,
        0,
    ];
    // Unregistering only compares the address with the registered one; nothing is read.
    int_syscall(libc::SYS_rseq, args).map(drop)
}

/// Ends the whole process at once (no atexit handlers, no unwinding).
pub fn exit_now(code: i32) -> ! {
    let _ = int_syscall(libc::SYS_exit_group, [code as u64, 0, 0, 0, 0, 0]);
    unreachable!("exit_group returned")
}

/// Maps `len` bytes of fresh memory exactly at `addr`, failing if anything is there.
pub fn map_fixed_noreplace(addr: u64, len: usize, shared: bool) -> Result<*mut u8, Errno> {
    let flags = libc::MAP_ANONYMOUS
        | libc::MAP_FIXED_NOREPLACE
        | if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no live Rust
    // object can be affected; the result is checked.
    let ret = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    if ret == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    if ret as u64 != addr {
        // Old kernels ignore the flag and treat the address as a hint.
        unmap(ret.cast(), len);
        return Err(Errno::EEXIST);
    }
    Ok(ret.cast())
}

/// Maps a fresh shared page anywhere (the restore child's error report).
pub fn map_shared_page() -> Result<*mut u8, Errno> {
    map_shared_anonymous(4096)
}

/// A new shared anonymous mapping of `len` bytes (a shmem object of its own).
pub fn map_shared_anonymous(len: usize) -> Result<*mut u8, Errno> {
    // SAFETY: a new anonymous mapping at a kernel-chosen address touches nothing else.
    let ret = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ret == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    Ok(ret.cast())
}

/// Unmaps a mapping this module created.
pub fn unmap(addr: *mut u8, len: usize) {
    // SAFETY: only called on mappings created by the functions above, which no Rust
    // reference points into any more.
    unsafe {
        libc::munmap(addr.cast(), len);
    }
}

/// Jumps to the restorer stub on its own stack. The process's old memory, including this
/// function's stack, is about to be unmapped by the stub, so there is no way back.
pub fn jump_to_stub(entry: u64, stack_top: u64) -> ! {
    // SAFETY: `entry` is the stub's first instruction and `stack_top` the top of its
    // stack, both inside the stub mapping that the stub itself never unmaps.
    unsafe {
        std::arch::asm!(
            "mov rsp, {stack}",
            "jmp {entry}",
            stack = in(reg) stack_top,
            entry = in(reg) entry,
            options(noreturn)
        )
    }
}

unsafe extern "C" {
    /// glibc ≥ 2.35: offset of this thread's rseq area from the thread pointer, and the
    /// size registered (0 when glibc did not register rseq).
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// The calling thread's glibc rseq registration: (address, size), or None.
pub fn own_rseq_area() -> Option<(u64, u32)> {
    // SAFETY: both are plain constants glibc sets before main and never changes.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return None;
    }
    let tp: u64;
    // SAFETY: on x86-64 the word at fs:0 is the thread pointer itself (TLS ABI).
    unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
    Some((tp.wrapping_add_signed(offset as i64), size))
}

/// A pidfd for `pid`: readable once the process has exited.
pub fn pidfd_open(pid: Pid) -> Result<std::os::fd::OwnedFd, Errno> {
    let fd = int_syscall(libc::SYS_pidfd_open, [pid.as_raw() as u64, 0, 0, 0, 0, 0])?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Makes a mapping this module created read+execute (the stub's code page, once written).
pub fn make_executable(addr: *mut u8, len: usize) -> Result<(), Errno> {
    // SAFETY: only called on the stub mapping, which no Rust reference points into.
    let ret = unsafe { libc::mprotect(addr.cast(), len, libc::PROT_READ | libc::PROT_EXEC) };
    Errno::result(ret).map(drop)
}

/// Makes `command`'s program start with signal mask `mask` (the supervisor blocks the
/// signals it handles through a signalfd, and a mask is inherited across exec).
pub fn restore_mask_on_exec(command: &mut std::process::Command, mask: nix::sys::signal::SigSet) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls sigprocmask, which is
    // async-signal-safe; it touches no lock or allocation.
    unsafe {
        command.pre_exec(move || mask.thread_set_mask().map_err(std::io::Error::from));
    }
}

/// A copy of fd `target_fd` of the process behind `pidfd` (`pidfd_getfd`).
pub fn pidfd_getfd(
    pidfd: std::os::fd::BorrowedFd,
    target_fd: i32,
) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    let fd = int_syscall(
        libc::SYS_pidfd_getfd,
        [pidfd.as_raw_fd() as u64, target_fd as u64, 0, 0, 0, 0],
    )?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

// userfaultfd (include/uapi/linux/userfaultfd.h) and PAGEMAP_SCAN (include/uapi/linux/fs.h),
// newer than the libc crate's headers.

/// `UFFD_USER_MODE_ONLY`: no kernel-mode faults, so no privilege is needed to create one.
pub const UFFD_USER_MODE_ONLY: u64 = 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xc018_aa06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`: set protection (mode 0 clears it).
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;

/// An ioctl whose argument is one struct of plain integers.
///
/// # Safety
/// `arg` must be the struct (with the layout the kernel expects) of request `request`.
unsafe fn ioctl_struct<T>(
    fd: std::os::fd::BorrowedFd,
    request: libc::c_ulong,
    arg: &mut T,
) -> Result<i64, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: forwarded to the caller; `arg` is live and exclusively borrowed for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    Errno::result(ret).map(i64::from)
}

/// `UFFDIO_API`: enables `features` on a new userfaultfd; returns the features granted.
pub fn uffd_api(uffd: std::os::fd::BorrowedFd, features: u64) -> Result<u64, Errno> {
    let mut api = [UFFD_API, features, 0u64]; // struct uffdio_api { api, features, ioctls }
    // SAFETY: `api` is a struct uffdio_api: three u64 fields the kernel reads and fills.
    unsafe { ioctl_struct(uffd, UFFDIO_API, &mut api) }?;
    Ok(api[1])
}

/// `UFFDIO_REGISTER` in write-protect mode for `[start, start+len)` of the uffd's process.
pub fn uffd_register_wp(uffd: std::os::fd::BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    // struct uffdio_register { struct uffdio_range { start, len }; mode; ioctls (out) }
    let mut reg = [start, len, UFFDIO_REGISTER_MODE_WP, 0u64];
    // SAFETY: `reg` is a struct uffdio_register: four u64 fields.
    unsafe { ioctl_struct(uffd, UFFDIO_REGISTER, &mut reg) }.map(drop)
}

/// `UFFDIO_UNREGISTER` of `[start, start+len)`.
pub fn uffd_unregister(uffd: std::os::fd::BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut range = [start, len]; // struct uffdio_range
    // SAFETY: `range` is a struct uffdio_range: two u64 fields the kernel reads.
    unsafe { ioctl_struct(uffd, UFFDIO_UNREGISTER, &mut range) }.map(drop)
}

/// `UFFDIO_WRITEPROTECT` with mode 0: removes write protection (and its markers) from
/// `[start, start+len)`, so every page there reads as written again.
pub fn uffd_unprotect(uffd: std::os::fd::BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    uffd_writeprotect(uffd, start, len, 0)
}

/// `UFFDIO_WRITEPROTECT` with `UFFDIO_WRITEPROTECT_MODE_WP`: protects every page of
/// `[start, start+len)` (with `UFFD_FEATURE_WP_UNPOPULATED`, empty ones too), so that each
/// reads as unwritten until its next write.
pub fn uffd_protect(uffd: std::os::fd::BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    uffd_writeprotect(uffd, start, len, UFFDIO_WRITEPROTECT_MODE_WP)
}

fn uffd_writeprotect(
    uffd: std::os::fd::BorrowedFd,
    start: u64,
    len: u64,
    mode: u64,
) -> Result<(), Errno> {
    let mut wp = [start, len, mode]; // struct uffdio_writeprotect { range { start, len }, mode }
    // SAFETY: `wp` is a struct uffdio_writeprotect: three u64 fields the kernel reads.
    unsafe { ioctl_struct(uffd, UFFDIO_WRITEPROTECT, &mut wp) }.map(drop)
}

/// `struct page_region`: pages `[start, end)` share `categories`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg` without its output vector, which `pagemap_scan` supplies.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanRequest {
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `ioctl(PAGEMAP_SCAN)` on a `/proc/PID/pagemap` fd: fills `out` with page regions from
/// `req.start` on; returns how many were filled and where the walk ended (less than
/// `req.end` when `out` filled up).
pub fn pagemap_scan(
    pagemap: std::os::fd::BorrowedFd,
    req: &ScanRequest,
    out: &mut [PageRegion],
) -> Result<(usize, u64), Errno> {
    // struct pm_scan_arg { size, flags, start, end, walk_end, vec, vec_len, max_pages,
    //                      category_inverted, category_mask, category_anyof_mask, return_mask }
    let mut arg: [u64; 12] = [
        96,
        req.flags,
        req.start,
        req.end,
        0,
        out.as_mut_ptr() as u64,
        out.len() as u64,
        0,
        req.category_inverted,
        req.category_mask,
        req.category_anyof_mask,
        req.return_mask,
    ];
    // SAFETY: `arg` is a struct pm_scan_arg (twelve u64 fields, size 96); its `vec` points
    // at `out`, whose `len()` repr(C) page_region entries the kernel may write.
    let filled = unsafe { ioctl_struct(pagemap, PAGEMAP_SCAN, &mut arg) }?;
    Ok((filled as usize, arg[4]))
}

/// Most iovecs one `process_vm_readv` or `process_madvise` call takes.
pub const UIO_MAXIOV: usize = 1024;

/// `process_madvise(pidfd, ranges, advice)` (`(start, len)` ranges, at most UIO_MAXIOV);
/// returns the bytes advised.
pub fn process_madvise(
    pidfd: std::os::fd::BorrowedFd,
    ranges: &[(u64, u64)],
    advice: i32,
) -> Result<u64, Errno> {
    use std::os::fd::AsRawFd;
    let iov: Vec<libc::iovec> = ranges
        .iter()
        .map(|&(start, len)| libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len as usize,
        })
        .collect();
    let args = [
        pidfd.as_raw_fd() as u64,
        iov.as_ptr() as u64,
        iov.len() as u64,
        advice as u64,
        0,
        0,
    ];
    // SAFETY: the kernel only reads `iov` (live for the call); the ranges it names are in
    // the other process's address space, not this one's.
    unsafe { raw_syscall(libc::SYS_process_madvise, args) }.map(|n| n as u64)
}

/// What `kcmp` compares (`include/uapi/linux/kcmp.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kcmp {
    File = 0,
    Vm = 1,
    Files = 2,
    Fs = 3,
    Sighand = 4,
}

/// `kcmp`: 0 when the two processes' objects `what` (for `File`, fds `idx1`, `idx2`) are
/// one, 1 or 2 when the first orders before or after the second, 3 when they differ and
/// cannot be ordered.
fn kcmp_raw(pid1: i32, pid2: i32, what: Kcmp, idx1: i32, idx2: i32) -> Result<i64, Errno> {
    let args = [
        pid1 as u64,
        pid2 as u64,
        what as u64,
        idx1 as u64,
        idx2 as u64,
        0,
    ];
    int_syscall(libc::SYS_kcmp, args)
}

/// How fd `fd1` of `pid1` and fd `fd2` of `pid2` compare in the kernel's (obfuscated, but
/// consistent) order of files: `Equal` when they are one open file description (a shared
/// offset and flags, as after `fork` or `dup`).
pub fn file_order(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<std::cmp::Ordering, Errno> {
    match kcmp_raw(pid1, pid2, Kcmp::File, fd1, fd2)? {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        _ => Err(Errno::EINVAL),
    }
}

/// Whether two processes share the kernel object `what` (for `File`, fds `idx1`, `idx2`).
pub fn kcmp(pid1: i32, pid2: i32, what: Kcmp, idx1: i32, idx2: i32) -> Result<bool, Errno> {
    Ok(kcmp_raw(pid1, pid2, what, idx1, idx2)? == 0)
}

/// Bytes waiting in a pipe (`FIONREAD`).
pub fn bytes_queued(fd: std::os::fd::BorrowedFd) -> Result<usize, Errno> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, which is live for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &raw mut n) };
    Errno::result(ret)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// A new fd (close-on-exec, at `floor` or above) for this process's fd `fd`, which may be
/// closed (EBADF): the standard streams a restore hands on are not known to be open.
pub fn dup_at_least(fd: i32, floor: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    let new = int_syscall(
        libc::SYS_fcntl,
        [
            fd as u64,
            libc::F_DUPFD_CLOEXEC as u64,
            floor as u64,
            0,
            0,
            0,
        ],
    )?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(new as i32) })
}

/// Raises this process's soft limit on open files to at least `wanted` (up to the hard
/// limit): the restorer holds the job's objects above every fd number the job uses.
pub fn raise_fd_limit(wanted: i32) -> Result<(), Errno> {
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    let wanted = u64::try_from(wanted).unwrap_or(0);
    if soft >= wanted {
        return Ok(());
    }
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        wanted.min(hard),
        hard,
    )
}

/// `SO_PEEK_OFF` of a socket (-1: peeking always starts at the head of the queue).
pub fn peek_offset(socket: std::os::fd::BorrowedFd) -> Result<i32, Errno> {
    int_socket_option(socket, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
}

pub fn set_peek_offset(socket: std::os::fd::BorrowedFd, offset: i32) -> Result<(), Errno> {
    set_int_socket_option(socket, libc::SOL_SOCKET, libc::SO_PEEK_OFF, offset)
}

/// An `int` socket option (`getsockopt`), for options nix does not name.
pub fn int_socket_option(
    socket: std::os::fd::BorrowedFd,
    level: i32,
    option: i32,
) -> Result<i32, Errno> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value` and updates `len`.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    Errno::result(ret).map(|_| value)
}

/// Sets an `int` socket option (`setsockopt`), for options nix does not name.
pub fn set_int_socket_option(
    socket: std::os::fd::BorrowedFd,
    level: i32,
    option: i32,
    value: i32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: the kernel reads one int from `value`, live for the call.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Errno::result(ret).map(drop)
}

/// What one `MSG_PEEK` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// A message (or, on a stream socket, bytes) of this length, copied into the buffer.
    /// With `SO_PEEK_OFF`, the next peek moves past an empty datagram too (the kernel
    /// marks it peeked).
    Data(usize),
    /// The next message carries fds (`SCM_RIGHTS`); the copies the peek installed here are
    /// closed again.
    CarriesFds,
    /// Nothing (more) queued.
    Empty,
}

/// Peeks at the next message of a socket without waiting (`recvmsg(MSG_PEEK |
/// MSG_DONTWAIT)`); with `SO_PEEK_OFF` set, each call moves on to the next one. `sender`
/// gets the `sun_path` bytes of the address it came from (empty: unnamed or not a unix
/// datagram).
pub fn peek_message(
    socket: std::os::fd::BorrowedFd,
    buf: &mut [u8],
    sender: &mut Vec<u8>,
) -> Result<Peeked, Errno> {
    use std::os::fd::AsRawFd;
    let mut control = [0u64; 64]; // 512 bytes, aligned for cmsghdr
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header, filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    msg.msg_name = (&raw mut from).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: every pointer in `msg` points at memory live and large enough for the call.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &raw mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match Errno::result(n) {
        Err(Errno::EAGAIN) => return Ok(Peeked::Empty),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    sender.clear();
    let path_len = (msg.msg_namelen as usize)
        .saturating_sub(std::mem::offset_of!(libc::sockaddr_un, sun_path))
        .min(from.sun_path.len());
    if from.sun_family == libc::AF_UNIX as libc::sa_family_t {
        sender.extend(from.sun_path[..path_len].iter().map(|&c| c as u8));
    }
    let mut carries_fds = false;
    // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk its control buffer, which
    // is still live, and read only inside msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                carries_fds = true;
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    libc::close(data.add(i).read_unaligned());
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if carries_fds {
        return Ok(Peeked::CarriesFds);
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(Errno::EMSGSIZE);
    }
    // 0 bytes: an empty datagram, or the end of a stream whose peer shut down; the caller
    // knows which.
    Ok(Peeked::Data(usize::try_from(n).unwrap_or(0)))
}
