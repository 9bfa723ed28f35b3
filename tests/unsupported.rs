//! (10) A process holding a socket mlckpt does not support (a raw IP socket) cannot be
//! checkpointed: the checkpoint fails with a non-zero exit and a message about the socket,
//! leaves no image behind, does not kill the process (even with --kill), and the process
//! finishes its run normally.

mod common;

use common::*;

#[test]
fn raw_socket_checkpoint_fails_cleanly() {
    let h = Harness::new("raw-socket");
    let prog = Prog::c("raw_socket", &["80"]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let res = h
        .mlckpt(&["checkpoint", &pid.to_string(), "--kill", "--json"])
        .expect_failure();
    assert!(
        res.output().to_lowercase().contains("socket"),
        "the error should mention the socket\n{}",
        res.describe()
    );
    assert!(pid_alive(pid), "a failed checkpoint killed the target");
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);
    assert_eq!(
        h.images(),
        Vec::<std::path::PathBuf>::new(),
        "failed checkpoint left images"
    );
}
