//! Capturing one frozen thread: registers, xstate, masks, and the kernel-side thread state
//! only the thread itself can report (asked by `capture`, through syscalls run inside it).

use super::memory::{MemoryError, ProcessMemory};
use super::ptrace;
use super::remote::{ERESTART_RESTARTBLOCK, ERESTARTNOHAND, ERESTARTNOINTR, ERESTARTSYS};
use crate::image::format::{
    AltStack, InterruptedSyscall, PendingSignal, Registers, RobustList, RseqState, SyscallResume,
    ThreadState,
};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    #[error(transparent)]
    Ptrace(#[from] ptrace::PtraceError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(
        "thread {tid} is inside syscall {nr} but the bytes before rip {rip:#x} are not a \
         `syscall` instruction; cannot rewind it"
    )]
    NotASyscall { tid: i32, nr: u64, rip: u64 },
}

/// What the thread itself tells, asked by syscalls run inside it (some only it can
/// answer; the others are cheaper so than through `/proc` one thread at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelThreadState {
    /// `set_tid_address` value (`prctl(PR_GET_TID_ADDRESS)`).
    pub clear_child_tid: u64,
    pub sigaltstack: Option<AltStack>,
    /// `prctl(PR_GET_NAME)`.
    pub name: String,
    /// `sched_getaffinity`, as 64-bit mask words.
    pub affinity: Vec<u64>,
    /// `get_robust_list`.
    pub robust_list: Option<RobustList>,
}

/// Captures frozen thread `tid`, whose registers at the freeze were `regs`, and whose
/// signal mask was `sigmask` (None: the thread's mask now is still its own).
pub fn capture(
    tid: Pid,
    regs: &Registers,
    mem: &ProcessMemory,
    kernel: KernelThreadState,
    sigmask: Option<u64>,
) -> Result<ThreadState, ThreadError> {
    let sigmask = match sigmask {
        Some(mask) => mask,
        None => ptrace::get_sigmask(tid)?,
    };
    let rseq = ptrace::get_rseq(tid)?;
    let (mut resume, syscall) = resume_state(tid, regs, mem)?;
    if let Some(rseq) = rseq {
        resume.rip = rseq_abort_target(mem, &rseq, resume.rip)?.unwrap_or(resume.rip);
    }
    Ok(ThreadState {
        tid: tid.as_raw(),
        name: kernel.name,
        affinity: kernel.affinity,
        regs: resume,
        xstate: ptrace::get_xstate(tid)?,
        sigmask,
        pending_signals: pending_signals(tid, false)?,
        rseq,
        robust_list: kernel.robust_list,
        clear_child_tid: kernel.clear_child_tid,
        sigaltstack: kernel.sigaltstack,
        syscall,
    })
}

/// The thread's (or, with `shared`, the process's) queued signals.
pub fn pending_signals(tid: Pid, shared: bool) -> Result<Vec<PendingSignal>, ThreadError> {
    Ok(ptrace::pending_signals(tid, shared)?
        .into_iter()
        .map(|siginfo| PendingSignal {
            signo: i32::from_le_bytes(siginfo[0..4].try_into().expect("4 bytes")),
            siginfo,
        })
        // An intercepted signal that came while the job was frozen is the guard's: the
        // live job gets it when it runs on, the image must not (a restored job would act
        // on it at once, before any guard is there).
        .filter(|p| !super::guard::intercepts(super::ptrace::SignalNumber(p.signo)))
        .collect())
}

fn read_u64(mem: &ProcessMemory, addr: u64) -> Result<u64, MemoryError> {
    let bytes = mem.read(addr, 8)?;
    Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
}

const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// The registers the thread resumes with after restore: a syscall it was blocked in is
/// rewound to run again; one the kernel would resume through its restart block (which does
/// not survive) returns `-EINTR` instead, as an interrupted call may.
fn resume_state(
    tid: Pid,
    regs: &Registers,
    mem: &ProcessMemory,
) -> Result<(Registers, Option<InterruptedSyscall>), ThreadError> {
    let mut r = *regs;
    r.orig_rax = u64::MAX;
    let nr = regs.orig_rax;
    if (nr as i64) < 0 {
        return Ok((r, None));
    }
    let resume = match -(regs.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => SyscallResume::Restart,
        ERESTART_RESTARTBLOCK if reruns_unchanged(nr, regs) => SyscallResume::Restart,
        ERESTART_RESTARTBLOCK => SyscallResume::Eintr,
        _ => return Ok((r, None)),
    };
    match resume {
        SyscallResume::Restart => {
            if mem.read(regs.rip - 2, 2)? != SYSCALL_INSN {
                return Err(ThreadError::NotASyscall {
                    tid: tid.as_raw(),
                    nr,
                    rip: regs.rip,
                });
            }
            r.rax = nr;
            r.rip -= 2;
        }
        SyscallResume::Eintr => r.rax = (-libc::EINTR) as u64,
    }
    Ok((r, Some(InterruptedSyscall { nr, resume })))
}

/// A call the kernel resumes through its restart block, but which running again from the
/// start resumes exactly: `poll` without a timeout (`poll` always takes the restart block;
/// with no time to count down, the block only runs the same call again). An EINTR from it
/// ends programs that block every signal and rely on a signalfd, such as script(1).
fn reruns_unchanged(nr: u64, regs: &Registers) -> bool {
    let timeout_ms = regs.rdx as u32 as i32;
    nr == libc::SYS_poll as u64 && timeout_ms < 0
}

/// If `rip` is inside the thread's current rseq critical section, the abort handler it
/// must continue at (the kernel does the same when it preempts such a thread).
fn rseq_abort_target(
    mem: &ProcessMemory,
    rseq: &RseqState,
    rip: u64,
) -> Result<Option<u64>, MemoryError> {
    // struct rseq { u32 cpu_id_start; u32 cpu_id; u64 rseq_cs; ... }
    let cs = read_u64(mem, rseq.addr + 8)?;
    if cs == 0 {
        return Ok(None);
    }
    // struct rseq_cs { u32 version; u32 flags; u64 start_ip; u64 post_commit_offset; u64 abort_ip; }
    let raw = mem.read(cs, 32)?;
    let word = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
    let (start, len, abort) = (word(8), word(16), word(24));
    Ok((rip >= start && rip < start.wrapping_add(len)).then_some(abort))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_poll_without_timeout_reruns() {
        let regs = |timeout: u64| Registers {
            rdx: timeout,
            ..Registers::default()
        };
        let poll = libc::SYS_poll as u64;
        assert!(reruns_unchanged(poll, &regs(u64::from(u32::MAX)))); // -1 as an int
        assert!(!reruns_unchanged(poll, &regs(1000)));
        assert!(!reruns_unchanged(poll, &regs(0)));
        let nanosleep = libc::SYS_clock_nanosleep as u64;
        assert!(!reruns_unchanged(nanosleep, &regs(u64::from(u32::MAX))));
    }
}
