//! The supervisor (`mlckpt run` / `mlckpt attach`): interval checkpoints that do not disturb
//! the program, a checkpoint on SIGUSR1, checkpoint-then-end on SIGTERM, `attach` to a
//! process mlckpt did not start, `list` / `verify` over what it wrote, and the warning when a
//! run reuses a job name that has images.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nix::sys::signal::Signal;

/// 8 MiB, `ticks` ticks of 30 ms.
fn prog(ticks: u32) -> Prog {
    Prog::c("memory", &["8", &ticks.to_string()])
}

/// Committed images (`ckpt-*`) of the job, oldest first, and any partial ones left behind.
fn committed_images(h: &Harness) -> (Vec<(u64, PathBuf)>, Vec<PathBuf>) {
    let (mut done, mut partial) = (Vec::new(), Vec::new());
    for path in h.images() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match name.strip_prefix("ckpt-").and_then(|s| s.parse().ok()) {
            Some(seq) if path.parent() == Some(&h.rank_dir()) => done.push((seq, path)),
            _ => partial.push(path),
        }
    }
    done.sort();
    (done, partial)
}

/// Waits until the job has a committed image with sequence number `seq`; returns its path.
fn wait_for_image(h: &Harness, seq: u64) -> PathBuf {
    let path = h.rank_dir().join(format!("ckpt-{seq:06}"));
    wait_until(&format!("image {}", path.display()), || path.is_dir());
    path
}

fn verify_ok(h: &Harness, image: &Path) {
    let res = h
        .mlckpt(&["verify".as_ref(), image.as_os_str()])
        .expect_code(0);
    assert!(
        res.stdout.contains("ok") && res.stdout.contains(&*image.to_string_lossy()),
        "verify should print ok and the path\n{}",
        res.describe()
    );
}

/// `mlckpt list --json --config CFG [ARGS]`, parsed.
fn list_json(h: &Harness, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["list", "--json", "--config", h.config.to_str().unwrap()];
    all.extend(args);
    let res = h.mlckpt(&all).expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&res.stdout)
        .unwrap_or_else(|e| panic!("list --json is not JSON: {e}\n{}", res.describe()));
    v.as_array()
        .unwrap_or_else(|| panic!("list --json is not an array\n{}", res.describe()))
        .clone()
}

#[test]
fn interval_checkpoints_do_not_disturb_the_program() {
    let h = Harness::new("interval");
    // keep: enough that retention never deletes any of this run's images.
    h.set_config("keep = 1000\n[interval]\nlocal = 0.5\n");
    let prog = prog(100);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    let pid = run.target_pid();
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0);
    assert_continuation(&reference.stdout, &run.stdout, "", pid);

    let (images, partial) = committed_images(&h);
    assert!(
        partial.is_empty(),
        "partial images left: {partial:?}\n{}",
        run.describe()
    );
    // About 3 s at one checkpoint per 0.5 s: 5 or 6; at least 3 even on a slow machine.
    assert!(
        images.len() >= 3,
        "expected several interval images, got {images:?}\n{}",
        run.describe()
    );
    let seqs: Vec<u64> = images.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=images.len() as u64).collect::<Vec<_>>(),
        "sequence numbers"
    );
    let rows = list_json(&h, &[]);
    let times: Vec<u64> = seqs
        .iter()
        .map(|&seq| {
            let row = rows
                .iter()
                .find(|r| r["seq"] == seq)
                .unwrap_or_else(|| panic!("list --json has no seq {seq}: {rows:?}"));
            row["time_unix_ms"].as_u64().expect("time_unix_ms")
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "image times should increase with seq: {times:?}"
    );

    let res = h
        .mlckpt(&["verify", "--all", "--config", h.config.to_str().unwrap()])
        .expect_code(0);
    for (_, path) in &images {
        assert!(
            res.stdout
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(&*path.to_string_lossy())),
            "verify --all should report {} ok\n{}",
            path.display(),
            res.describe()
        );
    }
}

#[test]
fn sigusr1_to_the_supervisor_checkpoints() {
    let h = Harness::new("usr1");
    let prog = prog(100);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    let asked = run.line_count();
    run.signal(Signal::SIGUSR1);
    let image = wait_for_image(&h, 1);
    run.wait_for_stderr("SIGUSR1");
    assert!(pid_alive(pid), "SIGUSR1 ended the target");
    let run = run.finish(CMD_TIMEOUT).expect_code(0);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &run.stdout, "", pid);
    verify_ok(&h, &image);

    // The image holds the state at the signal: restored, it repeats the rest of the run.
    let after = h.restore_to_end(&image, &prog, pid, |_, _| {});
    assert_resumed(
        &reference,
        &run.stdout,
        &after,
        asked..run.stdout.matches('\n').count(),
        pid,
        pid,
    );
}

