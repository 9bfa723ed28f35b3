//! The signal guard (`docs/signals.md`): signals addressed to a supervised job become
//! checkpoints before the program acts on them. A SLURM step signal (every process of the
//! job and mlckpt at once), a SIGTERM to the program alone, a program that handles SIGTERM
//! itself (`deliver`), the batch shell that runs mlckpt without `exec`, the guard turned
//! off, the self-requeue with a fake `scontrol`, and what the guard costs a program that
//! receives many signals.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// 8 MiB, `ticks` ticks of 30 ms.
fn memory(ticks: u32) -> Prog {
    Prog::c("memory", &["8", &ticks.to_string()])
}

/// The committed images of the job.
fn images(h: &Harness) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = h
        .images()
        .into_iter()
        .filter(|p| {
            p.parent() == Some(&h.rank_dir())
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("ckpt-")
        })
        .collect();
    found.sort();
    found
}

fn verify_ok(h: &Harness, image: &Path) {
    h.mlckpt(&["verify".as_ref(), image.as_os_str()])
        .expect_code(0);
}

/// `run --resume` to the end: the job resumes from its image and finishes.
fn resume_to_end(h: &Harness, prog: &Prog, pid: i32) -> String {
    let mut resumed = h.run_with(&["--resume"], &[], prog);
    resumed.set_target(pid);
    let resumed = resumed.finish(CMD_TIMEOUT).expect_code(0);
    line_with(&resumed, &["restored", "as PID"]);
    resumed.stdout
}

/// After a checkpoint-and-stop: one image, valid, and `run --resume` finishes with the
/// output of the uninterrupted `reference` (`before`: what the stopped run printed).
fn assert_stopped_and_resumable(h: &Harness, prog: &Prog, reference: Proc, before: &str, pid: i32) {
    let found = images(h);
    assert_eq!(found.len(), 1, "one image: {found:?}");
    verify_ok(h, &found[0]);
    let after = resume_to_end(h, prog, pid);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, before, &after, pid);
}

