//! mlckpt under a real SLURM: a private single-node cluster (munged, slurmctld, slurmd from
//! the distribution's packages) that `tests/slurm/cluster.sh` starts once for this test
//! binary and stops when it exits. Each test submits the job script of `docs/slurm.md`
//! with `sbatch`, ends it the way SLURM does (a signal to the batch shell, to every process
//! of the job, a time limit, a requeue), and checks what SLURM recorded (`scontrol show
//! job`: state, `ExitCode`, restarts), the image, and that the program's output over all
//! submissions is exactly an uninterrupted run's.
//!
//! Without the SLURM binaries every test says so loudly and passes; with them, a cluster
//! that does not start fails the tests with the daemons' logs. The tests take turns (a
//! job's timing is what a test checks), except the time-limit test, which only waits for
//! slurmctld's periodic check (its job takes one CPU, any other test's at most one).
//!
//! The tests that need mlckpt to intercept signals addressed to the job (the batch shell's
//! TERM when mlckpt is not exec'ed, a TERM to every process of the job) say so in their name
//! and doc.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Longest wait for a job to reach a state (its run is a few seconds; a requeued job is
/// eligible again `cred_expire` = 5 s later).
const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// A time limit (or its warning signal) comes from slurmctld's periodic check, every 30 s:
/// a one-minute limit is met 60-90 s after the start, then the checkpoint.
const TIME_LIMIT_TIMEOUT: Duration = Duration::from_secs(110);
const POLL: Duration = Duration::from_millis(50);
/// Ticks printed before a job is stopped (about 0.6 s into its 4.5 s).
const TICKS_BEFORE_STOP: usize = 20;
/// Job states after which nothing more happens to a job (unless it is requeued).
const ENDED: [&str; 9] = [
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
];

// ---------------------------------------------------------------------------------------------
// The cluster

/// The running cluster: its directory (slurm.conf, logs) and the pipe whose end of file,
/// when this process exits, makes `cluster.sh` stop it and delete the directory.
struct Cluster {
    dir: PathBuf,
    _stop_at_exit: ChildStdin,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn slurm_binary(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        ["/usr/sbin", "/usr/local/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// The cluster, started by the first caller, and this test's turn; `None` (after a loud
/// note) when SLURM is not installed.
fn cluster() -> Option<(MutexGuard<'static, ()>, &'static Cluster)> {
    let cluster = cluster_started()?;
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Some((turn, cluster))
}

/// The cluster, started by the first caller.
fn cluster_started() -> Option<&'static Cluster> {
    require_root();
    let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol"]
        .into_iter()
        .filter(|b| slurm_binary(b).is_none())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "\n!!!!! SKIPPED: SLURM is not installed ({} not found; Debian: apt-get install \
             slurm-wlm munge). This test did NOT run. !!!!!\n",
            missing.join(", ")
        );
        return None;
    }
    Some(CLUSTER.get_or_init(start_cluster))
}

