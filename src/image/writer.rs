//! Streaming image writer: pages go to disk as they are read, hashed on the way, and the
//! image only appears under its final name once everything is durable.

use super::format::{CHECKSUMS_FILE, MANIFEST_FILE, Manifest, PAGE_HASHES_FILE, PAGES_FILE};
use super::store::{ImageDirError, image_dir_name, partial_dir_name};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

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

/// Buffers in flight between the dumping thread and the writer thread: memory stays
/// bounded (a few batches) whatever the image's size.
const BUFFERS_IN_FLIGHT: usize = 3;

/// An image being written into `.ckpt-SEQ.partial/`. Dropped without `commit`, it removes
/// the partial directory: a failed checkpoint leaves nothing behind.
pub struct ImageWriter {
    partial: PathBuf,
    final_path: PathBuf,
    pipe: Option<PagePipe>,
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
            pipe: Some(PagePipe::start(pages, pages_path)),
            written: 0,
            committed: false,
        })
    }

    /// A buffer of `len` bytes to fill and `submit` (recycled once written).
    pub fn take_buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self
            .pipe
            .as_ref()
            .and_then(|p| p.free.try_recv().ok())
            .unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Appends page data (hashed and written by the writer thread); returns its offset in
    /// `pages.bin`.
    pub fn submit(&mut self, data: Vec<u8>) -> Result<u64, WriteError> {
        let offset = self.written;
        self.written += data.len() as u64;
        let pipe = self.pipe.as_ref().expect("pipe lives until commit");
        if pipe.full.send(data).is_err() {
            // The writer thread stopped on an error; `finish` reports it.
            return self.pipe.take().expect("pipe").finish().map(|_| offset);
        }
        Ok(offset)
    }

    pub fn pages_written(&self) -> u64 {
        self.written
    }

    /// Writes manifest and CHECKSUMS, makes everything durable, then renames the directory
    /// to its final name: a `ckpt-*` directory is complete by construction.
    /// `page_hashes` (may be empty) becomes `pagehashes.bin`.
    pub fn commit(
        mut self,
        manifest: &Manifest,
        page_hashes: &[u8],
    ) -> Result<CommittedImage, WriteError> {
        let pages_hash = self
            .pipe
            .take()
            .expect("pipe lives until commit")
            .finish()?;

        let manifest_path = self.partial.join(MANIFEST_FILE);
        // Compact: incremental images have many small runs, and `jq` prints it for people.
        let json = serde_json::to_vec(manifest).expect("manifest serialises");
        write_durable(&manifest_path, &json)?;
        let mut checksums = format!(
            "{}  {MANIFEST_FILE}\n{}  {PAGES_FILE}\n",
            blake3::hash(&json).to_hex(),
            pages_hash.to_hex()
        );
        if !page_hashes.is_empty() {
            write_durable(&self.partial.join(PAGE_HASHES_FILE), page_hashes)?;
            let hash = blake3::hash(page_hashes).to_hex();
            checksums.push_str(&format!("{hash}  {PAGE_HASHES_FILE}\n"));
        }
        write_durable(&self.partial.join(CHECKSUMS_FILE), checksums.as_bytes())?;
        sync_dir(&self.partial)?;

        fs::rename(&self.partial, &self.final_path).map_err(write_err(&self.final_path))?;
        self.committed = true;
        if let Some(parent) = self.final_path.parent() {
            sync_dir(parent)?;
        }
        Ok(CommittedImage {
            path: self.final_path.clone(),
            bytes: self.written
                + json.len() as u64
                + checksums.len() as u64
                + page_hashes.len() as u64,
        })
    }
}

/// The writer thread: hashes and writes page batches in order while the dumping thread
/// reads the next ones, and starts their writeback at once, so that the final fsync finds
/// little left to do.
struct PagePipe {
    full: SyncSender<Vec<u8>>,
    free: Receiver<Vec<u8>>,
    thread: JoinHandle<Result<blake3::Hash, WriteError>>,
}

impl PagePipe {
    fn start(file: File, path: PathBuf) -> PagePipe {
        let (full, full_rx) = sync_channel::<Vec<u8>>(BUFFERS_IN_FLIGHT - 1);
        let (free_tx, free) = sync_channel::<Vec<u8>>(BUFFERS_IN_FLIGHT);
        let thread = std::thread::spawn(move || {
            let mut file = file;
            let mut hasher = blake3::Hasher::new();
            let mut at = 0u64;
            for buf in full_rx {
                hasher.update_rayon(&buf);
                file.write_all(&buf).map_err(write_err(&path))?;
                start_writeback(&file, at, buf.len() as u64);
                at += buf.len() as u64;
                let _ = free_tx.try_send(buf);
            }
            file.sync_all().map_err(write_err(&path))?;
            Ok(hasher.finalize())
        });
        PagePipe { full, free, thread }
    }

    /// Waits for every batch to be written and durable; the hash of all of them.
    fn finish(self) -> Result<blake3::Hash, WriteError> {
        drop(self.full);
        self.thread.join().expect("page writer thread panicked")
    }
}

/// Asks the kernel to start writing `[offset, offset+len)` back now (no waiting).
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range only takes integers and an fd that `file` keeps open; it
    // cannot touch this process's memory. Failure only loses the head start.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
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
