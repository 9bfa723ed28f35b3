//! Generation records: the mark that a checkpoint generation of a coordinated job is
//! complete on a tier. Generation G of a job is image `ckpt-<G>` of every rank; once every
//! rank has committed it on a tier, each rank writes `generation-<G>.json` next to its
//! image there (`<rank dir>/generation-000007.json`, padded as image names are). Only a
//! generation with a record is ever chosen for recovery: an image without one may be from
//! a generation some rank never finished.
//!
//! Records are read back from storage other people may write to, so a reader trusts no
//! record it has not checked: a size cap, a regular file (no FIFO to block on, no symlink
//! followed), the generation in the name and in the content agree, and the values are in
//! range. Anything else is treated as no record.

use crate::image::format::TierKind;
use crate::image::store::SEQ_WIDTH;
use crate::image::validate::MAX_RANK;
use crate::image::writer::{self, WriteError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Larger files are not records (one is about 150 bytes).
pub const MAX_RECORD_BYTES: u64 = 4096;

const PREFIX: &str = "generation-";
const SUFFIX: &str = ".json";

/// Generation `generation` of a job is complete on `tier`: every one of `ranks` ranks
/// committed its image of it there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u64,
    pub ranks: u32,
    pub tier: TierKind,
    /// When the coordinator learnt that the last rank had committed it.
    pub committed_unix_ms: u64,
    /// Between the first and the last rank's freeze.
    pub skew_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("cannot write the generation record {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the generation record {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file, so not a generation record", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{} is larger than {MAX_RECORD_BYTES} bytes, so not a generation record",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("{} is not a generation record", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the generation record {} is invalid: {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error("cannot delete the generation record {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    CreateDir(#[from] WriteError),
}

/// `generation-000007.json`.
pub fn record_file_name(generation: u64) -> String {
    format!("{PREFIX}{generation:0SEQ_WIDTH$}{SUFFIX}")
}

/// The generation of a record's file name, written exactly as [`record_file_name`] writes
/// it; None for anything else.
pub fn parse_record_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let generation = digits.parse().ok()?;
    (record_file_name(generation) == name).then_some(generation)
}

pub fn record_path(rank_dir: &Path, generation: u64) -> PathBuf {
    rank_dir.join(record_file_name(generation))
}

/// Why `record`, found under the name of `generation`, cannot be one mlckpt wrote.
fn check(record: &GenerationRecord, generation: u64) -> Result<(), String> {
    if record.generation != generation {
        return Err(format!(
            "it says generation {} but is named for generation {generation}",
            record.generation
        ));
    }
    if record.generation == 0 {
        return Err("generation 0 does not exist (images are numbered from 1)".into());
    }
    if record.ranks == 0 || record.ranks > MAX_RANK {
        return Err(format!("ranks {} is not in 1..={MAX_RANK}", record.ranks));
    }
    if !record.skew_ms.is_finite() || record.skew_ms < 0.0 {
        return Err(format!(
            "skew_ms {} is not a finite duration",
            record.skew_ms
        ));
    }
    Ok(())
}

/// Writes `record` into `rank_dir` (created if missing) so that it is there whole or not
/// at all, durably: a temporary file, fsynced, renamed, and the directory fsynced.
pub fn write(rank_dir: &Path, record: &GenerationRecord) -> Result<PathBuf, GenerationError> {
    let path = record_path(rank_dir, record.generation);
    check(record, record.generation).map_err(|why| GenerationError::Invalid {
        path: path.clone(),
        why,
    })?;
    writer::create_private_dir(rank_dir)?;
    let tmp = rank_dir.join(format!(".{}.tmp", record_file_name(record.generation)));
    let text = serde_json::to_vec_pretty(record).map_err(|e| GenerationError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let written = write_file(&tmp, &text).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(GenerationError::Write { path, source });
    }
    writer::sync_dir(rank_dir)?;
    Ok(path)
}

/// `data` into `path` (replaced if it is a file, refused if it is a symlink), fsynced.
fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// The record of `generation` in `rank_dir`: None if there is none, an error if the file
/// there is not a valid record.
pub fn read(rank_dir: &Path, generation: u64) -> Result<Option<GenerationRecord>, GenerationError> {
    let path = record_path(rank_dir, generation);
    let read_err = |source| GenerationError::Read {
        path: path.clone(),
        source,
    };
    let file = match open_record(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(GenerationError::NotAFile { path });
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(GenerationError::TooLarge { path });
    }
    let record: GenerationRecord =
        serde_json::from_slice(&bytes).map_err(|source| GenerationError::Parse {
            path: path.clone(),
            source,
        })?;
    check(&record, generation).map_err(|why| GenerationError::Invalid { path, why })?;
    Ok(Some(record))
}

/// Opens without following a symlink and without waiting on a FIFO's writer.
pub(crate) fn open_record(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            // O_NOFOLLOW on a symlink: ELOOP, which is no record rather than a read error.
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(io::ErrorKind::InvalidData, "a symbolic link")
            } else {
                e
            }
        })
}

