//! Per-process state mlckpt cannot restore is refused at checkpoint, naming it: a process
//! in seccomp strict mode stays running, and no image is written.

mod common;

use common::*;

#[test]
fn seccomp_strict_mode_is_refused() {
    let h = Harness::new("seccomp-strict");
    let mut run = h.run(&Prog::c("seccomp_strict", &[]));
    run.wait_for_lines("ready", 1);
    let pid = run.target_pid();
    // The program enters strict mode right after `ready`: wait until the kernel says so.
    wait_until("strict mode", || {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.replace(char::is_whitespace, "") == "Seccomp:1")
        })
    });
    let res = h.checkpoint_refused(pid);
    assert!(
        res.output().contains("strict mode") && res.output().contains(&pid.to_string()),
        "the refusal should name the process and seccomp strict mode\n{}",
        res.describe()
    );
}