#[test]
fn sigterm_to_the_supervisor_checkpoints_and_ends_the_job() {
    let h = Harness::new("term");
    let prog = prog(150);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    run.signal(Signal::SIGTERM);
    let run = run.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    assert!(
        run.stderr.contains("SIGTERM"),
        "the supervisor should report the checkpoint on SIGTERM\n{}",
        run.describe()
    );
    let (images, partial) = committed_images(&h);
    assert!(partial.is_empty(), "partial images left: {partial:?}");
    assert_eq!(images.len(), 1, "one image: {images:?}");
    let image = &images[0].1;
    verify_ok(&h, image);
    let after = h.restore_to_end(image, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &run.stdout, &after, pid);
}

/// A second `run` under a job name that already has images says so once (how many, the
/// newest seq, `--job NAME`) before retention deletes them, as it then does (keep = 1); the
/// first run, with nothing there, says nothing, and neither does `run --resume` when it
/// finds no valid image to resume and starts the program (those images are its own past).
#[test]
fn a_run_reusing_a_job_name_warns_about_its_earlier_images() {
    let h = Harness::new("reuse");
    h.set_config("keep = 1\n[interval]\nlocal = 0\n");
    let run_and_checkpoint = |extra: &[&str]| {
        let mut run = h.run_with(extra, &[], &prog(300));
        run.wait_for_ticks(3);
        let ckpt = h.checkpoint(run.target_pid(), true);
        (ckpt, run.finish(CMD_TIMEOUT).expect_code(KILLED))
    };
    let warnings = |res: &Finished| res.stderr.matches("from an earlier run").count();
    let (old, first) = run_and_checkpoint(&[]);
    assert_eq!(warnings(&first), 0, "{}", first.describe());
    let (new, second) = run_and_checkpoint(&[]);
    let newest = format!("newest seq {}", old.seq);
    line_with(
        &second,
        &["warning:", "already has 1 image ", &newest, "--job NAME"],
    );
    assert_eq!(warnings(&second), 1, "{}", second.describe());
    assert!(new.seq > old.seq, "{} after {}", new.seq, old.seq);
    assert_eq!(image_seqs(&h.rank_dir()), [new.seq]);
    // An image that cannot be resumed: --resume starts the program, without the warning.
    damage(&new.path.join("CHECKSUMS"), Damage::Truncate);
    let (_, resumed) = run_and_checkpoint(&["--resume"]);
    line_with(&resumed, &["no valid image", "starting the program afresh"]);
    assert_eq!(warnings(&resumed), 0, "{}", resumed.describe());
}

/// One command for the first start and every requeue: `run --resume` starts the program
/// when the job has no image, and resumes the newest one when it has; the stop on SIGTERM
/// exits with its own code, not as a crash.
#[test]
fn run_resume_starts_then_resumes_after_a_stop() {
    let h = Harness::new("resume");
    let prog = prog(150);
    let reference = h.plain(&prog);
    let mut run = h.run_with(&["--resume"], &[], &prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    run.signal(Signal::SIGTERM);
    let first = run.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    assert!(
        first.stderr.contains("started"),
        "the first --resume should start the program\n{}",
        first.describe()
    );
    let second = h
        .run_with(&["--resume"], &[], &prog)
        .finish(CMD_TIMEOUT)
        .expect_code(0);
    line_with(&second, &["restored", "as PID"]);
    assert!(
        !second.stderr.contains("mlckpt: started"),
        "the second --resume should not start the program again\n{}",
        second.describe()
    );
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &first.stdout, &second.stdout, pid);
}

