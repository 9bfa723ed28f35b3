//! The one place that calls ptrace: typed, safe wrappers over the requests mlckpt uses.
//!
//! nix covers the common requests; the x86 xstate regset, the signal mask and the rseq
//! configuration are not in nix, so they are wrapped here once around a single raw call.

use crate::image::format::{Registers, RseqState};
use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// `NT_X86_XSTATE`: the full XSAVE area (not exported by libc or nix).
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Not in nix's `Options`: lets remote syscalls pass a seccomp filter.
const PTRACE_O_SUSPEND_SECCOMP: libc::c_int = 1 << 21;
/// Large enough for every xsave layout shipped so far (AMX tiles included); the kernel
/// reports the length it really wrote.
const XSTATE_BUFFER: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    /// ESRCH: the thread exited (or was killed) while mlckpt worked on it.
    #[error("thread {tid} vanished during {op}")]
    Gone { tid: i32, op: &'static str },
    #[error("ptrace {op} on thread {tid} failed")]
    Failed {
        tid: i32,
        op: &'static str,
        #[source]
        source: Errno,
    },
}

pub type Result<T> = std::result::Result<T, PtraceError>;

fn check(tid: Pid, op: &'static str, res: nix::Result<()>) -> Result<()> {
    res.map_err(|e| map_err(tid, op, e))
}

pub fn map_err(tid: Pid, op: &'static str, e: Errno) -> PtraceError {
    if e == Errno::ESRCH {
        PtraceError::Gone {
            tid: tid.as_raw(),
            op,
        }
    } else {
        PtraceError::Failed {
            tid: tid.as_raw(),
            op,
            source: e,
        }
    }
}

/// Options for a checkpoint: the target must survive anything that goes wrong, so no
/// EXITKILL; seccomp filters must not veto our remote syscalls (suspending them needs
/// CAP_SYS_ADMIN: without it the option would make every seize fail with EPERM, and a
/// target with filters is refused by `access::check_target` instead).
/// TRACECLONE makes a fork-snapshot child start stopped.
pub fn checkpoint_options() -> Options {
    let base = Options::PTRACE_O_TRACESYSGOOD | Options::PTRACE_O_TRACECLONE;
    if super::access::Privileges::current().may_suspend_seccomp() {
        base | Options::from_bits_retain(PTRACE_O_SUSPEND_SECCOMP)
    } else {
        base
    }
}

/// Options for a process under restore: a half-built process must die with its restorer;
/// the job's other processes, forked by its root, are attached from birth (TRACEFORK).
pub fn restore_options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_EXITKILL
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEFORK
}

pub fn seize(tid: Pid, options: Options) -> Result<()> {
    check(tid, "seize", ptrace::seize(tid, options))
}

pub fn interrupt(tid: Pid) -> Result<()> {
    check(tid, "interrupt", ptrace::interrupt(tid))
}

pub fn detach(tid: Pid, sig: Option<Signal>) -> Result<()> {
    check(tid, "detach", ptrace::detach(tid, sig))
}

pub fn cont(tid: Pid, sig: Option<Signal>) -> Result<()> {
    check(tid, "cont", ptrace::cont(tid, sig))
}

pub fn resume_to_syscall(tid: Pid, sig: Option<Signal>) -> Result<()> {
    check(tid, "syscall", ptrace::syscall(tid, sig))
}

/// Why a traced thread stopped (or that it ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `PTRACE_EVENT_STOP` (after `PTRACE_INTERRUPT`, or a group stop under SEIZE).
    Interrupted,
    /// A syscall-enter or syscall-exit stop (`PTRACE_O_TRACESYSGOOD`).
    Syscall,
    /// Another ptrace event (clone, exec, exit ...), with its number.
    Event(i32),
    /// A signal is about to be delivered; the tracer decides whether it is.
    Signal(Signal),
    Exited(i32),
    Killed(Signal),
}

