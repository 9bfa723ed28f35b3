//! The first moments of a process being restored. The job's root is a fresh `clone3` child
//! of the restorer: it waits until the restorer has seized it, takes its session or
//! process group, forks the job's other processes (each runs this same code with its own
//! plan, and forks its own children) and its zombies, sets up the image's files, cwd,
//! signal actions and limits with raw syscalls only (everything it needs was prepared
//! before the clone: no allocation, no locks), then jumps into the restorer stub, which
//! replaces its memory with the image's.

use super::fd_syscalls;
use super::sys::{self, jump_to_stub};
use crate::image::format::Inode;
use nix::errno::Errno;
use std::ffi::CString;

/// A file the child opens (or, with `dup_from`, duplicates from an object the restorer
/// created) and puts at `fd`.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub fd: i32,
    pub path: CString,
    pub flags: i32,
    pub offset: u64,
    pub cloexec: bool,
    /// An inherited fd (at or above `ChildPlan::object_floor`) to duplicate instead.
    pub dup_from: Option<i32>,
    /// A path the image recorded (resolved by /proc): opened without following symlinks.
    pub recorded: bool,
    /// The file it must be (inode, owner): anything else fails the restore.
    pub inode: Option<Inode>,
}

/// A pidfd the process opens (on `pid`, which exists by then) and puts at `fd`.
#[derive(Debug, Clone, Copy)]
pub struct PlannedPidfd {
    pub fd: i32,
    pub pid: i32,
    pub flags: i32,
    pub cloexec: bool,
}

/// The session or process group the process takes itself, before it forks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Stays in its parent's group and session.
    None,
    /// `setsid()`: it led its session.
    Session,
    /// `setpgid(0, 0)`: it led its process group.
    Group,
}

/// What the process does with terminals once it leads its session or group, before it
/// forks: fds are inherited objects (at or above `ChildPlan::object_floor`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TerminalSteps {
    /// `TIOCSCTTY`: the terminal becomes the controlling terminal of its session.
    pub controlling: Option<i32>,
    /// `tcsetpgrp(fd, group)`: its process group becomes the terminal's foreground group.
    pub foreground: Option<(i32, i32)>,
}

/// A process the child creates before its own set-up: one of the job's processes (by its
/// index in the plans), or a zombie.
#[derive(Debug, Clone, Copy)]
pub struct Spawn {
    pub pid: i32,
    pub exit_signal: i32,
    /// The process group the parent puts it in (`setpgid(pid, group)`), when it is not the
    /// parent's own and the child does not lead it.
    pub group: Option<i32>,
    pub what: Spawned,
}

#[derive(Debug, Clone, Copy)]
pub enum Spawned {
    Process(usize),
    /// Exits at once with this `wait()` status and stays a zombie.
    Zombie(i32),
}

/// Everything the child does before the stub, decided by the restorer.
#[derive(Debug)]
pub struct ChildPlan {
    /// The root waits on this fd until the restorer has seized it; the others are attached
    /// from birth (the tracer follows forks).
    pub sync_fd: Option<i32>,
    /// The root, a fork of the restorer, has glibc's rseq area registered: off with it.
    /// Its descendants inherit the unregistered state.
    pub unregister_rseq: bool,
    pub leadership: Leadership,
    pub terminal: TerminalSteps,
    /// `PR_SET_CHILD_SUBREAPER` (before its children are created).
    pub child_subreaper: bool,
    /// `PR_SET_PDEATHSIG`.
    pub parent_death_signal: i32,
    pub spawn: Vec<Spawn>,
    /// Fds from here on are objects the restorer created for the job (and inherited by
    /// every process of it); below are the restorer's own, closed at once.
    pub object_floor: i32,
    /// Where the child reports why it failed (a page shared with the restorer).
    pub report: *mut ChildFailure,
    /// Fds 0-2 that are neither inherited stdio nor reopened: closed.
    pub close_stdio: Vec<i32>,
    /// The image's fds, then the stub's helpers (pages.bin, exe, mapped files).
    pub files: Vec<PlannedFile>,
    pub pidfds: Vec<PlannedPidfd>,
    /// Added once every fd is in place (they name fds by number).
    pub epoll_adds: Vec<crate::objects::epoll::EpollItem>,
    pub cwd: CString,
    pub umask: u32,
    /// (signo, handler, flags, restorer, mask) for every signal 1..=64 but KILL/STOP.
    pub signals: Vec<(i32, [u64; 4])>,
    pub rlimits: Vec<(u32, u64, u64)>,
    pub stub_entry: u64,
    pub stub_stack_top: u64,
}

/// What went wrong in the child, written to the shared report page.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildFailure {
    pub step: u32,
    pub errno: i32,
    pub index: u32,
}