fn start_cluster() -> Cluster {
    let dir = std::env::temp_dir().join(format!("mlckpt-slurm-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .arg("--stop-on-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let stop_at_exit = child.stdin.take().expect("stdin pipe");
    let out = child.wait_with_output().expect("wait for cluster.sh");
    assert!(
        out.status.success(),
        "the SLURM binaries are installed, but the test cluster did not start ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "slurm test cluster in {} up in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Cluster {
        dir,
        _stop_at_exit: stop_at_exit,
    }
}

/// What `scontrol show job` says about a job.
#[derive(Debug)]
struct JobInfo {
    state: String,
    /// `<exit code>:<signal>` of the batch script.
    exit_code: String,
    restarts: u32,
    raw: String,
}

impl Cluster {
    fn command(&self, prog: &str) -> Command {
        let path = slurm_binary(prog).unwrap_or_else(|| PathBuf::from(prog));
        let mut cmd = Command::new(path);
        cmd.env("SLURM_CONF", self.dir.join("slurm.conf"))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a SLURM client command, which must succeed; returns its stdout.
    fn client(&self, prog: &str, args: &[&str]) -> String {
        let out = self
            .command(prog)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {prog}: {e}"));
        assert!(
            out.status.success(),
            "{prog} {args:?} failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn job(&self, id: u32) -> JobInfo {
        let raw = self.client("scontrol", &["show", "job", "--oneliner", &id.to_string()]);
        let field = |key: &str| {
            raw.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_default()
                .to_owned()
        };
        JobInfo {
            state: field("JobState"),
            exit_code: field("ExitCode"),
            restarts: field("Restarts").parse().unwrap_or(0),
            raw,
        }
    }

    /// Waits until the job has ended after at least `restarts` requeues.
    fn wait_end(&self, id: u32, restarts: u32, timeout: Duration) -> JobInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.job(id);
            if info.restarts >= restarts && ENDED.contains(&info.state.as_str()) {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} has not ended (after {restarts} restart(s)) in {timeout:?}: {}\n{}",
                info.raw,
                self.logs()
            );
            thread::sleep(POLL);
        }
    }

    /// `cluster.sh ACTION DIR` (`crash-node`, `restart-node`), which must succeed.
    fn node(&self, action: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slurm/cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(action)
            .arg(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "cluster.sh {action} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// The end of every daemon log, for a failure message.
    fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["slurmctld.log", "slurmd.log", "munged.log"] {
            let path = self.dir.join("log").join(name);
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            text += &format!("===== {} (end)\n{}\n", path.display(), tail.join("\n"));
        }
        text
    }
}

// ---------------------------------------------------------------------------------------------
// One test's jobs

/// A test's job scripts, outputs and images (a [`Harness`]: config and store), and the jobs
/// it submitted, cancelled when it ends however it ends.
struct Work {
    h: Harness,
    cluster: &'static Cluster,
    jobs: Vec<u32>,
}

impl Drop for Work {
    fn drop(&mut self) {
        for id in &self.jobs {
            let _ = self
                .cluster
                .command("scancel")
                .args(["--full", "--signal=KILL", &id.to_string()])
                .output();
            let _ = self.cluster.command("scancel").arg(id.to_string()).output();
        }
    }
}

/// The lines a program printed, from an output file that also holds what mlckpt and SLURM
/// said on stderr (every such line starts with its author's name and a colon).
fn program_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|l| {
            mlckpt_line(l).is_none() && !["slurmstepd", "srun:"].iter().any(|p| l.starts_with(p))
        })
        .collect()
}

/// The `pid <N>` line of a program's output.
fn first_pid(text: &str) -> i32 {
    program_lines(text)
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `pid <N>` line first in:\n{text}"))
}

impl Work {
    fn new(name: &str, cluster: &'static Cluster) -> Work {
        Work {
            h: Harness::new(name),
            cluster,
            jobs: Vec::new(),
        }
    }

    /// `mlckpt run --resume` of this test's job and config, for a job script.
    fn mlckpt_run(&self, prog: &Prog) -> String {
        let quote = |s: &str| format!("'{s}'");
        let mut words = vec![
            quote(mlckpt_bin()),
            "run --resume --job".into(),
            quote(&self.h.job),
            "--config".into(),
            quote(&self.h.config.to_string_lossy()),
            "--".into(),
        ];
        words.extend(prog.argv.iter().map(|a| quote(a)));
        words.join(" ")
    }

    /// Writes an executable job script into the run directory.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.h.run_dir().join(name);
        std::fs::write(&path, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// `sbatch OPTIONS SCRIPT` in the run directory, output to `<job id>.out`.
    fn sbatch(&mut self, options: &[&str], script: &Path) -> u32 {
        let dir = self.h.run_dir();
        let mut args = vec!["--parsable", "--output=%j.out"];
        let chdir = format!("--chdir={}", dir.display());
        args.push(&chdir);
        args.extend(options);
        let script = script.to_string_lossy();
        args.push(&script);
        let out = self.cluster.client("sbatch", &args);
        let id: u32 = out
            .trim()
            .split(';')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("sbatch printed no job id: {out:?}"));
        self.jobs.push(id);
        id
    }

    fn output(&self, name: &str) -> String {
        std::fs::read_to_string(self.h.run_dir().join(name)).unwrap_or_default()
    }

    /// Waits until `<file>` holds `n` tick lines of the program; fails if job `id` ends first.
    fn wait_ticks(&self, id: u32, file: &str, n: usize) {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            if count_lines(&program_lines(&self.output(file)), "tick") >= n {
                return;
            }
            let info = self.cluster.job(id);
            assert!(
                !ENDED.contains(&info.state.as_str()) && Instant::now() < deadline,
                "job {id} printed fewer than {n} ticks to {file}: {}\n--- {file}:\n{}\n{}",
                info.raw,
                self.output(file),
                self.cluster.logs()
            );
            thread::sleep(POLL);
        }
    }

    fn rank_dir(&self, rank: u32) -> PathBuf {
        self.h.store.join(&self.h.job).join(format!("rank{rank}"))
    }

    fn scancel(&self, args: &[&str]) {
        self.cluster.client("scancel", args);
    }
}

