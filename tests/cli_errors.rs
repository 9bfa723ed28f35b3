//! Errors of the command line: a bad config is a usage error (exit 2) naming file, line and
//! key; a missing process or image is an error (exit 1) naming it; a restore whose PID is
//! taken fails clearly and leaves the holder alone, and `--new-pid` restores it anyway.
//! `$VAR`s in config paths are expanded from the environment, an unset one is such an error.

mod common;

use std::path::Path;

use common::*;

/// 8 MiB, 150 ticks of 30 ms: about 4.5 s uninterrupted.
fn prog() -> Prog {
    Prog::c("memory", &["8", "150"])
}

#[test]
fn bad_config_is_a_usage_error_naming_file_line_and_key() {
    let h = Harness::new("badconfig");
    let bad = h.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("[storage]\nlocal = '{}'\nkepe = 3\n", h.store.display()),
    )
    .unwrap();
    let marker = h.dir.path().join("started");
    let bad_s = bad.to_str().unwrap();
    // A live process nobody supervises: attach and a direct checkpoint need the config.
    let mut sleep = std::process::Command::new("sleep");
    sleep.arg("60");
    let sleeper = Proc::spawn("sleep", sleep, None);
    let live_pid = sleeper.child_pid().to_string();
    let commands: [&[&str]; 6] = [
        &[
            "run",
            "--config",
            bad_s,
            "--",
            "touch",
            marker.to_str().unwrap(),
        ],
        &["list", "--config", bad_s],
        &["verify", "--all", "--config", bad_s],
        &["restore", "--auto", "--job", "x", "--config", bad_s],
        &["checkpoint", &live_pid, "--config", bad_s],
        &["attach", "--config", bad_s, &live_pid],
    ];
    for args in commands {
        let res = h.mlckpt(args).expect_code(2);
        assert!(
            res.stderr.contains(&format!("{bad_s}:3:")) && res.stderr.contains("kepe"),
            "the error should name {bad_s}, line 3 and the key `kepe`\n{}",
            res.describe()
        );
    }
    assert!(
        !marker.exists(),
        "run started the program despite the bad config"
    );
    assert!(h.images().is_empty(), "images: {:?}", h.images());
    drop(sleeper);

    // An explicit --config that does not exist is a usage error too.
    let missing = h.dir.path().join("missing.toml");
    let res = h
        .mlckpt(&["list", "--config", missing.to_str().unwrap()])
        .expect_code(2);
    assert!(
        res.stderr.contains(missing.to_str().unwrap()),
        "the error should name the missing file\n{}",
        res.describe()
    );
}

#[test]
fn checkpoint_of_a_missing_process_fails() {
    let h = Harness::new("nopid");
    let pid = unused_pid().to_string();
    let res = h
        .mlckpt(&["checkpoint", &pid, "--config", h.config.to_str().unwrap()])
        .expect_code(1);
    assert!(
        res.stderr.contains(&format!("process {pid}")) && res.stderr.contains("does not exist"),
        "the error should say process {pid} does not exist\n{}",
        res.describe()
    );
    assert!(res.stdout.is_empty(), "no image path\n{}", res.describe());
    assert!(h.images().is_empty(), "images: {:?}", h.images());
}

#[test]
fn restore_of_a_missing_image_fails() {
    let h = Harness::new("noimage");
    for path in [Path::new("/nonexistent"), &h.dir.path().join("ckpt-000001")] {
        assert!(!path.exists());
        let res = h
            .mlckpt(&[
                "restore".as_ref(),
                path.as_os_str(),
                "--config".as_ref(),
                h.config.as_os_str(),
            ])
            .expect_code(1);
        let text = res.stderr.to_lowercase();
        assert!(
            res.stderr.contains(&*path.to_string_lossy())
                && (text.contains("no such") || text.contains("does not exist")),
            "the error should say {} does not exist\n{}",
            path.display(),
            res.describe()
        );
    }
}

