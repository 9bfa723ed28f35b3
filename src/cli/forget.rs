//! `mlckpt forget --job NAME`.

use mlckpt::tiers::config::{Config, runtime_dir};
use mlckpt::tiers::forget;
use std::path::PathBuf;

pub fn forget(
    config: Option<PathBuf>,
    job: &str,
    rank: Option<u32>,
    dry_run: bool,
) -> anyhow::Result<i32> {
    let config = Config::load(config.as_deref())?;
    let done = forget::forget(&config, &runtime_dir(), job, rank, dry_run)?;
    for link in &done.symlinks {
        mlckpt::info!("skipped {}: a symbolic link, not followed", link.display());
    }
    let whose = match rank {
        Some(r) => format!("job {job} rank {r}"),
        None => format!("job {job}"),
    };
    if done.images.is_empty() {
        println!("no images of {whose}");
        return Ok(0);
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    for image in &done.images {
        let node = image.node.map_or("-".to_string(), |n| n.to_string());
        let partial = if image.partial { " (partial)" } else { "" };
        println!(
            "{verb} {:<8} node {node:>2} rank {:>4} seq {:>6} {:>14} bytes {}{partial}",
            image.tier.to_string(),
            image.rank,
            image.seq,
            image.bytes,
            image.path.display()
        );
    }
    println!(
        "{} {} images of {whose}, {} bytes",
        if dry_run { "would forget" } else { "forgot" },
        done.images.len(),
        done.bytes()
    );
    Ok(0)
}
