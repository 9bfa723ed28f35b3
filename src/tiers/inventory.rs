//! Every committed image under the configured storage, for `mlckpt list` and
//! `mlckpt verify --all`. The tier is where an image is stored now, read from its path
//! (the manifest's `tier` says where it was first written, which is always local):
//!
//! ```text
//! <local>[/node<K>]/<job>/rank<R>/ckpt-*           local (node K in test mode)
//! <local>[/node<K>]/<job>/partner/rank<R>/ckpt-*   partner copy held by that node
//! <global>/<job>/rank<R>/ckpt-*                    global
//! ```

use super::config::Config;
use super::layout::PARTNER_DIR;
use crate::image::format::TierKind;
use crate::image::store;
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

/// All images, by job, rank, seq and tier.
pub fn scan(config: &Config) -> Vec<Found> {
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
    found.sort_by(|a, b| {
        (&a.job, a.rank, a.seq, a.tier, a.node).cmp(&(&b.job, b.rank, b.seq, b.tier, b.node))
    });
    found
}

fn scan_node(root: &Path, node: Option<u32>, found: &mut Vec<Found>) {
    for job in subdirs(root) {
        scan_ranks(&job, &job, TierKind::Local, node, found);
        scan_ranks(&job, &job.join(PARTNER_DIR), TierKind::Partner, node, found);
    }
}

/// The images in `<dir>/rank<R>/`, of the job named by `job_dir`.
fn scan_ranks(
    job_dir: &Path,
    dir: &Path,
    tier: TierKind,
    node: Option<u32>,
    found: &mut Vec<Found>,
) {
    let Some(job) = job_dir.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    for rank_dir in subdirs(dir) {
        let Some(rank) = numbered(&rank_dir, "rank") else {
            continue;
        };
        let images = store::list_images(&rank_dir).unwrap_or_default();
        found.extend(images.into_iter().map(|(seq, path)| Found {
            tier,
            node,
            job: job.to_string(),
            rank,
            seq,
            path,
        }));
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
    }
}
