//! The first moments of a process being restored. It is a fresh `clone3` child of the
//! restorer: it waits until the restorer has seized it, sets up the image's files, cwd,
//! signal actions and limits with raw syscalls only (everything it needs was prepared
//! before the clone: no allocation, no locks), then jumps into the restorer stub, which
//! replaces its memory with the image's.

use super::sys::{self, jump_to_stub};
use nix::errno::Errno;
use std::ffi::CString;

/// A file the child opens and puts at `fd`.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    pub fd: i32,
    pub path: CString,
    pub flags: i32,
    pub offset: u64,
    pub cloexec: bool,
}

/// Everything the child does before the stub, decided by the restorer.
#[derive(Debug)]
pub struct ChildPlan {
    pub sync_fd: i32,
    /// Where the child reports why it failed (a page shared with the restorer).
    pub report: *mut ChildFailure,
    /// Fds 0-2 that are neither inherited stdio nor reopened: closed.
    pub close_stdio: Vec<i32>,
    /// The image's fds, then the stub's helpers (pages.bin, exe, mapped files).
    pub files: Vec<PlannedFile>,
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

/// Runs in the child; never returns.
pub fn child_main(plan: &ChildPlan) -> ! {
    let check = |r: Result<(), Errno>, step, i| r.unwrap_or_else(|e| fail(plan, step, e, i));
    // No signal handler may run between now and the final registers: none is mapped yet.
    check(sys::block_all_signals(), Step::BlockSignals, 0);
    wait_for_restorer(plan);
    unregister_rseq(plan);
    check(sys::close_from(3), Step::CloseRange, 0);
    for &fd in &plan.close_stdio {
        let _ = sys::close(fd);
    }
    for (i, file) in plan.files.iter().enumerate() {
        open_at(plan, i, file);
    }
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

/// Blocks until the restorer has seized us (it writes one byte); EOF means it died.
fn wait_for_restorer(plan: &ChildPlan) {
    loop {
        match sys::read_byte(plan.sync_fd) {
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

fn open_at(plan: &ChildPlan, index: usize, file: &PlannedFile) {
    let check = |r: Result<(), Errno>, step| r.unwrap_or_else(|e| fail(plan, step, e, index));
    let opened = sys::open_path(&file.path, file.flags | libc::O_CLOEXEC)
        .unwrap_or_else(|e| fail(plan, Step::OpenFile, e, index));
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