/// Every file of `rank_dir` named as a record, valid or not, by generation. A missing
/// directory has none.
pub fn record_files(rank_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(rank_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((parse_record_name(e.file_name().to_str()?)?, e.path())))
        .collect();
    found.sort();
    found
}

/// The valid records of `rank_dir`, oldest first; invalid ones are left out.
pub fn valid_records(rank_dir: &Path) -> Vec<GenerationRecord> {
    record_files(rank_dir)
        .into_iter()
        .filter_map(|(generation, _)| read(rank_dir, generation).ok().flatten())
        .collect()
}

/// The generations with a valid record in `rank_dir`.
pub fn complete(rank_dir: &Path) -> BTreeSet<u64> {
    valid_records(rank_dir)
        .into_iter()
        .map(|r| r.generation)
        .collect()
}

/// Deletes the record of `generation` in `rank_dir`; none there is no error.
pub fn remove(rank_dir: &Path, generation: u64) -> Result<(), GenerationError> {
    remove_file(&record_path(rank_dir, generation))
}

/// Deletes every file of `rank_dir` named as a record, and temporary files a writer
/// left: what `forget` does once the images are gone (a new run numbers its generations
/// from 1 again, and must not find them complete already).
pub fn remove_all(rank_dir: &Path) -> Result<(), GenerationError> {
    for (generation, path) in record_files(rank_dir) {
        remove_file(&path)?;
        remove_file(&rank_dir.join(format!(".{}.tmp", record_file_name(generation))))?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), GenerationError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(GenerationError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64) -> GenerationRecord {
        GenerationRecord {
            generation,
            ranks: 4,
            tier: TierKind::Partner,
            committed_unix_ms: 1_700_000_000_123,
            skew_ms: 1.5,
        }
    }

    #[test]
    fn names_match_image_names() {
        assert_eq!(record_file_name(7), "generation-000007.json");
        assert_eq!(parse_record_name("generation-000007.json"), Some(7));
        assert_eq!(
            parse_record_name("generation-1234567.json"),
            Some(1_234_567)
        );
        for bad in [
            "generation-7.json",
            "generation-.json",
            "generation-00000x.json",
            "generation-000007.json.tmp",
            ".generation-000007.json.tmp",
            "ckpt-000007",
        ] {
            assert_eq!(parse_record_name(bad), None, "{bad}");
        }
        // Records are not images, for anything that lists images.
        assert_eq!(
            crate::image::store::parse_image_dir_name("generation-000007.json"),
            None
        );
    }

    #[test]
    fn written_records_read_back_and_count_as_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job/rank3");
        assert_eq!(read(&dir, 2).unwrap(), None);
        assert!(complete(&dir).is_empty());
        let path = write(&dir, &record(2)).unwrap();
        assert_eq!(path, dir.join("generation-000002.json"));
        write(&dir, &record(5)).unwrap();
        // Rewriting one is harmless.
        write(&dir, &record(5)).unwrap();
        assert_eq!(read(&dir, 2).unwrap(), Some(record(2)));
        assert_eq!(complete(&dir), BTreeSet::from([2, 5]));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
        assert!(crate::image::store::list_images(&dir).unwrap().is_empty());
        assert_eq!(
            crate::image::store::highest_seq(std::slice::from_ref(&dir)),
            0
        );
        remove(&dir, 2).unwrap();
        remove(&dir, 2).unwrap();
        assert_eq!(complete(&dir), BTreeSet::from([5]));
        remove_all(&dir).unwrap();
        assert!(complete(&dir).is_empty());
    }

    #[test]
    fn invalid_records_are_refused_on_write() {
        let tmp = tempfile::tempdir().unwrap();
        let mut bad = record(3);
        bad.skew_ms = f64::NAN;
        assert!(matches!(
            write(tmp.path(), &bad),
            Err(GenerationError::Invalid { .. })
        ));
        assert!(!record_path(tmp.path(), 3).exists());
    }

    #[test]
    fn hostile_files_are_no_records() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, &record(1)).unwrap();
        let put = |generation: u64, text: &str| {
            std::fs::write(record_path(dir, generation), text).unwrap();
        };
        // Record `generation` with one field changed.
        let json = |generation: u64, f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = serde_json::to_value(record(generation)).unwrap();
            f(&mut v);
            v.to_string()
        };
        put(2, &json(2, &|v| v["generation"] = 3.into()));
        put(3, &json(3, &|v| v["ranks"] = (MAX_RANK + 1).into()));
        put(4, &json(4, &|v| v["ranks"] = 0.into()));
        put(5, &json(5, &|v| v["skew_ms"] = (-1.0).into()));
        put(6, "{\"generation\": 6");
        put(7, &format!("{}{}", json(7, &|_| {}), " ".repeat(5000)));
        put(8, &json(8, &|v| v["tier"] = "nowhere".into()));
        put(0, &json(0, &|_| {}));
        nix::unistd::mkfifo(&record_path(dir, 9), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::os::unix::fs::symlink(record_path(dir, 1), record_path(dir, 10)).unwrap();
        std::fs::create_dir(record_path(dir, 11)).unwrap();
        std::fs::write(dir.join("generation-12.json"), json(12, &|_| {})).unwrap();
        // An unpadded name is not a record even with a valid one inside.
        write(dir, &record(14)).unwrap();
        std::fs::rename(record_path(dir, 14), dir.join("generation-14.json")).unwrap();
        assert_eq!(complete(dir), BTreeSet::from([1]));
        for generation in [0, 2, 3, 4, 5] {
            let read = read(dir, generation);
            assert!(
                matches!(read, Err(GenerationError::Invalid { .. })),
                "{generation}: {read:?}"
            );
        }
        assert!(matches!(read(dir, 8), Err(GenerationError::Parse { .. })));
        assert!(matches!(read(dir, 6), Err(GenerationError::Parse { .. })));
        assert!(matches!(
            read(dir, 7),
            Err(GenerationError::TooLarge { .. })
        ));
        assert!(matches!(
            read(dir, 9),
            Err(GenerationError::NotAFile { .. })
        ));
        assert!(matches!(read(dir, 10), Err(GenerationError::Read { .. })));
        let message = read(dir, 3).unwrap_err().to_string();
        assert!(
            message.contains("generation-000003.json") && message.contains("ranks"),
            "{message}"
        );
        // A symlink in place of the temporary file is not followed.
        let target = dir.join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(".generation-000013.json.tmp")).unwrap();
        assert!(matches!(
            write(dir, &record(13)),
            Err(GenerationError::Write { .. })
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
