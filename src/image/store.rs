//! Naming of image directories inside a rank directory (`<root>/<job>/rank<R>/`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot list images in {path}")]
pub struct ImageDirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Width of the zero-padded sequence number, so names sort in order.
pub const SEQ_WIDTH: usize = 6;

pub fn image_dir_name(seq: u64) -> String {
    format!("ckpt-{seq:0SEQ_WIDTH$}")
}

pub fn partial_dir_name(seq: u64) -> String {
    format!(".ckpt-{seq:0SEQ_WIDTH$}.partial")
}

/// The sequence number of a committed image directory name, or None for anything else.
pub fn parse_image_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("ckpt-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence number of a `.ckpt-SEQ.partial` directory name, or None for anything else.
pub fn parse_partial_name(name: &str) -> Option<u64> {
    parse_image_dir_name(name.strip_prefix('.')?.strip_suffix(".partial")?)
}

pub fn rank_dir(root: &Path, job: &str, rank: u32) -> PathBuf {
    root.join(job).join(format!("rank{rank}"))
}

/// Committed images in a rank directory, oldest first. A missing directory has none.
pub fn list_images(rank_dir: &Path) -> Result<Vec<(u64, PathBuf)>, ImageDirError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(rank_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(source) => {
            return Err(ImageDirError {
                path: rank_dir.to_path_buf(),
                source,
            });
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse_image_dir_name) {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The highest sequence number used in any of `dirs`, committed or partial.
pub fn highest_seq(dirs: &[PathBuf]) -> u64 {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            parse_image_dir_name(name).or_else(|| parse_partial_name(name))
        })
        .max()
        .unwrap_or(0)
}

/// The images `image_dir` takes pages from (incremental images), which retention must
/// keep as long as it keeps `image_dir`. Unreadable manifests have none to offer.
pub fn dependencies(image_dir: &Path) -> Vec<PathBuf> {
    match super::reader::Image::open(image_dir) {
        Ok(image) => image
            .manifest
            .parents
            .iter()
            .map(|p| image.parent_dir(p.seq))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(image_dir_name(7), "ckpt-000007");
        assert_eq!(parse_image_dir_name("ckpt-000007"), Some(7));
        assert_eq!(parse_image_dir_name(".ckpt-000007.partial"), None);
        assert_eq!(parse_partial_name(&partial_dir_name(9)), Some(9));
        assert_eq!(parse_image_dir_name("ckpt-"), None);
        assert_eq!(parse_image_dir_name("ckpt-12x"), None);
        assert!(image_dir_name(99) < image_dir_name(100));
    }

    #[test]
    fn lists_only_committed_images_and_counts_partials_for_seq() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ckpt-000002", "ckpt-000001", ".ckpt-000005.partial", "junk"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let seqs: Vec<u64> = list_images(dir.path())
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(highest_seq(&[dir.path().to_path_buf()]), 5);
        assert!(list_images(&dir.path().join("missing")).unwrap().is_empty());
    }
}
