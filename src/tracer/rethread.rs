//! The last phase of a restore, once the stub has rebuilt memory and stopped: the other
//! threads are recreated with their TIDs, pending signals are queued again, the stub is
//! unmapped and every thread gets its final registers. No thread runs before all are done.

use super::memory::ProcessMemory;
use super::ptrace::{self, Stop};
use super::remote::RemoteThread;
use super::restore::RestoreError;
use crate::image::format::{PendingSignal, ThreadState};
use nix::unistd::Pid;

/// Offsets in the stub's data page, reused as scratch for the remote calls made here.
const CLONE_ARGS: u64 = 0;
const SET_TID: u64 = 96;
const ALT_STACK: u64 = 128;
const SIGINFO: u64 = 256;
const NAME: u64 = 512;

/// Threads share everything a pthread shares (what glibc's pthread_create passes), plus
/// the TLS pointer and the clear-child-tid word `pthread_join` waits on.
const THREAD_FLAGS: i32 = libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_CHILD_CLEARTID;

/// Drives the restored main thread and the threads it creates.
pub struct Rethreader<'a> {
    pub pid: Pid,
    pub main: RemoteThread,
    pub mem: ProcessMemory,
    /// The stub's data page.
    pub scratch: u64,
    pub gadget: u64,
    /// The image's threads; never empty (`new` refuses that), the leader first.
    pub threads: &'a [ThreadState],
    /// The process got a new PID (`--new-pid`): threads get new TIDs too.
    pub new_ids: bool,
    created: Vec<Pid>,
}

impl<'a> Rethreader<'a> {
    pub fn new(
        pid: Pid,
        gadget: u64,
        scratch: u64,
        threads: &'a [ThreadState],
        new_ids: bool,
    ) -> Result<Self, RestoreError> {
        if threads.is_empty() {
            return Err(RestoreError::NoThreads);
        }
        Ok(Rethreader {
            pid,
            main: RemoteThread::new(pid, gadget)?,
            mem: ProcessMemory::open(pid)?,
            scratch,
            gadget,
            threads,
            new_ids,
            created: Vec::new(),
        })
    }

    /// Gives the leader (already the process) its own kernel state, then creates every
    /// other thread, each left stopped with its final state.
    pub fn recreate_threads(&mut self) -> Result<(), RestoreError> {
        let (leader, others) = self.threads.split_first().ok_or(RestoreError::NoThreads)?;
        // The others get theirs from clone3 (CLONE_CHILD_CLEARTID).
        self.main.checked(
            "set_tid_address",
            libc::SYS_set_tid_address,
            &[leader.clear_child_tid],
        )?;
        thread_state(&self.mem, self.scratch, &mut self.main, self.pid, leader)?;
        if self.new_ids && leader.clear_child_tid != 0 {
            // glibc caches each thread's TID in its descriptor, at the very word the
            // kernel clears at thread exit: with a new PID it must say the new one.
            self.mem
                .write(leader.clear_child_tid, &self.pid.as_raw().to_le_bytes())?;
        }
        for t in others {
            let tid = self.spawn(t)?;
            self.created.push(tid);
            let mut remote = RemoteThread::new(tid, self.gadget)?;
            thread_state(&self.mem, self.scratch, &mut remote, tid, t)?;
            set_final_state(tid, t)?;
        }
        Ok(())
    }

    /// `clone3` run by the main thread, with the thread's original TID.
    fn spawn(&mut self, t: &ThreadState) -> Result<Pid, RestoreError> {
        let args = clone_args(t, self.scratch + SET_TID, self.new_ids);
        self.mem.write(self.scratch + CLONE_ARGS, &args)?;
        self.mem
            .write(self.scratch + SET_TID, &(t.tid as u64).to_le_bytes())?;
        let tid = self.main.checked(
            "clone3(thread)",
            libc::SYS_clone3,
            &[self.scratch + CLONE_ARGS, args.len() as u64],
        )?;
        let tid = Pid::from_raw(tid as i32);
        // Auto-attached (PTRACE_O_TRACECLONE): it starts in a stop, before any instruction.
        loop {
            match ptrace::wait_stop(tid, "new thread")? {
                Stop::Interrupted | Stop::Event(_) => return Ok(tid),
                Stop::Signal(_) | Stop::Syscall => ptrace::cont(tid, None)?,
                stop => {
                    return Err(RestoreError::Unexpected(format!(
                        "new thread {tid}: {stop:?}"
                    )));
                }
            }
        }
    }

    /// Queues the image's pending signals again. The calls run inside the restored
    /// process, from its leader: the kernel only lets a process queue kernel-style
    /// siginfos (si_code >= 0) to itself. All signals are blocked until the final masks
    /// are set, so they stay pending.
    pub fn requeue_signals(
        &mut self,
        process_pending: &[PendingSignal],
    ) -> Result<(), RestoreError> {
        let pid = self.pid.as_raw() as u64;
        let buffer = self.scratch + SIGINFO;
        for p in process_pending {
            self.mem.write(buffer, &p.siginfo)?;
            self.main.checked(
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                &[pid, p.signo as u64, buffer],
            )?;
        }
        // The TIDs the threads have now (new ones under --new-pid), in image order.
        let tids = std::iter::once(self.pid).chain(self.created.iter().copied());
        for (t, tid) in self.threads.iter().zip(tids) {
            let tid = tid.as_raw() as u64;
            for p in &t.pending_signals {
                self.mem.write(buffer, &p.siginfo)?;
                self.main.checked(
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    &[pid, tid, p.signo as u64, buffer],
                )?;
            }
        }
        Ok(())
    }

