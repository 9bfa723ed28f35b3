//! `mlckpt restore`.
//!
//! Either way (PATH or `--auto`), an image's page contents are hashed while the restore
//! reads them: everything else about it is checked first, and the new process is let run
//! only once its pages proved intact. With `--auto`, a candidate whose pages turn out
//! damaged is dropped (its process killed) and the next one is tried.

use super::{JobArgs, load_config_for_writing, topology};
use anyhow::{Context, bail};
use mlckpt::coordination::{self, member::Member, wire::Held};
use mlckpt::image::format::TierKind;
use mlckpt::image::{self, Image, PageCheck};
use mlckpt::supervisor::{self, JobContext, Lineage};
use mlckpt::tiers::config::Config;
use mlckpt::tiers::generation;
use mlckpt::tiers::recovery::{self, Candidate, Verdict};
use mlckpt::tracer::pages::ParentChoice;
use mlckpt::tracer::precopy::Tracking;
use mlckpt::tracer::restore::{RestoreError, RestoreOptions, Restored, restore as rebuild};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub struct Flags {
    pub new_pid: bool,
    pub keep_files: bool,
}

pub fn restore(
    args: &JobArgs,
    path: Option<PathBuf>,
    auto: bool,
    detach: bool,
    flags: Flags,
) -> anyhow::Result<i32> {
    // Before anything is read or created: without it every restore fails half-way.
    mlckpt::tracer::access::Privileges::current().check_restore()?;
    // Before any thread exists (verifying an image starts a thread pool): a thread that
    // does not block SIGCHLD would take, and drop, the supervisor's wake-ups.
    supervisor::block_supervisor_signals()?;
    let config = load_config_for_writing(args)?;
    let opts = RestoreOptions {
        new_pid: flags.new_pid,
        keep_files: flags.keep_files,
        track_writes: !detach && config.image.write_tracking,
    };
    let (image, pages) = match path {
        Some(dir) => {
            // Else the verifier reports a missing path as an incomplete image.
            anyhow::ensure!(
                dir.is_dir(),
                "cannot restore {}: no such image directory",
                dir.display()
            );
            image::open_checked(&dir)
                .with_context(|| format!("cannot restore {}", dir.display()))?
        }
        None => {
            debug_assert!(auto);
            let job = args.job.clone().or_else(|| config.job.name.clone()).context(
                "restore --auto needs the job name: pass --job NAME or set [job] name in the config",
            )?;
            let topology = topology(args, &config)?;
            let ctx = JobContext::new(config.clone(), job, topology);
            let signals = prepare(&ctx, detach)?;
            let (chosen, member) = match coordination_of(&ctx)? {
                Some(settings) => {
                    let mut member = join(&ctx, &settings, true)?;
                    let chosen = restore_agreed(&ctx, &opts, &mut member)?;
                    (chosen, Some(member))
                }
                None => (restore_newest(&ctx, &opts)?, None),
            };
            let Some((image, process)) = chosen else {
                bail!("{}", no_valid_image(&ctx));
            };
            return restored(&image, process, &config, args, detach, signals, member);
        }
    };
    let ctx = supervision_context(&image, &config, args)?;
    let signals = prepare(&ctx, detach)?;
    // Restored by path, the rank still takes part in its job's generations from now on.
    let member = match coordination_of(&ctx)? {
        Some(settings) if !detach => Some(join(&ctx, &settings, false)?),
        _ => None,
    };
    let process = rebuild_checking(&image, pages, &tracking_from(&opts, &image.dir, &ctx))
        .with_context(|| format!("cannot restore {}", image.dir.display()))?;
    restored(&image, process, &config, args, detach, signals, member)
}

/// The coordination settings of a job, `None` for independent ranks.
pub fn coordination_of(ctx: &JobContext) -> anyhow::Result<Option<coordination::Settings>> {
    Ok(coordination::settings(
        &ctx.config,
        &ctx.job,
        &ctx.topology,
    )?)
}

/// Joins the job's coordinator (rank 0 starts it); `restoring`: the ranks first agree on
/// a recovery line.
pub fn join(
    ctx: &JobContext,
    settings: &coordination::Settings,
    restoring: bool,
) -> anyhow::Result<Member> {
    let tiers = TierKind::ALL
        .into_iter()
        .filter(|&t| ctx.paths.has(t))
        .collect();
    Ok(Member::join(settings, tiers, ctx.next_seq(), 0, restoring)?)
}

