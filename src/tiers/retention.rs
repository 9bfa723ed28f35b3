//! Which images a tier keeps: the `keep` newest of each rank directory, every image one of
//! those needs (an incremental image's parents, [`store::dependencies`]), and whatever the
//! caller protects (the image just committed, which is the newest valid one; images a copy
//! is still reading). Everything else is deleted, oldest first. Since the newest committed
//! image is always kept, an image is only ever deleted once a newer one is committed on
//! the same tier.
//!
//! A coordinated job's images are generations ([`super::generation`]), and one is only
//! worth keeping for recovery once it is complete (every rank committed it, a record says
//! so): [`plan_generations`] counts complete generations instead of images, so an image
//! only goes once a newer complete generation is there, and images of generations that
//! never completed go once a newer one has.

use super::generation;
use super::placement::PlaceError;
use crate::image::store;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One committed image of a rank directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub path: PathBuf,
    /// Images it cannot be restored without.
    pub deps: Vec<PathBuf>,
}

/// The images to delete, oldest first. Pure.
pub fn plan(images: &[Stored], keep: u32, protected: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut by_age: Vec<&Stored> = images.iter().collect();
    by_age.sort_by_key(|s| std::cmp::Reverse(s.seq));
    let kept = by_age
        .iter()
        .take(keep_count(keep))
        .map(|s| s.path.as_path());
    deletable(&by_age, kept, protected)
}

fn keep_count(keep: u32) -> usize {
    usize::try_from(keep.max(1)).unwrap_or(usize::MAX)
}

/// The images of `by_age` (newest first) that are neither `kept`, nor `protected`, nor a
/// parent of one of those (or of a parent in turn); oldest first.
fn deletable<'a>(
    by_age: &[&'a Stored],
    kept: impl Iterator<Item = &'a Path>,
    protected: &'a BTreeSet<PathBuf>,
) -> Vec<PathBuf> {
    let mut kept: BTreeSet<&Path> = kept.collect();
    kept.extend(protected.iter().map(PathBuf::as_path));
    let mut todo: Vec<&Path> = kept.iter().copied().collect();
    while let Some(path) = todo.pop() {
        let deps = by_age
            .iter()
            .filter(|s| s.path == path)
            .flat_map(|s| &s.deps);
        for dep in deps {
            if kept.insert(dep) {
                todo.push(dep);
            }
        }
    }
    by_age
        .iter()
        .rev()
        .filter(|s| !kept.contains(s.path.as_path()))
        .map(|s| s.path.clone())
        .collect()
}

/// What retention by generation deletes in one rank directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GenerationPlan {
    /// Images, oldest first.
    pub images: Vec<PathBuf>,
    /// Generations whose record goes because their image here is gone (or going): a record
    /// speaks for the image beside it.
    pub records: Vec<u64>,
}

/// Retention by generation, for the images of one rank directory and the generations
/// with a record there (`complete`). Kept: the `keep` newest complete generations that
/// have their image here, every image newer than the newest of those (a generation in
/// flight, not complete yet) unless it is known to have `failed`, the newest image (the
/// parent of this rank's next increment), `protected`, and the parents of all these.
/// Deleted: the rest (old complete generations, generations older than the newest
/// complete one that never completed, failed ones nothing needs). Without a complete
/// generation only failed ones can go: which generation recovery needs is not known yet.
/// Pure.
pub fn plan_generations(
    images: &[Stored],
    complete: &BTreeSet<u64>,
    failed: &BTreeSet<u64>,
    keep: u32,
    protected: &BTreeSet<PathBuf>,
) -> GenerationPlan {
    let mut by_age: Vec<&Stored> = images.iter().collect();
    by_age.sort_by_key(|s| std::cmp::Reverse(s.seq));
    let complete_here: Vec<&Stored> = by_age
        .iter()
        .copied()
        .filter(|s| complete.contains(&s.seq))
        .collect();
    let newest_complete = complete_here.first().map_or(0, |s| s.seq);
    // A generation that failed can never be complete: it is kept only as a parent.
    let in_flight = by_age
        .iter()
        .take_while(|s| s.seq > newest_complete)
        .filter(|s| !failed.contains(&s.seq));
    let kept = complete_here.iter().take(keep_count(keep));
    let kept = in_flight
        .chain(kept)
        .chain(by_age.first())
        .map(|s| s.path.as_path());
    let doomed = deletable(&by_age, kept, protected);
    let remaining: BTreeSet<u64> = images
        .iter()
        .filter(|s| !doomed.contains(&s.path))
        .map(|s| s.seq)
        .collect();
    GenerationPlan {
        images: doomed,
        records: complete
            .iter()
            .copied()
            .filter(|g| !remaining.contains(g))
            .collect(),
    }
}

