//! Kernel timers survive checkpoint, kill and restore: a job paced by POSIX timers (with
//! their ids, sigev_value and target thread), `alarm` and `setitimer` CPU-time timers
//! prints exactly what an uninterrupted run prints.

mod common;

use common::*;

#[test]
fn timer_paced_job_continues_exactly() {
    let h = Harness::new("timers");
    let out = h.checkpoint_kill_restore(&Prog::c("timers_job", &["150"]), 60);
    assert!(
        out.after.contains("alarm=1 virt=1 prof=1"),
        "no 50-tick window after the restore saw every timer fire:\n{}",
        out.after
    );
}

/// Under `restore --new-pid` the timers follow the job: the one signalling the main thread
/// (SIGEV_THREAD_ID) signals its new TID.
#[test]
fn timers_follow_the_job_to_a_new_pid() {
    let h = Harness::new("timers-newpid");
    let prog = Prog::c("timers_job", &["120"]);
    let reference = h.plain(&prog);
    let killed = h.run_until_checkpoint_kill(&prog, 40);
    let mut restore = h.restore_with(&[killed.ckpt.path.as_os_str(), "--new-pid".as_ref()], &prog);
    let said = restore.wait_for_stderr(" as PID ");
    let new_pid: i32 = said
        .lines()
        .find(|l| l.contains("restored"))
        .and_then(|l| l.rsplit_once("as PID "))
        .and_then(|(_, pid)| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `as PID <N>` in {said:?}"));
    restore.set_target(new_pid);
    let after = restore.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation_pids(&reference, &killed.before, &after, killed.pid, new_pid);
}
