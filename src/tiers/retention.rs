//! Which images a tier keeps: the `keep` newest of each rank directory, every image one of
//! those needs (an incremental image's parents, [`store::dependencies`]), and whatever the
//! caller protects (the image just committed, which is the newest valid one; images a copy
//! is still reading). Everything else is deleted, oldest first. Since the newest committed
//! image is always kept, an image is only ever deleted once a newer one is committed on
//! the same tier.

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
    let keep = usize::try_from(keep.max(1)).unwrap_or(usize::MAX);
    let mut kept: BTreeSet<&Path> = by_age.iter().take(keep).map(|s| s.path.as_path()).collect();
    kept.extend(protected.iter().map(PathBuf::as_path));
    // Parents of kept images are kept, and their parents in turn.
    let mut todo: Vec<&Path> = kept.iter().copied().collect();
    while let Some(path) = todo.pop() {
        let deps = images
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

/// Applies [`plan`] to `rank_dir` and removes partial images older than `committed` (left
/// by a writer that died: the one writer of this directory has moved on). Returns what
/// was deleted.
pub fn prune(
    rank_dir: &Path,
    keep: u32,
    committed: u64,
    protected: &BTreeSet<PathBuf>,
) -> Result<Vec<PathBuf>, PlaceError> {
    let images: Vec<Stored> = store::list_images(rank_dir)?
        .into_iter()
        .map(|(seq, path)| Stored {
            seq,
            deps: store::dependencies(&path),
            path,
        })
        .collect();
    let doomed = plan(&images, keep, protected);
    for path in &doomed {
        remove_image(path)?;
    }
    for stale in stale_partials(rank_dir, committed) {
        remove_dir(&stale)?;
    }
    Ok(doomed)
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

    #[test]
    fn prune_deletes_old_images_and_stale_partials() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "ckpt-000001",
            "ckpt-000002",
            "ckpt-000003",
            ".ckpt-000002.partial",
            ".ckpt-000009.partial",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let gone = prune(dir.path(), 1, 3, &BTreeSet::new()).unwrap();
        assert_eq!(
            gone,
            [
                dir.path().join("ckpt-000001"),
                dir.path().join("ckpt-000002")
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".ckpt-000009.partial", "ckpt-000003"]);
    }
}
