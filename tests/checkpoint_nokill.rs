//! (12) `mlckpt checkpoint` without --kill leaves the program running, and it finishes with
//! exactly the output of an uninterrupted run.

mod common;

use common::*;

#[test]
fn checkpoint_without_kill_keeps_running() {
    let h = Harness::new("nokill");
    let prog = Prog::c("memory", &["32", "80"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(20);
    let pid = run.target_pid();
    h.checkpoint(pid, false);
    assert!(pid_alive(pid), "checkpoint without --kill ended the target");
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
}
