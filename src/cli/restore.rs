//! `mlckpt restore`.

use super::{JobArgs, load_config, rank};
use anyhow::{Context, bail};
use mlckpt::image::format::TierKind;
use mlckpt::image::{self, Image, store};
use mlckpt::supervisor::{self, JobContext};
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
    let image = match path {
        Some(dir) => {
            // Else the verifier reports a missing path as an incomplete image.
            anyhow::ensure!(
                dir.is_dir(),
                "cannot restore {}: no such image directory",
                dir.display()
            );
            image::open_verified(&dir)
                .with_context(|| format!("cannot restore {}", dir.display()))?
        }
        None => {
            debug_assert!(auto);
            let job = args.job.clone().or_else(|| config.job.name.clone()).context(
                "restore --auto needs the job name: pass --job NAME or set [job] name in the config",
            )?;
            let ctx = JobContext {
                config: config.clone(),
                job,
                rank: rank(args),
            };
            choose_newest(&ctx)?
        }
    };
    let m = &image.manifest;
    let ctx = JobContext {
        config,
        job: m.job.clone(),
        rank: m.rank,
    };
    let signals = supervisor::block_supervisor_signals()?;
    let pid = rebuild(
        &image,
        &RestoreOptions {
            new_pid: flags.new_pid,
            keep_files: flags.keep_files,
        },
    )
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

/// The newest image that verifies, saying why each newer one was passed over.
fn choose_newest(ctx: &JobContext) -> anyhow::Result<Image> {
    let dir = ctx.rank_dir(TierKind::Local).expect("local tier");
    let images = store::list_images(&dir)?;
    for (seq, path) in images.iter().rev() {
        match image::open_verified(path) {
            Ok(img) => {
                eprintln!(
                    "mlckpt: candidate local seq {seq}: ok -> chosen ({})",
                    path.display()
                );
                return Ok(img);
            }
            Err(e) => eprintln!("mlckpt: candidate local seq {seq}: {} ({e})", e.verdict()),
        }
    }
    bail!(
        "no valid image of job {} rank {} in {}",
        ctx.job,
        ctx.rank,
        dir.display()
    )
}