/// The recovery line of a coordinated job: every rank says which generations it holds,
/// checks its copies of those the coordinator proposes, and all restore the same one.
fn restore_agreed(
    ctx: &JobContext,
    opts: &RestoreOptions,
    member: &mut Member,
) -> anyhow::Result<Option<(Image, Restored)>> {
    let dirs = recovery::look(&ctx.paths);
    let candidates = recovery::candidates(&dirs);
    let complete: BTreeSet<u64> = dirs
        .iter()
        .flat_map(|d| generation::valid_records(&d.dir))
        // A record of an earlier run of the job name with another number of ranks speaks
        // for a generation this job cannot restore.
        .filter(|r| r.ranks == member.settings.ranks)
        .map(|r| r.generation)
        .collect();
    let mut held: BTreeMap<u64, Held> = BTreeMap::new();
    for c in &candidates {
        let entry = held.entry(c.seq).or_insert_with(|| Held {
            generation: c.seq,
            tiers: Vec::new(),
            complete: complete.contains(&c.seq),
        });
        entry.tiers.push(c.tier);
    }
    let agreed = member.agree(held.into_values().collect(), |g| {
        verify_copies(ctx, &candidates, g)
    })?;
    for line in &agreed.lines {
        mlckpt::info!("{line}");
    }
    let (Some(g), Some(tier)) = (agreed.generation, agreed.tier) else {
        return Ok(None);
    };
    let chosen = candidates
        .iter()
        .find(|c| c.seq == g && c.tier == tier)
        .with_context(|| {
            format!("generation {g} on the {tier} tier vanished during the restore")
        })?;
    let (verdict, result) = try_candidate(chosen, &tracking_from(opts, &chosen.path, ctx));
    print_candidate(chosen, &verdict, matches!(result, Some(Ok(_))));
    match result {
        Some(result) => result.map(Some),
        None => bail!(
            "generation {g}'s copy on the {tier} tier was intact a moment ago and is not now;              the other ranks restored it: restore this rank again"
        ),
    }
}

/// This rank's intact copy of generation `g` (nearest tier first), or what is wrong with
/// each.
fn verify_copies(
    ctx: &JobContext,
    candidates: &[Candidate],
    g: u64,
) -> (Option<TierKind>, Vec<String>) {
    let mut problems = Vec::new();
    for tier in TierKind::ALL.into_iter().filter(|&t| ctx.paths.has(t)) {
        let Some(c) = candidates.iter().find(|c| c.seq == g && c.tier == tier) else {
            problems.push(format!("{tier}: missing"));
            continue;
        };
        match image::open_verified(&c.path) {
            Ok(_) => return (Some(tier), problems),
            Err(e) => problems.push(format!(
                "{tier}: {} ({})",
                e.verdict(),
                mlckpt::error_chain(&e)
            )),
        }
    }
    (None, problems)
}

/// `opts`, with write tracking carried on from the image only if the next checkpoints can
/// build on it: increments refer to parents in the node-local directory.
fn tracking_from(opts: &RestoreOptions, image: &Path, ctx: &JobContext) -> RestoreOptions {
    RestoreOptions {
        track_writes: opts.track_writes && in_local_dir(image, ctx),
        ..opts.clone()
    }
}

/// Whether `image` is in the node-local directory of the job's rank. The next checkpoint
/// builds on it then (and not on a newer image there, which the restore may have passed
/// over as damaged); restored from another tier, it is a full image.
fn in_local_dir(image: &Path, ctx: &JobContext) -> bool {
    let real = |p: &Path| p.canonicalize().ok();
    image
        .parent()
        .and_then(real)
        .is_some_and(|dir| Some(dir) == real(&ctx.paths.local))
}

/// Checks what supervision needs before anything is restored, and blocks the signals the
/// supervisor handles (before any thread is started: threads inherit the mask).
fn prepare(ctx: &JobContext, detach: bool) -> anyhow::Result<nix::sys::signal::SigSet> {
    if !detach {
        ctx.check_intervals()?;
        supervisor::check_runtime_dir()?;
    }
    Ok(supervisor::block_supervisor_signals()?)
}

/// The image's rank decides where the restored process's images go: the same paths as the
/// run that wrote it.
fn supervision_context(
    image: &Image,
    config: &Config,
    args: &JobArgs,
) -> anyhow::Result<JobContext> {
    let m = &image.manifest;
    let rank_args = JobArgs {
        rank: Some(m.rank),
        ..args.clone()
    };
    Ok(JobContext::new(
        config.clone(),
        m.job.clone(),
        topology(&rank_args, config)?,
    ))
}

