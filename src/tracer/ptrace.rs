//! The one place that calls ptrace: typed, safe wrappers over the requests mlckpt uses.
//!
//! nix covers the common requests; the x86 xstate regset, the signal mask and the rseq
//! configuration are not in nix, so they are wrapped here once around a single raw call.

use super::sys;
use crate::image::format::{Registers, RseqState};
use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::Signal;
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

/// A signal number, real-time signals included. nix's `Signal` has no SIGRTMIN..SIGRTMAX,
/// but a tracer sees every signal the target is sent: a stop for one it cannot name must
/// not become an error (the kernel has already taken that signal off the queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalNumber(pub i32);

impl SignalNumber {
    pub const SIGTRAP: SignalNumber = SignalNumber(libc::SIGTRAP);
    pub const SIGSTOP: SignalNumber = SignalNumber(libc::SIGSTOP);
}

impl From<Signal> for SignalNumber {
    fn from(sig: Signal) -> Self {
        SignalNumber(sig as i32)
    }
}

impl std::fmt::Display for SignalNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match Signal::try_from(self.0) {
            Ok(sig) => f.write_str(sig.as_str()),
            Err(_) => write!(f, "signal {}", self.0),
        }
    }
}

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

/// Options of the signal guard (`tracer::guard`), which keeps a supervised job traced
/// between checkpoints: the checkpoint's own, less seccomp suspension (the job's filters
/// must keep working while it runs; a checkpoint sets it for its duration with
/// [`set_options`]), plus every way a process or thread is born, so that the job's new
/// members are traced from their first instruction. The exit stop lets the guard go of a
/// thread before its exit is reported: a traced thread's exit goes to its tracer first,
/// and its parent could not collect it when its pidfd says it may.
pub fn guard_options() -> Options {
    Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACEEXEC
        | Options::PTRACE_O_TRACEEXIT
}

/// [`guard_options`] with what a checkpoint needs on top (seccomp suspension when allowed),
/// less the exit stop: a checkpoint's waits (a `--kill`, the end of a snapshot process,
/// which inherits the options) expect a thread that ends to simply end.
pub fn guard_checkpoint_options() -> Options {
    (guard_options() - Options::PTRACE_O_TRACEEXIT) | checkpoint_options()
}

pub fn set_options(tid: Pid, options: Options) -> Result<()> {
    check(tid, "setoptions", ptrace::setoptions(tid, options))
}

/// `PTRACE_LISTEN`: leaves a thread in its group stop (`SIGSTOP` and friends) without
/// holding it in a ptrace stop: it continues on `SIGCONT`, as it would untraced, and
/// reports a stop when it does.
pub fn listen(tid: Pid) -> Result<()> {
    // SAFETY: PTRACE_LISTEN reads neither `addr` nor `data`.
    unsafe { raw_request(tid, "listen", libc::PTRACE_LISTEN, 0, std::ptr::null_mut()) }.map(drop)
}

/// The message of the last ptrace event (the new thread's or process's id at a clone,
/// fork or vfork event).
pub fn event_message(tid: Pid) -> Result<libc::c_long> {
    ptrace::getevent(tid).map_err(|e| map_err(tid, "geteventmsg", e))
}

/// The `siginfo_t` of the signal a thread is stopped for (signal-delivery stop).
pub fn get_siginfo(tid: Pid) -> Result<libc::siginfo_t> {
    ptrace::getsiginfo(tid).map_err(|e| map_err(tid, "getsiginfo", e))
}

/// Replaces the `siginfo_t` of the signal a thread is stopped for: a signal re-sent by the
/// tracer reaches the program with its original sender and code.
pub fn set_siginfo(tid: Pid, info: &libc::siginfo_t) -> Result<()> {
    check(tid, "setsiginfo", ptrace::setsiginfo(tid, info))
}

pub fn seize(tid: Pid, options: Options) -> Result<()> {
    check(tid, "seize", ptrace::seize(tid, options))
}

pub fn interrupt(tid: Pid) -> Result<()> {
    check(tid, "interrupt", ptrace::interrupt(tid))
}

/// Lets the thread go, delivering `sig` (any signal, real-time ones included) if given.
pub fn detach(tid: Pid, sig: Option<SignalNumber>) -> Result<()> {
    resume(tid, "detach", libc::PTRACE_DETACH, sig)
}

pub fn cont(tid: Pid, sig: Option<SignalNumber>) -> Result<()> {
    resume(tid, "cont", libc::PTRACE_CONT, sig)
}

pub fn resume_to_syscall(tid: Pid, sig: Option<SignalNumber>) -> Result<()> {
    resume(tid, "syscall", libc::PTRACE_SYSCALL, sig)
}

/// A request that restarts a stopped thread, with the signal to deliver in `data`.
fn resume(
    tid: Pid,
    op: &'static str,
    request: libc::c_uint,
    sig: Option<SignalNumber>,
) -> Result<()> {
    let signo = sig.map_or(0, |s| s.0);
    // SAFETY: for PTRACE_CONT, PTRACE_SYSCALL and PTRACE_DETACH the kernel reads `data` as
    // a signal number, never as a pointer; `addr` is ignored.
    unsafe { raw_request(tid, op, request, 0, signo as usize as *mut libc::c_void) }.map(drop)
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
    /// A signal is about to be delivered; the tracer decides whether it is. The kernel
    /// has taken it off the queue: resumed without it, it is lost.
    Signal(SignalNumber),
    Exited(i32),
    Killed(SignalNumber),
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
    wait_stop_signal(tid, op).map(|(stop, _)| stop)
}

