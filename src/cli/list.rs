//! `mlckpt list`. With `--job`, the images of the job and then its generations × ranks ×
//! tiers, with the recovery line a coordinated restore would choose.

use super::{JobArgs, load_config};
use mlckpt::image::format::TierKind;
use mlckpt::image::{self, Image};
use mlckpt::tiers::inventory::{self, Found, GenerationRow, JobGenerations};
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

/// `list --job J --json --generations`.
#[derive(Serialize)]
struct JobReport<'a> {
    #[serde(flatten)]
    generations: &'a JobGenerations,
    images: &'a [Row],
}

/// `list`; the JSON output stays an array of images (scripts rely on its shape) unless
/// `generations` asks for the job's generations as well.
pub fn list(args: &JobArgs, json: bool, generations: bool) -> anyhow::Result<i32> {
    let config = load_config(args)?;
    let mut rows = Vec::new();
    // Every image of the job, with whether it verified: a copy whose manifest cannot even
    // be read has no row, but is still a damaged copy of its generation.
    let mut copies: Vec<(Found, bool)> = Vec::new();
    for found in inventory::scan(&config) {
        if args.job.as_ref().is_some_and(|j| *j != found.job) {
            continue;
        }
        let opened = Image::open(&found.path);
        let valid = opened.is_ok() && image::open_verified(&found.path).is_ok();
        if let Ok(img) = opened {
            rows.push(Row {
                path: found.path.display().to_string(),
                tier: found.tier.to_string(),
                node: found.node,
                job: found.job.clone(),
                rank: found.rank,
                seq: found.seq,
                time_unix_ms: img.manifest.time_unix_ms,
                bytes: img.manifest.pages_bytes,
                processes: img.manifest.process_count(),
                valid,
            });
        }
        if args.job.is_some() {
            copies.push((found, valid));
        }
    }
    let wanted = !json || generations;
    let generations = args.job.as_ref().filter(|_| wanted).map(|job| {
        let records = inventory::scan_records(&config);
        inventory::job_generations(job, &copies, &records)
    });
    if json {
        match &generations {
            Some(generations) => {
                let report = JobReport {
                    generations,
                    images: &rows,
                };
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            None => println!("{}", serde_json::to_string_pretty(&rows)?),
        }
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
    if let Some(generations) = &generations {
        println!();
        print_generations(generations);
    }
    Ok(0)
}

/// One line per generation, newest first: the tiers holding each rank's copy, where it is
/// complete, and whether recovery could use it.
fn print_generations(table: &JobGenerations) {
    println!(
        "job {}: {} rank(s), {} generation(s), newest first (L local, P partner, G global: \
         a valid copy; l! p! g! a damaged one; - none)",
        table.job,
        table.ranks,
        table.generations.len()
    );
    if table.generations.is_empty() {
        return;
    }
    let cells: Vec<Vec<String>> = table
        .generations
        .iter()
        .map(|g| g.ranks.iter().map(|r| cell(&r.copies)).collect())
        .collect();
    let complete: Vec<String> = table.generations.iter().map(complete_on).collect();
    let gen_width = table
        .generations
        .iter()
        .map(|g| g.generation.to_string().len())
        .max()
        .unwrap_or(0)
        .max("GEN".len());
    let rank_widths: Vec<usize> = (0..table.ranks)
        .map(|rank| {
            let index = usize::try_from(rank).unwrap_or(usize::MAX);
            let widest = cells
                .iter()
                .filter_map(|row| row.get(index))
                .map(String::len);
            widest.max().unwrap_or(0).max(format!("RANK{rank}").len())
        })
        .collect();
    let complete_width = complete.iter().map(String::len).max().unwrap_or(0);
    let complete_width = complete_width.max("COMPLETE".len());
    let mut header = format!("{:>gen_width$}", "GEN");
    for (rank, width) in rank_widths.iter().enumerate() {
        header.push_str(&format!("  {:<width$}", format!("RANK{rank}")));
    }
    println!("{header}  {:<complete_width$}  USABLE", "COMPLETE");
    for ((g, row), complete) in table.generations.iter().zip(&cells).zip(&complete) {
        let mut line = format!("{:>gen_width$}", g.generation);
        for (cell, width) in row.iter().zip(&rank_widths) {
            line.push_str(&format!("  {cell:<width$}"));
        }
        let usable = match g.unusable_because() {
            None if g.recovery_line => "yes  <- recovery line".to_string(),
            None => "yes".to_string(),
            Some(why) => format!("no: {why}"),
        };
        println!("{line}  {complete:<complete_width$}  {usable}");
    }
    match table.recovery_line {
        Some(generation) => println!(
            "recovery line: generation {generation} (the newest complete generation every \
             rank has a valid copy of)"
        ),
        None => println!(
            "recovery line: none (no complete generation with a valid copy for every rank)"
        ),
    }
}

/// `LPG`: the tiers holding a valid copy, in capitals; a tier with only damaged copies in
/// small letters and `!`; `-` for none.
fn cell(copies: &[inventory::StoredCopy]) -> String {
    let mut cell = String::new();
    for tier in TierKind::ALL {
        let on_tier: Vec<bool> = copies
            .iter()
            .filter(|c| c.tier == tier)
            .map(|c| c.valid)
            .collect();
        let letter = &tier.name()[..1];
        if on_tier.iter().any(|&valid| valid) {
            cell.push_str(&letter.to_ascii_uppercase());
        } else if !on_tier.is_empty() {
            cell.push_str(letter);
            cell.push('!');
        }
    }
    if cell.is_empty() {
        cell.push('-');
    }
    cell
}

fn complete_on(g: &GenerationRow) -> String {
    if g.complete_on.is_empty() {
        return "-".to_string();
    }
    let names: Vec<&str> = g.complete_on.iter().map(|t| t.name()).collect();
    names.join(",")
}
