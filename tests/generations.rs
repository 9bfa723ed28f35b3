//! Coordinated checkpoint generations (issue 16) in test mode: 2 simulated nodes x 2 ranks
//! on this machine, intervals on every tier. After a node loss (every supervisor and job
//! killed at once) every rank restores the same generation, the newest complete one; a
//! damaged rank, or a node's lost storage, moves every rank to the generation all of them
//! still hold; a hung rank fails the generations it holds up while the job runs on; and
//! `[coordination] mode = "off"` keeps ranks independent as before. Every rank under
//! `run --resume` (a job script's command): the first start runs the programs afresh with
//! nothing blocked, a relaunch after a node loss resumes one generation on every rank, and
//! a rank that never joins is an error on the others, not a fresh start.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// MiB each rank rewrites every step.
const MIB: &str = "8";
/// Steps are paced to this period on a clock the ranks share.
const PERIOD_MS: u64 = 50;
/// The tiers in the order recovery tries a rank's copies.
const TIERS: [&str; 3] = ["local", "partner", "global"];
/// Simulated nodes; node K's partner is node K+1 mod NODES.
const NODES: u32 = 2;

/// One test's coordinated job: the harness, its topology, the ranks' programs.
struct Job {
    h: Harness,
    per_node: u32,
}

impl Job {
    /// Test mode with NODES x `per_node` ranks, a global tier and `keep` images per tier,
    /// then `rest` (`[interval]`, `[coordination]`, ...).
    fn new(name: &str, per_node: u32, keep: u32, rest: &str) -> Job {
        let job = Job {
            h: Harness::new(name),
            per_node,
        };
        job.configure(keep, rest);
        job
    }

    /// Rewrites the config as [`Job::new`] writes it (the same topology and storage).
    fn configure(&self, keep: u32, rest: &str) {
        self.h.set_config(&format!(
            "global = '{}'\nkeep = {keep}\n[topology]\ntest_mode = true\nnodes = {NODES}\n\
             ranks_per_node = {}\n{rest}",
            self.global_root().display(),
            self.per_node,
        ));
    }

    fn ranks(&self) -> u32 {
        NODES * self.per_node
    }

    fn global_root(&self) -> PathBuf {
        self.h.dir.path().join("global")
    }

    /// Where `rank`'s images on `tier` are: its node's local storage, the partner node's
    /// `partner/` directory, or the global storage.
    fn copies(&self, rank: u32, tier: &str) -> PathBuf {
        let node = rank / self.per_node;
        let rank_dir = format!("rank{rank}");
        let on_node = |k: u32| self.h.store.join(format!("node{k}")).join(&self.h.job);
        match tier {
            "local" => on_node(node).join(rank_dir),
            "partner" => on_node((node + 1) % NODES).join("partner").join(rank_dir),
            "global" => self.global_root().join(&self.h.job).join(rank_dir),
            _ => unreachable!("no tier {tier}"),
        }
    }

    /// The generations with a record in `rank`'s directory on `tier`, ascending.
    fn records(&self, rank: u32, tier: &str) -> Vec<u64> {
        // The file names are the record format's (generation-<G>.json).
        mlckpt::tiers::generation::complete(&self.copies(rank, tier))
            .into_iter()
            .collect()
    }

    /// Every generation with a record anywhere (any rank, any tier): the complete ones.
    fn complete(&self) -> BTreeSet<u64> {
        (0..self.ranks())
            .flat_map(|r| TIERS.map(|t| self.records(r, t)))
            .flatten()
            .collect()
    }

    /// `rank`'s image of `generation` on `tier` (it may not exist).
    fn image(&self, rank: u32, tier: &str, generation: u64) -> PathBuf {
        self.copies(rank, tier)
            .join(format!("ckpt-{generation:06}"))
    }

    /// Every rank's uninterrupted output (run side by side, before the job starts).
    fn references(&self, steps: u32) -> Vec<String> {
        let runs: Vec<Proc> = (0..self.ranks())
            .map(|r| self.h.plain(&rank_prog(r, steps, 0, None)))
            .collect();
        runs.into_iter()
            .map(|p| p.finish(CMD_TIMEOUT).expect_code(0).stdout)
            .collect()
    }

    /// `mlckpt run --rank R` of every rank, started together; their steps are paced from a
    /// moment shortly after, the same for every rank.
    fn start(&self, steps: u32) -> Vec<Rank> {
        self.start_with(steps, &[])
    }

    /// [`Job::start`] with `extra` options of `run` (`--resume`).
    fn start_with(&self, steps: u32, extra: &[&str]) -> Vec<Rank> {
        let mut runs = self.launch(0..self.ranks(), extra, steps);
        let pids: Vec<i32> = runs.iter_mut().map(Proc::target_pid).collect();
        runs.into_iter()
            .zip(pids)
            .map(|(run, pid)| Rank { run, pid })
            .collect()
    }