/// A job whose program exited by itself is complete: `run --resume` starts it afresh
/// instead of resuming its last image (which would repeat the end of a finished run).
#[test]
fn run_resume_starts_a_finished_job_afresh() {
    let h = Harness::new("resume-done");
    let prog = prog(40);
    let mut run = h.run_with(&["--resume"], &[], &prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    h.checkpoint(pid, false);
    let first = run.finish(CMD_TIMEOUT).expect_code(0);
    let second = h
        .run_with(&["--resume"], &[], &prog)
        .finish(CMD_TIMEOUT)
        .expect_code(0);
    line_with(&second, &["finished (exit 0)", "afresh"]);
    line_with(&second, &["mlckpt: started"]);
    let ticks = |text: &str| text.lines().filter(|l| l.starts_with("tick")).count();
    assert_eq!(
        ticks(&first.stdout),
        ticks(&second.stdout),
        "the whole run again"
    );
}

/// A batch job's output is a regular file (SLURM's `.out`): after a restore the job writes
/// to the restoring command's own output (the requeued job's new `.out`), and the old file
/// keeps what was written to it since the checkpoint (it is not cut back).
#[test]
fn a_stdout_file_follows_the_restoring_command() {
    let h = Harness::new("stdout-file");
    let prog = prog(150);
    let reference = h.plain(&prog);
    let out = h.run_dir().join("job.out");
    let mut argv: Vec<String> = [
        "sh",
        "-c",
        "echo pid $$; exec \"$0\" \"$@\" > '{dir}/job.out'",
    ]
    .map(String::from)
    .to_vec();
    argv.extend(prog.argv.iter().cloned());
    let job = Prog { argv, feed: None };
    let mut run = h.run(&job);
    let pid = run.target_pid();
    let ticks = |text: &str| text.lines().filter(|l| l.starts_with("tick")).count();
    let deadline = std::time::Instant::now() + TICK_TIMEOUT;
    while ticks(&std::fs::read_to_string(&out).unwrap_or_default()) < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "no ticks in {}",
            out.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ckpt = h.checkpoint(pid, true);
    run.finish(CMD_TIMEOUT).expect_code(KILLED);
    wait_gone(pid);
    let before = std::fs::read_to_string(&out).unwrap();
    // What the old job's log got after the checkpoint (here: a line the user added).
    std::fs::write(&out, format!("{before}written after the checkpoint\n")).unwrap();
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        format!("{before}written after the checkpoint\n"),
        "the old output file should be left as it was"
    );
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}

#[test]
fn attach_supervises_a_process_mlckpt_did_not_start() {
    let h = Harness::new("attach");
    let prog = prog(150);
    let reference = h.plain(&prog);
    let mut target = h.unsupervised(&prog);
    target.wait_for_ticks(5);
    let pid = target.target_pid();
    let socket = Harness::control_socket(pid);
    let attach = h.attach(pid);
    target.wait_for_ticks(10);
    // Without --job, a direct checkpoint would name the job after the program: the image
    // being in <store>/<job>/rank0 shows it went through the attach supervisor.
    let ckpt = h.checkpoint(pid, true);
    let before = target.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    let attach = attach.finish(CMD_TIMEOUT).expect_code(0);
    assert!(
        attach.stderr.contains(&pid.to_string()),
        "attach should name the PID it supervises\n{}",
        attach.describe()
    );
    assert!(!socket.exists(), "attach left its control socket behind");
    wait_gone(pid);
    let after = h.restore_to_end(&ckpt.path, &prog, pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &before, &after, pid);
}

#[test]
fn list_and_verify_report_the_images() {
    let h = Harness::new("list");
    let prog = prog(100);
    let mut run = h.run(&prog);
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    let first = h.checkpoint(pid, false);
    let second = h.checkpoint(pid, true);
    run.finish(CMD_TIMEOUT).expect_code(KILLED);

    let rows = list_json(&h, &[]);
    assert_eq!(rows.len(), 2, "two images: {rows:#?}");
    for (row, ckpt) in rows.iter().zip([&first, &second]) {
        assert_eq!(row["seq"], ckpt.seq, "{row:#?}");
        assert_eq!(row["job"], h.job.as_str(), "{row:#?}");
        assert_eq!(row["rank"], 0, "{row:#?}");
        assert_eq!(row["tier"], "local", "{row:#?}");
        assert_eq!(row["valid"], true, "{row:#?}");
        assert_eq!(row["path"], &*ckpt.path.to_string_lossy(), "{row:#?}");
    }
    assert!(list_json(&h, &["--job", "some-other-job"]).is_empty());
    verify_ok(&h, &first.path);
    verify_ok(&h, &second.path);

    // A damaged image is listed as invalid, and verify says so with a non-zero exit. (The
    // newest is damaged: it may be an increment of the first, never the other way round.)
    damage(&second.path.join("pages.bin"), Damage::FlipBit);
    let rows = list_json(&h, &[]);
    let valid: Vec<(Option<u64>, Option<bool>)> = rows
        .iter()
        .map(|r| (r["seq"].as_u64(), r["valid"].as_bool()))
        .collect();
    assert_eq!(
        valid,
        [(Some(1), Some(true)), (Some(2), Some(false))],
        "{rows:#?}"
    );
    let res = h
        .mlckpt(&["verify".as_ref(), second.path.as_os_str()])
        .expect_failure();
    assert!(res.output().contains("pages.bin"), "{}", res.describe());
    let res = h
        .mlckpt(&["verify", "--all", "--config", h.config.to_str().unwrap()])
        .expect_failure();
    assert!(
        res.stdout.contains(&*second.path.to_string_lossy()),
        "verify --all should name the damaged image\n{}",
        res.describe()
    );
}

