//! `mlckpt restore --auto --job NAME`: restores the newest image that verifies, prints every
//! candidate it looked at with its verdict and the one it chose, passes over damaged images
//! and never considers a partial (uncommitted) one; with no image at all it fails clearly.

mod common;

use std::ops::Range;

use common::*;

/// 8 MiB, 150 ticks of 30 ms: about 4.5 s uninterrupted.
fn prog() -> Prog {
    Prog::c("memory", &["8", "150"])
}

/// A run with two images: seq 1 taken without `--kill` (the run went on), seq 2 with it.
struct TwoImages {
    pid: i32,
    first: Ckpt,
    second: Ckpt,
    /// The run's whole stdout, up to the freeze of seq 2.
    before: String,
    /// Where in `before` (in lines) seq 1 was taken: from the line count when it was asked
    /// for to the one when seq 2 was.
    first_window: Range<usize>,
    reference: Proc,
}

fn run_with_two_images(h: &Harness) -> TwoImages {
    let prog = prog();
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let asked_first = run.line_count();
    let first = h.checkpoint(pid, false);
    assert!(pid_alive(pid), "checkpoint without --kill ended the target");
    run.wait_for_ticks(asked_first + 10);
    let asked_second = run.line_count();
    let second = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    assert_eq!((first.seq, second.seq), (1, 2), "sequence numbers");
    TwoImages {
        pid,
        first,
        second,
        before,
        first_window: asked_first..asked_second,
        reference,
    }
}

/// `mlckpt restore --auto --job JOB --config CFG`, run to a successful end.
fn restore_auto(h: &Harness, pid: i32) -> Finished {
    let mut restore = h.restore_with(&["--auto", "--job", &h.job], &prog());
    restore.set_target(pid);
    restore.finish(CMD_TIMEOUT).expect_code(0)
}

/// Asserts some line of `res`'s stderr contains every one of `parts`.
fn assert_line(res: &Finished, parts: &[&str]) {
    assert!(
        res.stderr
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p))),
        "no stderr line contains all of {parts:?}\n{}",
        res.describe()
    );
}

/// The choice: a candidate line for `seq` saying ok and chosen, and the restore line.
fn assert_chosen(res: &Finished, image: &Ckpt) {
    let seq = format!("seq {}", image.seq);
    assert_line(res, &["candidate", &seq, "ok", "chosen"]);
    assert_line(res, &["restored", &image.path.to_string_lossy(), &seq]);
}

#[test]
fn auto_restores_the_newest_image() {
    let h = Harness::new("auto-newest");
    let t = run_with_two_images(&h);
    let res = restore_auto(&h, t.pid);
    assert_chosen(&res, &t.second);
    let reference = t.reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &t.before, &res.stdout, t.pid);
}

#[test]
fn auto_passes_over_a_damaged_newest_image() {
    let h = Harness::new("auto-damaged");
    let t = run_with_two_images(&h);
    damage(&t.second.path.join("pages.bin"), Damage::FlipBit);
    let res = restore_auto(&h, t.pid);
    assert_line(&res, &["candidate", "seq 2", "checksum mismatch"]);
    assert!(
        !res.stderr
            .lines()
            .any(|l| l.contains("seq 2") && l.contains("chosen")),
        "the damaged image was chosen\n{}",
        res.describe()
    );
    assert_chosen(&res, &t.first);
    // The original went on past seq 1 until seq 2 was taken; the restored process repeats
    // those lines, so the original's output is cut where the restored one starts.
    let reference = t.reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_resumed(
        &reference,
        &t.before,
        &res.stdout,
        t.first_window.clone(),
        t.pid,
        t.pid,
    );
}

#[test]
fn auto_never_chooses_a_partial_image() {
    let h = Harness::new("auto-partial");
    let prog = prog();
    let reference = h.plain(&prog);
    let killed = h.run_until_checkpoint_kill(&prog, 10);
    // A complete, valid copy under the partial name with a higher seq: only its name says
    // it was never committed.
    let partial = h.rank_dir().join(".ckpt-000009.partial");
    copy_dir(&killed.ckpt.path, &partial);
    let res = restore_auto(&h, killed.pid);
    assert_chosen(&res, &killed.ckpt);
    assert!(
        !res.stderr.contains("seq 9") && !res.stderr.contains("000009"),
        "the partial image was considered\n{}",
        res.describe()
    );
    assert!(partial.is_dir(), "restore removed the partial image");
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &killed.before, &res.stdout, killed.pid);
}