/// Declares the child's steps once: the enum, and the list `from_raw` searches.
macro_rules! steps {
    ($($step:ident),* $(,)?) => {
        /// What the child was doing when it failed (reported through the shared page).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Step {
            $($step),*
        }

        impl Step {
            const ALL: &[Step] = &[$(Step::$step),*];

            /// 0 means "no failure reported", so steps are numbered from 1.
            pub fn number(self) -> u32 {
                self as u32 + 1
            }

            pub fn from_raw(raw: u32) -> Option<Step> {
                Self::ALL.iter().copied().find(|s| s.number() == raw)
            }
        }
    };
}

steps!(
    Sync,
    Rseq,
    CloseRange,
    OpenFile,
    MoveFile,
    Seek,
    SetCloexec,
    Chdir,
    Signal,
    Rlimit,
    BlockSignals,
    Session,
    Spawn,
    ProcessGroup,
    ReapWait,
    DupObject,
    ProcessFlags,
    FileIdentity,
    Pidfd,
    EpollAdd,
    ControllingTerminal,
    ForegroundGroup,
);

/// glibc's rseq signature on x86 (RSEQ_SIG).
const RSEQ_SIG: u32 = 0x5305_3053;

fn fail(plan: &ChildPlan, step: Step, errno: Errno, index: usize) -> ! {
    let report = ChildFailure {
        step: step.number(),
        errno: errno as i32,
        index: index as u32,
    };
    // SAFETY: `report` points into a MAP_SHARED page the restorer mapped before the clone
    // and keeps until it has reaped this child.
    unsafe { plan.report.write_volatile(report) };
    sys::exit_now(127)
}

/// Runs in the child as process `index` of `plans`; never returns.
pub fn child_main(plans: &[ChildPlan], index: usize) -> ! {
    let plan = &plans[index];
    let check = |r: Result<(), Errno>, step, i| r.unwrap_or_else(|e| fail(plan, step, e, i));
    // No signal handler may run between now and the final registers: none is mapped yet.
    check(sys::block_all_signals(), Step::BlockSignals, 0);
    if let Some(fd) = plan.sync_fd {
        wait_for_restorer(plan, fd);
    }
    if plan.unregister_rseq {
        unregister_rseq(plan);
    }
    match plan.leadership {
        Leadership::None => {}
        Leadership::Session => check(sys::new_session(), Step::Session, 0),
        Leadership::Group => check(sys::set_process_group(0, 0), Step::Session, 0),
    }
    // Before the children are made: they are in the session, and a group's leader sets
    // the foreground after its session leader gave the session its terminal.
    if let Some(fd) = plan.terminal.controlling {
        check(
            super::tty_sys::take_controlling_terminal(fd),
            Step::ControllingTerminal,
            0,
        );
    }
    if let Some((fd, group)) = plan.terminal.foreground {
        check(
            super::tty_sys::set_foreground_group(fd, group),
            Step::ForegroundGroup,
            0,
        );
    }
    if plan.child_subreaper {
        check(sys::set_child_subreaper(), Step::ProcessFlags, 0);
    }
    if plan.parent_death_signal != 0 {
        check(
            sys::set_parent_death_signal(plan.parent_death_signal),
            Step::ProcessFlags,
            1,
        );
    }
    spawn_all(plans, plan);
    check(
        sys::close_fd_range(3, plan.object_floor - 1),
        Step::CloseRange,
        0,
    );
    for &fd in &plan.close_stdio {
        let _ = sys::close(fd);
    }
    for (i, file) in plan.files.iter().enumerate() {
        open_at(plan, i, file);
    }
    for (i, pidfd) in plan.pidfds.iter().enumerate() {
        open_pidfd(plan, i, pidfd);
    }
    for (i, item) in plan.epoll_adds.iter().enumerate() {
        check(
            fd_syscalls::epoll_add(item.epfd, item.fd, item.events, item.data),
            Step::EpollAdd,
            i,
        );
    }
    check(
        sys::close_from(plan.object_floor as u32),
        Step::CloseRange,
        0,
    );
    check(sys::change_dir(&plan.cwd), Step::Chdir, 0);
    sys::set_umask(plan.umask);
    for (i, (signo, action)) in plan.signals.iter().enumerate() {
        check(sys::set_signal_action(*signo, action), Step::Signal, i);
    }
    for (i, &(resource, soft, hard)) in plan.rlimits.iter().enumerate() {
        check(sys::set_rlimit(resource, soft, hard), Step::Rlimit, i);
    }
    jump_to_stub(plan.stub_entry, plan.stub_stack_top)
}