/// The PID from `mlckpt: restored IMAGE (seq N) as PID <pid>`.
fn restored_pid(stderr: &str) -> Option<i32> {
    stderr
        .lines()
        .find(|l| l.contains("restored"))?
        .rsplit_once("as PID ")?
        .1
        .trim()
        .parse()
        .ok()
}

#[test]
fn restore_while_the_pid_is_in_use() {
    let h = Harness::new("pidinuse");
    let prog = prog();
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let asked = run.line_count();
    let ckpt = h.checkpoint(pid, false);

    // The original still runs: the restore must refuse, say why, and leave it alone.
    let res = h
        .restore(&ckpt.path, &prog)
        .finish(CMD_TIMEOUT)
        .expect_code(1);
    assert!(
        res.stderr.contains(&format!("PID {pid}"))
            && res.stderr.contains("in use")
            && res.stderr.contains("--new-pid"),
        "the error should say PID {pid} is in use and suggest --new-pid\n{}",
        res.describe()
    );
    assert!(res.stdout.is_empty(), "{}", res.describe());
    assert_eq!(
        parent_and_group(pid).map(|(ppid, _)| ppid),
        Some(run.child_pid()),
        "PID {pid} should still be the original, under `mlckpt run`"
    );

    // With --new-pid it is restored next to the original, under another PID.
    let mut restore = h.restore_with(&[ckpt.path.as_os_str(), "--new-pid".as_ref()], &prog);
    let err = restore.wait_for_stderr(" as PID ");
    let new_pid = restored_pid(&err).unwrap_or_else(|| panic!("no `as PID <N>` in {err:?}"));
    restore.set_target(new_pid);
    assert_ne!(new_pid, pid, "--new-pid restored under the original PID");
    assert!(pid_alive(pid), "the original ended");
    let after = restore.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let before = run.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    // The original was not disturbed, and the copy repeats its run from the image on.
    assert_continuation(&reference, &before, "", pid);
    let total = before.matches('\n').count();
    assert_resumed(&reference, &before, &after, asked..total, pid, new_pid);
}

/// `--job` becomes a directory name: a path (`../../x`, `/abs`), an empty name or odd
/// characters are usage errors on every command that takes it, and nothing is created.
/// Out-of-range ranks likewise.
#[test]
fn job_names_and_ranks_that_are_not_directory_names_are_refused() {
    let h = Harness::new("badjob");
    let marker = h.dir.path().join("started");
    let cfg = h.config.to_str().unwrap();
    let mut sleep = std::process::Command::new("sleep");
    sleep.arg("60");
    let sleeper = Proc::spawn("sleep", sleep, None);
    let live_pid = sleeper.child_pid().to_string();
    for name in ["../../x", "/abs", "", "a b", ".hidden", &"n".repeat(200)] {
        let commands: [Vec<&str>; 5] = [
            vec!["run", "--job", name, "--config", cfg, "--", "touch"],
            vec!["attach", "--job", name, "--config", cfg, &live_pid],
            vec!["checkpoint", &live_pid, "--job", name, "--config", cfg],
            vec!["restore", "--auto", "--job", name, "--config", cfg],
            vec!["list", "--job", name, "--config", cfg],
        ];
        for mut args in commands {
            if args[0] == "run" {
                args.push(marker.to_str().unwrap());
            }
            let res = h.mlckpt(&args).expect_code(2);
            assert!(
                res.stderr.contains("--job") && res.stderr.contains("cannot be a job name"),
                "the error should say {name:?} cannot be a job name\n{}",
                res.describe()
            );
            assert!(!res.stderr.contains("panicked"), "{}", res.describe());
        }
    }
    for rank in ["-1", "99999999999", "16777216"] {
        let res = h
            .mlckpt(&["run", "--rank", rank, "--config", cfg, "--", "true"])
            .expect_code(2);
        assert!(res.stderr.contains("rank"), "{}", res.describe());
    }
    let res = h
        .start_with_env(
            &["run", "--config", cfg, "--", "true"],
            &[("MLCKPT_RANK", "16777216")],
            None,
        )
        .finish(CMD_TIMEOUT)
        .expect_code(2);
    assert!(res.stderr.contains("too large"), "{}", res.describe());
    assert!(!marker.exists(), "run started the program");
    assert!(!h.dir.path().join("x").exists() && !Path::new("/abs").exists());
    assert!(h.images().is_empty(), "images: {:?}", h.images());
    drop(sleeper);
}

