//! mlckpt run by an ordinary user: checkpoints of their own job work (or the start says
//! exactly which privilege is missing), a restore says it needs CAP_CHECKPOINT_RESTORE, and
//! a process of another user is named as existing but not theirs. The tests run as root
//! and become uid 65534 (nobody) with `setpriv`; without it they are skipped, saying so.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NOBODY: &str = "65534";

/// `setpriv` as uid/gid 65534 running mlckpt with `args`, in `home` (its HOME, work and
/// runtime dir); `None` (with the reason printed) when setpriv is not available.
fn as_nobody(home: &Path, args: &[&str]) -> Option<Finished> {
    let Some(setpriv) = find_in_path("setpriv") else {
        eprintln!("SKIPPED: setpriv (util-linux) is not installed");
        return None;
    };
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(mlckpt_bin())
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home);
    Some(Proc::spawn("mlckpt as nobody", cmd, None).finish(CMD_TIMEOUT))
}

/// A directory uid 65534 can write: storage, config and runtime dir of its runs.
fn nobodys_home() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("mlckpt-test-nobody-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("mlckpt.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nlocal = '{}/store'\n[interval]\nlocal = 0.3\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, config)
}

#[test]
fn a_non_root_run_checkpoints_its_job_or_says_what_is_missing() {
    require_root();
    let (home, config) = nobodys_home();
    let cfg = config.to_str().unwrap();
    let Some(res) = as_nobody(
        home.path(),
        &["run", "--config", cfg, "--job", "nr", "--", "sleep", "1.5"],
    ) else {
        return;
    };
    let res = res.expect_code(0);
    // What a restore will need is said at the start, not found out later.
    assert!(
        res.stderr.contains("CAP_CHECKPOINT_RESTORE"),
        "the start should say restoring needs CAP_CHECKPOINT_RESTORE\n{}",
        res.describe()
    );
    assert!(
        res.stderr.contains("interval checkpoint (local): ") && !res.stderr.contains("failed"),
        "the interval checkpoints should work for the job's own user\n{}",
        res.describe()
    );
    assert!(
        !res.stderr.contains("ptrace_scope") && !res.stderr.contains("another tracer"),
        "{}",
        res.describe()
    );
    let images = image_seqs(&home.path().join("store/nr/rank0"));
    assert!(!images.is_empty(), "no image written\n{}", res.describe());

    // A restore fails at once, naming the capability.
    let image = home
        .path()
        .join(format!("store/nr/rank0/ckpt-{:06}", images[0]));
    let res = as_nobody(
        home.path(),
        &["restore", image.to_str().unwrap(), "--config", cfg],
    )
    .expect("setpriv was there a moment ago")
    .expect_code(1);
    assert!(
        res.stderr.contains("needs CAP_CHECKPOINT_RESTORE") && !res.stderr.contains("panicked"),
        "{}",
        res.describe()
    );
}

#[test]
fn checkpoint_of_another_users_process_says_it_exists_but_is_not_yours() {
    require_root();
    let (home, config) = nobodys_home();
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    let sleeper = Proc::spawn("sleep", sleep, None);
    let pid = sleeper.child_pid().to_string();
    let Some(res) = as_nobody(
        home.path(),
        &["checkpoint", &pid, "--config", config.to_str().unwrap()],
    ) else {
        return;
    };
    let res = res.expect_code(1);
    assert!(
        res.stderr
            .contains(&format!("process {pid} exists but belongs to uid 0"))
            && res.stderr.contains("may not trace it"),
        "the error should say process {pid} exists but is not ours\n{}",
        res.describe()
    );
    assert!(!res.stderr.contains("does not exist"), "{}", res.describe());
    assert!(pid_alive(sleeper.child_pid()));
}
