//! Every committed image under the configured storage, for `mlckpt list` and
//! `mlckpt verify --all`, and every generation record beside them. The tier is where an
//! image is stored now, read from its path (the manifest's `tier` says where it was first
//! written, which is always local):
//!
//! ```text
//! <local>[/node<K>]/<job>/rank<R>/ckpt-*           local (node K in test mode)
//! <local>[/node<K>]/<job>/partner/rank<R>/ckpt-*   partner copy held by that node
//! <global>/<job>/rank<R>/ckpt-*                    global
//! ```

use super::config::Config;
use super::generation::{self, GenerationRecord};
use super::layout::PARTNER_DIR;
use crate::image::format::TierKind;
use crate::image::store;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub tier: TierKind,
    /// The test-mode node whose storage holds it.
    pub node: Option<u32>,
    pub job: String,
    pub rank: u32,
    pub seq: u64,
    pub path: PathBuf,
}

/// A valid generation record, found where [`Found`] images are.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundRecord {
    /// Where it is stored (its `record.tier` says where it was written for).
    pub tier: TierKind,
    pub node: Option<u32>,
    pub job: String,
    pub rank: u32,
    pub path: PathBuf,
    pub record: GenerationRecord,
}

/// One rank directory of a job on one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RankDir {
    tier: TierKind,
    node: Option<u32>,
    job: String,
    rank: u32,
    path: PathBuf,
}

/// All images, by job, rank, seq and tier.
pub fn scan(config: &Config) -> Vec<Found> {
    let mut found: Vec<Found> = rank_dirs(config)
        .into_iter()
        .flat_map(|dir| {
            let images = store::list_images(&dir.path).unwrap_or_default();
            images.into_iter().map(move |(seq, path)| Found {
                tier: dir.tier,
                node: dir.node,
                job: dir.job.clone(),
                rank: dir.rank,
                seq,
                path,
            })
        })
        .collect();
    found.sort_by(|a, b| {
        (&a.job, a.rank, a.seq, a.tier, a.node).cmp(&(&b.job, b.rank, b.seq, b.tier, b.node))
    });
    found
}

/// All valid generation records (invalid ones are left out, as recovery leaves them), by
/// job, rank, generation and tier.
pub fn scan_records(config: &Config) -> Vec<FoundRecord> {
    let mut found: Vec<FoundRecord> = rank_dirs(config)
        .into_iter()
        .flat_map(|dir| {
            let records = generation::valid_records(&dir.path);
            records.into_iter().map(move |record| FoundRecord {
                tier: dir.tier,
                node: dir.node,
                job: dir.job.clone(),
                rank: dir.rank,
                path: generation::record_path(&dir.path, record.generation),
                record,
            })
        })
        .collect();
    found.sort_by(|a, b| {
        let (ga, gb) = (a.record.generation, b.record.generation);
        (&a.job, a.rank, ga, a.tier, a.node).cmp(&(&b.job, b.rank, gb, b.tier, b.node))
    });
    found
}

/// Every rank directory under the configured storage.
fn rank_dirs(config: &Config) -> Vec<RankDir> {
    let mut found = Vec::new();
    let local = &config.storage.local;
    // Both layouts, whatever test_mode says now: images written with the other setting
    // are still images.
    scan_node(local, None, &mut found);
    for dir in subdirs(local) {
        if let Some(node) = numbered(&dir, "node") {
            scan_node(&dir, Some(node), &mut found);
        }
    }
    if let Some(global) = &config.storage.global {
        for job in subdirs(global) {
            scan_ranks(&job, &job, TierKind::Global, None, &mut found);
        }
    }
    found
}

fn scan_node(root: &Path, node: Option<u32>, found: &mut Vec<RankDir>) {
    for job in subdirs(root) {
        scan_ranks(&job, &job, TierKind::Local, node, found);
        scan_ranks(&job, &job.join(PARTNER_DIR), TierKind::Partner, node, found);
    }
}

/// The rank directories `<dir>/rank<R>/`, of the job named by `job_dir`.
fn scan_ranks(
    job_dir: &Path,
    dir: &Path,
    tier: TierKind,
    node: Option<u32>,
    found: &mut Vec<RankDir>,
) {
    let Some(job) = job_dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    for path in subdirs(dir) {
        let Some(rank) = numbered(&path, "rank") else {
            continue;
        };
        found.push(RankDir {
            tier,
            node,
            job: job.to_string(),
            rank,
            path,
        });
    }
}

/// One copy of a rank's image of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredCopy {
    pub tier: TierKind,
    pub node: Option<u32>,
    pub path: String,
    /// Verified whole (checksums, manifest, parents).
    pub valid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankCopies {
    pub rank: u32,
    /// Nearest tier first.
    pub copies: Vec<StoredCopy>,
}

/// What the storage holds of one generation of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GenerationRow {
    pub generation: u64,
    /// Tiers where some rank's record says every rank committed it.
    pub complete_on: Vec<TierKind>,
    /// Complete, and every rank has a valid copy somewhere: a recovery line could use it.
    pub usable: bool,
    /// The newest usable generation: the one recovery picks.
    pub recovery_line: bool,
    /// Every rank of the job, those without any copy too.
    pub ranks: Vec<RankCopies>,
}

