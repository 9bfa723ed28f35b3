//! (9) A process checkpointed while blocked in a syscall finishes that syscall correctly
//! after the restore: nanosleep (restart block -> EINTR, the program retries with the
//! remaining time), select (restarted with the remaining timeout, returns 0) and read on a
//! pipe (restarted, returns the byte).

mod common;

use std::time::Duration;

use common::*;

fn sleeper_continues(prog: Prog, at_tick: usize) {
    let h = Harness::new(&format!("sleeper-{}", prog.argv[1]));
    let out = h.checkpoint_kill_restore(&prog, at_tick);
    assert!(
        !out.after.contains("full=0"),
        "a sleep ended early:\n{}",
        out.after
    );
}

#[test]
fn nanosleep_is_resumed() {
    sleeper_continues(Prog::c("sleeper", &["nanosleep", "12", "250"]), 4);
}

#[test]
fn select_is_restarted() {
    sleeper_continues(Prog::c("sleeper", &["select", "12", "250"]), 4);
}

#[test]
fn pipe_read_is_restarted() {
    let prog = Prog::c("sleeper", &["read", "40", "0"]).feeding_stdin(Duration::from_millis(60));
    sleeper_continues(prog, 10);
}
