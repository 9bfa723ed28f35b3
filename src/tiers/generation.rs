//! Generation records (placeholder interface; the full module replaces it).

use crate::image::format::TierKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u64,
    pub ranks: u32,
    pub tier: TierKind,
    pub committed_unix_ms: u64,
    pub skew_ms: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("generation record {}", path.display())]
pub struct GenerationError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub fn record_path(rank_dir: &Path, generation: u64) -> PathBuf {
    rank_dir.join(format!("generation-{generation:06}.json"))
}

pub fn write(rank_dir: &Path, record: &GenerationRecord) -> Result<PathBuf, GenerationError> {
    let path = record_path(rank_dir, record.generation);
    let err = |source| GenerationError {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(rank_dir).map_err(err)?;
    let text = serde_json::to_vec(record).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(&path, text).map_err(err)?;
    Ok(path)
}

pub fn complete(rank_dir: &Path) -> BTreeSet<u64> {
    let Ok(entries) = std::fs::read_dir(rank_dir) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("generation-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect()
}