/// Asserts the job ended as `state` with `exit_code`, showing its output if not.
fn expect_end(work: &Work, info: &JobInfo, state: &str, exit_code: &str, out: &str) {
    assert!(
        info.state == state && info.exit_code == exit_code,
        "expected the job to end {state} with ExitCode={exit_code}, SLURM says: {}\n--- its \
         output:\n{}\n--- images: {:?}",
        info.raw,
        work.output(out),
        work.h.images()
    );
}

/// Asserts `out` has mlckpt's line of the checkpoint on SIGTERM, naming `image`, and that
/// the image is there.
fn expect_checkpoint_on_term(work: &Work, out: &str, image: &Path) {
    let text = work.output(out);
    let image_name = image.to_string_lossy();
    assert!(
        text.lines()
            .filter_map(mlckpt_line)
            .any(|l| l.starts_with("mlckpt: checkpoint on SIGTERM") && l.contains(&*image_name)),
        "{out} has no `mlckpt: checkpoint on SIGTERM ... {image_name}` line:\n{text}"
    );
    assert!(image.is_dir(), "no image {image_name}");
}

/// Asserts `out` has mlckpt's line of the restore of `image`.
fn expect_restored(work: &Work, out: &str, image: &Path) {
    let text = work.output(out);
    let wanted = format!("mlckpt: restored {}", image.display());
    assert!(
        text.lines()
            .filter_map(mlckpt_line)
            .any(|l| l.starts_with(&wanted)),
        "{out} has no `{wanted}` line:\n{text}"
    );
}

/// 8 MiB, 150 ticks of 30 ms; prints `pid`, ticks with a running checksum and a final
/// checksum over all its memory.
fn prog(mib: u32) -> Prog {
    Prog::c("memory", &[&mib.to_string(), "150"])
}

/// How a test ends the first submission.
enum Stop {
    /// `scancel --batch --signal=TERM`: the batch shell only (what `--signal=B:TERM@N`
    /// sends at a time limit, and preemption with it).
    BatchTerm,
    /// `scancel --full --signal=TERM`: the batch shell and every process below it.
    EveryProcessTerm,
    /// `scancel`: TERM to every process, KILL `KillWait` s later; the job is CANCELLED.
    Cancel,
    /// Preemption that cancels: the job runs in partition `cancelable` (PreemptMode=CANCEL,
    /// GraceTime=10) and a job of `urgent` needs the whole node. The grace time's first
    /// TERM goes to the job's steps only (a batch job without `srun` has none); at its end
    /// TERM goes to every process, KILL `KillWait` s later; the job is PREEMPTED.
    PreemptCancel,
}

impl Stop {
    /// Ticks of 30 ms the program runs uninterrupted: past the moment the stop takes effect
    /// (the grace time, for a preemption).
    fn ticks(&self) -> u32 {
        match self {
            Stop::PreemptCancel => 1000,
            _ => 150,
        }
    }

    /// `sbatch` options of the job to stop.
    fn submit_options(&self) -> &'static [&'static str] {
        match self {
            Stop::PreemptCancel => &["--partition=cancelable"],
            _ => &[],
        }
    }

    fn send(&self, work: &mut Work, id: u32) {
        let id = id.to_string();
        match self {
            Stop::BatchTerm => work.scancel(&["--batch", "--signal=TERM", &id]),
            Stop::EveryProcessTerm => work.scancel(&["--full", "--signal=TERM", &id]),
            Stop::Cancel => work.scancel(&[&id]),
            Stop::PreemptCancel => {
                let urgent = work.script("urgent.sh", "echo urgent ran; sleep 1");
                work.sbatch(&["--partition=urgent", "--exclusive"], &urgent);
            }
        }
    }

    /// The job state SLURM records afterwards (the exit code is mlckpt's 3 in every case).
    fn end_state(&self) -> &'static str {
        match self {
            Stop::BatchTerm | Stop::EveryProcessTerm => "FAILED",
            Stop::Cancel => "CANCELLED",
            Stop::PreemptCancel => "PREEMPTED",
        }
    }
}

