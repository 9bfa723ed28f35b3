//! File locks across `checkpoint --kill` and restore, beyond the conformance program
//! (tests/zdtm/file_locks.c, which checks every kind is held again): a lock a process
//! outside the job took in the meantime makes the restore fail, naming the file, instead
//! of leaving the job without its lock; once it is released the restore goes through.

mod common;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
use std::path::Path;

#[test]
fn a_lock_taken_outside_the_job_meanwhile_fails_the_restore() {
    let h = Harness::new("locks-conflict");
    let zdtm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zdtm");
    let exe = compile_c(&zdtm, "file_locks", &["-O1", "-Wall", "-Werror"]).expect("compiles");
    let prog = Prog {
        argv: vec![exe.to_string_lossy().into_owned()],
        feed: None,
    };
    let mut run = h.run(&prog);
    let pid = run.target_pid();
    wait_until("the job's `ready` line", || {
        run.stdout().lines().any(|l| l == "ready")
    });
    let ckpt = h.checkpoint(pid, true);
    run.finish(CMD_TIMEOUT).expect_code(KILLED);
    wait_gone(pid);

    // The job held flock(LOCK_EX) on B; someone else takes a shared lock on it now.
    let b = format!("/tmp/mlckpt-zdtm-file_locks-b-{pid}");
    let outsider = std::fs::File::open(&b).expect("B is still there");
    // SAFETY: flock on an fd this test owns.
    let taken = unsafe { libc::flock(outsider.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    assert_eq!(taken, 0, "flock: {}", std::io::Error::last_os_error());
    let refused = h
        .restore(&ckpt.path, &prog)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    let text = refused.output();
    assert!(
        text.contains(&b) && text.contains("Flock") && text.contains("conflicting"),
        "the restore should name the lock it could not take again\n{}",
        refused.describe()
    );
    wait_gone(pid);
    drop(outsider);

    let mut restore = h.restore(&ckpt.path, &prog);
    restore.set_target(pid);
    restore.wait_for_stderr(" as PID ");
    std::thread::sleep(std::time::Duration::from_millis(200));
    kill(Pid::from_raw(pid), Signal::SIGUSR2).expect("the restored job is there");
    let done = restore.finish(CMD_TIMEOUT).expect_code(0);
    assert!(
        done.stdout.lines().any(|l| l == "PASS"),
        "the restored job should find its locks held\n{}",
        done.describe()
    );
}
