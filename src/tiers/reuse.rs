//! A new run under a job name that already has images: `mlckpt run` numbers its images
//! after the earlier run's (one counter per job and rank), so retention counts the earlier
//! images as old ones of this job and deletes them as the new run's images arrive. That is
//! right when the new run continues the old one, and loses the old run's images when it is
//! an unrelated program that happens to have the same file name (the default job name).

use crate::image::store;
use std::fmt;
use std::path::{Path, PathBuf};

/// Committed images an earlier run left in this rank's local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierImages {
    pub job: String,
    pub rank: u32,
    pub dir: PathBuf,
    pub count: usize,
    pub newest_seq: u64,
    /// `storage.keep`: how many images retention leaves on the tier.
    pub keep: u32,
}

/// The images already in `rank_dir` (the local tier), if any. An unreadable directory
/// counts as none: the run's first checkpoint reports it properly.
pub fn earlier_images(rank_dir: &Path, job: &str, rank: u32, keep: u32) -> Option<EarlierImages> {
    let images = store::list_images(rank_dir).ok()?;
    let newest_seq = images.iter().map(|&(seq, _)| seq).max()?;
    Some(EarlierImages {
        job: job.to_string(),
        rank,
        dir: rank_dir.to_path_buf(),
        count: images.len(),
        newest_seq,
        keep,
    })
}

/// One line, for `mlckpt: warning: `.
impl fmt::Display for EarlierImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let images = if self.count == 1 { "image" } else { "images" };
        write!(
            f,
            "job {}, rank {} already has {} {images} on the local tier from an earlier run \
             (newest seq {}, in {}); this run continues their numbering and retention \
             (keep = {}) deletes them as its own images arrive; to keep them, give this run \
             another name with --job NAME",
            self.job,
            self.rank,
            self.count,
            self.newest_seq,
            self.dir.display(),
            self.keep
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_committed_images_only() {
        let tmp = tempfile::tempdir().unwrap();
        let rank = tmp.path().join("sim/rank0");
        assert_eq!(earlier_images(&rank, "sim", 0, 2), None);
        std::fs::create_dir_all(rank.join(".ckpt-000009.partial")).unwrap();
        assert_eq!(earlier_images(&rank, "sim", 0, 2), None);
        for seq in ["000003", "000007"] {
            std::fs::create_dir_all(rank.join(format!("ckpt-{seq}"))).unwrap();
        }
        let found = earlier_images(&rank, "sim", 0, 2).unwrap();
        assert_eq!((found.count, found.newest_seq), (2, 7));
        let line = found.to_string();
        assert!(
            line.starts_with("job sim, rank 0 already has 2 images"),
            "{line}"
        );
        assert!(
            line.contains("newest seq 7") && line.contains("--job NAME"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