/// One job script, submitted twice: the second at once, to run after the first fails
/// (`--dependency=afternotok`). The first is stopped (`stop`) once it printed some ticks,
/// must end with ExitCode=3:0 (checkpointed and stopped) and leave an image; the
/// second resumes from it and completes; the program's output over both equals an
/// uninterrupted run's.
fn stop_and_resubmit(name: &str, exec: bool, stop: Stop) {
    let Some((_turn, cluster)) = cluster() else {
        return;
    };
    let mut work = Work::new(name, cluster);
    let prog = Prog::c("memory", &["8", &stop.ticks().to_string()]);
    let reference = work.h.plain(&prog);
    let run = work.mlckpt_run(&prog);
    let body = if exec {
        format!("exec {run}")
    } else {
        // mlckpt is the script's last command, a child of the batch shell.
        run
    };
    let script = work.script("job.sh", &body);

    let first = work.sbatch(stop.submit_options(), &script);
    let first_out = format!("{first}.out");
    // The follow-up, queued at once: it starts when the first ends other than successfully.
    let after_first = format!("--dependency=afternotok:{first}");
    let second = work.sbatch(&[&after_first, "--kill-on-invalid-dep=yes"], &script);
    let second_out = format!("{second}.out");
    work.wait_ticks(first, &first_out, TICKS_BEFORE_STOP);
    let info = cluster.job(second);
    assert_eq!(info.state, "PENDING", "{}", info.raw);
    stop.send(&mut work, first);
    let info = cluster.wait_end(first, 0, JOB_TIMEOUT);
    expect_end(&work, &info, stop.end_state(), "3:0", &first_out);
    let image = work.rank_dir(0).join("ckpt-000001");
    expect_checkpoint_on_term(&work, &first_out, &image);

    let info = cluster.wait_end(second, 0, JOB_TIMEOUT);
    expect_end(&work, &info, "COMPLETED", "0:0", &second_out);
    expect_restored(&work, &second_out, &image);
    // A later submission would start afresh rather than repeat the end of a complete run.
    let mark = work.rank_dir(0).join("finished.json");
    assert!(mark.is_file(), "no {}", mark.display());

    let before = work.output(&first_out);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(
        &reference,
        &program_lines(&before),
        &program_lines(&work.output(&second_out)),
        first_pid(&before),
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The documented script: `exec mlckpt run --resume`, so mlckpt is the batch shell and gets
/// the TERM meant for it.
#[test]
fn exec_script_checkpoints_on_batch_term_and_resubmission_resumes() {
    stop_and_resubmit("slurm-exec", true, Stop::BatchTerm);
}

/// Needs the interception of the batch shell's TERM (branch `signals`): without `exec`,
/// SLURM's TERM reaches bash, not mlckpt; mlckpt must take it over from its parent, the
/// batch shell, checkpoint and end the job with exit code 3.
#[test]
fn script_without_exec_checkpoints_on_batch_term() {
    stop_and_resubmit("slurm-noexec", false, Stop::BatchTerm);
}

/// Needs the interception of signals addressed to the job (branch `signals`): the TERM
/// reaches the program too, which must not die of it before mlckpt checkpoints it.
/// (`scancel --signal=TERM` without `--batch` or `--full` signals only the job's steps,
/// which a script without `srun` has none of.)
#[test]
fn term_to_every_process_of_the_job_checkpoints() {
    stop_and_resubmit("slurm-termall", true, Stop::EveryProcessTerm);
}

/// Needs the interception of signals addressed to the job (branch `signals`): a plain
/// `scancel` (also a time limit without `--signal`, and preemption) sends TERM to every
/// process, then KILL `KillWait` s later; the checkpoint fits in between, and the follow-up
/// (`afternotok`: a cancelled job counts as not ok) resumes.
#[test]
fn scancel_checkpoints_within_kill_wait() {
    stop_and_resubmit("slurm-cancel", true, Stop::Cancel);
}

/// How a test stops the ranks of an `srun` step.
enum StopRanks {
    /// `mlckpt checkpoint PID --kill` of each rank's program.
    CheckpointKill,
    /// `scancel --signal=TERM JOBID`: TERM to every process of the job's steps, that is
    /// each rank's mlckpt and program.
    StepTerm,
}

/// `srun -n 2`: each rank's supervisor takes its rank from SLURM_PROCID and writes its
/// images under `rank<R>`, the two checkpointed together (one generation); the ranks are
/// stopped (`stop`), and on resubmission they agree on the generation and each restores
/// its own image; each rank's output (which depends on the rank) is an
/// uninterrupted run's.
fn srun_ranks(name: &str, stop: StopRanks) {
    let Some((_turn, cluster)) = cluster() else {
        return;
    };
    let mut work = Work::new(name, cluster);
    // Rank R allocates 8 + R MiB: different ticks and final checksum per rank.
    let progs = [prog(8), prog(9)];
    let references: Vec<Proc> = progs.iter().map(|p| work.h.plain(p)).collect();
    let mut rank_prog = prog(8);
    *rank_prog.argv.get_mut(1).unwrap() = "{mib}".into();
    let run = work
        .mlckpt_run(&rank_prog)
        .replace("'{mib}'", "$((8 + SLURM_PROCID))");
    let script = work.script(
        "ranks.sh",
        &format!(
            "srun --output=%j-%t.out bash -c \"exec {}\"",
            run.replace('$', "\\$")
        ),
    );

    // --overcommit: two tasks even where the cluster has one CPU.
    let options = ["--ntasks=2", "--overcommit"];
    let first = work.sbatch(&options, &script);
    let rank_out = |job: u32, rank: u32| format!("{job}-{rank}.out");
    for rank in 0..2 {
        work.wait_ticks(first, &rank_out(first, rank), TICKS_BEFORE_STOP);
    }
    let pids: Vec<i32> = (0..2)
        .map(|rank| first_pid(&work.output(&rank_out(first, rank))))
        .collect();
    let images: Vec<PathBuf> = (0..2)
        .map(|rank| work.rank_dir(rank).join("ckpt-000001"))
        .collect();
    match stop {
        StopRanks::CheckpointKill => {
            // The ranks of one step are coordinated: a checkpoint asked of rank 0 is a
            // generation of both, and --kill stops both.
            let report = work.h.checkpoint_json(pids[0], &["--kill"]);
            assert_eq!(report["path"], *images[0].to_string_lossy());
            assert_eq!(report["generation"]["ranks"], 2, "{report}");
            let info = cluster.wait_end(first, 0, JOB_TIMEOUT);
            expect_end(&work, &info, "FAILED", "3:0", &format!("{first}.out"));
            for image in &images {
                assert!(image.is_dir(), "{} is missing", image.display());
            }
        }
        StopRanks::StepTerm => {
            work.scancel(&["--signal=TERM", &first.to_string()]);
            let info = cluster.wait_end(first, 0, JOB_TIMEOUT);
            expect_end(&work, &info, "FAILED", "3:0", &format!("{first}.out"));
            for (rank, image) in (0..).zip(&images) {
                expect_checkpoint_on_term(&work, &rank_out(first, rank), image);
            }
        }
    }

    let second = work.sbatch(&options, &script);
    let info = cluster.wait_end(second, 0, JOB_TIMEOUT);
    expect_end(&work, &info, "COMPLETED", "0:0", &format!("{second}.out"));
    for (((rank, reference), pid), image) in (0..).zip(references).zip(pids).zip(&images) {
        let after = rank_out(second, rank);
        expect_restored(&work, &after, image);
        let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
        assert_continuation(
            &reference,
            &program_lines(&work.output(&rank_out(first, rank))),
            &program_lines(&work.output(&after)),
            pid,
        );
    }
}

#[test]
fn srun_ranks_resume_their_own_images() {
    srun_ranks("slurm-ranks", StopRanks::CheckpointKill);
}

/// Needs the interception of signals addressed to the job (branch `signals`): the step's
/// TERM reaches each rank's program too.
#[test]
fn srun_ranks_checkpoint_on_step_term() {
    srun_ranks("slurm-ranks-term", StopRanks::StepTerm);
}

/// A job with `--requeue --open-mode=append`, requeued under its own id (`scontrol
/// requeue`) after it ended with exit code 3 (`while_running` false: stopped by
/// `scancel --batch --signal=TERM`) or while it runs; the run after the requeue resumes
/// from the image of the TERM, and the one output file holds the whole run exactly once.
fn requeue_and_resume(name: &str, while_running: bool) {
    let Some((_turn, cluster)) = cluster() else {
        return;
    };
    let (work, id, reference) = start_requeueable(name, cluster);
    let out = format!("{id}.out");
    if !while_running {
        work.scancel(&["--batch", "--signal=TERM", &id.to_string()]);
        let info = cluster.wait_end(id, 0, JOB_TIMEOUT);
        expect_end(&work, &info, "FAILED", "3:0", &out);
    }
    cluster.client("scontrol", &["requeue", &id.to_string()]);
    expect_requeued_run_resumed(&work, id, reference);
}

/// The documented job script, submitted with `--requeue --open-mode=append`, once it has
/// printed some ticks; and the same program run uninterrupted beside it.
fn start_requeueable(name: &str, cluster: &'static Cluster) -> (Work, u32, Proc) {
    let mut work = Work::new(name, cluster);
    let prog = prog(8);
    let reference = work.h.plain(&prog);
    let script = work.script("job.sh", &format!("exec {}", work.mlckpt_run(&prog)));
    let id = work.sbatch(&["--requeue", "--open-mode=append"], &script);
    work.wait_ticks(id, &format!("{id}.out"), TICKS_BEFORE_STOP);
    (work, id, reference)
}

/// Job `id`, stopped by a TERM and requeued, ran again: it checkpointed on the TERM, the
/// rerun restored that image and completed, and its one output file (`--open-mode=append`)
/// holds the whole run exactly once, as `reference` printed it uninterrupted.
fn expect_requeued_run_resumed(work: &Work, id: u32, reference: Proc) {
    let out = format!("{id}.out");
    let info = work.cluster.wait_end(id, 1, JOB_TIMEOUT);
    let image = work.rank_dir(0).join("ckpt-000001");
    expect_checkpoint_on_term(work, &out, &image);
    expect_end(work, &info, "COMPLETED", "0:0", &out);
    expect_restored(work, &out, &image);
    let whole = work.output(&out);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_continuation(&reference, &program_lines(&whole), "", first_pid(&whole));
}

/// A stopped job requeued (by an operator or a script) runs again under the same id.
#[test]
fn requeued_job_resumes_under_the_same_job_id() {
    requeue_and_resume("slurm-requeue", false);
}

/// Needs the interception of signals addressed to the job (branch `signals`):
/// `scontrol requeue` of a running job sends TERM to every process of the job (KILL
/// `KillWait` s later); mlckpt must checkpoint before the program dies.
#[test]
fn requeue_of_a_running_job_checkpoints_and_resumes() {
    requeue_and_resume("slurm-requeue-running", true);
}

/// Preemption, as on a cluster with a preemptible partition: a job of the higher-priority
/// partition `urgent` needs the whole node, so SLURM requeues the running job of `test`
/// (TERM to every process, KILL `KillWait` s later). mlckpt checkpoints on the TERM; the
/// urgent job runs; the preempted job starts again under its own id once the node is free
/// and resumes from that image; its one output file holds the whole run exactly once.
#[test]
fn preempted_job_checkpoints_and_resumes_when_requeued() {
    let Some((_turn, cluster)) = cluster() else {
        return;
    };
    let (mut work, id, reference) = start_requeueable("slurm-preempt", cluster);
    let urgent_script = work.script("urgent.sh", "echo urgent ran; sleep 1");
    let urgent = work.sbatch(&["--partition=urgent", "--exclusive"], &urgent_script);
    let urgent_info = cluster.wait_end(urgent, 0, JOB_TIMEOUT);
    assert_eq!(urgent_info.state, "COMPLETED", "{}", urgent_info.raw);
    assert!(
        work.output(&format!("{urgent}.out")).contains("urgent ran"),
        "{}",
        urgent_info.raw
    );
    expect_requeued_run_resumed(&work, id, reference);
}

/// Preemption with `PreemptMode=CANCEL` and a `GraceTime`: the job is cancelled, not
/// requeued; mlckpt checkpoints on the TERM at the end of the grace time, the job ends
/// PREEMPTED with exit code 3, and the resubmitted script resumes from that image.
#[test]
fn job_preempted_by_cancel_checkpoints_and_its_resubmission_resumes() {
    stop_and_resubmit("slurm-preempt-cancel", true, Stop::PreemptCancel);
}

/// A node failure: everything on the node dies at once, without a signal (slurmd, its step
/// daemons, mlckpt, the program), and the node's local storage is lost. SLURM requeues the
/// job (`--requeue`) when the node is DOWN; once the node is back the rerun resumes from the
/// newest interval checkpoint copied to the global tier, in the same PID, and the program's
/// output from that image on is what an uninterrupted run prints.
#[test]
fn node_failure_requeues_the_job_and_it_resumes_from_the_global_tier() {
    let Some((_turn, cluster)) = cluster() else {
        return;
    };
    let mut work = Work::new("slurm-node-failure", cluster);
    let global = work.h.run_dir().with_file_name("global");
    work.h.set_config(&format!(
        "global = '{}'\n[interval]\nlocal = 1\nglobal = 2\n",
        global.display()
    ));
    let prog = Prog::c("memory", &["8", "500"]);
    let reference = work.h.plain(&prog);
    let script = work.script("job.sh", &format!("exec {}", work.mlckpt_run(&prog)));
    let id = work.sbatch(&["--requeue", "--open-mode=append"], &script);
    let out = format!("{id}.out");
    let global_rank = global.join(&work.h.job).join("rank0");
    let copied = || {
        std::fs::read_dir(&global_rank).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("ckpt-"))
        })
    };
    work.wait_ticks(id, &out, TICKS_BEFORE_STOP);
    wait_until("a global copy of an interval checkpoint", copied);

    cluster.node("crash-node");
    std::fs::remove_dir_all(work.h.store.join(&work.h.job)).unwrap();
    let before = program_lines(&work.output(&out));
    cluster.node("restart-node");
    let info = cluster.wait_end(id, 1, JOB_TIMEOUT);
    expect_end(&work, &info, "COMPLETED", "0:0", &out);

    let whole = work.output(&out);
    let restored = whole
        .lines()
        .filter_map(mlckpt_line)
        .find(|l| l.starts_with("mlckpt: restored "))
        .unwrap_or_else(|| panic!("the rerun restored nothing:\n{whole}"));
    assert!(
        restored.contains(&global_rank.to_string_lossy().into_owned()),
        "the rerun should restore the global copy: {restored}"
    );
    let rerun = whole
        .split_once(restored)
        .and_then(|(_, after)| after.split_once('\n'))
        .map(|(_, after)| program_lines(after))
        .unwrap_or_default();
    let pid = first_pid(&before);
    let reference = reference.finish(CMD_TIMEOUT).expect_code(0).stdout;
    assert_resumed(&reference, &before, &rerun, 0..usize::MAX, pid, pid);
}