/// Every descendant of `pid` (not `pid` itself).
fn descendants(pid: i32) -> Vec<i32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some((ppid, _)) = parent_and_group(p) {
            parents.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// A step signal (scancel, srun --signal, preemption): SIGTERM to every process of the job
/// and to mlckpt at once, the job's processes first (the worst order). None of them may act
/// on it: one checkpoint, exit 3, and `run --resume` finishes as if nothing had happened.
#[test]
fn a_step_signal_to_every_process_checkpoints_and_stops() {
    let h = Harness::new("sig-step");
    let step = compiled("step").to_string_lossy().into_owned();
    let prog = Prog::script("tree_job.sh", &["{dir}/state", "40", &step]);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_lines("tick", 12);
    let pid = run.target_pid();
    let mut everyone = descendants(run.child_pid());
    assert!(everyone.len() >= 2, "bash and its step: {everyone:?}");
    everyone.push(run.child_pid());
    for p in &everyone {
        let _ = kill(Pid::from_raw(*p), Signal::SIGTERM);
    }
    let first = run.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    line_with(&first, &["checkpoint on", "SIGTERM", "then stop the job"]);
    assert_stopped_and_resumable(&h, &prog, reference, &first.stdout, pid);
}

/// SIGTERM to the program only (not to mlckpt): the same checkpoint-and-stop.
#[test]
fn sigterm_to_the_program_alone_checkpoints_and_stops() {
    let h = Harness::new("sig-prog");
    let prog = memory(150);
    let reference = h.plain(&prog);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let first = run.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    line_with(
        &first,
        &["checkpoint on SIGTERM to thread", "then stop the job"],
    );
    assert_stopped_and_resumable(&h, &prog, reference, &first.stdout, pid);
}

/// `TERM = "deliver"`: the checkpoint first, then the program's own handler runs, with the
/// signal's original sender (this test) and code (SI_USER = 0).
#[test]
fn deliver_checkpoints_then_runs_the_programs_handler() {
    let h = Harness::new("sig-deliver");
    h.set_config("[interval]\nlocal = 0\n[signals.actions]\nTERM = \"deliver\"\n");
    let prog = Prog::c("termhandler", &["3000"]);
    let mut run = h.run(&prog);
    run.wait_for_ticks(10);
    let pid = run.target_pid();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let done = run.finish(CMD_TIMEOUT).expect_code(0);
    let me = std::process::id();
    assert!(
        done.stdout
            .contains(&format!("got SIGTERM from {me} code 0")),
        "the handler should run after the checkpoint, with the original sender\n{}",
        done.describe()
    );
    line_with(&done, &["checkpoint on SIGTERM", "then deliver"]);
    let found = images(&h);
    assert_eq!(found.len(), 1, "one image: {found:?}");
    verify_ok(&h, &found[0]);
}

/// A batch script that runs mlckpt as a plain command (no `exec`): SIGTERM to the shell
/// (`scancel --batch`, `sbatch --signal=B:TERM`) becomes the job's checkpoint-and-stop;
/// the shell survives it and the script ends with mlckpt's exit code, 3.
#[test]
fn sigterm_to_the_batch_shell_checkpoints_the_job() {
    let h = Harness::new("sig-shell");
    h.set_config("[interval]\nlocal = 0\n[signals]\nparent_shell = \"on\"\n");
    let prog = memory(150);
    let reference = h.plain(&prog);
    let script = h.dir.path().join("job.sh");
    let argv = prog
        .argv
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(
        &script,
        format!(
            "'{}' run --config '{}' --job '{}' -- {argv}\nrc=$?\necho \"script: mlckpt \
             exited $rc\"\nexit $rc\n",
            mlckpt_bin(),
            h.config.display(),
            h.job
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(find_in_path("bash").unwrap());
    cmd.arg(&script).current_dir(h.run_dir());
    let mut shell = Proc::spawn("batch script", cmd, None);
    shell.wait_for_ticks(10);
    let pid = shell.target_pid();
    shell.signal(Signal::SIGTERM);
    let first = shell.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    line_with(&first, &["guarding the batch shell"]);
    line_with(&first, &["checkpoint on SIGTERM to the batch shell"]);
    let before = first
        .stdout
        .strip_suffix("script: mlckpt exited 3\n")
        .unwrap_or_else(|| panic!("the script should go on after mlckpt\n{}", first.describe()));
    // The resuming run's parent is this test, not a shell to guard.
    h.set_config("[interval]\nlocal = 0\n[signals]\nparent_shell = \"off\"\n");
    assert_stopped_and_resumable(&h, &prog, reference, before, pid);
}

/// `intercept = false`: the program gets its SIGTERM directly and dies of it; no image.
#[test]
fn without_the_guard_sigterm_reaches_the_program() {
    let h = Harness::new("sig-off");
    h.set_config("[interval]\nlocal = 0\n[signals]\nintercept = false\n");
    let mut run = h.run(&memory(300));
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .contains("TracerPid:\t0"),
        "an unguarded job is not traced between checkpoints"
    );
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    run.finish(CMD_TIMEOUT).expect_code(128 + libc::SIGTERM);
    assert!(images(&h).is_empty(), "no checkpoint without the guard");
}

/// `[slurm] requeue = true`: after the checkpoint-and-stop, `scontrol requeue $SLURM_JOB_ID`
/// (here a fake `scontrol` that records its arguments).
#[test]
fn a_checkpoint_and_stop_requeues_the_slurm_job() {
    let h = Harness::new("sig-requeue");
    h.set_config("[interval]\nlocal = 0\n[slurm]\nrequeue = true\n");
    let bin = h.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = h.dir.path().join("scontrol.log");
    let fake = bin.join("scontrol");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let env = [("SLURM_JOB_ID", "4242"), ("PATH", path.as_str())];
    let mut run = h.run_with(&[], &env, &memory(300));
    run.wait_for_ticks(5);
    let pid = run.target_pid();
    run.signal(Signal::SIGTERM);
    let done = run.finish(CMD_TIMEOUT).expect_code(STOPPED);
    wait_gone(pid);
    line_with(&done, &["requeued SLURM job 4242"]);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "requeue 4242\n");
    assert_eq!(images(&h).len(), 1);
}

/// What the guard costs a program that receives many signals: 100 000 `kill(getpid(),
/// SIGUSR1)` with a handler, each one passed on by the guard. Every signal must arrive;
/// the times are printed (`--nocapture`) for docs/signals.md.
#[test]
fn a_program_receiving_many_signals_gets_every_one() {
    const COUNT: &str = "100000";
    let h = Harness::new("sig-many");
    let prog = Prog::c("selfsignal", &[COUNT]);
    let timed = |config: &str| {
        h.set_config(config);
        let began = Instant::now();
        let done = h.run(&prog).finish(CMD_TIMEOUT).expect_code(0);
        let wall = began.elapsed();
        assert!(
            done.stdout.contains(&format!("handled {COUNT} in")),
            "{}",
            done.describe()
        );
        let line = done.stdout.lines().last().unwrap_or_default().to_string();
        (line, wall)
    };
    let plain = h.plain(&prog).finish(CMD_TIMEOUT).expect_code(0);
    let (guarded, guarded_wall) = timed("[interval]\nlocal = 0\n");
    let (unguarded, unguarded_wall) =
        timed("[interval]\nlocal = 0\n[signals]\nintercept = false\n");
    eprintln!(
        "signal overhead: plain: {}; unguarded run: {unguarded} (wall {unguarded_wall:?}); \
         guarded run: {guarded} (wall {guarded_wall:?})",
        plain.stdout.lines().last().unwrap_or_default()
    );
}
