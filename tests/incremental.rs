//! Incremental images, pre-copy and fork-snapshot checkpoints: a chain restores exactly, a
//! missing or replaced parent is refused clearly, `full_every` bounds the chain, write
//! tracking sees every way a page can change, and images taken while the target ran on
//! (pre-copied, or from a fork-snapshot) restore like frozen ones, threads too; a target
//! that cannot fork is dumped while frozen, with a note; after a restore, tracking goes on
//! from the restored image.

mod common;

use common::*;
use std::path::Path;

fn manifest(image: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(image.join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn chain_depth(image: &Path) -> u64 {
    manifest(image)["chain_depth"].as_u64().unwrap()
}

/// Checkpoints a running program `count - 1` times (the target running on), then once more
/// with --kill; returns the images and the run's output.
fn chain(h: &Harness, prog: &Prog, count: usize) -> (Vec<Ckpt>, Killed) {
    let (images, killed, _) = chain_asked(h, prog, count);
    (images, killed)
}

/// [`chain`], also returning how many lines the run had printed when each checkpoint was
/// asked for.
fn chain_asked(h: &Harness, prog: &Prog, count: usize) -> (Vec<Ckpt>, Killed, Vec<usize>) {
    let mut run = h.run(prog);
    run.wait_for_ticks(3);
    let pid = run.target_pid();
    let mut images = Vec::new();
    let mut asked = Vec::new();
    for i in 1..count {
        asked.push(run.line_count());
        images.push(h.checkpoint(pid, false));
        run.wait_for_ticks(3 + 2 * i);
    }
    let last = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    images.push(last.clone());
    let killed = Killed {
        pid,
        ckpt: last,
        before,
    };
    (images, killed, asked)
}

/// The uninterrupted reference run of `prog`, and a supervised run `ticks` ticks in, with
/// its target's PID.
fn reference_and_run(h: &Harness, prog: &Prog, ticks: usize) -> (Proc, Proc, i32) {
    let reference = h.plain(prog);
    let mut run = h.run(prog);
    run.wait_for_ticks(ticks);
    let pid = run.target_pid();
    (reference, run, pid)
}

/// Whether a supervised checkpoint used its write tracking: pre-copied, or (when the target
/// wrote fast) pre-copy given up for a snapshot.
fn write_tracked(c: &Ckpt) -> bool {
    c.mode == "precopy" || c.mode == "snapshot"
}

#[test]
fn incremental_chain_of_five_restores_exactly() {
    let h = Harness::new("chain5");
    // Every image stays (retention may drop one no later image takes pages from).
    h.set_config("keep = 100\n[interval]\nlocal = 0\n");
    let prog = Prog::c("memory", &["32", "80"]);
    let reference = h.plain(&prog);
    let (images, killed) = chain(&h, &prog, 5);
    let depths: Vec<u64> = images.iter().map(|c| chain_depth(&c.path)).collect();
    assert_eq!(
        depths,
        [0, 1, 2, 3, 4],
        "each checkpoint builds on the previous one"
    );
    assert!(
        images.iter().all(write_tracked),
        "a supervised checkpoint tracks writes: {:?}",
        images.iter().map(|c| &c.mode).collect::<Vec<_>>()
    );
    let full = images[0].bytes;
    for inc in &images[1..] {
        assert!(
            inc.bytes < full / 2,
            "an increment stores only changed pages: {} vs {full}",
            inc.bytes
        );
    }
    let parents = manifest(&killed.ckpt.path)["parents"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        parents >= 1,
        "the last image takes pages from its ancestors"
    );

    let after = h.restore_to_end(&killed.ckpt.path, &prog, killed.pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &killed.before, &after, killed.pid);
}

#[test]
fn a_missing_or_replaced_parent_is_refused_by_name() {
    let h = Harness::new("orphan");
    let prog = Prog::c("memory", &["8", "60"]);
    let (images, killed) = chain(&h, &prog, 3);
    let first = &images[0].path;
    let last = &killed.ckpt.path;

    // Replaced: another image under the parent's name.
    let saved = first.with_extension("saved");
    std::fs::rename(first, &saved).unwrap();
    copy_dir(&images[1].path, first);
    let res = h
        .mlckpt(&["verify".as_ref(), last.as_os_str()])
        .expect_failure();
    assert!(res.output().contains("replaced"), "{}", res.describe());

    // Missing.
    std::fs::remove_dir_all(first).unwrap();
    let config = h.config.as_os_str();
    let verify = h
        .mlckpt(&["verify".as_ref(), last.as_os_str()])
        .expect_failure();
    let restore = h
        .mlckpt(&[
            "restore".as_ref(),
            last.as_os_str(),
            "--config".as_ref(),
            config,
        ])
        .expect_failure();
    for res in [verify, restore] {
        let out = res.output();
        assert!(
            out.contains("missing") && out.contains("ckpt-000001"),
            "{}",
            res.describe()
        );
    }
    assert!(
        !pid_alive(killed.pid),
        "a refused restore must not leave a process behind"
    );

    // Back in place, the chain restores again.
    std::fs::rename(&saved, first).unwrap();
    h.mlckpt(&["verify".as_ref(), last.as_os_str()])
        .expect_code(0);
}

#[test]
fn full_every_bounds_the_chain() {
    let h = Harness::new("fullevery");
    h.set_config("keep = 100\n[image]\nfull_every = 3\n");
    let prog = Prog::c("memory", &["8", "80"]);
    let (images, _) = chain(&h, &prog, 5);
    let depths: Vec<u64> = images.iter().map(|c| chain_depth(&c.path)).collect();
    assert_eq!(depths, [0, 1, 2, 0, 1]);
}

/// Write tracking sees every way a page can change besides a store: MADV_DONTNEED, the
/// kernel writing (pread), a mapping replaced at the same address, mremap (next to another
/// tracked mapping too), mprotect splits, brk growing and shrinking, zero-page reads. Every
/// image of a chain of tracked increments restores exactly: the last (taken with --kill)
/// and each one taken while the program ran on.
#[test]
fn tracked_increments_see_every_kind_of_change() {
    let h = Harness::new("mutator");
    h.set_config("keep = 100\n[interval]\nlocal = 0\n");
    let prog = Prog::c("mutator", &["70"]);
    let reference = h.plain(&prog);
    let (images, killed, asked) = chain_asked(&h, &prog, 6);
    let depths: Vec<u64> = images.iter().map(|c| chain_depth(&c.path)).collect();
    assert_eq!(depths, [0, 1, 2, 3, 4, 5]);
    assert!(images.iter().all(write_tracked), "{images:?}");
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;

    let after = h.restore_to_end(&killed.ckpt.path, &prog, killed.pid, |_, _| {});
    assert_continuation(&reference, &killed.before, &after, killed.pid);

    // The chain minus its last image: those were taken while the program ran on. The
    // original's whole run is its output up to the kill, then the restored continuation
    // (an image may hold the very state the kill stopped).
    let whole = format!("{}{after}", killed.before);
    for (image, &asked) in images.iter().zip(&asked) {
        let restored = h.restore_to_end(&image.path, &prog, killed.pid, |_, _| {});
        let window = asked..asked + 12;
        assert_resumed(
            &reference, &whole, &restored, window, killed.pid, killed.pid,
        );
    }
}

/// A mapping moved next to a tracked one merges with it in the kernel, which then drops
/// the registration of both but leaves their pages write-protected. The tracker notices
/// (the next checkpoint reads that memory by content) and registers it again at the one
/// after, which must read every page with data, stale protection or not.
#[test]
fn a_mapping_moved_next_to_a_tracked_one_is_read_whole_again() {
    let h = Harness::new("remap");
    h.set_config("keep = 100\n[interval]\nlocal = 0\n");
    let prog = Prog::c("remap", &["60", "15"]);
    let (reference, mut run, pid) = reference_and_run(&h, &prog, 5);
    let before_move = h.checkpoint(pid, false);
    run.wait_for_ticks(20);
    let after_move = h.checkpoint(pid, false);
    run.wait_for_ticks(25);
    let again = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    for ckpt in [&before_move, &after_move, &again] {
        assert_eq!(ckpt.mode, "precopy", "{ckpt:?}");
    }
    let after = h.restore_to_end(&again.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}

/// A process that execs gets a new address space: what was tracked of the old one is
/// dropped (its scans would find nothing written), even where the new image maps its heap
/// at the very address the old one had (address randomization off). The supervisor attaches
/// once the program runs, so it tracks the image that execs.
#[test]
fn tracking_starts_anew_after_an_exec() {
    let h = Harness::new("reexec");
    h.set_config("keep = 100\n[interval]\nlocal = 0\n");
    let prog = Prog::c("reexec", &["60", "18"]);
    let reference = h.plain(&prog);
    let mut target = h.unsupervised(&prog);
    target.wait_for_ticks(3);
    let pid = target.target_pid();
    let attach = h.attach(pid);
    target.wait_for_ticks(6);
    assert_eq!(h.checkpoint(pid, false).mode, "precopy");
    target.wait_for_ticks(24);
    let asked = target.line_count();
    let after_exec = h.checkpoint(pid, false);
    target.wait_for_ticks(30);
    let last = h.checkpoint(pid, true);
    let before = target.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    attach.finish(CMD_TIMEOUT).expect_code(0);
    wait_gone(pid);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let after = h.restore_to_end(&last.path, &prog, pid, |_, _| {});
    assert_continuation(&reference, &before, &after, pid);
    let whole = format!("{before}{after}");
    let restored = h.restore_to_end(&after_exec.path, &prog, pid, |_, _| {});
    assert_resumed(&reference, &whole, &restored, asked..asked + 10, pid, pid);
}

#[test]
fn snapshot_image_with_threads_restores_like_a_frozen_one() {
    let h = Harness::new("snapthreads");
    // Without write tracking, a checkpoint of our child reads its memory from a fork.
    h.set_config("[interval]\nlocal = 0\n[image]\nwrite_tracking = false\n");
    let prog = Prog::c("threads", &["8", "40"]);
    let (reference, run, pid) = reference_and_run(&h, &prog, 6);
    let asked = run.line_count();
    let snap = h.checkpoint(pid, false);
    assert_eq!(snap.mode, "snapshot");
    let json = manifest(&snap.path);
    assert_eq!(
        json["threads"].as_array().unwrap().len(),
        10,
        "8 workers, checker, main"
    );
    let output = run.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert!(
        snap.freeze_ms < snap.total_ms,
        "the target ran on while the snapshot was dumped"
    );

    let after = h.restore_to_end(&snap.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert!(after.contains("final joined=8 new_thread=1"), "{after}");
    assert_resumed(&reference, &output, &after, asked..asked + 3, pid, pid);
}

/// A supervised restore starts write tracking before the restored process runs, from the
/// image's own page list: the first checkpoint after it is an increment over the restored
/// image, and restores exactly (the second restore continues where the first left).
fn increment_after_restore(name: &str, prog: &Prog, ticks: [usize; 3]) -> (Ckpt, Ckpt) {
    let h = Harness::new(name);
    h.set_config("keep = 100\n[interval]\nlocal = 0\n");
    let (reference, run, pid) = reference_and_run(&h, prog, ticks[0]);
    let first = h.checkpoint(pid, true);
    let before = run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);

    let mut restored = h.restore(&first.path, prog);
    restored.set_target(pid);
    restored.wait_for_ticks(ticks[1]);
    let next = h.checkpoint(pid, false);
    restored.wait_for_ticks(ticks[2]);
    let last = h.checkpoint(pid, true);
    let middle = restored.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    assert_eq!(next.mode, "precopy", "{next:?}");
    assert_eq!(
        (chain_depth(&next.path), chain_depth(&last.path)),
        (chain_depth(&first.path) + 1, chain_depth(&first.path) + 2),
        "the checkpoints after the restore build on the restored image"
    );

    let after = h.restore_to_end(&last.path, prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &format!("{before}{middle}"), &after, pid);
    (first, next)
}

#[test]
fn the_first_checkpoint_after_a_restore_is_an_increment() {
    let prog = Prog::c("memory", &["32", "90"]);
    let (first, next) = increment_after_restore("afterrestore", &prog, [10, 4, 10]);
    assert!(
        next.bytes < first.bytes / 4,
        "only pages written since the restore are stored: {} vs {}",
        next.bytes,
        first.bytes
    );
}

#[test]
fn tracking_from_a_restore_sees_every_kind_of_change() {
    increment_after_restore("mutrestore", &Prog::c("mutator", &["70"]), [12, 10, 20]);
}

/// A pids cgroup that lets its processes have at most `max` tasks (so a fork fails), removed
/// when dropped. None where no pids controller can be used (cgroup v1 or v2).
struct PidsLimit {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl PidsLimit {
    fn new(name: &str, max: u32) -> Option<PidsLimit> {
        for root in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"] {
            let root = Path::new(root).to_path_buf();
            let dir = root.join(name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if std::fs::write(dir.join("pids.max"), max.to_string()).is_ok() {
                return Some(PidsLimit { dir, root });
            }
            let _ = std::fs::remove_dir(&dir);
        }
        None
    }

    fn add(&self, pid: i32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for PidsLimit {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A target that cannot fork (its pids cgroup is full) is dumped while frozen, with a note,
/// and that image restores like a snapshot one; the target runs on untouched.
#[test]
fn a_target_that_cannot_fork_is_dumped_frozen_with_a_note() {
    let h = Harness::new("nofork");
    h.set_config("[interval]\nlocal = 0\n[image]\nwrite_tracking = false\n");
    let prog = Prog::c("memory", &["8", "60"]);
    let (reference, mut run, pid) = reference_and_run(&h, &prog, 5);
    let Some(limit) = PidsLimit::new(&format!("mlckpt-test-nofork-{pid}"), 1) else {
        eprintln!("note: no pids cgroup controller can be used here; skipping");
        return;
    };
    limit.add(pid);
    run.wait_for_ticks(8);
    let asked = run.line_count();
    let ckpt = h.checkpoint(pid, false);
    assert_eq!(ckpt.mode, "frozen", "{ckpt:?}");
    let finished = run.finish(CMD_TIMEOUT).expect_code(0);
    drop(limit);
    assert!(
        finished.stderr.contains("fork-snapshot impossible"),
        "the supervisor should say why it dumped while frozen\n{}",
        finished.describe()
    );
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_resumed(
        &reference,
        &finished.stdout,
        &after,
        asked..asked + 3,
        pid,
        pid,
    );
}