/// Exits that a tracer wait collected. The tracer of a process is often also its parent
/// (the supervisor): a wait during a checkpoint that meets the exit consumes it, and the
/// supervisor must still be able to report it.
static COLLECTED_EXITS: std::sync::Mutex<Vec<(i32, Stop)>> = std::sync::Mutex::new(Vec::new());

/// The exit of `pid` if a tracer wait already collected it.
pub fn take_collected_exit(pid: Pid) -> Option<Stop> {
    let mut exits = COLLECTED_EXITS.lock().unwrap_or_else(|e| e.into_inner());
    let i = exits.iter().position(|(p, _)| *p == pid.as_raw())?;
    Some(exits.swap_remove(i).1)
}

/// Waits for the next stop of one thread (`__WALL`: threads are not children).
pub fn wait_stop(tid: Pid, op: &'static str) -> Result<Stop> {
    let stop = wait_stop_raw(tid, op)?;
    if matches!(stop, Stop::Exited(_) | Stop::Killed(_)) {
        let mut exits = COLLECTED_EXITS.lock().unwrap_or_else(|e| e.into_inner());
        exits.push((tid.as_raw(), stop));
    }
    Ok(stop)
}

fn wait_stop_raw(tid: Pid, op: &'static str) -> Result<Stop> {
    loop {
        let status = match waitpid(tid, Some(WaitPidFlag::__WALL)) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(map_err(tid, op, e)),
            Ok(s) => s,
        };
        return Ok(match status {
            WaitStatus::Exited(_, code) => Stop::Exited(code),
            WaitStatus::Signaled(_, sig, _) => Stop::Killed(sig),
            WaitStatus::Stopped(_, sig) => Stop::Signal(sig),
            WaitStatus::PtraceSyscall(_) => Stop::Syscall,
            WaitStatus::PtraceEvent(_, _, event) if event == libc::PTRACE_EVENT_STOP => {
                Stop::Interrupted
            }
            WaitStatus::PtraceEvent(_, _, event) => Stop::Event(event),
            WaitStatus::Continued(_) | WaitStatus::StillAlive => continue,
        });
    }
}

pub fn get_regs(tid: Pid) -> Result<Registers> {
    ptrace::getregs(tid)
        .map(Registers::from)
        .map_err(|e| map_err(tid, "getregs", e))
}

pub fn set_regs(tid: Pid, regs: &Registers) -> Result<()> {
    check(tid, "setregs", ptrace::setregs(tid, (*regs).into()))
}

/// One raw ptrace request; every other function here goes through the typed nix API or
/// through this.
///
/// # Safety
/// `data` (and `addr`, for requests that read it as a pointer) must point at live memory
/// of the size and layout that `request` reads or writes.
unsafe fn raw_request(
    tid: Pid,
    op: &'static str,
    request: libc::c_uint,
    addr: usize,
    data: *mut libc::c_void,
) -> Result<libc::c_long> {
    Errno::clear();
    // SAFETY: forwarded to the caller (see above); the kernel touches nothing else.
    let ret = unsafe { libc::ptrace(request, tid.as_raw(), addr, data) };
    if ret == -1 && Errno::last() != Errno::UnknownErrno {
        return Err(map_err(tid, op, Errno::last()));
    }
    Ok(ret)
}

/// The thread's full XSAVE area (x87, SSE, AVX, AVX-512, ...), as many bytes as the kernel
/// writes.
pub fn get_xstate(tid: Pid) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_BUFFER];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the iovec points at `buf` (XSTATE_BUFFER bytes), which outlives the call;
    // the kernel writes at most iov_len bytes and shrinks iov_len to what it wrote.
    unsafe {
        raw_request(
            tid,
            "getregset(NT_X86_XSTATE)",
            libc::PTRACE_GETREGSET,
            NT_X86_XSTATE as usize,
            (&raw mut iov).cast(),
        )
    }?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: Pid, xstate: &[u8]) -> Result<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr().cast(),
        iov_len: copy.len(),
    };
    // SAFETY: the iovec describes `copy`, live for the call; the kernel only reads it.
    unsafe {
        raw_request(
            tid,
            "setregset(NT_X86_XSTATE)",
            libc::PTRACE_SETREGSET,
            NT_X86_XSTATE as usize,
            (&raw mut iov).cast(),
        )
    }?;
    Ok(())
}