/// `--time=1 --signal=B:TERM@58`: SLURM's time-limit warning reaches mlckpt (the exec'ed
/// batch shell), which checkpoints and ends the job with exit code 3 well before the limit;
/// the image verifies. (Resuming it is what the tests above check; here the program runs
/// long enough to be sure to meet the signal, up to 30 s after the warning is due.)
#[test]
fn time_limit_signal_checkpoints_before_the_limit() {
    time_limit_checkpoints("slurm-timelimit", Some("--signal=B:TERM@58"), "FAILED");
}

/// `--time=1` and no `--signal`: at the limit SLURM sends TERM to every process of the job
/// and KILL `KillWait` s later; the checkpoint fits in between, the job ends TIMEOUT with
/// mlckpt's exit code 3, and the image verifies.
#[test]
fn time_limit_without_signal_checkpoints_within_kill_wait() {
    time_limit_checkpoints("slurm-timelimit-plain", None, "TIMEOUT");
}

/// A job with a one-minute limit (and `signal`, if any) whose program outlives it: it ends
/// `state` with ExitCode 3:0, after the checkpoint on TERM, and the image verifies.
fn time_limit_checkpoints(name: &str, signal: Option<&str>, state: &str) {
    // Its own turn: a preemption test's job takes the whole node, and would preempt this
    // job as well.
    let Some((_turn, cluster)) = cluster() else {
        return;
    };
    let mut work = Work::new(name, cluster);
    // 5000 ticks of 30 ms: past the limit and slurmctld's next check of it.
    let prog = Prog::c("memory", &["8", "5000"]);
    let script = work.script("job.sh", &format!("exec {}", work.mlckpt_run(&prog)));
    let mut options = vec!["--time=1"];
    options.extend(signal);
    let id = work.sbatch(&options, &script);
    let out = format!("{id}.out");
    let info = cluster.wait_end(id, 0, TIME_LIMIT_TIMEOUT);
    expect_end(&work, &info, state, "3:0", &out);
    let image = work.rank_dir(0).join("ckpt-000001");
    expect_checkpoint_on_term(&work, &out, &image);
    let image_arg = image.to_string_lossy();
    let res = work.h.mlckpt(&["verify", &*image_arg]).expect_code(0);
    assert!(res.stdout.contains("ok"), "{}", res.describe());
}