/// A target that has exited (a zombie its parent has not collected) is named as such, not
/// as a failure to open its memory or a missing process.
#[test]
fn checkpoint_of_an_exited_process_says_it_exited() {
    let h = Harness::new("exited");
    // The child exits at once; its parent never collects it (a shell might, at any time).
    let mut parent = std::process::Command::new("python3");
    parent
        .args([
            "-c",
            "import os, time\npid = os.fork()\nif pid == 0: os._exit(0)\n\
             print(pid, flush=True)\ntime.sleep(30)",
        ])
        .stdout(std::process::Stdio::piped());
    let mut parent = parent.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let zombie: i32 = line.trim().parse().unwrap();
    wait_until("the child is a zombie", || {
        std::fs::read_to_string(format!("/proc/{zombie}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|f| f.trim_start().starts_with('Z'))
        })
    });
    let res = h
        .mlckpt(&[
            "checkpoint",
            &zombie.to_string(),
            "--config",
            h.config.to_str().unwrap(),
        ])
        .expect_code(1);
    let _ = parent.kill();
    let _ = parent.wait();
    assert!(
        res.stderr.contains(&format!("process {zombie} has exited")),
        "the error should say process {zombie} has exited\n{}",
        res.describe()
    );
    assert!(
        !res.stderr.contains("memory") && !res.stderr.contains("does not exist"),
        "{}",
        res.describe()
    );
    assert!(h.images().is_empty(), "images: {:?}", h.images());
}

/// An interval below the documented minimum is a usage error naming the key.
#[test]
fn an_interval_below_the_minimum_is_refused() {
    let h = Harness::new("tinyinterval");
    h.set_config("[interval]\nlocal = 1e-9\n");
    let res = h
        .mlckpt(&["run", "--config", h.config.to_str().unwrap(), "--", "true"])
        .expect_code(2);
    assert!(
        res.stderr.contains("interval.local") && res.stderr.contains("minimum"),
        "the error should name interval.local and the minimum\n{}",
        res.describe()
    );
}

/// `$VAR`s in config paths come from mlckpt's environment: unset, the variable is a usage
/// error naming file, line, key and variable, and nothing is started or created; set, it is
/// expanded (and `$$` is a literal `$`).
#[test]
fn variables_in_config_paths() {
    let h = Harness::new("pathvars");
    let cfg = h.dir.path().join("vars.toml");
    let cfg_s = cfg.to_str().unwrap();
    let root = h.dir.path().to_str().unwrap();
    let marker = h.dir.path().join("started");
    let args = [
        "run",
        "--config",
        cfg_s,
        "--",
        "touch",
        marker.to_str().unwrap(),
    ];
    let run = |global: &str| {
        let text =
            format!("[storage]\nlocal = \"$MLCKPT_TEST_ROOT/l-$$\"\nglobal = \"{global}\"\n");
        std::fs::write(&cfg, text).unwrap();
        h.start_with_env(&args, &[("MLCKPT_TEST_ROOT", root)], None)
            .finish(CMD_TIMEOUT)
    };
    let res = run("${MLCKPT_TEST_ROOT}/${MLCKPT_TEST_SURELY_UNSET}").expect_code(2);
    let expected = format!(
        "{cfg_s}:3:10: storage.global: $MLCKPT_TEST_SURELY_UNSET is not set in the environment"
    );
    assert!(res.stderr.contains(&expected), "{}", res.describe());
    assert!(
        !marker.exists(),
        "run started the program despite the bad config"
    );
    assert!(!h.dir.path().join("l-$").exists());
    run("${MLCKPT_TEST_ROOT}/g").expect_code(0);
    assert!(marker.exists(), "the program did not run");
    for dir in ["l-$", "g"] {
        assert!(h.dir.path().join(dir).is_dir(), "{dir} was not created");
    }
}
