//! Opening an image: the manifest is parsed and its format checked before anything else.

use super::format::{
    CHECKSUMS_FILE, FORMAT_VERSION, MANIFEST_FILE, Manifest, OLDEST_READABLE_FORMAT, PAGES_FILE,
};
use std::path::{Path, PathBuf};

/// A manifest larger than this is not one mlckpt wrote (even 100k regions stay far below).
const MAX_MANIFEST_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path} is missing: the image is incomplete")]
    Missing { path: PathBuf },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes, more than any manifest mlckpt writes; the file is corrupt")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path} is not a valid mlckpt manifest (corrupt or truncated)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path} has image format {found}, this mlckpt reads formats \
         {OLDEST_READABLE_FORMAT} to {FORMAT_VERSION}; use the mlckpt version that wrote it"
    )]
    Version { path: PathBuf, found: u64 },
    #[error("{path} does not describe a consistent image")]
    Invalid {
        path: PathBuf,
        #[source]
        source: super::validate::InvalidManifest,
    },
}

/// A committed image directory.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The uid whose key authenticated the image (`auth`), once checked.
    pub signer: Option<u32>,
}

impl Image {
    pub fn open(dir: &Path) -> Result<Image, ReadError> {
        let path = dir.join(MANIFEST_FILE);
        let text = read_limited(&path)?;
        let manifest = parse_manifest(&path, &text)?;
        Ok(Image {
            dir: dir.to_path_buf(),
            manifest,
            signer: None,
        })
    }

    pub fn pages_path(&self) -> PathBuf {
        self.dir.join(PAGES_FILE)
    }

    pub fn checksums_path(&self) -> PathBuf {
        self.dir.join(CHECKSUMS_FILE)
    }
}

/// Parses and validates the manifest text read from `path` (named in errors): the format
/// first, then the fields, then their consistency. A restore must not build anything from a
/// manifest that fails any of these.
pub fn parse_manifest(path: &Path, text: &[u8]) -> Result<Manifest, ReadError> {
    check_format(path, text)?;
    let manifest = serde_json::from_slice(text).map_err(|source| ReadError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    super::validate::validate(&manifest).map_err(|source| ReadError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(manifest)
}

fn read_limited(path: &Path) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(|source| io_or_missing(path, source))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    std::fs::read(path).map_err(|source| io_or_missing(path, source))
}

pub(super) fn io_or_missing(path: &Path, source: std::io::Error) -> ReadError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ReadError::Missing {
            path: path.to_path_buf(),
        }
    } else {
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Checks `format` on its own first, so a newer image gets "unknown version" rather than a
/// confusing field error.
fn check_format(path: &Path, text: &[u8]) -> Result<(), ReadError> {
    #[derive(serde::Deserialize)]
    struct Head {
        format: u64,
    }
    let head: Head = serde_json::from_slice(text).map_err(|source| ReadError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if !(u64::from(OLDEST_READABLE_FORMAT)..=u64::from(FORMAT_VERSION)).contains(&head.format) {
        return Err(ReadError::Version {
            path: path.to_path_buf(),
            found: head.format,
        });
    }
    Ok(())
}
