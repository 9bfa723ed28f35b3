//! The simulation pattern: a job that rewrites all of its memory without pause (`dirty.c`,
//! every page every step), checkpointed twice while it writes — a full image, then an
//! increment — under `mlckpt run` with write tracking and without, and by a direct
//! `mlckpt checkpoint` of a process nobody supervises; and an OpenMP stencil (`stencil.c`,
//! two threads). Each image restores to a process that goes on checking every page it
//! overwrites (an image with some pages older than others prints FAIL and exits 1) and
//! prints exactly the lines an uninterrupted run prints.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// How the job runs while it is checkpointed.
#[derive(Clone, Copy)]
enum Watch {
    /// Under `mlckpt run`; checkpoints go through its supervisor.
    Run,
    /// Started directly; `mlckpt checkpoint` seizes it itself.
    Unsupervised,
}

/// 64 MiB, all of it written each step, no pause; enough steps that both checkpoints,
/// however slow on loaded cores, are over long before the end.
fn all_pages_all_the_time() -> Prog {
    Prog::c("dirty", &["64", "100", "0", "1", "300"])
}

fn chain_depth(image: &Path) -> u64 {
    let text = std::fs::read_to_string(image.join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["chain_depth"].as_u64().unwrap()
}

/// The processes whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| parent_and_group(p).is_some_and(|(ppid, _)| ppid == pid))
        .collect()
}

/// `mlckpt checkpoint PID --json [--kill]`, which must succeed; the image's path. The
/// unsupervised job's images go to the harness's store under its job name.
fn checkpoint(h: &Harness, pid: i32, watch: Watch, kill: bool) -> PathBuf {
    let config = h.config.to_str().unwrap();
    let mut args = match watch {
        Watch::Run => vec![],
        Watch::Unsupervised => vec!["--config", config, "--job", &h.job],
    };
    if kill {
        args.push("--kill");
    }
    let report = h.checkpoint_json(pid, &args);
    if !kill {
        // Pre-copy cannot converge on this job: its memory came from a fork-snapshot,
        // killed and reaped by now, also when the job is not our child: no zombie is left
        // in it.
        assert_eq!(report["mode"], "snapshot", "{report}");
        assert_eq!(children(pid), Vec::<i32>::new(), "the snapshot is gone");
    }
    // Not asserted (this test is not timed); shown for whoever reads a failure.
    eprintln!(
        "checkpoint of {pid}: mode {}, freeze {} ms, total {} ms, {} bytes",
        report["mode"], report["freeze_ms"], report["total_ms"], report["bytes"]
    );
    PathBuf::from(report["path"].as_str().expect("a `path` in the report"))
}

/// Starts `prog` (and an uninterrupted reference run), checkpoints it a few steps in while
/// it runs on, then again a few steps after that with --kill (an increment over the first);
/// restores the second image, which must continue the killed run exactly, and then the
/// first, which must continue from a step between the moment it was asked for and the
/// moment it was done.
fn checkpoint_twice_and_restore_both(name: &str, config: &str, prog: &Prog, watch: Watch) {
    let h = Harness::new(name);
    h.set_config(&format!("keep = 100\n[interval]\nlocal = 0\n{config}"));
    let reference = h.plain(prog);
    let mut target = match watch {
        Watch::Run => h.run(prog),
        Watch::Unsupervised => h.unsupervised(prog),
    };
    let pid = target.target_pid();
    target.wait_for_lines("step", 5);
    let asked = target.line_count();
    let full = checkpoint(&h, pid, watch, false);
    // Every line printed before the first checkpoint returned is read once these are.
    target.wait_for_lines("step", count_lines(&target.stdout(), "step") + 3);
    let done = target.line_count();
    assert!(
        pid_alive(pid) && !target.stdout().contains("final"),
        "the job ran out of steps before its second checkpoint: give it more"
    );
    let incr = checkpoint(&h, pid, watch, true);
    let before = target.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(pid);
    assert_eq!(
        [chain_depth(&full), chain_depth(&incr)],
        [0, 1],
        "a full image, then an increment over it"
    );

    let after = h.restore_to_end(&incr, prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);

    // The original's whole run: its output up to the kill, then the restored continuation.
    let whole = format!("{before}{after}");
    let restored = h.restore_to_end(&full, prog, pid, |_, _| {});
    assert_resumed(&reference, &whole, &restored, asked..done, pid, pid);
}

#[test]
fn a_job_rewriting_all_its_pages_restores_from_tracked_checkpoints() {
    checkpoint_twice_and_restore_both("dirty-tracked", "", &all_pages_all_the_time(), Watch::Run);
}

#[test]
fn a_job_rewriting_all_its_pages_restores_without_write_tracking() {
    let config = "[image]\nwrite_tracking = false\n";
    checkpoint_twice_and_restore_both(
        "dirty-untracked",
        config,
        &all_pages_all_the_time(),
        Watch::Run,
    );
}

#[test]
fn a_job_rewriting_all_its_pages_restores_from_direct_checkpoints() {
    let prog = all_pages_all_the_time();
    checkpoint_twice_and_restore_both("dirty-direct", "", &prog, Watch::Unsupervised);
}

#[test]
fn an_openmp_stencil_restores_exactly() {
    let prog = Prog::c("stencil", &["64", "250", "2"]);
    checkpoint_twice_and_restore_both("stencil", "", &prog, Watch::Run);
}