    /// Unmaps the stub from inside, gives the leader its final state and lets all go.
    /// With `stopped`, the process goes into a group stop (SIGSTOP) before it runs a single
    /// instruction of its own: it was stopped at checkpoint time.
    pub fn release(
        mut self,
        stub_base: u64,
        stub_len: u64,
        stopped: bool,
    ) -> Result<(), RestoreError> {
        self.main.checked(
            "munmap(restorer stub)",
            libc::SYS_munmap,
            &[stub_base, stub_len],
        )?;
        let leader = self.threads.first().ok_or(RestoreError::NoThreads)?;
        set_final_state(self.pid, leader)?;
        let (first, later) = match (stopped, self.main.held_signal) {
            (true, None) => (Some(nix::sys::signal::Signal::SIGSTOP), None),
            (true, held) => (held, Some(nix::sys::signal::Signal::SIGSTOP)),
            (false, held) => (held, None),
        };
        if stopped {
            // The main thread first: its stop stops the others before they run.
            ptrace::detach(self.pid, first)?;
        }
        for tid in &self.created {
            ptrace::detach(*tid, None)?;
        }
        if !stopped {
            ptrace::detach(self.pid, first)?;
        }
        if let Some(sig) = later {
            let _ = nix::sys::signal::kill(self.pid, sig);
        }
        Ok(())
    }
}

/// Kernel state a thread can only set for itself (run in it through `remote`): name
/// (PR_SET_NAME), robust futex list, rseq, sigaltstack; and its CPU affinity, left as it
/// is (with a note) when this node cannot satisfy the image's CPU list.
fn thread_state(
    mem: &ProcessMemory,
    scratch: u64,
    remote: &mut RemoteThread,
    tid: Pid,
    t: &ThreadState,
) -> Result<(), RestoreError> {
    if !t.name.is_empty() {
        let mut name = t.name.as_bytes()[..t.name.len().min(15)].to_vec();
        name.push(0);
        mem.write(scratch + NAME, &name)?;
        remote.checked(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            &[libc::PR_SET_NAME as u64, scratch + NAME],
        )?;
    }
    if !t.affinity.is_empty()
        && let Err(e) = super::sys::set_affinity(tid, &t.affinity)
    {
        eprintln!(
            "mlckpt: note: thread {tid} keeps the default CPU affinity: the image's CPU list is not usable here ({e})"
        );
    }
    if let Some(rl) = t.robust_list {
        remote.checked(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[rl.head, rl.len],
        )?;
    }
    if let Some(rseq) = t.rseq {
        remote.checked(
            "rseq",
            libc::SYS_rseq,
            &[rseq.addr, u64::from(rseq.len), 0, u64::from(rseq.signature)],
        )?;
    }
    if let Some(alt) = t.sigaltstack {
        let mut stack = [0u8; 24];
        stack[0..8].copy_from_slice(&alt.sp.to_le_bytes());
        stack[8..12].copy_from_slice(&alt.flags.to_le_bytes());
        stack[16..24].copy_from_slice(&alt.size.to_le_bytes());
        mem.write(scratch + ALT_STACK, &stack)?;
        remote.checked(
            "sigaltstack",
            libc::SYS_sigaltstack,
            &[scratch + ALT_STACK, 0],
        )?;
    }
    Ok(())
}

/// Registers, xstate and signal mask, all set directly: no signal frame is needed.
fn set_final_state(tid: Pid, t: &ThreadState) -> Result<(), RestoreError> {
    ptrace::set_regs(tid, &t.regs)?;
    ptrace::set_xstate(tid, &t.xstate)?;
    ptrace::set_sigmask(tid, t.sigmask)?;
    Ok(())
}

/// `struct clone_args` (88 bytes, linux/sched.h) for thread `t`.
fn clone_args(t: &ThreadState, set_tid_addr: u64, new_ids: bool) -> Vec<u8> {
    // With new TIDs the kernel also stores the TID in glibc's cached-TID word.
    let (flags, set_tid, set_tid_size) = if new_ids {
        (THREAD_FLAGS | libc::CLONE_CHILD_SETTID, 0, 0)
    } else {
        (THREAD_FLAGS, set_tid_addr, 1)
    };
    let fields: [u64; 11] = [
        flags as u64,
        0,                 // pidfd
        t.clear_child_tid, // child_tid
        0,                 // parent_tid
        0,                 // exit_signal: none for threads
        0,                 // stack: the thread never runs before its registers are set
        0,                 // stack_size
        t.regs.fs_base,    // tls
        set_tid,           // set_tid
        set_tid_size,      // set_tid_size
        0,                 // cgroup
    ];
    fields.iter().flat_map(|f| f.to_le_bytes()).collect()
}
