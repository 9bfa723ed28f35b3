//! Checking an image against its CHECKSUMS file (the `b3sum` format: `b3sum -c` agrees).

use super::format::{CHECKSUMS_FILE, MANIFEST_FILE, PAGES_FILE};
use super::reader::{ReadError, io_or_missing};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{path}: checksum mismatch (expected {expected}, found {found}); the file is corrupt")]
    Mismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path}: malformed line {line}; expected '<blake3 hex>  <file>'")]
    BadChecksums { path: PathBuf, line: usize },
    #[error("{path} does not list {file}")]
    NotListed { path: PathBuf, file: &'static str },
    #[error(
        "{image} is incremental and needs {parent}, which is missing; restore an older full \
         image or bring the parent back"
    )]
    MissingParent { image: PathBuf, parent: PathBuf },
    #[error("{image} needs {parent}, but that image was replaced (its manifest differs)")]
    ParentChanged { image: PathBuf, parent: PathBuf },
    #[error("{image} needs {parent}, which is damaged")]
    BrokenParent {
        image: PathBuf,
        parent: PathBuf,
        #[source]
        source: Box<VerifyError>,
    },
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    #[error(
        "{path} is writable by others (owner uid {owner}, mode {mode:o}): someone could swap \
         the image's files while it is read. Make it writable by its owner only (chmod go-w)"
    )]
    Exposed {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error(
        "{image} was authenticated by uid {image_signer}'s key, its parent {parent} by uid {parent_signer}'s: refused"
    )]
    MixedSigners {
        image: PathBuf,
        parent: PathBuf,
        image_signer: u32,
        parent_signer: u32,
    },
    #[error("{path} is {found} bytes but the manifest says {expected}: the image is truncated")]
    Size {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
}

impl VerifyError {
    /// One word for `restore --auto` and `list`: what is wrong with the candidate.
    pub fn verdict(&self) -> &'static str {
        match self {
            VerifyError::Read(ReadError::Missing { .. })
            | VerifyError::Size { .. }
            | VerifyError::MissingParent { .. }
            | VerifyError::ParentChanged { .. } => "incomplete",
            VerifyError::BrokenParent { source, .. } => source.verdict(),
            VerifyError::Read(ReadError::Invalid { .. }) => "inconsistent",
            VerifyError::Read(_)
            | VerifyError::BadChecksums { .. }
            | VerifyError::NotListed { .. } => "unreadable",
            VerifyError::Mismatch { .. } => "checksum mismatch",
            VerifyError::Auth(_)
            | VerifyError::MixedSigners { .. }
            | VerifyError::Exposed { .. } => "unauthenticated",
        }
    }
}

/// Parses CHECKSUMS into (file, hex) pairs.
/// The blake3 of the image's manifest, as its CHECKSUMS records it: what a child image
/// pins its parent by.
pub fn manifest_hash(dir: &Path) -> Result<String, VerifyError> {
    listed_hash(dir, MANIFEST_FILE)
}

/// The hash CHECKSUMS records for `file` of the image at `dir`.
pub fn listed_hash(dir: &Path, file: &'static str) -> Result<String, VerifyError> {
    read_checksums(dir)?
        .into_iter()
        .find(|(f, _)| f == file)
        .map(|(_, h)| h)
        .ok_or(VerifyError::NotListed {
            path: dir.join(CHECKSUMS_FILE),
            file,
        })
}

fn read_checksums(dir: &Path) -> Result<Vec<(String, String)>, VerifyError> {
    let path = dir.join(CHECKSUMS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_or_missing(&path, e))?;
    parse_checksums(&path, &text)
}

