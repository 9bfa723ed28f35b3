//! (8) An unmodified python3 interpreter from PATH continues its loop after a restore.

mod common;

use common::*;

#[test]
fn python_loop_continues() {
    let Some(prog) = Prog::python("pyloop.py", &["100"]) else {
        return;
    };
    let h = Harness::new("python");
    h.checkpoint_kill_restore(&prog, 25);
}