    /// `mlckpt run --rank R EXTRA -- rank_steps ...` of each of `ranks`, started together
    /// and paced from a moment shortly after, as a job script starts every rank.
    fn launch(&self, ranks: std::ops::Range<u32>, extra: &[&str], steps: u32) -> Vec<Proc> {
        let start = now_ms() + 500;
        self.launch_prog(ranks, extra, |r| {
            rank_prog(r, steps, PERIOD_MS, Some(start))
        })
    }

    /// `mlckpt run --rank R EXTRA -- PROG` of each of `ranks`, `prog(R)` its program.
    fn launch_prog(
        &self,
        ranks: std::ops::Range<u32>,
        extra: &[&str],
        prog: impl Fn(u32) -> Prog,
    ) -> Vec<Proc> {
        ranks
            .map(|r| {
                let rank = r.to_string();
                let mut args = vec!["--rank", rank.as_str()];
                args.extend(extra);
                self.h.run_with(&args, &[], &prog(r))
            })
            .collect()
    }

    /// Every rank relaunched with `run --resume` after a node loss, as the same job script
    /// submitted again, each run to a successful end; `pids` are the PIDs they restore.
    fn resume_all(&self, pids: &[i32], steps: u32) -> Vec<Finished> {
        let mut runs = self.launch(0..self.ranks(), &["--resume"], steps);
        for (run, &pid) in runs.iter_mut().zip(pids) {
            run.set_target(pid);
        }
        runs.into_iter()
            .map(|r| r.finish(CMD_TIMEOUT).expect_code(0))
            .collect()
    }

    /// Waits until `n` generations are complete on each of `tiers` for every rank.
    fn wait_for_generations(&self, ranks: &mut [Rank], n: usize, tiers: &[&str]) {
        let what = format!("{n} generations complete on {tiers:?}");
        wait_running(ranks, &what, || {
            (0..self.ranks()).all(|r| tiers.iter().all(|t| self.records(r, t).len() >= n))
        });
    }

    /// When each image on disk was frozen (its manifest's `time_unix_ms`), by rank, tier
    /// and generation: read before a restore, whose own checkpoints may retire them.
    fn freeze_times(&self) -> FreezeTimes {
        let mut times = FreezeTimes::new();
        for rank in 0..self.ranks() {
            for tier in TIERS {
                for generation in image_seqs(&self.copies(rank, tier)) {
                    let manifest = self.image(rank, tier, generation).join("manifest.json");
                    let Ok(text) = std::fs::read(&manifest) else {
                        continue; // retired meanwhile
                    };
                    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
                    let time = v["time_unix_ms"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("no time_unix_ms in {}", manifest.display()));
                    times.insert((rank, tier.to_owned(), generation), time);
                }
            }
        }
        times
    }

    /// `restore --auto --rank RANK`, started; `pid` is the PID it restores.
    fn restore(&self, rank: usize, pid: i32) -> Proc {
        let rank = rank.to_string();
        let args = ["--auto", "--job", &self.h.job, "--rank", &rank];
        // The program reads no stdin: any Prog will do for the feeding it describes.
        let mut restore = self.h.restore_with(&args, &rank_prog(0, 0, 0, None));
        restore.set_target(pid);
        restore
    }

    /// `restore --auto --rank R` of every rank at once, each run to a successful end.
    fn restore_all(&self, pids: &[i32]) -> Vec<Finished> {
        let restores: Vec<Proc> = pids
            .iter()
            .enumerate()
            .map(|(rank, &pid)| self.restore(rank, pid))
            .collect();
        restores
            .into_iter()
            .map(|r| r.finish(CMD_TIMEOUT).expect_code(0))
            .collect()
    }
}

/// Freeze times of images by (rank, tier, generation), ms since the epoch.
type FreezeTimes = std::collections::BTreeMap<(u32, String, u64), u64>;

/// A rank's supervisor (`mlckpt run`) and its program's PID.
struct Rank {
    run: Proc,
    pid: i32,
}

/// Polls `cond` like [`wait_until`]; a rank's supervisor that exits meanwhile ends the
/// wait at once, with what it said.
fn wait_running(ranks: &mut [Rank], what: &str, mut cond: impl FnMut() -> bool) {
    wait_until(what, || {
        ranks.iter_mut().for_each(|r| r.run.assert_running());
        cond()
    });
}

