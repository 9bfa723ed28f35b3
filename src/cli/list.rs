//! `mlckpt list`.

use super::{JobArgs, load_config};
use mlckpt::image::{self, Image};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    path: String,
    tier: String,
    job: String,
    rank: u32,
    seq: u64,
    time_unix_ms: u64,
    bytes: u64,
    valid: bool,
}

pub fn list(args: &JobArgs, json: bool) -> anyhow::Result<i32> {
    let config = load_config(args)?;
    let mut rows = Vec::new();
    for dir in super::verify::all_images(&config) {
        let Ok(img) = Image::open(&dir) else { continue };
        let m = &img.manifest;
        if args.job.as_ref().is_some_and(|j| j != &m.job) {
            continue;
        }
        rows.push(Row {
            path: dir.display().to_string(),
            tier: m.tier.to_string(),
            job: m.job.clone(),
            rank: m.rank,
            seq: m.seq,
            time_unix_ms: m.time_unix_ms,
            bytes: m.pages_bytes,
            valid: image::open_verified(&dir).is_ok(),
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<8} {:<12} {:>5} {:>7} {:>14} {:<6} PATH",
        "TIER", "JOB", "RANK", "SEQ", "BYTES", "VALID"
    );
    for r in rows {
        println!(
            "{:<8} {:<12} {:>5} {:>7} {:>14} {:<6} {}",
            r.tier,
            r.job,
            r.rank,
            r.seq,
            r.bytes,
            if r.valid { "yes" } else { "NO" },
            r.path
        );
    }
    Ok(0)
}