/// Waits for the next stop of one thread, with the stop signal of an event stop: the
/// stopping signal (`SIGSTOP`, `SIGTSTP` ...) for a group stop, `SIGTRAP` for an
/// interrupt; 0 for other stops.
pub fn wait_stop_signal(tid: Pid, op: &'static str) -> Result<(Stop, i32)> {
    loop {
        let status = match sys::wait_status(tid, libc::__WALL) {
            Err(Errno::EINTR) | Ok(None) => continue,
            Err(e) => return Err(map_err(tid, op, e)),
            Ok(Some(s)) => s,
        };
        if let Some(stop) = decode_status(status) {
            remember_exit(tid, stop);
            return Ok((stop, event_stop_signal(status)));
        }
    }
}

/// The next stop or exit of any thread we trace or any child of ours, without waiting
/// (`waitpid(-1, __WALL | WNOHANG)`): the thread, what happened, and the stop signal as in
/// [`wait_stop_signal`]. Exits are remembered for [`take_collected_exit`].
pub fn poll_any_stop() -> std::result::Result<Option<(Pid, Stop, i32)>, Errno> {
    poll_status(-1)
}

/// [`poll_any_stop`] for one thread.
pub fn poll_stop(tid: Pid) -> std::result::Result<Option<(Stop, i32)>, Errno> {
    Ok(poll_status(tid.as_raw())?.map(|(_, stop, sig)| (stop, sig)))
}

fn poll_status(pid: i32) -> std::result::Result<Option<(Pid, Stop, i32)>, Errno> {
    loop {
        let status = match sys::wait_any_status(pid, libc::__WALL | libc::WNOHANG) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
            Ok(None) => return Ok(None),
            Ok(Some(found)) => found,
        };
        let (tid, status) = (Pid::from_raw(status.0), status.1);
        let Some(stop) = decode_status(status) else {
            continue;
        };
        remember_exit(tid, stop);
        return Ok(Some((tid, stop, event_stop_signal(status))));
    }
}

/// WSTOPSIG of a `PTRACE_EVENT_STOP` status, 0 for any other status.
fn event_stop_signal(status: i32) -> i32 {
    if libc::WIFSTOPPED(status) && status >> 16 == libc::PTRACE_EVENT_STOP {
        libc::WSTOPSIG(status)
    } else {
        0
    }
}

fn remember_exit(tid: Pid, stop: Stop) {
    if matches!(stop, Stop::Exited(_) | Stop::Killed(_)) {
        let mut exits = COLLECTED_EXITS.lock().unwrap_or_else(|e| e.into_inner());
        exits.push((tid.as_raw(), stop));
    }
}

/// Waits until thread `tid` has ended (and collects it), for at most `patience`.
/// `Ok(false)`: it has not ended by then.
pub fn wait_exit(tid: Pid, patience: std::time::Duration) -> Result<bool> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match sys::wait_status(tid, libc::__WALL | libc::WNOHANG) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(map_err(tid, "wait for exit", e)),
            Ok(Some(status)) => match decode_status(status) {
                Some(stop @ (Stop::Exited(_) | Stop::Killed(_))) => {
                    remember_exit(tid, stop);
                    return Ok(true);
                }
                // A stop on its way out (its exit stop): on with it, or it never ends.
                Some(_) => drop(cont(tid, None)),
                None => {}
            },
            Ok(None) if std::time::Instant::now() >= deadline => return Ok(false),
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
}

/// What a `waitpid` status says about a traced thread; None for "continued".
fn decode_status(status: i32) -> Option<Stop> {
    if libc::WIFEXITED(status) {
        return Some(Stop::Exited(libc::WEXITSTATUS(status)));
    }
    if libc::WIFSIGNALED(status) {
        return Some(Stop::Killed(SignalNumber(libc::WTERMSIG(status))));
    }
    if !libc::WIFSTOPPED(status) {
        return None;
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    Some(if sig == libc::SIGTRAP | 0x80 {
        Stop::Syscall
    } else if event == libc::PTRACE_EVENT_STOP {
        Stop::Interrupted
    } else if event != 0 {
        Stop::Event(event)
    } else {
        Stop::Signal(SignalNumber(sig))
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop status as the kernel encodes it: signal and event in the high bytes, 0x7f.
    fn stopped(sig: i32, event: i32) -> i32 {
        (((event << 8) | sig) << 8) | 0x7f
    }

    #[test]
    fn real_time_signals_are_named_not_refused() {
        let rt = libc::SIGRTMIN();
        assert_eq!(
            decode_status(stopped(rt, 0)),
            Some(Stop::Signal(SignalNumber(rt)))
        );
        assert_eq!(decode_status(rt), Some(Stop::Killed(SignalNumber(rt))));
        assert_eq!(SignalNumber(rt).to_string(), format!("signal {rt}"));
        assert_eq!(SignalNumber::SIGTRAP.to_string(), "SIGTRAP");
    }

    #[test]
    fn ptrace_stops_are_told_apart() {
        assert_eq!(decode_status(3 << 8), Some(Stop::Exited(3)));
        let syscall = stopped(libc::SIGTRAP | 0x80, 0);
        assert_eq!(decode_status(syscall), Some(Stop::Syscall));
        let interrupt = stopped(libc::SIGTRAP, libc::PTRACE_EVENT_STOP);
        assert_eq!(decode_status(interrupt), Some(Stop::Interrupted));
        let clone = stopped(libc::SIGTRAP, libc::PTRACE_EVENT_CLONE);
        assert_eq!(
            decode_status(clone),
            Some(Stop::Event(libc::PTRACE_EVENT_CLONE))
        );
        assert_eq!(decode_status(0xffff), None); // continued
    }
}