impl GenerationRow {
    /// Why recovery cannot use it; None if it can.
    pub fn unusable_because(&self) -> Option<String> {
        if self.complete_on.is_empty() {
            return Some("not complete on any tier".into());
        }
        let lacking: Vec<String> = self
            .ranks
            .iter()
            .filter(|r| !r.copies.iter().any(|c| c.valid))
            .map(|r| r.rank.to_string())
            .collect();
        match lacking.as_slice() {
            [] => None,
            [one] => Some(format!("rank {one} has no valid copy")),
            many => Some(format!("ranks {} have no valid copy", many.join(", "))),
        }
    }
}

/// Generations × ranks × tiers of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobGenerations {
    pub job: String,
    /// As many as the records say the job has, or more if images of more ranks are there.
    pub ranks: u32,
    pub recovery_line: Option<u64>,
    /// Newest first.
    pub generations: Vec<GenerationRow>,
}

/// The generations of `job` from its images (each with whether it verified) and records,
/// as `mlckpt list --job` shows them. Pure.
pub fn job_generations(
    job: &str,
    images: &[(Found, bool)],
    records: &[FoundRecord],
) -> JobGenerations {
    let images: Vec<&(Found, bool)> = images.iter().filter(|(f, _)| f.job == job).collect();
    let records: Vec<&FoundRecord> = records.iter().filter(|r| r.job == job).collect();
    let seen = images
        .iter()
        .map(|(f, _)| f.rank)
        .chain(records.iter().map(|r| r.rank));
    let said = records.iter().map(|r| r.record.ranks);
    let ranks = seen
        .map(|r| r.saturating_add(1))
        .chain(said)
        .max()
        .unwrap_or(0);
    // Copies by (generation, rank), nearest tier first.
    let mut copies: BTreeMap<(u64, u32), Vec<StoredCopy>> = BTreeMap::new();
    for (f, valid) in &images {
        copies.entry((f.seq, f.rank)).or_default().push(StoredCopy {
            tier: f.tier,
            node: f.node,
            path: f.path.display().to_string(),
            valid: *valid,
        });
    }
    for list in copies.values_mut() {
        list.sort_by_key(|c| (c.tier, c.node));
    }
    let mut complete_on: BTreeMap<u64, BTreeSet<TierKind>> = BTreeMap::new();
    for r in &records {
        complete_on
            .entry(r.record.generation)
            .or_default()
            .insert(r.tier);
    }
    let generations: BTreeSet<u64> = copies
        .keys()
        .map(|&(g, _)| g)
        .chain(complete_on.keys().copied())
        .collect();
    let mut rows: Vec<GenerationRow> = generations
        .into_iter()
        .rev()
        .map(|generation| {
            let complete_on = complete_on.remove(&generation).unwrap_or_default();
            let ranks: Vec<RankCopies> = (0..ranks)
                .map(|rank| RankCopies {
                    rank,
                    copies: copies.remove(&(generation, rank)).unwrap_or_default(),
                })
                .collect();
            let mut row = GenerationRow {
                generation,
                complete_on: complete_on.into_iter().collect(),
                usable: false,
                recovery_line: false,
                ranks,
            };
            row.usable = row.unusable_because().is_none();
            row
        })
        .collect();
    let line = rows.iter_mut().find(|r| r.usable);
    let recovery_line = line.map(|row| {
        row.recovery_line = true;
        row.generation
    });
    JobGenerations {
        job: job.to_string(),
        ranks,
        recovery_line,
        generations: rows,
    }
}