/// Creates the process's children (each goes on in `child_main` with its own plan) and
/// zombies, before the process changes anything it would hand down.
fn spawn_all(plans: &[ChildPlan], plan: &ChildPlan) {
    if plan.spawn.is_empty() {
        return;
    }
    // The restorer's SIGCHLD action is inherited until the process's own is set: it must
    // not be SIG_IGN, which would reap the zombies at once.
    let _ = sys::set_signal_action(libc::SIGCHLD, &[0; 4]);
    for (i, s) in plan.spawn.iter().enumerate() {
        let zombie = matches!(s.what, Spawned::Zombie(_));
        match sys::clone3_process(Some(s.pid), s.exit_signal, zombie) {
            Ok(0) => match s.what {
                Spawned::Process(index) => child_main(plans, index),
                Spawned::Zombie(status) => become_zombie(status),
            },
            Ok(pid) => {
                if let Some(group) = s.group {
                    sys::set_process_group(pid, group)
                        .unwrap_or_else(|e| fail(plan, Step::ProcessGroup, e, i));
                }
                if zombie {
                    sys::wait_exited_keep(pid).unwrap_or_else(|e| fail(plan, Step::ReapWait, e, i));
                }
            }
            Err(e) => fail(plan, Step::Spawn, e, i),
        }
    }
    // The zombies' exits queued a SIGCHLD the process did not have at checkpoint time
    // (the ones it had are queued again from the image).
    sys::discard_pending(libc::SIGCHLD);
}

/// Ends at once with the `wait()` status `status`.
fn become_zombie(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        sys::die_by_signal(libc::WTERMSIG(status))
    }
    sys::exit_now(libc::WEXITSTATUS(status))
}

/// Blocks until the restorer has seized us (it writes one byte); EOF means it died.
fn wait_for_restorer(plan: &ChildPlan, sync_fd: i32) {
    loop {
        match sys::read_byte(sync_fd) {
            Ok(true) => return,
            Err(Errno::EINTR) => continue,
            Ok(false) => fail(plan, Step::Sync, Errno::EPIPE, 0),
            Err(e) => fail(plan, Step::Sync, e, 0),
        }
    }
}

/// glibc registered rseq for the restorer's thread and fork kept it: the kernel would
/// write into that area after the stub unmaps it, and kill the process.
fn unregister_rseq(plan: &ChildPlan) {
    let Some((area, size)) = sys::own_rseq_area() else {
        return;
    };
    // Newer glibc reports a feature size smaller than the 32 bytes it registers.
    let mut last = Errno::UnknownErrno;
    for len in [size, 32] {
        match sys::rseq_unregister(area, len, RSEQ_SIG) {
            Ok(()) => return,
            Err(e) => last = e,
        }
    }
    fail(plan, Step::Rseq, last, 0)
}

fn open_pidfd(plan: &ChildPlan, index: usize, pidfd: &PlannedPidfd) {
    let check = |r: Result<(), Errno>| r.unwrap_or_else(|e| fail(plan, Step::Pidfd, e, index));
    let opened = fd_syscalls::pidfd_open_raw(pidfd.pid, pidfd.flags)
        .unwrap_or_else(|e| fail(plan, Step::Pidfd, e, index));
    if opened != pidfd.fd {
        check(sys::dup_onto(opened, pidfd.fd));
        let _ = sys::close(opened);
    }
    if !pidfd.cloexec {
        check(sys::clear_cloexec(pidfd.fd));
    }
}

fn open_at(plan: &ChildPlan, index: usize, file: &PlannedFile) {
    let check = |r: Result<(), Errno>, step| r.unwrap_or_else(|e| fail(plan, step, e, index));
    if let Some(from) = file.dup_from {
        // The object's offset and flags are its own (shared): only the fd flag is set here.
        check(sys::dup_onto(from, file.fd), Step::DupObject);
        if !file.cloexec {
            check(sys::clear_cloexec(file.fd), Step::SetCloexec);
        }
        return;
    }
    let flags = file.flags | libc::O_CLOEXEC;
    let opened = if file.recorded {
        sys::open_no_symlinks(&file.path, flags | libc::O_NOFOLLOW, 0)
    } else {
        sys::open_path(&file.path, flags)
    }
    .unwrap_or_else(|e| fail(plan, Step::OpenFile, e, index));
    if let Some(want) = file.inode {
        let is =
            sys::inode_and_owner(opened).unwrap_or_else(|e| fail(plan, Step::OpenFile, e, index));
        if is != (want.ino, want.uid) {
            fail(plan, Step::FileIdentity, Errno::ESTALE, index);
        }
    }
    if opened != file.fd {
        check(sys::dup_onto(opened, file.fd), Step::MoveFile);
        let _ = sys::close(opened);
    }
    if !file.cloexec {
        check(sys::clear_cloexec(file.fd), Step::SetCloexec);
    }
    if file.offset != 0 {
        check(sys::seek_to(file.fd, file.offset), Step::Seek);
    }
}
