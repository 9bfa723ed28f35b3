//! Running system calls inside a stopped thread of the target.
//!
//! One call at a time: the thread is pointed at an existing `syscall` instruction (the vDSO
//! has some) and run with `PTRACE_SYSCALL` to the syscall-exit stop, so the instruction
//! after the gadget never runs. Many calls at once: the thread runs the op-table stub (see
//! `stub`), loaded into a page mapped for it, to its final `int3`.

use super::memory::ProcessMemory;
use super::ptrace::{self, PtraceError, SignalNumber, Stop};
use crate::image::format::Registers;
use nix::unistd::Pid;

/// Kernel-internal "restart me" codes a thread shows while stopped inside a syscall
/// (include/linux/errno.h).
pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error("remote syscall {nr} in thread {tid}: unexpected stop {stop:?}")]
    UnexpectedStop { tid: i32, nr: u64, stop: Stop },
    #[error("remote syscall {name} in thread {tid} failed")]
    Syscall {
        tid: i32,
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no `syscall` instruction found in the target's vDSO or libc")]
    NoGadget,
    #[error("thread {tid} stopped at {rip:#x} instead of the end of the injected code")]
    StubStopped { tid: i32, rip: u64 },
}

/// A thread borrowed to run syscalls; `finish` gives it back exactly as it was.
pub struct RemoteThread {
    tid: Pid,
    saved: Registers,
    gadget: u64,
    /// A signal that stopped the thread while borrowed, to hand back on detach. A frozen
    /// thread blocks all signals but a few (see `freeze`), so this is one of those.
    pub held_signal: Option<SignalNumber>,
    /// The thread sits in a syscall-exit stop (after `syscall`), where the kernel applies
    /// no syscall-restart logic any more; after a stub run it sits in a signal-delivery
    /// stop, where it still does.
    at_syscall_exit: bool,
}

impl RemoteThread {
    pub fn new(tid: Pid, gadget: u64) -> Result<Self, RemoteError> {
        Ok(RemoteThread {
            tid,
            saved: ptrace::get_regs(tid)?,
            gadget,
            held_signal: None,
            at_syscall_exit: false,
        })
    }

    pub fn saved_regs(&self) -> &Registers {
        &self.saved
    }

    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// The `syscall` instruction this thread's remote calls go through.
    pub fn gadget(&self) -> u64 {
        self.gadget
    }

    /// Runs syscall `nr`; returns the raw result (negative errno on failure).
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64, RemoteError> {
        let mut regs = self.saved;
        regs.rip = self.gadget;
        regs.rax = nr as u64;
        // orig_rax = -1: the kernel must not apply its syscall-restart logic to our regs.
        regs.orig_rax = u64::MAX;
        let slots = [
            &mut regs.rdi,
            &mut regs.rsi,
            &mut regs.rdx,
            &mut regs.r10,
            &mut regs.r8,
            &mut regs.r9,
        ];
        for (slot, value) in slots.into_iter().zip(args) {
            *slot = *value;
        }
        ptrace::set_regs(self.tid, &regs)?;
        self.step_to_syscall_stop(nr)?; // entry
        self.step_to_syscall_stop(nr)?; // exit
        self.at_syscall_exit = true;
        Ok(ptrace::get_regs(self.tid)?.rax as i64)
    }

    /// Lets the thread run the stub at `entry` (its `table_entry`) on `count` ops at
    /// `table`; `wait_stub` collects it. Several threads may run at once, each on its own
    /// table.
    pub fn start_stub(&mut self, entry: u64, table: u64, count: u64) -> Result<(), RemoteError> {
        let mut regs = self.saved;
        regs.rip = entry;
        regs.rbx = table;
        regs.r12 = count;
        // As for a single syscall: no restart logic may touch the stub's registers.
        regs.orig_rax = u64::MAX;
        ptrace::set_regs(self.tid, &regs)?;
        Ok(ptrace::cont(self.tid, None)?)
    }

    /// Waits for the stub's final `int3` (`done_rip` is the address after it).
    pub fn wait_stub(&mut self, done_rip: u64) -> Result<(), RemoteError> {
        loop {
            match ptrace::wait_stop(self.tid, "injected code")? {
                Stop::Signal(SignalNumber::SIGTRAP) => {
                    self.at_syscall_exit = false;
                    let rip = ptrace::get_regs(self.tid)?.rip;
                    if rip == done_rip {
                        return Ok(());
                    }
                    return Err(RemoteError::StubStopped {
                        tid: self.tid.as_raw(),
                        rip,
                    });
                }
                // A signal for the target: keep it for later, do not deliver it now.
                Stop::Signal(sig) => {
                    self.held_signal = Some(sig);
                    ptrace::cont(self.tid, None)?;
                }
                Stop::Interrupted | Stop::Event(_) | Stop::Syscall => {
                    ptrace::cont(self.tid, None)?;
                }
                stop => {
                    return Err(RemoteError::UnexpectedStop {
                        tid: self.tid.as_raw(),
                        nr: 0,
                        stop,
                    });
                }
            }
        }
    }