fn parse_checksums(path: &Path, text: &str) -> Result<Vec<(String, String)>, VerifyError> {
    let path = path.to_path_buf();
    let mut sums = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || VerifyError::BadChecksums {
            path: path.clone(),
            line: i + 1,
        };
        let (hex, file) = line.split_once("  ").ok_or_else(bad)?;
        // Only plain names of this directory: CHECKSUMS must not point elsewhere.
        let plain_name = !file.is_empty() && !file.contains('/') && !file.starts_with('.');
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !plain_name {
            return Err(bad());
        }
        sums.push((file.to_string(), hex.to_ascii_lowercase()));
    }
    Ok(sums)
}

/// Hashes a file on all cores, reading it through a memory map (blake3 falls back to plain
/// reads for small files).
fn hash_file(path: &Path) -> Result<(blake3::Hash, u64), ReadError> {
    let size = std::fs::metadata(path)
        .map_err(|e| io_or_missing(path, e))?
        .len();
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_mmap_rayon(path)
        .map_err(|e| io_or_missing(path, e))?;
    Ok((hasher.finalize(), size))
}

/// Verifies every file of the image at `dir`; `pages_bytes` (from the manifest, if it could
/// be read) turns a short pages.bin into a clear "truncated" error.
pub fn verify_dir(dir: &Path, pages_bytes: Option<u64>) -> Result<(), VerifyError> {
    check_dir(dir, pages_bytes)?.verify()
}

/// The contents of a `pages.bin` still to be checked against CHECKSUMS.
#[derive(Debug)]
pub struct PagesToCheck {
    path: PathBuf,
    expected: String,
    /// The uid whose key authenticated the image.
    pub signer: u32,
}

impl PagesToCheck {
    pub fn verify(self) -> Result<(), VerifyError> {
        let (hash, _) = hash_file(&self.path)?;
        let found = hash.to_hex().to_string();
        if found != self.expected {
            return Err(VerifyError::Mismatch {
                path: self.path,
                expected: self.expected,
                found,
            });
        }
        Ok(())
    }
}

/// The image directory and the one holding it must be writable by none but their owner,
/// root or the image's writer: checked once, the image must stay what was checked.
fn check_private(dir: &Path, signer: u32) -> Result<(), VerifyError> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    for path in std::iter::once(dir).chain(dir.parent()) {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let trusted_owner = [0, me, signer].contains(&meta.uid());
        if !trusted_owner || meta.mode() & 0o022 != 0 {
            return Err(VerifyError::Exposed {
                path: path.to_path_buf(),
                owner: meta.uid(),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

/// Verifies every file of the image at `dir` but the contents of `pages.bin` (its size is
/// checked): those are returned to be verified later, e.g. while a restore reads them.
pub fn check_dir(dir: &Path, pages_bytes: Option<u64>) -> Result<PagesToCheck, VerifyError> {
    let checksums_path = dir.join(CHECKSUMS_FILE);
    let text =
        std::fs::read_to_string(&checksums_path).map_err(|e| io_or_missing(&checksums_path, e))?;
    let sums = parse_checksums(&checksums_path, &text)?;
    // Who wrote it before what it says: an image nobody trusted wrote is not looked into.
    let signer = super::auth::check(dir, text.as_bytes())?;
    check_private(dir, signer)?;
    for file in [MANIFEST_FILE, PAGES_FILE] {
        if !sums.iter().any(|(f, _)| f == file) {
            return Err(VerifyError::NotListed {
                path: checksums_path.clone(),
                file,
            });
        }
    }
    let mut pages = None;
    for (file, expected) in sums {
        let path = dir.join(&file);
        if file == PAGES_FILE {
            let size = std::fs::metadata(&path)
                .map_err(|e| io_or_missing(&path, e))?
                .len();
            if let Some(want) = pages_bytes
                && want != size
            {
                return Err(VerifyError::Size {
                    path,
                    expected: want,
                    found: size,
                });
            }
            pages = Some(PagesToCheck {
                path,
                expected,
                signer,
            });
            continue;
        }
        PagesToCheck {
            path,
            expected,
            signer,
        }
        .verify()?;
    }
    Ok(pages.expect("CHECKSUMS lists pages.bin"))
}
