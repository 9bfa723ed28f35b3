//! Streaming image writer: pages go to disk as they are read, hashed on the way, and the
//! image only appears under its final name once everything is durable.

use super::format::{CHECKSUMS_FILE, MANIFEST_FILE, Manifest, PAGES_FILE};
use super::store::{ImageDirError, image_dir_name, partial_dir_name};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create image directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {path} already exists; refusing to overwrite a committed image")]
    Exists { path: PathBuf },
    #[error(transparent)]
    Dir(#[from] ImageDirError),
}

/// Page data is written through a buffer this big: large sequential writes.
const WRITE_BUFFER: usize = 8 << 20;

/// An image being written into `.ckpt-SEQ.partial/`. Dropped without `commit`, it removes
/// the partial directory: a failed checkpoint leaves nothing behind.
pub struct ImageWriter {
    partial: PathBuf,
    final_path: PathBuf,
    pages: BufWriter<File>,
    hasher: blake3::Hasher,
    written: u64,
    committed: bool,
}

/// What a committed image is.
#[derive(Debug, Clone)]
pub struct CommittedImage {
    pub path: PathBuf,
    pub bytes: u64,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn create_private(path: &Path) -> Result<File, WriteError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err(path))
}

/// Creates `dir` and its missing parents with mode 0700: images hold the process's secrets.
pub fn create_private_dir(dir: &Path) -> Result<(), WriteError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| WriteError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

impl ImageWriter {
    /// Starts image `seq` in `rank_dir` (`<root>/<job>/rank<R>`).
    pub fn create(rank_dir: &Path, seq: u64) -> Result<Self, WriteError> {
        create_private_dir(rank_dir)?;
        let final_path = rank_dir.join(image_dir_name(seq));
        if final_path.exists() {
            return Err(WriteError::Exists { path: final_path });
        }
        let partial = rank_dir.join(partial_dir_name(seq));
        if partial.exists() {
            // Left by a supervisor that died mid-write: never valid, safe to replace.
            let _ = fs::remove_dir_all(&partial);
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&partial)
            .map_err(|source| WriteError::CreateDir {
                path: partial.clone(),
                source,
            })?;
        let pages_path = partial.join(PAGES_FILE);
        let pages = match create_private(&pages_path) {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        Ok(ImageWriter {
            partial,
            final_path,
            pages: BufWriter::with_capacity(WRITE_BUFFER, pages),
            hasher: blake3::Hasher::new(),
            written: 0,
            committed: false,
        })
    }

    pub fn partial_dir(&self) -> &Path {
        &self.partial
    }

    /// Appends page data; returns its offset in `pages.bin`.
    pub fn append_pages(&mut self, data: &[u8]) -> Result<u64, WriteError> {
        let offset = self.written;
        self.hasher.update(data);
        let path = self.partial.join(PAGES_FILE);
        self.pages.write_all(data).map_err(write_err(&path))?;
        self.written += data.len() as u64;
        Ok(offset)
    }

    pub fn pages_written(&self) -> u64 {
        self.written
    }

    /// Writes manifest and CHECKSUMS, makes everything durable, then renames the directory
    /// to its final name: a `ckpt-*` directory is complete by construction.
    pub fn commit(mut self, manifest: &Manifest) -> Result<CommittedImage, WriteError> {
        let pages_path = self.partial.join(PAGES_FILE);
        self.pages.flush().map_err(write_err(&pages_path))?;
        self.pages
            .get_ref()
            .sync_all()
            .map_err(write_err(&pages_path))?;
        let pages_hash = self.hasher.finalize();

        let manifest_path = self.partial.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
        write_durable(&manifest_path, &json)?;
        let checksums = format!(
            "{}  {MANIFEST_FILE}\n{}  {PAGES_FILE}\n",
            blake3::hash(&json).to_hex(),
            pages_hash.to_hex()
        );
        write_durable(&self.partial.join(CHECKSUMS_FILE), checksums.as_bytes())?;
        sync_dir(&self.partial)?;

        fs::rename(&self.partial, &self.final_path).map_err(write_err(&self.final_path))?;
        self.committed = true;
        if let Some(parent) = self.final_path.parent() {
            sync_dir(parent)?;
        }
        Ok(CommittedImage {
            path: self.final_path.clone(),
            bytes: self.written + json.len() as u64 + checksums.len() as u64,
        })
    }
}

fn write_durable(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    let mut f = create_private(path)?;
    f.write_all(data).map_err(write_err(path))?;
    f.sync_all().map_err(write_err(path))
}

pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err(dir))
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}
