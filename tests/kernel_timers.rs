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