fn restored(
    image: &Image,
    process: Restored,
    config: &Config,
    args: &JobArgs,
    detach: bool,
    signals: nix::sys::signal::SigSet,
    member: Option<Member>,
) -> anyhow::Result<i32> {
    let pid = process.pid;
    for warning in &process.warnings {
        mlckpt::warn!("{warning}");
    }
    mlckpt::info!(
        "restored {} (seq {}) as PID {pid}",
        image.dir.display(),
        image.manifest.seq
    );
    if detach {
        if let Some(member) = member {
            mlckpt::warn!(
                "rank {} of job {} runs unsupervised (--detach): it takes no part in the job's \
                 coordinated checkpoints from now on{}; restore every rank without --detach \
                 to keep them",
                member.settings.rank,
                member.settings.job,
                if member.settings.rank == 0 {
                    ", and the other ranks lose their coordinator"
                } else {
                    ""
                }
            );
        }
        return Ok(0);
    }
    let ctx = supervision_context(image, config, args)?;
    let lineage = Lineage {
        tracking: process.tracker.map(Tracking::adopted).unwrap_or_default(),
        parent: if in_local_dir(&image.dir, &ctx) {
            ParentChoice::Restored(image.manifest.seq)
        } else {
            ParentChoice::Full
        },
    };
    Ok(supervisor::supervise(
        &ctx, pid, true, signals, lineage, member,
    )?)
}

/// Restores `image`, hashing its pages meanwhile; the process runs only if they are intact.
/// Pages stored compressed (a copy from the partner or global tier) are decompressed into
/// memory first, verified on the way; the memory is given back once the processes are
/// rebuilt.
fn rebuild_checking(
    image: &Image,
    pages: PageCheck,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    let started = std::time::Instant::now();
    let measured = mlckpt::progress::start(
        &format!("decompressing pages of {}", image.dir.display()),
        pages.compressed_bytes(),
    );
    let (unpacked, pages) = pages.unpack_compressed()?;
    drop(measured);
    if !unpacked.is_empty() {
        let mib = unpacked.bytes() as f64 / f64::from(1u32 << 20);
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        mlckpt::info!(
            "decompressed and verified {mib:.1} MiB of pages of {} in {:.1} ms \
             ({:.0} MiB/s), held in memory until the restore is done",
            image.dir.display(),
            secs * 1000.0,
            mib / secs
        );
    }
    let check = std::thread::spawn(move || pages.verify());
    rebuild(image, &unpacked, opts, || {
        check.join().unwrap_or_else(|_| {
            Err(image::verify::VerifyError::Read(
                image::reader::ReadError::Io {
                    path: image.dir.clone(),
                    source: std::io::Error::other("the page check thread panicked"),
                },
            ))
        })
    })
}

/// Restores the newest valid image on any tier, saying what each candidate it looked at was;
/// `None` when no candidate is intact.
fn restore_newest(
    ctx: &JobContext,
    opts: &RestoreOptions,
) -> anyhow::Result<Option<(Image, Restored)>> {
    let dirs = recovery::look(&ctx.paths);
    for d in &dirs {
        match &d.images {
            Ok(images) if images.is_empty() && ctx.paths.has(d.tier) => mlckpt::info!(
                "candidate {} ({}): missing (no image)",
                d.tier,
                d.dir.display()
            ),
            Ok(_) => {}
            Err(e) => mlckpt::info!(
                "candidate {} ({}): unreadable ({})",
                d.tier,
                d.dir.display(),
                supervisor::error_chain(e)
            ),
        }
    }
    let mut outcome: Option<anyhow::Result<(Image, Restored)>> = None;
    let choice = recovery::choose(recovery::candidates(&dirs), |c| {
        let (verdict, result) = try_candidate(c, &tracking_from(opts, &c.path, ctx));
        let restored = matches!(result, Some(Ok(_)));
        print_candidate(c, &verdict, restored);
        outcome = result;
        verdict
    });
    if choice.unchecked > 0 {
        mlckpt::info!("{} older candidate(s) not checked", choice.unchecked);
    }
    match outcome {
        Some(result) if choice.chosen.is_some() => result.map(Some),
        // The newest intact image failed to restore: that error, not a fresh start.
        Some(Err(e)) => Err(e),
        _ => Ok(None),
    }
}

fn no_valid_image(ctx: &JobContext) -> String {
    let looked: Vec<String> = recovery::look(&ctx.paths)
        .iter()
        .map(|d| d.dir.display().to_string())
        .collect();
    format!(
        "no valid image of job {} rank {} on any tier (looked in {})",
        ctx.job,
        ctx.rank(),
        looked.join(", ")
    )
}

