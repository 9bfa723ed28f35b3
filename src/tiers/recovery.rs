//! Which image `restore --auto` uses: every committed image of the rank on its own local
//! storage, the partner copy and the global tier is a candidate. Candidates are verified
//! newest first and the first valid one wins; the same SEQ on several tiers is tried local,
//! then partner, then global (the nearest copy restores fastest). Verification stops at the
//! first valid image: older ones are never hashed.
//!
//! [`choose`] is pure (verification is passed in: `restore --auto` checks a candidate by
//! restoring it while its pages are hashed); [`look`] does the IO.

use super::layout::RankPaths;
use crate::image::format::TierKind;
use crate::image::store::{self, ImageDirError};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub seq: u64,
    pub tier: TierKind,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// `what` is one of "checksum mismatch", "incomplete", "unreadable"; `why` the details.
    Bad {
        what: &'static str,
        why: String,
    },
}

/// What [`choose`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The candidates verified, in order, with their verdicts; the last is the chosen one
    /// when there is one.
    pub checked: Vec<(Candidate, Verdict)>,
    pub chosen: Option<Candidate>,
    /// Older candidates left unverified because a newer one was valid.
    pub unchecked: usize,
}

/// Verifies `candidates` newest first (ties: local, partner, global) until one is valid.
pub fn choose(
    mut candidates: Vec<Candidate>,
    mut verify: impl FnMut(&Candidate) -> Verdict,
) -> Choice {
    candidates.sort_by(|a, b| b.seq.cmp(&a.seq).then(a.tier.cmp(&b.tier)));
    let mut checked = Vec::new();
    let mut rest = candidates.into_iter();
    for candidate in rest.by_ref() {
        let verdict = verify(&candidate);
        let ok = verdict == Verdict::Ok;
        checked.push((candidate.clone(), verdict));
        if ok {
            return Choice {
                checked,
                chosen: Some(candidate),
                unchecked: rest.len(),
            };
        }
    }
    Choice {
        checked,
        chosen: None,
        unchecked: 0,
    }
}

/// One tier's rank directory as found on this node.
#[derive(Debug)]
pub struct TierDir {
    pub tier: TierKind,
    pub dir: PathBuf,
    /// Committed images, oldest first (partial ones are never listed).
    pub images: Result<Vec<(u64, PathBuf)>, ImageDirError>,
}

/// Lists the rank directory of every tier this node can read.
pub fn look(paths: &RankPaths) -> Vec<TierDir> {
    TierKind::ALL
        .into_iter()
        .filter_map(|tier| {
            let dir = paths.readable(tier)?.to_path_buf();
            let images = store::list_images(&dir);
            Some(TierDir { tier, dir, images })
        })
        .collect()
}

/// Every image of `dirs` as a candidate.
pub fn candidates(dirs: &[TierDir]) -> Vec<Candidate> {
    dirs.iter()
        .filter_map(|d| Some((d.tier, d.images.as_ref().ok()?)))
        .flat_map(|(tier, images)| {
            images.iter().map(move |(seq, path)| Candidate {
                seq: *seq,
                tier,
                path: path.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use TierKind::{Global as G, Local as L, Partner as P};

    fn c(seq: u64, tier: TierKind) -> Candidate {
        Candidate {
            seq,
            tier,
            path: PathBuf::from(format!("/{tier}/{seq}")),
        }
    }

    fn bad(what: &'static str) -> Verdict {
        Verdict::Bad {
            what,
            why: String::new(),
        }
    }

    /// Verifies with a fixed table: candidates not in `bad` are ok.
    fn run(cands: Vec<Candidate>, bad_ones: &[(u64, TierKind)]) -> (Choice, Vec<(u64, TierKind)>) {
        let mut order = Vec::new();
        let choice = choose(cands, |c| {
            order.push((c.seq, c.tier));
            if bad_ones.contains(&(c.seq, c.tier)) {
                bad("checksum mismatch")
            } else {
                Verdict::Ok
            }
        });
        (choice, order)
    }

    #[test]
    fn newest_valid_wins_and_older_ones_are_not_verified() {
        let all = vec![c(3, G), c(5, P), c(4, L), c(1, L)];
        let (choice, order) = run(all, &[]);
        assert_eq!(choice.chosen, Some(c(5, P)));
        assert_eq!(order, [(5, P)]);
        assert_eq!(choice.unchecked, 3);
    }

    #[test]
    fn ties_prefer_local_then_partner_then_global() {
        let all = vec![c(7, G), c(7, P), c(7, L)];
        assert_eq!(run(all.clone(), &[]).0.chosen, Some(c(7, L)));
        let (choice, order) = run(all.clone(), &[(7, L)]);
        assert_eq!(choice.chosen, Some(c(7, P)));
        assert_eq!(order, [(7, L), (7, P)]);
        let (choice, _) = run(all, &[(7, L), (7, P)]);
        assert_eq!(choice.chosen, Some(c(7, G)));
    }

    #[test]
    fn damaged_candidates_fall_through_to_older_ones() {
        let all = vec![c(8, P), c(6, G), c(7, P), c(5, G)];
        let (choice, order) = run(all, &[(8, P), (7, P)]);
        assert_eq!(choice.chosen, Some(c(6, G)));
        assert_eq!(order, [(8, P), (7, P), (6, G)]);
        assert_eq!(choice.checked.len(), 3);
        assert_eq!(choice.checked[0].1, bad("checksum mismatch"));
        assert_eq!(choice.checked[2].1, Verdict::Ok);
        assert_eq!(choice.unchecked, 1);
    }

    #[test]
    fn nothing_valid_or_nothing_at_all() {
        let (choice, order) = run(vec![c(2, L), c(1, G)], &[(2, L), (1, G)]);
        assert_eq!(choice.chosen, None);
        assert_eq!(order.len(), 2);
        assert_eq!(run(Vec::new(), &[]).0.chosen, None);
    }

    #[test]
    fn look_lists_committed_images_only() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("l");
        for name in ["ckpt-000002", ".ckpt-000003.partial"] {
            std::fs::create_dir_all(local.join(name)).unwrap();
        }
        let paths = RankPaths {
            local: local.clone(),
            partner: Err(super::super::layout::NoPartner::OneNode),
            partner_here: tmp.path().join("p"),
            global: None,
        };
        let dirs = look(&paths);
        assert_eq!(dirs.len(), 2, "local and the partner copy, no global");
        assert_eq!(
            candidates(&dirs),
            [Candidate {
                seq: 2,
                tier: L,
                path: local.join("ckpt-000002")
            }]
        );
    }
}
