//! `mlckpt forget --job NAME`: deletes a finished job's images on every tier (both ranks,
//! partial leftovers included) and nothing of another job; `--dry-run` deletes nothing; it
//! is refused while a supervisor of the job runs and for an invalid job name; a symlink
//! where an image or rank directory should be is reported and not followed.

mod common;

use std::path::PathBuf;

use common::*;
use nix::sys::signal::Signal;

/// 8 MiB, 150 ticks of 30 ms.
fn prog() -> Prog {
    Prog::c("memory", &["8", "150"])
}

fn global_root(h: &Harness) -> PathBuf {
    h.dir.path().join("global")
}

/// Test mode with 2 nodes (rank R on node R) and a global tier.
fn configure(h: &Harness) {
    h.set_config(&format!(
        "global = '{}'\n[coordination]\nmode = 'off'\n[topology]\ntest_mode = true\nnodes = 2\n",
        global_root(h).display()
    ));
}

fn forget(h: &Harness, extra: &[&str]) -> Finished {
    let mut args = vec!["forget", "--config", h.config.to_str().unwrap()];
    args.extend(extra);
    h.mlckpt(&args)
}

/// Rank `rank` of the job runs, is checkpointed to the global tier and killed: its image
/// on node `rank`'s local tier and on the global tier.
fn checkpointed_rank(h: &Harness, rank: u32) -> [PathBuf; 2] {
    let mut run = h.run_with(&["--rank", &rank.to_string()], &[], &prog());
    run.wait_for_ticks(3);
    let pid = run.target_pid();
    let (seq, global) = checkpoint_to(h, pid, "global", &["--kill"]);
    run.finish(CMD_TIMEOUT).expect_code(KILLED);
    let local = h
        .store
        .join(format!("node{rank}/{}/rank{rank}/ckpt-{seq:06}", h.job));
    assert!(local.join("CHECKSUMS").is_file(), "{}", local.display());
    [local, global]
}

fn all_exist(paths: &[PathBuf]) -> bool {
    paths.iter().all(|p| p.is_dir())
}

#[test]
fn forgets_every_tier_of_both_ranks_and_nothing_of_another_job() {
    let h = Harness::new("forget-all");
    configure(&h);
    let mut doomed: Vec<PathBuf> = (0..2).flat_map(|r| checkpointed_rank(&h, r)).collect();
    let partial = h
        .store
        .join(format!("node0/{}/rank0/.ckpt-000007.partial", h.job));
    std::fs::create_dir_all(&partial).unwrap();
    doomed.push(partial);
    let other = copy_image(&doomed[0], &h.store.join("node0/other/rank0"));

    let dry = forget(&h, &["--job", &h.job, "--dry-run"]).expect_code(0);
    assert!(all_exist(&doomed), "--dry-run deleted\n{}", dry.describe());
    for path in &doomed {
        let shown = path.to_str().unwrap();
        line_in(&dry.stdout, &["would delete", shown]);
    }
    line_in(&dry.stdout, &["would forget 5 images"]);

    let done = forget(&h, &["--job", &h.job]).expect_code(0);
    for path in &doomed {
        assert!(
            !path.exists(),
            "{} is left\n{}",
            path.display(),
            done.describe()
        );
        line_in(&done.stdout, &["deleted", path.to_str().unwrap()]);
    }
    line_in(&done.stdout, &["forgot 5 images"]);
    // The emptied job directories go too.
    for job_dir in [
        h.store.join("node0").join(&h.job),
        h.store.join("node1").join(&h.job),
        global_root(&h).join(&h.job),
    ] {
        assert!(!job_dir.exists(), "{} is left", job_dir.display());
    }
    let res = h
        .mlckpt(&["verify".as_ref(), other.as_os_str()])
        .expect_code(0);
    assert!(res.stdout.starts_with("ok"), "{}", res.describe());

    let again = forget(&h, &["--job", &h.job]).expect_code(0);
    line_in(&again.stdout, &["no images of job"]);
}

#[test]
fn one_rank_only() {
    let h = Harness::new("forget-rank");
    configure(&h);
    let rank0 = checkpointed_rank(&h, 0);
    let rank1 = checkpointed_rank(&h, 1);
    forget(&h, &["--job", &h.job, "--rank", "1"]).expect_code(0);
    assert!(all_exist(&rank0));
    assert!(rank1.iter().all(|p| !p.exists()));
}

#[test]
fn refused_while_supervised_or_for_a_bad_name() {
    let h = Harness::new("forget-busy");
    let mut run = h.run(&prog());
    run.wait_for_ticks(3);
    let pid = run.target_pid();
    let image = h.checkpoint(pid, false).path;
    let refused = forget(&h, &["--job", &h.job]).expect_code(1);
    assert!(
        refused
            .stderr
            .contains("a supervisor of job forget-busy is running"),
        "{}",
        refused.describe()
    );
    assert!(
        image.join("CHECKSUMS").is_file(),
        "deleted while supervised"
    );
    refused_names(&h);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    run.finish(CMD_TIMEOUT).expect_code(KILLED);
    forget(&h, &["--job", &h.job]).expect_code(0);
    assert!(!image.exists());
}

fn refused_names(h: &Harness) {
    for name in ["../forget-busy", "", ".hidden", "a/b"] {
        let res = forget(h, &["--job", name]).expect_code(1);
        assert!(
            res.stderr.contains("is not a valid job name"),
            "{}",
            res.describe()
        );
    }
}

#[test]
fn symlinks_are_reported_not_followed() {
    let h = Harness::new("forget-links");
    let outside = h.dir.path().join("outside");
    let kept = outside.join("ckpt-000002");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join("pages"), b"not to be deleted").unwrap();
    let rank0 = h.rank_dir();
    let real = rank0.join("ckpt-000001");
    std::fs::create_dir_all(&real).unwrap();
    let link = rank0.join("ckpt-000002");
    std::os::unix::fs::symlink(&kept, &link).unwrap();
    let rank_link = h.store.join(&h.job).join("rank1");
    std::os::unix::fs::symlink(&outside, &rank_link).unwrap();

    let res = forget(&h, &["--job", &h.job]).expect_code(0);
    for skipped in [&link, &rank_link] {
        let shown = format!("skipped {}: a symbolic link", skipped.display());
        assert!(res.stderr.contains(&shown), "{}", res.describe());
    }
    assert!(!real.exists(), "{}", res.describe());
    assert!(kept.join("pages").is_file(), "followed a symlink");
    assert!(std::fs::symlink_metadata(&link).is_ok());
    line_in(&res.stdout, &["forgot 1 images"]);
}

/// Asserts some line of `text` contains every one of `parts`.
fn line_in(text: &str, parts: &[&str]) {
    assert!(
        text.lines().any(|l| parts.iter().all(|p| l.contains(p))),
        "no line with {parts:?} in\n{text}"
    );
}