#[test]
fn restore_keeps_supervising_the_restored_process() {
    let h = Harness::new("resup");
    let prog = prog(150);
    let reference = h.plain(&prog);
    let first = h.run_until_checkpoint_kill(&prog, 10);
    // `checkpoint PID` of the restored process goes through `mlckpt restore`, which then
    // reports the kill like `run` does; the new image continues the sequence.
    let mut restore = h.restore(&first.ckpt.path, &prog);
    restore.set_target(first.pid);
    restore.wait_for_ticks(10);
    let second = h.checkpoint(first.pid, true);
    assert_eq!(second.seq, first.ckpt.seq + 1, "sequence numbers");
    let middle = restore.finish(CMD_TIMEOUT).expect_code(KILLED).stdout;
    wait_gone(first.pid);
    let after = h.restore_to_end(&second.path, &prog, first.pid, |_, _| {});
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(
        &reference,
        &format!("{}{middle}", first.before),
        &after,
        first.pid,
    );
}

#[test]
fn restore_detach_leaves_the_process_running_unsupervised() {
    let h = Harness::new("detach");
    let prog = prog(100);
    let reference = h.plain(&prog);
    let killed = h.run_until_checkpoint_kill(&prog, 10);
    let pid = killed.pid;
    let mut restore = h.restore_with(&[killed.ckpt.path.as_os_str(), "--detach".as_ref()], &prog);
    restore.set_target(pid);
    restore.wait_for_stderr(" as PID ");
    // The restore command returns at once; the process runs on, reparented, with no
    // supervisor (no control socket).
    let restorer = restore.child_pid();
    wait_until("restore --detach to exit", || {
        parent_and_group(pid).is_none_or(|(ppid, _)| ppid != restorer)
    });
    assert!(pid_alive(pid), "the detached process ended early");
    let socket = Harness::control_socket(pid);
    assert!(
        !socket.exists(),
        "a detached process has a supervisor socket"
    );
    // Its stdout is the restore command's: it closes when the process ends.
    let after = restore.finish(CMD_TIMEOUT).expect_code(0).stdout;
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &killed.before, &after, pid);
}

/// An interval checkpoint that races the program's exit must not lose its exit status:
/// the supervisor is both tracer and parent, and a tracer wait during the checkpoint may
/// collect the exit first (it was lost about 1 run in 100 at a 1 ms interval).
#[test]
fn exit_status_survives_a_checkpoint_racing_the_exit() {
    let h = Harness::new("exitrace");
    h.set_config("keep = 100000\n[interval]\nlocal = 0.001\n");
    let prog = Prog::c("memory", &["1", "3"]);
    for _ in 0..100 {
        let run = h.run(&prog).finish(CMD_TIMEOUT);
        assert_eq!(run.code, 0, "exit status lost\n{}", run.describe());
        let _ = std::fs::remove_dir_all(&h.store);
    }
}

/// `-q` leaves only warnings and errors on stderr; `--log-file` still gets every normal
/// message, one line each, starting with a UTC timestamp.
#[test]
fn a_quiet_run_still_writes_its_log_file() {
    let h = Harness::new("logfile");
    let log = h.run_dir().join("mlckpt.log");
    let prog = prog(20);
    let mut run = h.run_with(&["-q", "--log-file", log.to_str().unwrap()], &[], &prog);
    run.wait_for_ticks(3);
    let pid = run.target_pid();
    h.checkpoint(pid, false);
    let res = run.finish(CMD_TIMEOUT).expect_code(0);
    assert!(
        !res.stderr.contains("mlckpt: started"),
        "-q printed a normal message\n{}",
        res.describe()
    );
    let text = std::fs::read_to_string(&log).expect("the log file");
    let started = text
        .lines()
        .find(|l| l.contains("mlckpt: started"))
        .unwrap_or_else(|| panic!("no start line in the log file:\n{text}"));
    let stamp = started.split(' ').next().unwrap_or_default();
    let digits_at = |i: usize| stamp.as_bytes().get(i).is_some_and(u8::is_ascii_digit);
    assert!(
        stamp.len() == 24 && stamp.ends_with('Z') && &stamp[10..11] == "T" && digits_at(0),
        "not a UTC timestamp: {started}"
    );
    assert!(
        text.lines().all(|l| l.contains(" mlckpt: ")),
        "a line of the log file is not one of mlckpt's:\n{text}"
    );
}

/// The guard keeps the job traced, yet a parent hears of its children's exits as it would
/// untraced: once a child's pidfd is readable its exit is there to collect (WNOHANG), before
/// the checkpoint, and after the restore. Before the guard let go of exiting threads, 96
/// of 100 exits were not there yet.
#[test]
fn a_parent_collects_each_exit_its_pidfd_announces() {
    let h = Harness::new("pidfd-exit");
    let out = h.checkpoint_kill_restore(&Prog::c("child_exit_wait", &["60"]), 20);
    assert!(
        out.after.contains("done late=0"),
        "every exit should be there when announced:\n{}",
        out.after
    );
}