    /// Like `syscall`, but a negative result becomes an error naming the call.
    pub fn checked(
        &mut self,
        name: &'static str,
        nr: i64,
        args: &[u64],
    ) -> Result<u64, RemoteError> {
        let ret = self.syscall(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(RemoteError::Syscall {
                tid: self.tid.as_raw(),
                name,
                source: std::io::Error::from_raw_os_error(-ret as i32),
            });
        }
        Ok(ret as u64)
    }

    fn step_to_syscall_stop(&mut self, nr: i64) -> Result<(), RemoteError> {
        loop {
            ptrace::resume_to_syscall(self.tid, None)?;
            match ptrace::wait_stop(self.tid, "remote syscall")? {
                Stop::Syscall => return Ok(()),
                // A signal for the target: keep it for later, do not deliver it now.
                Stop::Signal(sig) => self.held_signal = Some(sig),
                // A clone made by this very call (PTRACE_O_TRACECLONE), or a group stop.
                Stop::Interrupted | Stop::Event(_) => {}
                stop => {
                    return Err(RemoteError::UnexpectedStop {
                        tid: self.tid.as_raw(),
                        nr: nr as u64,
                        stop,
                    });
                }
            }
        }
    }

    /// Puts the thread's registers back. In a syscall-exit stop the kernel no longer
    /// restarts an interrupted syscall by itself, so do what it would have done on the way
    /// out of the original stop; in a signal-delivery stop it still will.
    pub fn finish(self) -> Result<Option<SignalNumber>, RemoteError> {
        let regs = if self.at_syscall_exit {
            live_restart(&self.saved)
        } else {
            self.saved
        };
        ptrace::set_regs(self.tid, &regs)?;
        Ok(self.held_signal)
    }
}

/// The registers with which a thread interrupted inside a syscall continues in the same
/// kernel (arch/x86/kernel/signal.c, no handler runs).
fn live_restart(regs: &Registers) -> Registers {
    let mut r = *regs;
    if (r.orig_rax as i64) < 0 {
        return r;
    }
    match -(r.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            r.rax = r.orig_rax;
            r.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => {
            r.rax = libc::SYS_restart_syscall as u64;
            r.rip -= 2;
        }
        _ => {}
    }
    r
}

/// Finds the bytes `0f 05` (`syscall`) in an executable region of the target.
pub fn find_gadget(mem: &ProcessMemory, regions: &[(u64, u64)]) -> Result<u64, RemoteError> {
    for &(start, end) in regions {
        // Page by page: the vDSO may be shorter than the range asked for.
        let bytes: Vec<u8> = (start..end)
            .step_by(crate::image::format::PAGE_SIZE as usize)
            .map_while(|page| {
                mem.read(page, crate::image::format::PAGE_SIZE as usize)
                    .ok()
            })
            .flatten()
            .collect();
        if let Some(i) = bytes.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Ok(start + i as u64);
        }
    }
    Err(RemoteError::NoGadget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_syscall(rax: i64) -> Registers {
        Registers {
            rax: rax as u64,
            orig_rax: 35,
            rip: 0x1002,
            ..Registers::default()
        }
    }

    #[test]
    fn interrupted_syscalls_are_rewound_to_run_again() {
        for code in [ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND] {
            let r = live_restart(&in_syscall(-code));
            assert_eq!((r.rax, r.rip), (35, 0x1000));
        }
        let r = live_restart(&in_syscall(-ERESTART_RESTARTBLOCK));
        assert_eq!((r.rax, r.rip), (libc::SYS_restart_syscall as u64, 0x1000));
    }

    #[test]
    fn finished_syscalls_and_user_code_are_left_alone() {
        assert_eq!(live_restart(&in_syscall(-4)).rip, 0x1002);
        let user = Registers {
            orig_rax: u64::MAX,
            rax: (-ERESTARTSYS) as u64,
            rip: 7,
            ..Registers::default()
        };
        assert_eq!(live_restart(&user), user);
    }
}