pub fn get_sigmask(tid: Pid) -> Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: `mask` is a live u64, the size passed in `addr`.
    unsafe {
        raw_request(
            tid,
            "getsigmask",
            libc::PTRACE_GETSIGMASK,
            std::mem::size_of::<u64>(),
            (&raw mut mask).cast(),
        )
    }?;
    Ok(mask)
}

pub fn set_sigmask(tid: Pid, mask: u64) -> Result<()> {
    let mut mask = mask;
    // SAFETY: `mask` is a live u64, the size passed in `addr`.
    unsafe {
        raw_request(
            tid,
            "setsigmask",
            libc::PTRACE_SETSIGMASK,
            std::mem::size_of::<u64>(),
            (&raw mut mask).cast(),
        )
    }?;
    Ok(())
}

/// `struct ptrace_peeksiginfo_args` (linux/ptrace.h).
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

const SIGINFO_BYTES: usize = 128;
const PEEK_BATCH: usize = 32;

/// Queued, undelivered signals of the thread (`shared = false`) or of its whole process
/// (`shared = true`), as raw `siginfo_t`s, oldest first. Nothing is dequeued.
pub fn pending_signals(tid: Pid, shared: bool) -> Result<Vec<Vec<u8>>> {
    let mut found = Vec::new();
    let mut buf = vec![0u8; SIGINFO_BYTES * PEEK_BATCH];
    loop {
        let mut args = PeekSiginfoArgs {
            off: found.len() as u64,
            flags: if shared {
                libc::PTRACE_PEEKSIGINFO_SHARED
            } else {
                0
            },
            nr: PEEK_BATCH as i32,
        };
        // SAFETY: `args` is a live ptrace_peeksiginfo_args; `buf` holds PEEK_BATCH
        // siginfos, the most it asks for.
        let n = unsafe {
            raw_request(
                tid,
                "peeksiginfo",
                libc::PTRACE_PEEKSIGINFO,
                (&raw mut args) as usize,
                buf.as_mut_ptr().cast(),
            )
        }?;
        if n <= 0 {
            return Ok(found);
        }
        found.extend(
            buf.chunks_exact(SIGINFO_BYTES)
                .take(n as usize)
                .map(<[u8]>::to_vec),
        );
    }
}

/// `struct ptrace_rseq_configuration` (linux/ptrace.h).
#[repr(C)]
#[derive(Default)]
struct RseqConfiguration {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

/// The thread's rseq registration, if it has one.
pub fn get_rseq(tid: Pid) -> Result<Option<RseqState>> {
    let mut conf = RseqConfiguration::default();
    // SAFETY: `conf` is a live ptrace_rseq_configuration, the size passed in `addr`.
    unsafe {
        raw_request(
            tid,
            "get_rseq_configuration",
            libc::PTRACE_GET_RSEQ_CONFIGURATION,
            std::mem::size_of::<RseqConfiguration>(),
            (&raw mut conf).cast(),
        )
    }?;
    Ok((conf.rseq_abi_pointer != 0).then_some(RseqState {
        addr: conf.rseq_abi_pointer,
        len: conf.rseq_abi_size,
        signature: conf.signature,
    }))
}

/// `Registers` and libc's `user_regs_struct` have the same fields under the same names.
macro_rules! convert_registers {
    ($($field:ident),* $(,)?) => {
        impl From<libc::user_regs_struct> for Registers {
            fn from(r: libc::user_regs_struct) -> Self {
                Registers { $($field: r.$field),* }
            }
        }

        impl From<Registers> for libc::user_regs_struct {
            fn from(r: Registers) -> Self {
                libc::user_regs_struct { $($field: r.$field),* }
            }
        }
    };
}

convert_registers!(
    r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs,
    eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs,
);
