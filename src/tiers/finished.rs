//! A job whose program ended on its own (it exited, rather than being stopped after a
//! checkpoint or killed) is marked finished in its rank directories, next to its images:
//! `run --resume` then starts the program afresh instead of resuming a computation that is
//! complete. Images taken after the mark (a new run of the job) are resumed as usual.

use super::layout::RankPaths;
use crate::image::format::TierKind;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The marker's file name in a rank directory (recovery ignores anything but images).
pub const MARKER: &str = "finished.json";

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Finished {
    /// The newest image of the job when it finished (0: none).
    pub after_seq: u64,
    pub exit_code: i32,
}

/// The rank directories a mark goes to (and is read from): this node's, and the global one.
fn dirs(paths: &RankPaths) -> impl Iterator<Item = &Path> {
    [TierKind::Local, TierKind::Global]
        .into_iter()
        .filter_map(|t| paths.readable(t))
}

/// Marks the job finished in every rank directory there is; the ones that could not be
/// written, as messages.
pub fn mark(paths: &RankPaths, finished: Finished) -> Vec<String> {
    let text = serde_json::to_vec(&finished).unwrap_or_default();
    dirs(paths)
        .filter(|dir| dir.is_dir())
        .filter_map(|dir| {
            let tmp = dir.join(format!(".{MARKER}.tmp"));
            std::fs::write(&tmp, &text)
                .and_then(|()| std::fs::rename(&tmp, dir.join(MARKER)))
                .err()
                .map(|e| format!("cannot mark {} finished: {e}", dir.display()))
        })
        .collect()
}

/// The newest mark of the job, if any.
pub fn read(paths: &RankPaths) -> Option<Finished> {
    dirs(paths)
        .filter_map(|dir| std::fs::read(dir.join(MARKER)).ok())
        .filter_map(|bytes| serde_json::from_slice::<Finished>(&bytes).ok())
        .max_by_key(|f| f.after_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back() {
        let f = Finished {
            after_seq: 7,
            exit_code: 0,
        };
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Finished>(&text).unwrap(), f);
        assert!(serde_json::from_str::<Finished>("{\"after_seq\": 1}").is_err());
    }
}