/// N of a directory named `<prefix>N`.
pub(super) fn numbered(dir: &Path, prefix: &str) -> Option<u32> {
    let digits = dir.file_name()?.to_str()?.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(super) fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_tier_and_node() {
        let tmp = tempfile::tempdir().unwrap();
        let (l, g) = (tmp.path().join("l"), tmp.path().join("g"));
        for dir in [
            "l/node0/sim/rank0/ckpt-000002",
            "l/node0/sim/rank0/.ckpt-000003.partial",
            "l/node1/sim/partner/rank0/ckpt-000002",
            "l/node1/sim/rank1/ckpt-000001",
            "l/plain/rank4/ckpt-000009",
            "g/sim/rank0/ckpt-000001",
            "g/sim/notarank/ckpt-000001",
        ] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
        }
        let mut config = Config::defaults();
        config.storage.local = l.clone();
        config.storage.global = Some(g.clone());
        let got: Vec<(String, TierKind, Option<u32>, u32, u64)> = scan(&config)
            .into_iter()
            .map(|f| (f.job, f.tier, f.node, f.rank, f.seq))
            .collect();
        use TierKind::*;
        let expected = [
            ("plain", Local, None, 4, 9),
            ("sim", Global, None, 0, 1),
            ("sim", Local, Some(0), 0, 2),
            ("sim", Partner, Some(1), 0, 2),
            ("sim", Local, Some(1), 1, 1),
        ]
        .map(|(j, t, n, r, s)| (j.to_string(), t, n, r, s));
        assert_eq!(got, expected);
        let found = scan(&config);
        assert_eq!(found[3].path, l.join("node1/sim/partner/rank0/ckpt-000002"));
        assert!(scan_records(&config).is_empty());
    }

    #[test]
    fn finds_valid_records_beside_the_images() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.storage.local = tmp.path().join("l");
        config.storage.global = Some(tmp.path().join("g"));
        let record = |generation| GenerationRecord {
            generation,
            ranks: 2,
            tier: TierKind::Local,
            committed_unix_ms: 5,
            skew_ms: 0.5,
        };
        let write = |dir: &str, generation| {
            generation::write(&tmp.path().join(dir), &record(generation)).unwrap();
        };
        write("l/node1/sim/partner/rank0", 3);
        write("l/node0/sim/rank0", 3);
        write("l/node0/sim/rank0", 2);
        write("g/sim/rank1", 3);
        std::fs::write(tmp.path().join("g/sim/rank1/generation-000004.json"), "{}").unwrap();
        let got: Vec<(TierKind, Option<u32>, u32, u64)> = scan_records(&config)
            .into_iter()
            .map(|f| (f.tier, f.node, f.rank, f.record.generation))
            .collect();
        use TierKind::*;
        assert_eq!(
            got,
            [
                (Local, Some(0), 0, 2),
                (Local, Some(0), 0, 3),
                (Partner, Some(1), 0, 3),
                (Global, None, 1, 3),
            ]
        );
        assert!(scan(&config).is_empty(), "records are not images");
    }

    fn image(tier: TierKind, rank: u32, seq: u64, valid: bool) -> (Found, bool) {
        let found = Found {
            tier,
            node: None,
            job: "sim".into(),
            rank,
            seq,
            path: PathBuf::from(format!("/{tier}/rank{rank}/{}", store::image_dir_name(seq))),
        };
        (found, valid)
    }

    fn record(tier: TierKind, rank: u32, generation: u64, ranks: u32) -> FoundRecord {
        FoundRecord {
            tier,
            node: None,
            job: "sim".into(),
            rank,
            path: PathBuf::new(),
            record: GenerationRecord {
                generation,
                ranks,
                tier,
                committed_unix_ms: 0,
                skew_ms: 0.0,
            },
        }
    }

    /// (generation, complete_on, usable, recovery line, why not) of each row.
    type Summary = (u64, Vec<TierKind>, bool, bool, Option<String>);

    fn summary(table: &JobGenerations) -> Vec<Summary> {
        table
            .generations
            .iter()
            .map(|g| {
                let why = g.unusable_because();
                (
                    g.generation,
                    g.complete_on.clone(),
                    g.usable,
                    g.recovery_line,
                    why,
                )
            })
            .collect()
    }

    #[test]
    fn the_recovery_line_is_the_newest_complete_generation_every_rank_has() {
        use TierKind::*;
        let images = [
            // Generation 3: in flight, rank 1 has not committed it.
            image(Local, 0, 3, true),
            // Generation 2: complete, rank 1's only copy is damaged.
            image(Local, 0, 2, true),
            image(Local, 1, 2, false),
            // Generation 1: complete, rank 1's local copy damaged but its partner one whole.
            image(Local, 0, 1, true),
            image(Local, 1, 1, false),
            image(Partner, 1, 1, true),
            // Another job.
            (
                Found {
                    job: "other".into(),
                    ..image(Local, 7, 9, true).0
                },
                true,
            ),
        ];
        let records = [
            record(Local, 0, 2, 2),
            record(Local, 1, 2, 2),
            record(Local, 0, 1, 2),
            record(Partner, 1, 1, 2),
        ];
        let table = job_generations("sim", &images, &records);
        assert_eq!((table.ranks, table.recovery_line), (2, Some(1)));
        let why = |s: &str| Some(s.to_string());
        assert_eq!(
            summary(&table),
            [
                (3, vec![], false, false, why("not complete on any tier")),
                (
                    2,
                    vec![Local],
                    false,
                    false,
                    why("rank 1 has no valid copy")
                ),
                (1, vec![Local, Partner], true, true, None),
            ]
        );
        let rank1 = &table.generations[2].ranks[1];
        let tiers: Vec<(TierKind, bool)> = rank1.copies.iter().map(|c| (c.tier, c.valid)).collect();
        assert_eq!(tiers, [(Local, false), (Partner, true)]);
    }

    #[test]
    fn ranks_without_any_copy_count() {
        use TierKind::*;
        // The record says 3 ranks; rank 2's images are gone everywhere.
        let images = [image(Global, 0, 4, true), image(Global, 1, 4, true)];
        let table = job_generations("sim", &images, &[record(Global, 0, 4, 3)]);
        assert_eq!((table.ranks, table.recovery_line), (3, None));
        assert_eq!(table.generations[0].ranks[2].copies, []);
        let why = table.generations[0].unusable_because();
        assert_eq!(why.as_deref(), Some("rank 2 has no valid copy"));
        let empty = job_generations("nothing", &images, &[]);
        assert_eq!((empty.ranks, empty.generations.len()), (0, 0));
    }
}
