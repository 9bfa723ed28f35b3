//! (4) Signal state: the SIGUSR1 handler (and its flags and mask), an ignored SIGHUP, a
//! blocked SIGUSR2 and a pending SIGUSR2 all survive the restore.

mod common;

use common::*;

#[test]
fn signal_handler_mask_and_pending_survive() {
    let h = Harness::new("signals");
    let out = h.checkpoint_kill_restore(&Prog::c("signals", &["80"]), 20);
    assert!(
        out.after.contains("handler_ok=1") && !out.after.contains("handler_ok=0"),
        "SIGUSR1 handler broken after restore:\n{}",
        out.after
    );
}
