//! The last phase of a restore, once the stub has rebuilt memory and stopped: the other
//! threads are recreated with their TIDs, pending signals are queued again, the stub is
//! unmapped and every thread gets its final registers. No thread runs before all are done.

use super::attributes;
use super::memory::ProcessMemory;
use super::ptrace::{self, Stop};
use super::remote::RemoteThread;
use super::restore::RestoreError;
use crate::image::attributes::ProcessAttributes;
use crate::image::format::Credentials;
use crate::image::format::{PendingSignal, ThreadState};
use nix::unistd::Pid;

/// Offsets in the stub's data page, reused as scratch for the remote calls made here.
const CLONE_ARGS: u64 = 0;
const SET_TID: u64 = 96;
const ALT_STACK: u64 = 128;
const SIGINFO: u64 = 256;
const NAME: u64 = 512;
const CAPS: u64 = 640;
/// The supplementary groups, to the end of the page.
const GROUPS: u64 = 1024;
const MAX_GROUPS: usize = (4096 - GROUPS as usize) / 4;

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
    /// other thread, each left stopped with its final state; all get `credentials`.
    pub fn recreate_threads(
        &mut self,
        credentials: Option<&Credentials>,
        attributes: &ProcessAttributes,
    ) -> Result<(), RestoreError> {
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
            attributes::restore_thread(&mut remote, &self.mem, self.scratch, t.tid, attributes)?;
            if let Some(c) = credentials {
                set_credentials(&self.mem, self.scratch, &mut remote, c)?;
            }
            set_final_state(tid, t)?;
        }
        attributes::restore_privileged(self, attributes)?;
        if let Some(c) = credentials {
            set_credentials(&self.mem, self.scratch, &mut self.main, c)?;
        }
        Ok(())
    }

    /// The TID now of the thread that had `image_tid` in the image (another under
    /// `--new-pid`), once it is created.
    pub fn current_tid(&self, image_tid: i32) -> Option<Pid> {
        let now = std::iter::once(self.pid).chain(self.created.iter().copied());
        self.threads
            .iter()
            .zip(now)
            .find(|(t, _)| t.tid == image_tid)
            .map(|(_, now)| now)
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
            (true, None) => (Some(ptrace::SignalNumber::SIGSTOP), None),
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
        if stopped {
            // The stop lands when the process is next scheduled: wait for it, so that the
            // job's other processes (released after this one) find it stopped.
            wait_stopped(self.pid);
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
        crate::info!(
            "note: thread {tid} keeps the default CPU affinity: the image's CPU list is not usable here ({e})"
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

/// Gives a thread of the restored process the credentials the process had: groups, gids,
/// uids, then the capability sets. Per thread (credentials are a thread's, and a raw
/// syscall changes only its caller's); each thread after the main thread has created all
/// the others (creating them with their TIDs needs the restorer's privileges). Nothing to
/// do when they are the restorer's own (a job restored by the user who ran it).
fn set_credentials(
    mem: &ProcessMemory,
    scratch: u64,
    thread: &mut RemoteThread,
    want: &Credentials,
) -> Result<(), RestoreError> {
    let own = Credentials::own().unwrap_or_default();
    if &own == want {
        return Ok(());
    }
    let mut call = |what, nr, args: &[u64]| thread.checked(what, nr, args).map(drop);
    if own.groups != want.groups {
        if want.groups.len() > MAX_GROUPS {
            return Err(RestoreError::Inconsistent(format!(
                "{} supplementary groups (at most {MAX_GROUPS} are restored)",
                want.groups.len()
            )));
        }
        let bytes: Vec<u8> = want.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        mem.write(scratch + GROUPS, &bytes)?;
        let n = want.groups.len() as u64;
        call("setgroups", libc::SYS_setgroups, &[n, scratch + GROUPS])?;
    }
    // Dropping from the bounding set needs CAP_SETPCAP: before the uid changes.
    if own.cap_bounding != want.cap_bounding {
        for cap in (0..=last_capability()).filter(|c| want.cap_bounding & (1 << c) == 0) {
            let args = [libc::PR_CAPBSET_DROP as u64, cap];
            call("prctl(PR_CAPBSET_DROP)", libc::SYS_prctl, &args)?;
        }
    }
    let keepcaps = libc::PR_SET_KEEPCAPS as u64;
    let keep = u64::from(want.cap_permitted != 0);
    call("prctl(PR_SET_KEEPCAPS)", libc::SYS_prctl, &[keepcaps, keep])?;
    let [rg, eg, sg, fg] = want.gids.map(u64::from);
    let [ru, eu, su, fu] = want.uids.map(u64::from);
    call("setresgid", libc::SYS_setresgid, &[rg, eg, sg])?;
    call("setresuid", libc::SYS_setresuid, &[ru, eu, su])?;
    // setfs*id return the previous id, never an error.
    call("setfsgid", libc::SYS_setfsgid, &[fg])?;
    call("setfsuid", libc::SYS_setfsuid, &[fu])?;
    let mut caps = Vec::with_capacity(32);
    caps.extend_from_slice(&0x2008_0522u32.to_le_bytes()); // _LINUX_CAPABILITY_VERSION_3
    caps.extend_from_slice(&0u32.to_le_bytes());
    for half in [0, 32] {
        for set in [want.cap_effective, want.cap_permitted, want.cap_inheritable] {
            caps.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    mem.write(scratch + CAPS, &caps)?;
    call(
        "capset",
        libc::SYS_capset,
        &[scratch + CAPS, scratch + CAPS + 8],
    )?;
    let ambient = [
        libc::PR_CAP_AMBIENT as u64,
        libc::PR_CAP_AMBIENT_RAISE as u64,
    ];
    for cap in (0..64).filter(|c| want.cap_ambient & (1 << c) != 0) {
        let args = [ambient[0], ambient[1], cap, 0, 0];
        call("prctl(PR_CAP_AMBIENT_RAISE)", libc::SYS_prctl, &args)?;
    }
    call("prctl(PR_SET_KEEPCAPS)", libc::SYS_prctl, &[keepcaps, 0])?;
    // Changing ids made it undumpable; a process of one user is dumpable for that user.
    let args = [libc::PR_SET_DUMPABLE as u64, 1];
    call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, &args)?;
    Ok(())
}

/// Waits (up to a second) until process `pid` is in a group stop.
fn wait_stopped(pid: Pid) {
    let began = std::time::Instant::now();
    while began.elapsed() < std::time::Duration::from_secs(1) {
        match super::tree::stat(pid.as_raw()) {
            Some(s) if s.state != 'T' => std::thread::sleep(std::time::Duration::from_millis(1)),
            _ => return,
        }
    }
}

/// The highest capability number this kernel knows.
fn last_capability() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}
