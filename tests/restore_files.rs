//! (3) Open files: an O_APPEND fd and a second O_RDWR fd with its own offset continue
//! writing where they were; the file ends up byte-identical to an uninterrupted run's.

mod common;

use common::*;

#[test]
fn append_file_continues_at_right_offset() {
    let h = Harness::new("append");
    h.checkpoint_kill_restore(&Prog::c("append", &["{dir}/data.txt", "80"]), 20);
    let got = std::fs::read(h.run_dir().join("data.txt")).unwrap();
    let want = std::fs::read(h.ref_dir().join("data.txt")).unwrap();
    assert!(
        got == want,
        "file differs from the uninterrupted run's\n--- got:\n{}\n--- expected:\n{}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

/// A file that grew after the checkpoint is cut back on restore, but only once the image
/// proved intact: a restore refused for damaged page contents leaves the file as it is.
#[test]
fn a_damaged_image_leaves_grown_files_alone() {
    let h = Harness::new("grown");
    let prog = Prog::c("append", &["{dir}/data.txt", "200"]);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let ckpt = h.checkpoint(pid, false);
    run.wait_for_ticks(20);
    run.signal(nix::sys::signal::Signal::SIGKILL);
    run.finish(CMD_TIMEOUT);
    wait_gone(pid);
    let data = h.run_dir().join("data.txt");
    let grown = std::fs::metadata(&data).unwrap().len();

    damage(&ckpt.path.join("pages.bin"), Damage::FlipBit);
    let res = h
        .restore(&ckpt.path, &prog)
        .finish(CMD_TIMEOUT)
        .expect_failure();
    assert!(res.output().contains("pages.bin"), "{}", res.describe());
    assert!(!pid_alive(pid), "a process ran from a damaged image");
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        grown,
        "a refused restore changed the file"
    );
}

/// A database updated in place (sqlite rewrites its pages where they are): checkpoint, the
/// job goes on (rows added, old pages rewritten), dies. The restore gives it back the
/// database it saw at the checkpoint: it goes on from there, every row as an uninterrupted
/// run has it, and sqlite's integrity check passes.
#[test]
fn database_written_in_place_comes_back_as_at_the_checkpoint() {
    let h = Harness::new("sqlite");
    let Some(prog) = Prog::python("sqlite_job.py", &["{dir}/job.db", "60"]) else {
        return;
    };
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(15);
    let pid = run.target_pid();
    let ckpt = h.checkpoint(pid, false);
    run.wait_for_ticks(35);
    run.signal(nix::sys::signal::Signal::SIGKILL);
    let went_on = run.finish(CMD_TIMEOUT).stdout;
    wait_gone(pid);
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, printed_before(&went_on, &after), &after, pid);
    assert!(after.contains("integrity=ok"), "{after}");
}
