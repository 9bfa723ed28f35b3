//! `mlckpt list`.

use super::{JobArgs, load_config};
use mlckpt::image::{self, Image};
use mlckpt::tiers::inventory;
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    path: String,
    /// Where the image is stored now (the manifest's `tier` is where it was written).
    tier: String,
    /// The test-mode node whose storage holds it; `null` outside test mode.
    node: Option<u32>,
    job: String,
    rank: u32,
    seq: u64,
    time_unix_ms: u64,
    bytes: u64,
    /// Processes in the image (the job's root, its other processes, zombies).
    processes: usize,
    valid: bool,
}

pub fn list(args: &JobArgs, json: bool) -> anyhow::Result<i32> {
    let config = load_config(args)?;
    let mut rows = Vec::new();
    for found in inventory::scan(&config) {
        if args.job.as_ref().is_some_and(|j| *j != found.job) {
            continue;
        }
        let Ok(img) = Image::open(&found.path) else {
            continue;
        };
        rows.push(Row {
            path: found.path.display().to_string(),
            tier: found.tier.to_string(),
            node: found.node,
            job: found.job,
            rank: found.rank,
            seq: found.seq,
            time_unix_ms: img.manifest.time_unix_ms,
            bytes: img.manifest.pages_bytes,
            processes: img.manifest.process_count(),
            valid: image::open_verified(&found.path).is_ok(),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<8} {:>4} {:<12} {:>5} {:>7} {:>14} {:>5} {:<6} PATH",
        "TIER", "NODE", "JOB", "RANK", "SEQ", "BYTES", "PROCS", "VALID"
    );
    for r in rows {
        let node = r.node.map_or("-".to_string(), |n| n.to_string());
        println!(
            "{:<8} {:>4} {:<12} {:>5} {:>7} {:>14} {:>5} {:<6} {}",
            r.tier,
            node,
            r.job,
            r.rank,
            r.seq,
            r.bytes,
            r.processes,
            if r.valid { "yes" } else { "NO" },
            r.path
        );
    }
    Ok(0)
}
