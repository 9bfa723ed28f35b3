//! `mlckpt restore`.

use super::{JobArgs, load_config, topology};
use anyhow::{Context, bail};
use mlckpt::image::{self, Image};
use mlckpt::supervisor::{self, JobContext};
use mlckpt::tiers::recovery::{self, Candidate, Verdict};
use mlckpt::tracer::restore::{RestoreOptions, restore as rebuild};
use std::path::PathBuf;

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
    let config = load_config(args)?;
    let (image, pages) = match path {
        Some(dir) => {
            // Else the verifier reports a missing path as an incomplete image.
            anyhow::ensure!(
                dir.is_dir(),
                "cannot restore {}: no such image directory",
                dir.display()
            );
            let (image, pages) = image::open_checked(&dir)
                .with_context(|| format!("cannot restore {}", dir.display()))?;
            (image, Some(pages))
        }
        None => {
            debug_assert!(auto);
            let job = args.job.clone().or_else(|| config.job.name.clone()).context(
                "restore --auto needs the job name: pass --job NAME or set [job] name in the config",
            )?;
            let topology = topology(args, &config)?;
            // Every candidate was verified whole while choosing.
            (
                choose_newest(&JobContext::new(config.clone(), job, topology))?,
                None,
            )
        }
    };
    let m = &image.manifest;
    // The image's rank decides where the restored process's images go: the same paths
    // as the run that wrote it.
    let rank_args = JobArgs {
        rank: Some(m.rank),
        ..args.clone()
    };
    let ctx = JobContext::new(
        config.clone(),
        m.job.clone(),
        topology(&rank_args, &config)?,
    );
    if !detach {
        ctx.check_intervals()?;
    }
    let signals = supervisor::block_supervisor_signals()?;
    // The page contents are hashed while the restore reads them (after the signal mask is
    // set: threads inherit it); the process runs only once they proved intact.
    let check = pages.map(|p| std::thread::spawn(move || p.verify()));
    let verified = || check.map_or(Ok(()), |t| t.join().expect("page check panicked"));
    let opts = RestoreOptions {
        new_pid: flags.new_pid,
        keep_files: flags.keep_files,
    };
    let pid = rebuild(&image, &opts, verified)
        .with_context(|| format!("cannot restore {}", image.dir.display()))?;
    eprintln!(
        "mlckpt: restored {} (seq {}) as PID {pid}",
        image.dir.display(),
        m.seq
    );
    if detach {
        return Ok(0);
    }
    Ok(supervisor::supervise(&ctx, pid, true, signals)?)
}

/// The newest valid image on any tier, saying what each candidate it looked at was.
fn choose_newest(ctx: &JobContext) -> anyhow::Result<Image> {
    let dirs = recovery::look(&ctx.paths);
    for d in &dirs {
        match &d.images {
            Ok(images) if images.is_empty() && ctx.paths.has(d.tier) => eprintln!(
                "mlckpt: candidate {} ({}): missing (no image)",
                d.tier,
                d.dir.display()
            ),
            Ok(_) => {}
            Err(e) => eprintln!(
                "mlckpt: candidate {} ({}): unreadable ({})",
                d.tier,
                d.dir.display(),
                supervisor::error_chain(e)
            ),
        }
    }
    let mut opened = None;
    let choice = recovery::choose(recovery::candidates(&dirs), |c| {
        let (verdict, image) = recovery::verify(c);
        print_candidate(c, &verdict);
        opened = image;
        verdict
    });
    if choice.unchecked > 0 {
        eprintln!(
            "mlckpt: {} older candidate(s) not checked",
            choice.unchecked
        );
    }
    match opened {
        Some(image) if choice.chosen.is_some() => Ok(image),
        _ => {
            let looked: Vec<String> = dirs.iter().map(|d| d.dir.display().to_string()).collect();
            bail!(
                "no valid image of job {} rank {} on any tier (looked in {})",
                ctx.job,
                ctx.rank(),
                looked.join(", ")
            )
        }
    }
}

fn print_candidate(c: &Candidate, verdict: &Verdict) {
    let head = format!(
        "mlckpt: candidate seq {} {} ({})",
        c.seq,
        c.tier,
        c.path.display()
    );
    match verdict {
        Verdict::Ok => eprintln!("{head}: ok -> chosen"),
        Verdict::Bad { what, why } => eprintln!("{head}: {what} ({why})"),
    }
}
