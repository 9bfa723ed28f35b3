//! Checking an image against its CHECKSUMS file (the `b3sum` format: `b3sum -c` agrees).

use super::compress::{self, FindPagesError, StoredPages, UnpackError};
use super::format::{CHECKSUMS_FILE, MANIFEST_FILE, PAGES_FILE};
use super::reader::{ReadError, io_or_missing};
use std::os::fd::OwnedFd;
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
    /// Both page files, or neither.
    #[error(transparent)]
    PageFile(#[from] FindPagesError),
    /// A compressed page file that does not decompress to the manifest's size.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
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
            VerifyError::PageFile(FindPagesError::Neither { .. }) => "incomplete",
            VerifyError::PageFile(FindPagesError::Both { .. }) => "inconsistent",
            VerifyError::PageFile(FindPagesError::Io { .. }) => "unreadable",
            VerifyError::Unpack(e) => e.verdict(),
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

/// Checks the file at `path` against its CHECKSUMS entry.
fn check_file(path: PathBuf, expected: String) -> Result<(), VerifyError> {
    let (hash, _) = hash_file(&path)?;
    compare(path, expected, hash)
}

fn compare(path: PathBuf, expected: String, hash: blake3::Hash) -> Result<(), VerifyError> {
    let found = hash.to_hex().to_string();
    if found != expected {
        return Err(VerifyError::Mismatch {
            path,
            expected,
            found,
        });
    }
    Ok(())
}

/// The contents of an image's page file (`pages.bin`, or `pages.bin.zst` whose
/// decompressed bytes are `pages.bin`) still to be checked against CHECKSUMS.
#[derive(Debug)]
pub struct PagesToCheck {
    stored: StoredPages,
    /// The blake3 CHECKSUMS lists for `pages.bin`.
    expected: String,
    /// The bytes of pages: the manifest's `pages_bytes`, or what a compressed file's header
    /// records when the manifest could not be read.
    size: u64,
    /// The uid whose key authenticated the image.
    pub signer: u32,
}

impl PagesToCheck {
    pub fn verify(self) -> Result<(), VerifyError> {
        let hash = match &self.stored {
            StoredPages::Raw(path) => hash_file(path)?.0,
            StoredPages::Zstd(path) => compress::unpack(path, self.size, &mut |_| Ok(()))?,
        };
        compare(self.stored.path().to_path_buf(), self.expected, hash)
    }

    /// Whether the pages are stored compressed: a restore decompresses them first.
    pub fn is_compressed(&self) -> bool {
        matches!(self.stored, StoredPages::Zstd(_))
    }

    /// The bytes of pages.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Decompresses compressed pages into a sealed memory file (`name` shows in
    /// `/proc/PID/fd`), verifying them on the way as `verify` does: one pass over the
    /// file. Raw pages are verified and no memory file is made (`None`).
    pub fn unpack(self, name: &str) -> Result<Option<OwnedFd>, VerifyError> {
        let StoredPages::Zstd(path) = &self.stored else {
            return self.verify().map(|()| None);
        };
        let (memory, hash) = compress::unpack_to_memory(path, self.size, name)?;
        compare(path.clone(), self.expected, hash)?;
        Ok(Some(memory))
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
        if file == PAGES_FILE {
            pages = Some(pages_to_check(dir, pages_bytes, expected, signer)?);
            continue;
        }
        check_file(dir.join(&file), expected)?;
    }
    // Listed, as checked above.
    pages.ok_or(VerifyError::NotListed {
        path: checksums_path,
        file: PAGES_FILE,
    })
}

/// The page file of the image at `dir`, its size checked against `pages_bytes` (when the
/// manifest could be read): a raw file's own size, a compressed file's recorded one.
fn pages_to_check(
    dir: &Path,
    pages_bytes: Option<u64>,
    expected: String,
    signer: u32,
) -> Result<PagesToCheck, VerifyError> {
    let stored = StoredPages::find(dir)?;
    let size = match &stored {
        StoredPages::Raw(path) => {
            let size = std::fs::metadata(path)
                .map_err(|e| io_or_missing(path, e))?
                .len();
            if let Some(want) = pages_bytes
                && want != size
            {
                return Err(VerifyError::Size {
                    path: path.clone(),
                    expected: want,
                    found: size,
                });
            }
            size
        }
        StoredPages::Zstd(path) => match pages_bytes {
            Some(want) => {
                compress::check_header(path, want)?;
                want
            }
            None => compress::recorded_size(path)?,
        },
    };
    Ok(PagesToCheck {
        stored,
        expected,
        size,
        signer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::auth::{AUTH_FILE, ImageKey};
    use crate::image::format::PAGES_ZSTD_FILE;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    /// This test process's image key, in a private directory of its own.
    fn key() -> ImageKey {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
        crate::image::auth::use_key_file(Some(dir.path().join("image.key")));
        ImageKey::own().unwrap()
    }

    #[allow(clippy::cast_possible_truncation)] // test data wraps on purpose
    fn pages(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i / 4096) as u8 ^ seed).collect()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        let mut e = compress::encoder(Vec::new(), 1, Some(data.len() as u64)).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A sealed image in `root` whose pages (`pages`, listed as pages.bin) are stored as
    /// `stored` under `name`.
    fn image(root: &Path, pages: &[u8], name: &str, stored: &[u8]) -> PathBuf {
        let dir = root.join("ckpt-000001");
        std::fs::create_dir(&dir).unwrap();
        let manifest = b"{\"format\": 4}";
        std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
        std::fs::write(dir.join(name), stored).unwrap();
        let sums = format!(
            "{}  {MANIFEST_FILE}\n{}  {PAGES_FILE}\n",
            blake3::hash(manifest).to_hex(),
            blake3::hash(pages).to_hex()
        );
        std::fs::write(dir.join(CHECKSUMS_FILE), &sums).unwrap();
        std::fs::write(dir.join(AUTH_FILE), key().seal(sums.as_bytes())).unwrap();
        dir
    }

    fn compressed_image(root: &Path, pages: &[u8]) -> PathBuf {
        image(root, pages, PAGES_ZSTD_FILE, &zstd(pages))
    }

    #[test]
    fn a_compressed_image_verifies_and_unpacks_in_one_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(5 << 20, 1);
        let dir = compressed_image(tmp.path(), &data);
        let size = Some(data.len() as u64);
        verify_dir(&dir, size).unwrap();
        let check = check_dir(&dir, size).unwrap();
        assert!(check.is_compressed());
        let memory = check.unpack("test").unwrap().expect("a memory file");
        let mut back = vec![0u8; data.len()];
        std::fs::File::from(memory)
            .read_exact_at(&mut back, 0)
            .unwrap();
        assert!(back == data, "the unpacked pages differ");
        // A raw image has nothing to unpack.
        let raw = tempfile::tempdir().unwrap();
        let dir = image(raw.path(), &data, PAGES_FILE, &data);
        let check = check_dir(&dir, size).unwrap();
        assert!(!check.is_compressed());
        assert!(check.unpack("test").unwrap().is_none());
    }

    #[test]
    fn compressed_pages_of_other_contents_are_a_checksum_mismatch() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(1 << 20, 1);
        let dir = image(
            tmp.path(),
            &data,
            PAGES_ZSTD_FILE,
            &zstd(&pages(1 << 20, 2)),
        );
        let e = verify_dir(&dir, Some(data.len() as u64)).unwrap_err();
        assert!(matches!(e, VerifyError::Mismatch { .. }), "{e}");
        assert_eq!(e.verdict(), "checksum mismatch");
        assert!(e.to_string().contains(PAGES_ZSTD_FILE), "{e}");
        let check = check_dir(&dir, Some(data.len() as u64)).unwrap();
        let e = check.unpack("test").unwrap_err();
        assert!(matches!(e, VerifyError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn a_damaged_or_truncated_stream_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(9 << 20, 3);
        let dir = compressed_image(tmp.path(), &data);
        let path = dir.join(PAGES_ZSTD_FILE);
        let packed = std::fs::read(&path).unwrap();
        let size = Some(data.len() as u64);

        std::fs::write(&path, &packed[..packed.len() * 2 / 3]).unwrap();
        let e = verify_dir(&dir, size).unwrap_err();
        assert!(
            matches!(e, VerifyError::Unpack(UnpackError::Truncated { .. })),
            "{e}"
        );
        assert_eq!(e.verdict(), "incomplete");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");

        let mut damaged = packed.clone();
        for b in &mut damaged[packed.len() / 2..packed.len() / 2 + 64] {
            *b ^= 0xa5;
        }
        std::fs::write(&path, &damaged).unwrap();
        let e = verify_dir(&dir, size).unwrap_err();
        assert!(
            matches!(
                e,
                VerifyError::Unpack(UnpackError::Damaged { .. }) | VerifyError::Mismatch { .. }
            ),
            "{e}"
        );
        assert!(e.to_string().contains(PAGES_ZSTD_FILE), "{e}");

        // Another size than the manifest's is refused before anything is decompressed.
        std::fs::write(&path, &packed).unwrap();
        let e = check_dir(&dir, Some(data.len() as u64 - 4096)).unwrap_err();
        assert!(
            matches!(e, VerifyError::Unpack(UnpackError::WrongSize { .. })),
            "{e}"
        );
        assert_eq!(e.verdict(), "damaged");
    }

    #[test]
    fn an_image_with_both_page_files_or_neither_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(1 << 20, 4);
        let dir = compressed_image(tmp.path(), &data);
        let size = Some(data.len() as u64);
        std::fs::write(dir.join(PAGES_FILE), &data).unwrap();
        let e = verify_dir(&dir, size).unwrap_err();
        assert!(
            matches!(e, VerifyError::PageFile(FindPagesError::Both { .. })),
            "{e}"
        );
        assert_eq!(e.verdict(), "inconsistent");
        std::fs::remove_file(dir.join(PAGES_FILE)).unwrap();
        std::fs::remove_file(dir.join(PAGES_ZSTD_FILE)).unwrap();
        let e = verify_dir(&dir, size).unwrap_err();
        assert!(
            matches!(e, VerifyError::PageFile(FindPagesError::Neither { .. })),
            "{e}"
        );
        assert_eq!(e.verdict(), "incomplete");
    }
}