/// `rank_steps RANK MIB STEPS PERIOD [START]`.
fn rank_prog(rank: u32, steps: u32, period_ms: u64, start_ms: Option<u128>) -> Prog {
    let mut args = vec![
        rank.to_string(),
        MIB.to_owned(),
        steps.to_string(),
        period_ms.to_string(),
    ];
    args.extend(start_ms.map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Prog::c("rank_steps", &args)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
}

/// A node loss: every supervisor and its job SIGKILLed at once (nothing gets to
/// checkpoint); returns what each job printed, by rank.
fn kill_all(ranks: Vec<Rank>) -> Vec<String> {
    for rank in &ranks {
        let _ = killpg(Pid::from_raw(rank.run.child_pid()), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(rank.pid), Signal::SIGKILL);
    }
    ranks
        .into_iter()
        .map(|rank| {
            let run = rank.run.finish(CMD_TIMEOUT).expect_code(KILLED);
            wait_gone(rank.pid);
            run.stdout
        })
        .collect()
}

/// mlckpt's `recovery line: ...` lines in a log, from `recovery line:` on.
fn recovery_lines(res: &Finished) -> Vec<String> {
    res.stderr
        .lines()
        .filter_map(|l| mlckpt_line(l)?.strip_prefix("mlckpt: "))
        .filter(|l| l.starts_with("recovery line: "))
        .map(str::to_owned)
        .collect()
}

/// The generation chosen and each rank's tier, from a log's last recovery line
/// `recovery line: generation G for all N ranks (rank 0: T0, rank 1: T1, ...)`.
fn chosen(lines: &[String], res: &Finished) -> (u64, Vec<String>) {
    let parse = |line: &str| -> Option<(u64, Vec<String>)> {
        let rest = line.strip_prefix("recovery line: generation ")?;
        let (generation, rest) = rest.split_once(" for all ")?;
        let (_, tiers) = rest.split_once(" ranks (")?;
        let tiers = tiers.strip_suffix(')')?;
        let tiers = tiers
            .split(", ")
            .enumerate()
            .map(|(i, t)| Some(t.strip_prefix(&format!("rank {i}: "))?.to_owned()))
            .collect::<Option<Vec<String>>>()?;
        Some((generation.parse().ok()?, tiers))
    };
    lines.last().and_then(|l| parse(l)).unwrap_or_else(|| {
        panic!(
            "the last recovery line is not `recovery line: generation G for all N ranks \
                 (rank 0: TIER, ...)`: {lines:?}\n{}",
            res.describe()
        )
    })
}

/// Every rank's log holds the same recovery lines; returns them with the generation chosen
/// and each rank's tier.
fn same_recovery_line(restored: &[Finished]) -> (Vec<String>, u64, Vec<String>) {
    let lines = recovery_lines(&restored[0]);
    for res in restored {
        assert_eq!(
            recovery_lines(res),
            lines,
            "every rank must log the same recovery lines (rank 0's, then this one's)\n{}",
            res.describe()
        );
    }
    let (generation, tiers) = chosen(&lines, &restored[0]);
    assert_eq!(tiers.len(), restored.len(), "one tier per rank: {lines:?}");
    (lines, generation, tiers)
}

/// Each rank's output up to its image and after its restore is its uninterrupted output.
/// The ranks step together, so the images of one generation hold about the same step
/// (a rank that was frozen or starved may lag a few steps behind its schedule).
fn assert_outputs(references: &[String], before: &[String], restored: &[Finished], pids: &[i32]) {
    let mut steps = Vec::new();
    for (rank, res) in restored.iter().enumerate() {
        let (before, after, pid) = (&before[rank], &res.stdout, pids[rank]);
        let lines = before.lines().count();
        let first = after.lines().next().unwrap_or("(nothing)");
        // The job may have been killed before it printed anything after the image.
        let cut = if before.lines().any(|l| l == first) {
            assert_resumed(&references[rank], before, after, 1..lines, pid, pid)
        } else {
            assert_continuation(&references[rank], before, after, pid);
            lines
        };
        steps.push(cut - 1); // the `pid` line comes first
    }
    eprintln!("steps held by each rank's image: {steps:?}");
    let spread = steps.iter().max().unwrap() - steps.iter().min().unwrap();
    assert!(
        spread <= 10,
        "the images of one generation hold steps {steps:?}: not taken together"
    );
}

/// The images of `generation` that the ranks restored from (rank R's on `tiers[R]`) were
/// frozen within a short time of each other (`times` from [`Job::freeze_times`]).
fn assert_frozen_together(times: &FreezeTimes, generation: u64, tiers: &[String]) {
    let times: Vec<u64> = (0..)
        .zip(tiers)
        .map(|(rank, tier)| {
            *times
                .get(&(rank, tier.clone(), generation))
                .unwrap_or_else(|| panic!("no image of rank {rank}, generation {generation} on {tier} before the restore"))
        })
        .collect();
    let first = *times.iter().min().unwrap();
    let after: Vec<u64> = times.iter().map(|t| t - first).collect();
    eprintln!("generation {generation} frozen at +ms by rank: {after:?}");
    assert!(
        after.iter().all(|&t| t <= 100),
        "the ranks' images of generation {generation} were frozen {after:?} ms apart"
    );
}

/// Intervals on every tier; a rank waits up to 5 s for the others.
const TIERED: &str = "[interval]\nlocal = 0.3\npartner = 0.6\nglobal = 0.9\n\
                      [coordination]\ntimeout = 5\n";
/// Steps of the runs that are killed (7 s paced: the first generations complete on every
/// tier in about 2 s).
const STEPS: u32 = 140;

/// 4 ranks run until two generations are complete on every tier, then the "node" is lost.
/// Returns the job, the references, what each printed, and the PIDs.
fn run_then_lose_everything(name: &str) -> (Job, Vec<String>, Vec<String>, Vec<i32>) {
    run_with_then_lose_everything(name, &[])
}

/// [`run_then_lose_everything`] with `extra` options of every rank's `run` (`--resume`).
fn run_with_then_lose_everything(
    name: &str,
    extra: &[&str],
) -> (Job, Vec<String>, Vec<String>, Vec<i32>) {
    let job = Job::new(name, 2, 3, TIERED);
    let references = job.references(STEPS);
    let mut ranks = job.start_with(STEPS, extra);
    job.wait_for_generations(&mut ranks, 2, &TIERS);
    let pids: Vec<i32> = ranks.iter().map(|r| r.pid).collect();
    let before = kill_all(ranks);
    (job, references, before, pids)
}

/// After a node loss every rank restores the newest complete generation, all the same one,
/// and goes on exactly where its image was taken.
#[test]
fn every_rank_restores_the_same_generation() {
    let (job, references, before, pids) = run_then_lose_everything("gen-same");
    assert_back_from_newest(&job, &references, &before, &pids, Job::restore_all);
}

/// After a node loss with every copy intact, `back` (every rank's restore, each run to its
/// end) brings every rank back from the newest complete generation, all from their local
/// copies frozen together, and each goes on exactly where its image was taken.
fn assert_back_from_newest(
    job: &Job,
    references: &[String],
    before: &[String],
    pids: &[i32],
    back: impl FnOnce(&Job, &[i32]) -> Vec<Finished>,
) {
    let newest = *job.complete().last().expect("a complete generation");
    let times = job.freeze_times();
    let restored = back(job, pids);
    let (lines, generation, tiers) = same_recovery_line(&restored);
    eprintln!("{lines:#?}");
    assert_eq!(
        generation, newest,
        "the newest complete generation is {newest}: {lines:?}"
    );
    assert_eq!(
        tiers, ["local"; 4],
        "every rank's local copy is intact: {lines:?}"
    );
    assert_frozen_together(&times, generation, &tiers);
    assert_outputs(references, before, &restored, pids);
}

/// Rank 1's copies of the newest complete generation are damaged on every tier: no rank
/// restores it, every rank says why, and all restore the generation before it.
#[test]
fn a_damaged_rank_makes_every_rank_fall_back() {
    let (job, references, before, pids) = run_then_lose_everything("gen-damaged");
    let complete: Vec<u64> = job.complete().into_iter().rev().collect();
    let (newest, previous) = (complete[0], complete[1]);
    let mut damaged = Vec::new();
    for tier in TIERS {
        let image = job.image(1, tier, newest);
        if image.is_dir() {
            damage(&image.join("pages.bin"), Damage::FlipBit);
            damaged.push(tier);
        }
    }
    assert!(
        damaged.contains(&"local"),
        "rank 1 has no local image of {newest}"
    );
    let times = job.freeze_times();
    let restored = job.restore_all(&pids);
    let (lines, generation, tiers) = same_recovery_line(&restored);
    eprintln!("damaged rank 1's generation {newest} on {damaged:?}\n{lines:#?}");
    let skipped = format!("recovery line: generation {newest} skipped: rank 1 ");
    assert!(
        lines.iter().any(|l| l.starts_with(&skipped)),
        "no `{skipped}...` line: {lines:?}"
    );
    assert_eq!(
        generation, previous,
        "the complete generation before {newest} is {previous}: {lines:?}"
    );
    assert_frozen_together(&times, generation, &tiers);
    assert_outputs(&references, &before, &restored, &pids);
}

/// Node 0's storage is lost: ranks 0 and 1 restore from their partner copies on node 1,
/// ranks 2 and 3 from their own local copies, all the same generation.
#[test]
fn lost_node_storage_comes_back_from_partner_copies() {
    // No global interval: a generation newer than the newest partner copies could be on
    // the global tier for one rank and not yet for another, and ranks 0 and 1 would come
    // back from different tiers (right, but not what this test is about).
    let config = "[interval]\nlocal = 0.3\npartner = 0.6\n[coordination]\ntimeout = 5\n";
    let job = Job::new("gen-node", 2, 3, config);
    let references = job.references(STEPS);
    let mut ranks = job.start(STEPS);
    job.wait_for_generations(&mut ranks, 2, &["local", "partner"]);
    // A generation on the partner tier, asked of rank 2 for the whole job.
    let v = job.h.checkpoint_json(ranks[2].pid, &["--tier", "partner"]);
    let generation = v["generation"]["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("checkpoint --json has no generation.generation: {v}"));
    assert_eq!(
        v["seq"].as_u64(),
        Some(generation),
        "seq is the generation: {v}"
    );
    assert_eq!(v["generation"]["ranks"].as_u64(), Some(4), "{v}");
    let what = format!("generation {generation} on the partner tier");
    wait_running(&mut ranks, &what, || {
        (0..4).all(|r| job.records(r, "partner").contains(&generation))
    });
    let pids: Vec<i32> = ranks.iter().map(|r| r.pid).collect();
    let before = kill_all(ranks);
    std::fs::remove_dir_all(job.h.store.join("node0")).unwrap();

    // The newest complete generation every rank still has a copy of, and where.
    let expected = job
        .complete()
        .into_iter()
        .rev()
        .find_map(|g| {
            let tiers: Option<Vec<&str>> = (0..4)
                .map(|r| TIERS.into_iter().find(|t| job.image(r, t, g).is_dir()))
                .collect();
            Some((g, tiers?))
        })
        .expect("a complete generation every rank still holds");
    let times = job.freeze_times();
    let restored = job.restore_all(&pids);
    let (lines, generation_chosen, tiers) = same_recovery_line(&restored);
    eprintln!("{lines:#?}");
    assert_eq!(
        (generation_chosen, tiers.clone()),
        (
            expected.0,
            expected.1.iter().map(|t| t.to_string()).collect()
        ),
        "expected generation {} from {:?} (what is left on disk): {lines:?}",
        expected.0,
        expected.1
    );
    assert_eq!(
        tiers,
        ["partner", "partner", "local", "local"],
        "ranks 0 and 1 from partner copies (generation {generation} or newer): {lines:?}"
    );
    assert!(generation_chosen >= generation, "{lines:?}");
    assert_frozen_together(&times, generation_chosen, &tiers);
    assert_outputs(&references, &before, &restored, &pids);
}

/// Rank 3's supervisor stops answering for longer than the timeout: the generations it
/// holds up fail (a log names rank 3) and get no record, the other ranks run on; once it
/// is back, generations complete again, and every rank's output is exactly its own.
#[test]
fn a_hung_rank_fails_the_generation_and_the_job_runs_on() {
    const STEPS: u32 = 200; // 10 s paced
    let config = "[interval]\nlocal = 0.3\n[coordination]\ntimeout = 1\n";
    let job = Job::new("gen-hung", 2, 3, config);
    let references = job.references(STEPS);
    let mut ranks = job.start(STEPS);
    let newest_local = |job: &Job| -> u64 {
        (0..4)
            .filter_map(|r| job.records(r, "local").last().copied())
            .max()
            .unwrap_or(0)
    };
    wait_running(&mut ranks, "a complete generation", || {
        (0..4).all(|r| !job.records(r, "local").is_empty())
    });

    let hung = ranks[3].run.child_pid();
    kill(Pid::from_raw(hung), Signal::SIGSTOP).unwrap();
    let stopped_at = newest_local(&job);
    let logs_at: Vec<usize> = ranks.iter().map(|r| r.run.stderr().len()).collect();
    let lines_at: Vec<usize> = ranks.iter().map(|r| r.run.line_count()).collect();
    std::thread::sleep(Duration::from_secs(4));
    let during = newest_local(&job);
    let lines_after: Vec<usize> = ranks.iter().map(|r| r.run.line_count()).collect();
    let said: Vec<String> = ranks[..3]
        .iter()
        .zip(&logs_at)
        .flat_map(|(r, &at)| {
            r.run.stderr()[at..]
                .lines()
                .filter_map(mlckpt_line)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    kill(Pid::from_raw(hung), Signal::SIGCONT).unwrap();
    eprintln!(
        "rank 3 stopped 4 s: newest complete generation {stopped_at} -> {during}; lines \
         {lines_at:?} -> {lines_after:?}; the other ranks said:\n{}",
        said.join("\n")
    );
    // A generation rank 3 had committed before it stopped may still complete.
    assert!(
        during <= stopped_at + 1,
        "generations completed while rank 3 was stopped: {stopped_at} -> {during}"
    );
    assert!(
        said.iter().any(|l| names_late_rank(l, 3)),
        "no rank said `rank 3 did not reach the freeze|commit within 1 s` (the \
         coordinator's timeout) while rank 3 was stopped:\n{}",
        said.join("\n")
    );
    for rank in 0..3 {
        assert!(
            lines_after[rank] >= lines_at[rank] + 20,
            "rank {rank} did not run on while rank 3 hung: {lines_at:?} -> {lines_after:?}"
        );
    }
    wait_running(
        &mut ranks,
        "a complete generation after rank 3 is back",
        || (0..4).all(|r| job.records(r, "local").last() > Some(&during)),
    );
    for (rank, r) in ranks.into_iter().enumerate() {
        let out = r.run.finish(CMD_TIMEOUT).expect_code(0).stdout;
        assert_continuation(&references[rank], &out, "", r.pid);
    }
}

/// Rank 3 can no longer write its images (its node's storage is full: a 256 KiB tmpfs
/// mounted over its directory) while ranks 0-2 write theirs: every generation fails once
/// ranks 0-2 committed their part, with a message naming rank 3. The job runs on, and ranks 0-2 do
/// not pile up the images of generations that can never be complete: the newest image and
/// the increments it builds on stay, with the image of the generation in flight
/// (`full_every = 2`: at most 3 beside the complete generation kept; without this, one per
/// failed generation), the rest go as each generation fails.
#[test]
fn a_rank_that_cannot_write_fails_every_generation_without_filling_storage() {
    const FAILED: usize = 8;
    // No write tracking, so no pre-copy: rank 3 fails writing after the freeze, once ranks
    // 0-2 have committed theirs, every time.
    let config = "[interval]\nlocal = 0.3\n[image]\nfull_every = 2\nwrite_tracking = false\n\
                  [coordination]\ntimeout = 5\n";
    let job = Job::new("gen-unwritable", 2, 1, config);
    let mut ranks = job.start(2000);
    wait_running(&mut ranks, "a complete generation", || {
        (0..4).all(|r| !job.records(r, "local").is_empty())
    });
    let full = job.copies(3, "local");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "mlckpt-test-full"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "cannot mount a small tmpfs on {}",
        full.display()
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(full);
    let complete = job.records(0, "local");

    let failures = |rank: &Rank| -> usize {
        rank.run
            .stderr()
            .lines()
            .filter_map(mlckpt_line)
            .filter(|l| l.contains("generation") && l.contains(" failed: "))
            .count()
    };
    let mut most_kept = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while failures(&ranks[0]) < FAILED {
        ranks.iter_mut().for_each(|r| r.run.assert_running());
        let without_record = image_seqs(&job.copies(0, "local"))
            .into_iter()
            .filter(|g| !job.records(0, "local").contains(g))
            .count();
        most_kept = most_kept.max(without_record);
        assert!(
            Instant::now() < deadline,
            "fewer than {FAILED} failed generations in 90 s:\n{}",
            ranks[0].run.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let said = ranks[0].run.stderr();
    let kept = image_seqs(&job.copies(0, "local"));
    let lines = ranks[0].run.line_count();
    kill_all(ranks);
    eprintln!("rank 0 said:\n{said}\nkept {kept:?}, complete {complete:?}");
    let failed: Vec<&str> = said.lines().filter(|l| l.contains(" failed: ")).collect();
    assert!(
        failed.iter().all(|l| l.contains("rank 3")),
        "a failure does not name rank 3:\n{said}"
    );
    assert!(lines > 20, "rank 0 did not run on ({lines} lines)");
    assert_eq!(job.records(0, "local"), complete, "a generation completed");
    assert!(
        most_kept <= 3,
        "rank 0 kept up to {most_kept} images of failed generations at once (now {kept:?})"
    );
}

/// Whether `line` is the coordinator's timeout message `RANKS did not STEP within T s`
/// (`rank 3 did not reach the freeze within 1 s ...`) and RANKS include `rank`.
fn names_late_rank(line: &str, rank: u32) -> bool {
    let Some((before, after)) = line.split_once(" did not ") else {
        return false;
    };
    let Some(at) = before.rfind("rank") else {
        return false;
    };
    let named = before[at..]
        .trim_start_matches("ranks ")
        .trim_start_matches("rank ");
    let rank = rank.to_string();
    after.contains(" within ") && named.split(", ").any(|r| r == rank)
}

/// Every generation that every rank copied to the partner tier completes there (each rank
/// writes its record), also when the copies are done before the slowest rank committed the
/// generation locally (small images copy fast); and `checkpoint --tier partner` sent to
/// any rank returns once its generation is complete.
#[test]
fn every_partner_copy_completes_its_generation() {
    const STEPS: u32 = 120;
    // Full images only: a partner copy then holds no parents copied along, which are
    // partner images of generations that were not asked for on the partner tier.
    let config = "[interval]\nlocal = 0.2\npartner = 0.4\n[image]\nfull_every = 1\n\
                  [coordination]\ntimeout = 5\n";
    let job = Job::new("gen-partner", 2, 100, config);
    let mut ranks = job.start(STEPS);
    job.wait_for_generations(&mut ranks, 2, &["partner"]);
    for i in 0..4 {
        let rank = &ranks[1 + i % 3];
        let pid = rank.pid.to_string();
        let args = ["checkpoint", &pid, "--tier", "partner", "--json"];
        let res = job.h.start(&args, None).finish(Duration::from_secs(15));
        assert_eq!(
            res.code,
            0,
            "checkpoint --tier partner of rank {}: its generation never completed on the \
             partner tier (see `copied ckpt-G` and `generation G complete on the partner \
             tier` in the ranks' logs)\n{}",
            1 + i % 3,
            res.describe()
        );
    }
    // What every rank has copied by now has its record a moment later.
    let copied: Vec<u64> = image_seqs(&job.copies(0, "partner"))
        .into_iter()
        .filter(|&g| (1..4).all(|r| job.image(r, "partner", g).is_dir()))
        .collect();
    let unrecorded = || -> Vec<(u32, u64)> {
        (0..4)
            .flat_map(|r| copied.iter().map(move |&g| (r, g)))
            .filter(|&(r, g)| !job.records(r, "partner").contains(&g))
            .collect()
    };
    let patience = Duration::from_secs(10);
    let deadline = Instant::now() + patience;
    loop {
        let missing = unrecorded();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "generations {copied:?} were copied to the partner tier by every rank, but \
             {patience:?} later these (rank, generation) still have no partner record: \
             {missing:?}"
        );
        for rank in &mut ranks {
            rank.run.assert_running();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for rank in &mut ranks {
        rank.run.assert_running();
    }
    kill_all(ranks);
}

/// `mode = "off"`: two ranks checkpointed on their own number their own images, write no
/// generation records, and each restores alone.
#[test]
fn independent_ranks_opt_out() {
    let job = Job::new(
        "gen-off",
        1,
        3,
        "[coordination]\nmode = \"off\"\ntimeout = 5\n",
    );
    let references = job.references(STEPS);
    let mut ranks = job.start(STEPS);
    for rank in &mut ranks {
        rank.run.wait_for_lines("step", 5);
    }
    let seq = |rank: &Rank, kill: bool| {
        let args: &[&str] = if kill { &["--kill"] } else { &[] };
        let v = job.h.checkpoint_json(rank.pid, args);
        assert!(
            v.get("generation").is_none_or(serde_json::Value::is_null),
            "an independent rank's checkpoint is no generation: {v}"
        );
        v["seq"].as_u64().expect("seq")
    };
    let rank0: Vec<u64> = (0..3).map(|_| seq(&ranks[0], false)).collect();
    let rank1 = seq(&ranks[1], false);
    assert_eq!(
        (rank0, rank1),
        (vec![1, 2, 3], 1),
        "each rank numbers its own"
    );
    let last = [seq(&ranks[0], true), seq(&ranks[1], true)];
    assert_eq!(last, [4, 2]);
    assert_eq!(image_seqs(&job.copies(0, "local")), [1, 2, 3, 4]);
    assert_eq!(image_seqs(&job.copies(1, "local")), [1, 2]);
    let pids: Vec<i32> = ranks.iter().map(|r| r.pid).collect();
    let before: Vec<String> = ranks
        .into_iter()
        .map(|r| r.run.finish(CMD_TIMEOUT).expect_code(KILLED).stdout)
        .collect();
    assert!(
        job.complete().is_empty(),
        "generation records in an independent job: {:?}",
        job.complete()
    );
    // One at a time: an independent rank waits for no other.
    for rank in 0..2 {
        wait_gone(pids[rank]);
        let restored = job
            .restore(rank, pids[rank])
            .finish(CMD_TIMEOUT)
            .expect_code(0);
        assert!(
            recovery_lines(&restored).is_empty(),
            "an independent rank has no recovery line\n{}",
            restored.describe()
        );
        line_with(
            &restored,
            &[
                "candidate",
                &format!("seq {} local", last[rank]),
                "ok -> chosen",
            ],
        );
        assert_continuation(
            &references[rank],
            &before[rank],
            &restored.stdout,
            pids[rank],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// `run --resume` of every rank, as a job script submitted again runs it

/// The signals set in a `SigBlk:` mask of /proc/PID/status (hex), by name.
fn blocked_signals(mask: &str) -> Vec<String> {
    let Ok(bits) = u64::from_str_radix(mask, 16) else {
        return vec![format!("(not a mask: {mask:?})")];
    };
    (0..64)
        .filter(|bit| bits & (1 << bit) != 0)
        .map(|bit| match Signal::try_from(bit + 1) {
            Ok(sig) => sig.as_str().to_owned(),
            Err(_) => format!("signal {}", bit + 1),
        })
        .collect()
}

/// A coordinated job's first start under `run --resume`: no rank has an image, so all of
/// them agree to start afresh, and every program starts with the signal mask a plain start
/// gives it, nothing blocked (whatever a supervisor blocked for itself meanwhile).
#[test]
fn a_coordinated_first_start_runs_with_no_signals_blocked() {
    let job = Job::new("gen-fresh-mask", 2, 3, "[coordination]\ntimeout = 5\n");
    let mut runs = job.launch_prog(0..job.ranks(), &["--resume"], |_| {
        Prog::c("sigmask_steps", &["5", "20"])
    });
    runs.iter_mut().for_each(|r| {
        r.target_pid();
    });
    for (rank, run) in runs.into_iter().enumerate() {
        let res = run.finish(CMD_TIMEOUT).expect_code(0);
        line_with(&res, &["starting the program afresh on every rank"]);
        let out: Vec<&str> = res.stdout.lines().collect();
        assert!(
            out.first().is_some_and(|l| l.starts_with("pid ")) && out.last() == Some(&"done"),
            "rank {rank}'s program did not run from its start to its end\n{}",
            res.describe()
        );
        let mask = out
            .iter()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("rank {rank} printed no SigBlk line\n{}", res.describe()));
        assert_eq!(
            mask,
            "0000000000000000",
            "rank {rank}'s program started with signals blocked: {:?} (a supervisor's own \
             mask leaked into the program it started)",
            blocked_signals(mask)
        );
    }
}

/// After a node loss the same `run --resume` command on every rank (the job script
/// submitted again) restores the newest complete generation, all the same one, and each
/// program goes on exactly where its image was taken.
#[test]
fn every_rank_resumes_the_same_generation_with_run_resume() {
    let (job, references, before, pids) =
        run_with_then_lose_everything("gen-resume", &["--resume"]);
    assert_back_from_newest(&job, &references, &before, &pids, |job, pids| {
        job.resume_all(pids, STEPS)
    });
}

/// Complete generations are on disk but rank 3 never comes back: ranks 0-2 under
/// `run --resume` wait `[coordination] timeout`, then fail naming rank 3. None of them
/// starts its program afresh (that would throw away the job's progress and leave the ranks
/// at different points), and the generations stay for a relaunch of every rank.
#[test]
fn a_rank_missing_at_resume_is_an_error_not_a_fresh_start() {
    let job = Job::new(
        "gen-missing",
        2,
        3,
        "[interval]\nlocal = 0.3\n[coordination]\ntimeout = 5\n",
    );
    let mut ranks = job.start_with(STEPS, &["--resume"]);
    job.wait_for_generations(&mut ranks, 2, &["local"]);
    kill_all(ranks);
    let complete = job.complete();
    job.configure(3, "[interval]\nlocal = 0.3\n[coordination]\ntimeout = 3\n");

    let started = Instant::now();
    let ended: Vec<Finished> = job
        .launch(0..3, &["--resume"], STEPS)
        .into_iter()
        .map(|r| r.finish(CMD_TIMEOUT))
        .collect();
    eprintln!(
        "ranks 0-2 without rank 3 ended after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (rank, res) in ended.iter().enumerate() {
        assert!(
            res.stdout.is_empty(),
            "rank {rank} ran its program (afresh, or restored alone) although complete \
             generations {complete:?} are on disk and rank 3 never joined\n{}",
            res.describe()
        );
        assert_ne!(
            res.code,
            0,
            "rank {rank} succeeded without rank 3\n{}",
            res.describe()
        );
        assert!(
            // Any line: an error's causes may follow it on lines of their own.
            res.stderr
                .lines()
                .any(|l| l.contains("rank 3") && l.contains("not joined")),
            "rank {rank} did not say that rank 3 has not joined\n{}",
            res.describe()
        );
    }
    assert_eq!(
        job.complete(),
        complete,
        "the failed resume changed which generations are complete"
    );
}