/// Applies [`plan`] to `rank_dir` and removes partial images older than `committed` (left
/// by a writer that died: the one writer of this directory has moved on). Returns what
/// was deleted.
pub fn prune(
    rank_dir: &Path,
    keep: u32,
    committed: u64,
    protected: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, PlaceError> {
    let images = stored_images(rank_dir)?;
    let doomed = plan(&images, keep, protected);
    for path in &doomed {
        remove_image(path)?;
    }
    for stale in stale_partials(rank_dir, committed) {
        remove_dir(&stale)?;
    }
    Ok(doomed)
}

/// Applies [`plan_generations`] to `rank_dir` (its records say which generations are
/// complete; `failed`: the generations this rank knows failed), then removes partial
/// images older than its newest image (the one writer of this directory commits in order,
/// so a partial behind it was left by a writer that died). Returns the images deleted.
pub fn prune_generations(
    rank_dir: &Path,
    keep: u32,
    failed: &BTreeSet<u64>,
    protected: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, PlaceError> {
    let images = stored_images(rank_dir)?;
    let complete = generation::complete(rank_dir);
    let doomed = plan_generations(&images, &complete, failed, keep, protected);
    for path in &doomed.images {
        remove_image(path)?;
    }
    for g in doomed.records {
        let path = generation::record_path(rank_dir, g);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(PlaceError::Remove { path, source: e });
            }
            _ => {}
        }
    }
    let newest = images.iter().map(|s| s.seq).max().unwrap_or(0);
    for stale in stale_partials(rank_dir, newest) {
        remove_dir(&stale)?;
    }
    Ok(doomed.images)
}

fn stored_images(rank_dir: &Path) -> Result<Vec<Stored>, PlaceError> {
    Ok(store::list_images(rank_dir)?
        .into_iter()
        .map(|(seq, path)| Stored {
            seq,
            deps: store::dependencies(&path),
            path,
        })
        .collect())
}

/// Renamed to its partial name first, so a deletion cut short leaves nothing that looks
/// like a committed image.
pub(super) fn remove_image(path: &Path) -> Result<(), PlaceError> {
    let name = path.file_name().and_then(|n| n.to_str());
    let Some(seq) = name.and_then(store::parse_image_dir_name) else {
        return remove_dir(path);
    };
    let hidden = path.with_file_name(store::partial_dir_name(seq));
    let _ = std::fs::remove_dir_all(&hidden);
    std::fs::rename(path, &hidden).map_err(|source| PlaceError::Remove {
        path: path.to_path_buf(),
        source,
    })?;
    remove_dir(&hidden)
}