#[test]
fn auto_without_any_image_fails_clearly() {
    let h = Harness::new("auto-none");
    let res = h
        .restore_with(&["--auto", "--job", &h.job], &prog())
        .finish(CMD_TIMEOUT)
        .expect_code(1);
    let text = res.output().to_lowercase();
    assert!(
        text.contains("no valid image") && text.contains(&h.job),
        "the error should say there is no image of job {}\n{}",
        h.job,
        res.describe()
    );
    assert!(res.stdout.is_empty(), "{}", res.describe());

    // Without --job (and no [job] name in the config) there is nothing to look for.
    let res = h
        .restore_with(&["--auto"], &prog())
        .finish(CMD_TIMEOUT)
        .expect_failure();
    assert!(
        res.output().contains("--job"),
        "the error should ask for --job\n{}",
        res.describe()
    );
}

/// After `--auto` passed over a damaged image, the checkpoints of the restored process
/// must not take pages from it (it stays the newest image in the directory until then):
/// the next image builds on the one restored, and restores.
#[test]
fn checkpoints_after_a_damaged_image_do_not_build_on_it() {
    let h = Harness::new("auto-after-damaged");
    // Compared by content, every page the restored process writes as seq 2 holds it would
    // match seq 2's copy.
    h.set_config("[image]\nwrite_tracking = false\n");
    let t = run_with_two_images(&h);
    damage(&t.second.path.join("pages.bin"), Damage::FlipBit);
    let mut restore = h.restore_with(&["--auto", "--job", &h.job], &prog());
    restore.set_target(t.pid);
    restore.wait_for_ticks(5);
    let third = h.checkpoint(t.pid, true);
    let middle = restore.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(t.pid);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(third.path.join("manifest.json")).unwrap()).unwrap();
    let parents: Vec<u64> = manifest["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        parents,
        [1],
        "seq 3 builds on the restored seq 1, never on damaged seq 2"
    );
    h.mlckpt(&["verify".as_ref(), third.path.as_os_str()])
        .expect_code(0);
    let after = h.restore_to_end(&third.path, &prog(), t.pid, |_, _| {});
    let reference = t.reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_resumed(
        &reference,
        &t.before,
        &format!("{middle}{after}"),
        t.first_window.clone(),
        t.pid,
        t.pid,
    );
}

/// The newest image is intact but an image it takes pages from is damaged: `--auto` finds
/// that before choosing it (never "ok -> chosen" for it, even when its restore would fail
/// for another reason first), and goes on to older candidates until one whose whole chain
/// is intact.
#[test]
fn auto_checks_the_whole_chain_and_falls_back_past_a_damaged_parent() {
    let h = Harness::new("auto-chain");
    let prog = prog();
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let asked_first = run.line_count();
    let first = h.checkpoint(pid, false);
    run.wait_for_ticks(asked_first + 10);
    let asked_second = run.line_count();
    let second = h.checkpoint(pid, false);
    run.wait_for_ticks(asked_second + 10);
    let third = h.checkpoint(pid, false);
    assert_eq!((first.seq, second.seq, third.seq), (1, 2, 3));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(third.path.join("manifest.json")).unwrap()).unwrap();
    let needs_second = manifest["parents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["seq"].as_u64() == Some(2));
    assert!(
        needs_second,
        "seq 3 should take pages from seq 2: {manifest:#}"
    );
    damage(&second.path.join("pages.bin"), Damage::FlipBit);

    // The original still runs, so any restore fails on its PID: the damage must be what is
    // reported for seq 3 and 2, not "chosen" followed by the PID error.
    let res = h
        .restore_with(&["--auto", "--job", &h.job], &prog)
        .finish(CMD_TIMEOUT)
        .expect_code(1);
    assert_line(
        &res,
        &["candidate", "seq 3", "checksum mismatch", "ckpt-000002"],
    );
    assert_line(&res, &["candidate", "seq 2", "checksum mismatch"]);
    assert!(
        !res.stderr.contains("chosen"),
        "nothing may be chosen while its restore fails\n{}",
        res.describe()
    );
    assert_line(&res, &["candidate", "seq 1", "restoring it failed"]);
    assert_line(&res, &[&format!("PID {pid}"), "in use"]);

    // Once the PID is free, seq 1 is chosen and the program goes on from it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    let res = restore_auto(&h, pid);
    assert_line(&res, &["candidate", "seq 3", "checksum mismatch"]);
    assert_chosen(&res, &first);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_resumed(
        &reference,
        &before,
        &res.stdout,
        asked_first..asked_second,
        pid,
        pid,
    );
}