/// What `run --resume` came to.
pub enum Resumed {
    /// An image was restored and supervised to its end: the exit code.
    Restored(i32),
    /// Nothing to restore: the program starts afresh (in a coordinated job, with the
    /// connection the ranks agreed through).
    Afresh(Option<Box<Member>>),
}

/// `run --resume`: restores the newest valid image of the job and supervises it, as
/// `restore --auto` does; [`Resumed::Afresh`] when there is none. In a coordinated job
/// every rank takes part in the agreement, even one without images, so that all restore
/// the same generation or all start afresh.
pub fn resume(args: &JobArgs, ctx: &JobContext, config: &Config) -> anyhow::Result<Resumed> {
    let opts = RestoreOptions {
        new_pid: false,
        keep_files: false,
        track_writes: config.image.write_tracking,
    };
    let candidates = recovery::candidates(&recovery::look(&ctx.paths));
    let newest = candidates.iter().map(|c| c.seq).max();
    let finished = mlckpt::tiers::finished::read(&ctx.paths)
        .filter(|done| newest.is_some_and(|n| done.after_seq >= n));
    if let Some(done) = &finished {
        mlckpt::info!(
            "job {} rank {} finished (exit {}) after its image {}: starting the \
             program afresh",
            ctx.job,
            ctx.rank(),
            done.exit_code,
            done.after_seq
        );
    }
    if let Some(settings) = coordination_of(ctx)? {
        let signals = prepare(ctx, false)?;
        let mut member = join(ctx, &settings, true)?;
        let chosen = if finished.is_some() {
            // A finished rank holds nothing worth resuming: every rank starts afresh.
            let agreed = member.agree(Vec::new(), |_| (None, Vec::new()))?;
            agreed.lines.iter().for_each(|l| mlckpt::info!("{l}"));
            None
        } else {
            if newest.is_some() {
                mlckpt::tracer::access::Privileges::current().check_restore()?;
            }
            restore_agreed(ctx, &opts, &mut member)?
        };
        return match chosen {
            Some((image, process)) => {
                restored(&image, process, config, args, false, signals, Some(member))
                    .map(Resumed::Restored)
            }
            None => {
                mlckpt::info!("job {}: starting the program afresh on every rank", ctx.job);
                Ok(Resumed::Afresh(Some(Box::new(member))))
            }
        };
    }
    if newest.is_none() || finished.is_some() {
        return Ok(Resumed::Afresh(None));
    }
    mlckpt::tracer::access::Privileges::current().check_restore()?;
    let signals = prepare(ctx, false)?;
    match restore_newest(ctx, &opts)? {
        Some((image, process)) => {
            restored(&image, process, config, args, false, signals, None).map(Resumed::Restored)
        }
        None => {
            mlckpt::info!("{}: starting the program afresh", no_valid_image(ctx));
            Ok(Resumed::Afresh(None))
        }
    }
}

/// Restores candidate `c` if it is valid. A damaged candidate gets its verdict and no
/// result (the next one is tried); any other failure ends the choice with that error: the
/// image is fine, the restore is what failed.
fn try_candidate(
    c: &Candidate,
    opts: &RestoreOptions,
) -> (Verdict, Option<anyhow::Result<(Image, Restored)>>) {
    let bad = |e: &image::verify::VerifyError| Verdict::Bad {
        what: e.verdict(),
        why: mlckpt::error_chain(e),
    };
    let (image, pages) = match image::open_checked(&c.path) {
        Ok(opened) => opened,
        Err(e) => return (bad(&e), None),
    };
    match rebuild_checking(&image, pages, opts) {
        Ok(process) => (Verdict::Ok, Some(Ok((image, process)))),
        Err(RestoreError::Verify(e)) => (bad(&e), None),
        Err(e) => {
            let context = format!("cannot restore {}", image.dir.display());
            (
                Verdict::Ok,
                Some(Err(anyhow::Error::new(e).context(context))),
            )
        }
    }
}

/// A candidate's line: its verdict, and whether it was chosen (intact and restored) or
/// intact but the restore itself failed (the error follows).
fn print_candidate(c: &Candidate, verdict: &Verdict, restored: bool) {
    let head = format!("candidate seq {} {} ({})", c.seq, c.tier, c.path.display());
    match verdict {
        Verdict::Ok if restored => mlckpt::info!("{head}: ok -> chosen"),
        Verdict::Ok => {
            mlckpt::info!("{head}: intact (with every image it needs), but restoring it failed")
        }
        Verdict::Bad { what, why } => mlckpt::info!("{head}: {what} ({why})"),
    }
}