pub(super) fn remove_dir(path: &Path) -> Result<(), PlaceError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(PlaceError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `.ckpt-SEQ.partial` directories with SEQ < `below`.
fn stale_partials(rank_dir: &Path, below: u64) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(rank_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let seq = name.to_str().and_then(store::parse_partial_name);
            seq.is_some_and(|s| s < below)
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, deps: &[u64]) -> Stored {
        Stored {
            seq,
            path: path(seq),
            deps: deps.iter().map(|&d| path(d)).collect(),
        }
    }

    fn path(seq: u64) -> PathBuf {
        PathBuf::from(format!("/r/{}", store::image_dir_name(seq)))
    }

    fn seqs(paths: Vec<PathBuf>) -> Vec<u64> {
        paths
            .iter()
            .map(|p| store::parse_image_dir_name(p.file_name().unwrap().to_str().unwrap()))
            .map(Option::unwrap)
            .collect()
    }

    fn protect(seqs: &[u64]) -> BTreeSet<PathBuf> {
        seqs.iter().map(|&s| path(s)).collect()
    }

    #[test]
    fn keeps_the_newest() {
        let images: Vec<Stored> = [3, 1, 4, 2, 5].iter().map(|&s| stored(s, &[])).collect();
        assert_eq!(seqs(plan(&images, 2, &BTreeSet::new())), [1, 2, 3]);
        assert_eq!(seqs(plan(&images, 5, &BTreeSet::new())), [] as [u64; 0]);
        assert_eq!(seqs(plan(&images, 0, &BTreeSet::new())), [1, 2, 3, 4]);
        assert!(plan(&[], 1, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn protected_images_stay() {
        let images: Vec<Stored> = (1..=5).map(|s| stored(s, &[])).collect();
        assert_eq!(seqs(plan(&images, 1, &protect(&[2]))), [1, 3, 4]);
    }

    #[test]
    fn parents_of_kept_images_stay() {
        // 1 <- 2 <- 3 is a chain, 4 is full, 5 <- 6 another chain.
        let images = [
            stored(1, &[]),
            stored(2, &[1]),
            stored(3, &[2]),
            stored(4, &[]),
            stored(5, &[]),
            stored(6, &[5]),
        ];
        assert_eq!(seqs(plan(&images, 1, &BTreeSet::new())), [1, 2, 3, 4]);
        assert_eq!(seqs(plan(&images, 1, &protect(&[3]))), [4]);
        // A parent that is not on this tier is not invented.
        let orphan = [stored(7, &[6])];
        assert!(plan(&orphan, 1, &BTreeSet::new()).is_empty());
    }

    /// (what, images as (seq, parents), complete generations, keep, protected, images
    /// deleted, records deleted)
    type GenerationCase = (
        &'static str,
        &'static [(u64, &'static [u64])],
        &'static [u64],
        u32,
        &'static [u64],
        &'static [u64],
        &'static [u64],
    );

    #[test]
    fn generations_plan() {
        let cases: &[GenerationCase] = &[
            (
                "nothing complete: nothing deleted",
                &[(1, &[]), (2, &[]), (3, &[])],
                &[],
                1,
                &[],
                &[],
                &[],
            ),
            (
                "keep counts complete generations, not images",
                &[(1, &[]), (2, &[]), (3, &[]), (4, &[])],
                &[1, 3],
                1,
                &[],
                &[1, 2],
                &[1],
            ),
            (
                "images newer than the newest complete one are in flight",
                &[(1, &[]), (2, &[]), (3, &[]), (4, &[])],
                &[2],
                1,
                &[],
                &[1],
                &[],
            ),
            (
                "keep 2: the two newest complete, incomplete ones between go",
                &[(1, &[]), (2, &[]), (3, &[]), (4, &[]), (5, &[]), (6, &[])],
                &[1, 2, 4, 5],
                2,
                &[],
                &[1, 2, 3],
                &[1, 2],
            ),
            (
                "keep 0 is keep 1",
                &[(1, &[]), (2, &[])],
                &[1, 2],
                0,
                &[],
                &[1],
                &[1],
            ),
            (
                "parents of kept and in-flight images stay",
                &[(1, &[]), (2, &[1]), (3, &[]), (4, &[]), (5, &[2])],
                &[1, 3, 4],
                1,
                &[],
                &[3],
                &[3],
            ),
            (
                "protected images stay",
                &[(1, &[]), (2, &[]), (3, &[])],
                &[3],
                1,
                &[1],
                &[2],
                &[],
            ),
            (
                "records without their image go, not the generation count",
                &[(4, &[]), (5, &[])],
                &[2, 3, 5],
                1,
                &[],
                &[4],
                &[2, 3],
            ),
            (
                "no images: nothing but orphaned records",
                &[],
                &[7],
                1,
                &[],
                &[],
                &[7],
            ),
        ];
        for &(what, images, complete, keep, protected, deleted, records) in cases {
            let images: Vec<Stored> = images.iter().map(|&(s, d)| stored(s, d)).collect();
            let complete: BTreeSet<u64> = complete.iter().copied().collect();
            let got = plan_generations(
                &images,
                &complete,
                &BTreeSet::new(),
                keep,
                &protect(protected),
            );
            assert_eq!(seqs(got.images), deleted, "{what}: images");
            assert_eq!(got.records, records, "{what}: records");
        }
    }

    #[test]
    fn the_newest_complete_generation_outlives_incomplete_newer_ones() {
        // Generations complete one after another while newer ones are in flight: whatever
        // order records and images arrive in, the newest complete one is never deleted.
        let mut complete = BTreeSet::new();
        let mut images = Vec::new();
        for g in 1..=6u64 {
            images.push(stored(g, &[]));
            if g % 2 == 0 {
                complete.insert(g - 1);
            }
            let plan = plan_generations(&images, &complete, &BTreeSet::new(), 1, &BTreeSet::new());
            if let Some(newest) = complete.last() {
                assert!(
                    !seqs(plan.images.clone()).contains(newest),
                    "generation {g}"
                );
            }
            images.retain(|s| !plan.images.contains(&s.path));
        }
        assert_eq!(images.iter().map(|s| s.seq).collect::<Vec<_>>(), [5, 6]);
    }

    /// A rank whose generations keep failing (another rank hung) goes on writing an image
    /// every interval: failed ones go once no image kept needs them, so its storage stays
    /// bounded by its chain of increments (`full_every`), not by how long the failures last.
    #[test]
    fn failed_generations_go_once_nothing_needs_them() {
        let set = |s: &[u64]| s.iter().copied().collect::<BTreeSet<u64>>();
        let none: BTreeSet<PathBuf> = BTreeSet::new();
        // 1 complete; 2..=7 failed; 5 is a full image, 6 and 7 increments on it.
        let images = [
            stored(1, &[]),
            stored(2, &[1]),
            stored(3, &[1, 2]),
            stored(4, &[1, 2, 3]),
            stored(5, &[]),
            stored(6, &[5]),
            stored(7, &[5, 6]),
        ];
        let failed = set(&[2, 3, 4, 5, 6, 7]);
        let plan = plan_generations(&images, &set(&[1]), &failed, 1, &none);
        assert_eq!(
            seqs(plan.images),
            [2, 3, 4],
            "the newest (7) and its parents stay"
        );
        // Unknown outcome (no failure heard of, e.g. after a restart): all kept, as before.
        let plan = plan_generations(&images, &set(&[1]), &set(&[]), 1, &none);
        assert!(plan.images.is_empty());
        // No complete generation at all: failed ones still go, the rest is kept.
        let plan = plan_generations(&images[1..], &set(&[]), &set(&[2, 3, 4]), 1, &none);
        assert_eq!(seqs(plan.images), [2, 3, 4]);
        // A generation in flight after the failures keeps its failed parents.
        let plan = plan_generations(&images[..4], &set(&[1]), &set(&[2, 3]), 1, &none);
        assert!(plan.images.is_empty(), "{:?}", plan.images);
        // A complete generation newer than the failed ones: they go, with older complete ones.
        let mut more = images.to_vec();
        more.push(stored(8, &[5, 6, 7]));
        let plan = plan_generations(&more, &set(&[1, 8]), &failed, 1, &none);
        assert_eq!(seqs(plan.images), [1, 2, 3, 4]);
        assert_eq!(plan.records, [1]);
    }

    #[test]
    fn prune_generations_deletes_images_records_and_stale_partials() {
        let dir = rank_dir_with(&["ckpt-000004"]);
        for g in [1, 3] {
            mark_complete(dir.path(), g);
        }
        let gone = prune_generations(dir.path(), 1, &BTreeSet::new(), &BTreeSet::new()).unwrap();
        assert_eq!(
            gone,
            [1, 2].map(|s| dir.path().join(store::image_dir_name(s)))
        );
        assert_eq!(
            names_in(dir.path()),
            [
                ".ckpt-000009.partial",
                "ckpt-000003",
                "ckpt-000004",
                "generation-000003.json"
            ]
        );
    }

    /// Writes the record of generation `g` (as every rank would, once all committed it).
    fn mark_complete(rank_dir: &Path, g: u64) {
        let record = generation::GenerationRecord {
            generation: g,
            ranks: 2,
            tier: crate::image::format::TierKind::Global,
            committed_unix_ms: 0,
            skew_ms: 0.0,
        };
        generation::write(rank_dir, &record).unwrap();
    }

    #[test]
    fn a_placer_with_generations_keeps_complete_ones() {
        use super::super::layout::Destination;
        use super::super::placement::Placer;
        let tmp = tempfile::tempdir().unwrap();
        let (src, dest) = (tmp.path().join("local"), tmp.path().join("global"));
        let image = |seq: u64| {
            let dir = src.join(store::image_dir_name(seq));
            std::fs::create_dir_all(&dir).unwrap();
            let data = seq.to_le_bytes();
            std::fs::write(dir.join("pages.bin"), data).unwrap();
            let sum = format!("{}  pages.bin\n", blake3::hash(&data).to_hex());
            std::fs::write(dir.join("CHECKSUMS"), sum).unwrap();
            dir
        };
        let mut placer = Placer::new(Destination::Dir(dest.clone()), 1).with_generations(true);
        let mut place = |seq: u64| placer.place(&image(seq)).unwrap().pruned.unwrap();
        assert!(place(1).is_empty());
        mark_complete(&dest, 1);
        // 2 and 3 are in flight: 1 is the only complete generation and stays.
        assert!(place(2).is_empty());
        assert!(place(3).is_empty());
        mark_complete(&dest, 3);
        // 2 never completed and is older than 3, which did.
        assert_eq!(
            place(4),
            [dest.join("ckpt-000001"), dest.join("ckpt-000002")]
        );
        assert_eq!(generation::complete(&dest), BTreeSet::from([3]));
    }

    #[test]
    fn prune_deletes_old_images_and_stale_partials() {
        let dir = rank_dir_with(&[]);
        let gone = prune(dir.path(), 1, 3, &BTreeSet::new()).unwrap();
        assert_eq!(
            gone,
            [1, 2].map(|s| dir.path().join(store::image_dir_name(s)))
        );
        assert_eq!(
            names_in(dir.path()),
            [".ckpt-000009.partial", "ckpt-000003"]
        );
    }

    /// A rank directory with images 1 to 3, partial images 2 and 9, and `more`.
    fn rank_dir_with(more: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "ckpt-000001",
            "ckpt-000002",
            "ckpt-000003",
            ".ckpt-000002.partial",
            ".ckpt-000009.partial",
        ];
        for name in names.iter().chain(more) {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        dir
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}
