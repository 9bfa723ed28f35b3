//! Streaming image writer: pages go to disk as they are read, hashed on the way, and the
//! image only appears under its final name once everything is durable.
//!
//! `pages.bin` is written with `O_DIRECT` where the file system allows it: the device reads
//! the batches straight from mlckpt's buffers, so no CPU time goes into copying them into
//! the page cache and no dirty-page writeback has to be waited for at the end; the image's
//! bytes are on the device when the last write returns.

use super::auth::{AUTH_FILE, ImageKey};
use super::format::{CHECKSUMS_FILE, MANIFEST_FILE, Manifest, PAGE_HASHES_FILE, PAGES_FILE};
use super::pagebuf::PageBuf;
use super::pages_hash::{PagesHash, RewriteError};
use super::store::{ImageDirError, image_dir_name, partial_dir_name};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
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
    /// The file system is full (ENOSPC) or the quota used up (EDQUOT).
    #[error(
        "no room for the image in {dir} ({cause}, writing {path}); the partial image is \
         removed and older images are kept. Free space there, lower `keep`, or point the \
         tier ([storage] in the config) at a file system with room for an image about the \
         size of the job's memory"
    )]
    NoSpace {
        dir: PathBuf,
        path: PathBuf,
        cause: nix::errno::Errno,
    },
    #[error("image {path} already exists; refusing to overwrite a committed image")]
    Exists { path: PathBuf },
    /// A call after the writer thread stopped on an error already reported.
    #[error("the image in {dir} cannot be written any more after an earlier error")]
    Stopped { dir: PathBuf },
    #[error("the page writer thread of the image in {dir} panicked")]
    WriterPanicked { dir: PathBuf },
    /// Page data that cannot go where it was asked to (a bug of the caller).
    #[error("page data cannot be written to the image in {dir}")]
    Pages {
        dir: PathBuf,
        #[source]
        source: RewriteError,
    },
    #[error("cannot serialise the manifest")]
    Manifest(#[source] serde_json::Error),
    #[error(transparent)]
    Dir(#[from] ImageDirError),
}

/// Buffers in flight between the dumping thread and the writer thread: memory stays
/// bounded (a few batches) whatever the image's size.
const BUFFERS_IN_FLIGHT: usize = 3;

/// Submissions smaller than this are gathered into one write of at least this size.
const STAGE_BYTES: usize = 4 << 20;

/// Data at least this big is hashed on all cores; below, one core beats handing the work
/// to the thread pool.
pub const PARALLEL_HASH_BYTES: usize = 1 << 20;

/// At most this much is kept in memory while held.
const HOLD_BYTES: usize = 16 << 20;

/// An image being written into `.ckpt-SEQ.partial/`. Dropped without `commit`, it removes
/// the partial directory: a failed checkpoint leaves nothing behind.
pub struct ImageWriter {
    /// `<root>/<job>/rank<R>`, named when the disk is full.
    rank_dir: PathBuf,
    partial: PathBuf,
    final_path: PathBuf,
    /// None once the writer thread stopped on an error (reported to the caller then).
    pipe: Option<PagePipe>,
    /// `pages.bin`'s hash, computed by the submitting thread while the writer thread writes
    /// the batches before.
    hash: PagesHash,
    /// Small submissions not yet handed to the writer thread.
    stage: PageBuf,
    /// While the target is frozen, submissions wait in `stage` (up to HOLD_BYTES) rather
    /// than for the writer thread, which may still be writing the batches before.
    holding: bool,
    /// Buffers of small submissions, for `take_buffer` to hand out again: their memory is
    /// already mapped, so a checkpoint's frozen phase fills them without page faults.
    spare: Vec<PageBuf>,
    /// Where in `pages.bin` the staged bytes go.
    staged_at: u64,
    /// Rewrites of pages handed to the writer thread already, kept while holding.
    held_rewrites: Vec<(Vec<Place>, PageBuf)>,
    written: u64,
    committed: bool,
}

/// What a committed image is.
#[derive(Debug, Clone)]
pub struct CommittedImage {
    pub path: PathBuf,
    pub bytes: u64,
    /// The manifest's blake3, as CHECKSUMS lists it: what a child image pins it by.
    pub manifest_blake3: String,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn create_private(path: &Path) -> Result<File, WriteError> {
    create_private_with(path, 0).map_err(write_err(path))
}

fn create_private_with(path: &Path, flags: i32) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(flags)
        .open(path)
}

/// `pages.bin`, with `O_DIRECT` where the file system supports it (not tmpfs, say).
fn create_pages_file(path: &Path) -> Result<File, WriteError> {
    match create_private_with(path, libc::O_DIRECT) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => create_private(path),
        other => other.map_err(write_err(path)),
    }
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

impl WriteError {
    /// A full disk said as such, naming the image's directory `rank_dir`: the cause and the
    /// fix, not only the file that happened to hit it.
    fn naming_full_disk(self, rank_dir: &Path) -> WriteError {
        let full = |source: &std::io::Error| match source.raw_os_error() {
            Some(errno @ (libc::ENOSPC | libc::EDQUOT)) => Some(nix::errno::Errno::from_raw(errno)),
            _ => None,
        };
        match self {
            WriteError::Write { path, source } | WriteError::CreateDir { path, source }
                if let Some(cause) = full(&source) =>
            {
                WriteError::NoSpace {
                    dir: rank_dir.to_path_buf(),
                    path,
                    cause,
                }
            }
            other => other,
        }
    }
}

impl ImageWriter {
    /// Starts image `seq` in `rank_dir` (`<root>/<job>/rank<R>`).
    pub fn create(rank_dir: &Path, seq: u64) -> Result<Self, WriteError> {
        Self::create_in(rank_dir, seq).map_err(|e| e.naming_full_disk(rank_dir))
    }

    fn create_in(rank_dir: &Path, seq: u64) -> Result<Self, WriteError> {
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
        let pages = match create_pages_file(&pages_path) {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                return Err(e);
            }
        };
        Ok(ImageWriter {
            rank_dir: rank_dir.to_path_buf(),
            partial,
            final_path,
            pipe: Some(PagePipe::start(pages, pages_path)),
            hash: PagesHash::default(),
            stage: PageBuf::mapped(2 * STAGE_BYTES),
            holding: false,
            spare: vec![PageBuf::mapped(STAGE_BYTES)],
            staged_at: 0,
            held_rewrites: Vec::new(),
            written: 0,
            committed: false,
        })
    }

    /// A buffer of `len` bytes (whole pages) to fill and `submit` (recycled once written).
    pub fn take_buffer(&mut self, len: usize) -> PageBuf {
        let mut buf = self
            .spare
            .pop()
            .or_else(|| self.pipe.as_ref().and_then(|p| p.free.try_recv().ok()))
            .unwrap_or_else(|| PageBuf::mapped(len));
        buf.resize(len);
        buf
    }

    /// Appends page data: hashed here, written by the writer thread. Returns its offset in
    /// `pages.bin`. Small pieces are gathered first: every direct write waits for the
    /// device, and a checkpoint's frozen phase must not wait once per small region.
    pub fn submit(&mut self, data: PageBuf) -> Result<u64, WriteError> {
        self.submit_data(data, false)
            .map_err(|e| e.naming_full_disk(&self.rank_dir))
    }

    /// As `submit`, for pages that may be written again in place later (`rewrite`): read
    /// while the target runs, they may change before the freeze. Their hashing costs about
    /// twice as much.
    pub fn submit_revisable(&mut self, data: PageBuf) -> Result<u64, WriteError> {
        self.submit_data(data, true)
            .map_err(|e| e.naming_full_disk(&self.rank_dir))
    }

    /// Writes `data` over pages submitted revisable before: `places` lists, in `data`'s
    /// order, where each piece goes in `pages.bin` and its length. The image keeps one copy
    /// of each page, its last.
    pub fn rewrite(&mut self, places: &[(u64, u64)], data: PageBuf) -> Result<(), WriteError> {
        self.rewrite_data(places, data)
            .map_err(|e| e.naming_full_disk(&self.rank_dir))
    }

    // Lengths and distances within one buffer in memory fit a usize.
    #[allow(clippy::cast_possible_truncation)]
    fn rewrite_data(&mut self, places: &[(u64, u64)], data: PageBuf) -> Result<(), WriteError> {
        let mut sent = Vec::new();
        let mut from = 0;
        for &(offset, len) in places {
            let piece = data
                .as_bytes()
                .get(from..from + len as usize)
                .ok_or_else(|| WriteError::Pages {
                    dir: self.rank_dir.clone(),
                    source: RewriteError::NotPages { len: data.len() },
                })?;
            self.hash
                .rewrite(offset, piece)
                .map_err(|source| WriteError::Pages {
                    dir: self.rank_dir.clone(),
                    source,
                })?;
            // Still staged here, or (in part) handed to the writer thread, which writes in
            // order: after the first copy.
            let end = offset + len;
            if offset < self.staged_at {
                let head = (end.min(self.staged_at) - offset) as usize;
                sent.push(Place {
                    at: offset,
                    from,
                    len: head,
                });
            }
            if end > self.staged_at {
                let at = offset.max(self.staged_at);
                let src = &piece[(at - offset) as usize..];
                let into = (at - self.staged_at) as usize;
                self.stage.as_bytes_mut()[into..into + src.len()].copy_from_slice(src);
            }
            from += len as usize;
        }
        if sent.is_empty() {
            self.keep_spare(data);
            return Ok(());
        }
        let held: usize = self.held_rewrites.iter().map(|(_, d)| d.len()).sum();
        if self.holding && held + data.len() <= HOLD_BYTES {
            self.held_rewrites.push((sent, data));
            Ok(())
        } else {
            self.send_places(sent, data)
        }
    }

    fn submit_data(&mut self, data: PageBuf, revisable: bool) -> Result<u64, WriteError> {
        let offset = self.written;
        self.hash
            .append(data.as_bytes(), revisable)
            .map_err(|source| WriteError::Pages {
                dir: self.rank_dir.clone(),
                source,
            })?;
        self.written += data.len() as u64;
        let held = self.holding && self.stage.len() + data.len() <= HOLD_BYTES;
        if held {
            self.stage.append(&data);
            self.keep_spare(data);
        } else if data.len() >= STAGE_BYTES {
            self.flush_stage()?;
            self.send(offset, data)?;
            self.staged_at = self.written;
        } else {
            self.stage.append(&data);
            self.keep_spare(data);
            if self.stage.len() >= STAGE_BYTES {
                self.flush_stage()?;
            }
        }
        Ok(offset)
    }

    /// Waits until the writer thread has written everything handed to it so far (what is
    /// staged stays staged): the device is quiet afterwards.
    pub fn drain(&mut self) {
        if let Some(pipe) = self.pipe.as_mut() {
            pipe.drain();
        }
    }

    /// Keeps submissions in memory from now on, see `holding`.
    pub fn hold(&mut self) {
        self.holding = true;
    }

    /// Ends `hold`: what was kept goes to the writer thread.
    pub fn let_go(&mut self) -> Result<(), WriteError> {
        self.holding = false;
        self.release_held()
            .map_err(|e| e.naming_full_disk(&self.rank_dir))
    }

    fn release_held(&mut self) -> Result<(), WriteError> {
        for (places, data) in std::mem::take(&mut self.held_rewrites) {
            self.send_places(places, data)?;
        }
        if self.stage.len() >= STAGE_BYTES {
            self.flush_stage()?;
        }
        Ok(())
    }

    fn keep_spare(&mut self, buf: PageBuf) {
        if self.spare.len() < BUFFERS_IN_FLIGHT {
            self.spare.push(buf);
        }
    }

    fn flush_stage(&mut self) -> Result<(), WriteError> {
        if self.stage.is_empty() {
            return Ok(());
        }
        let at = self.staged_at;
        self.staged_at += self.stage.len() as u64;
        let fresh = self.take_buffer(0);
        let full = std::mem::replace(&mut self.stage, fresh);
        self.send(at, full)
    }

    /// Hands `data` to the writer thread, to be written at `at`.
    fn send(&mut self, at: u64, data: PageBuf) -> Result<(), WriteError> {
        let place = Place {
            at,
            from: 0,
            len: data.len(),
        };
        self.send_places(vec![place], data)
    }

    /// Hands `data` to the writer thread, to be written in pieces at `places`.
    fn send_places(&mut self, places: Vec<Place>, data: PageBuf) -> Result<(), WriteError> {
        let pipe = self.working_pipe()?;
        pipe.sent += 1;
        if pipe.full.send((places, data)).is_err() {
            // The writer thread stopped on an error; `finish` reports it.
            return self.take_pipe()?.finish(&self.rank_dir).map(drop);
        }
        Ok(())
    }

    fn working_pipe(&mut self) -> Result<&mut PagePipe, WriteError> {
        let dir = &self.rank_dir;
        self.pipe
            .as_mut()
            .ok_or_else(|| WriteError::Stopped { dir: dir.clone() })
    }

    fn take_pipe(&mut self) -> Result<PagePipe, WriteError> {
        self.pipe.take().ok_or_else(|| WriteError::Stopped {
            dir: self.rank_dir.clone(),
        })
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
        key: &ImageKey,
    ) -> Result<CommittedImage, WriteError> {
        let rank_dir = self.rank_dir.clone();
        self.commit_files(manifest, page_hashes, key)
            .map_err(|e| e.naming_full_disk(&rank_dir))
    }

    fn commit_files(
        &mut self,
        manifest: &Manifest,
        page_hashes: &[u8],
        key: &ImageKey,
    ) -> Result<CommittedImage, WriteError> {
        self.flush_stage()?;
        let written = self.take_pipe()?.finish(&self.rank_dir)?;
        written.into_iter().for_each(PageBuf::recycle);
        let pages_hash = self.hash.finalize();

        let manifest_path = self.partial.join(MANIFEST_FILE);
        // Compact: incremental images have many small runs, and `jq` prints it for people.
        let json = serde_json::to_vec(manifest).map_err(WriteError::Manifest)?;
        write_durable(&manifest_path, &json)?;
        let manifest_blake3 = blake3::hash(&json).to_hex().to_string();
        let mut checksums = format!(
            "{manifest_blake3}  {MANIFEST_FILE}\n{}  {PAGES_FILE}\n",
            pages_hash.to_hex()
        );
        if !page_hashes.is_empty() {
            write_durable(&self.partial.join(PAGE_HASHES_FILE), page_hashes)?;
            let hash = blake3::hash(page_hashes).to_hex();
            checksums.push_str(&format!("{hash}  {PAGE_HASHES_FILE}\n"));
        }
        write_durable(&self.partial.join(CHECKSUMS_FILE), checksums.as_bytes())?;
        let auth = key.seal(checksums.as_bytes());
        write_durable(&self.partial.join(AUTH_FILE), auth.as_bytes())?;
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
            manifest_blake3,
        })
    }
}

/// A piece of a batch: `len` bytes from `from` in the buffer go to `at` in `pages.bin`.
struct Place {
    at: u64,
    from: usize,
    len: usize,
}

/// The writer thread: writes page batches in order while the dumping thread reads and
/// hashes the next ones.
struct PagePipe {
    /// Batches and where they go in the file.
    full: SyncSender<(Vec<Place>, PageBuf)>,
    free: Receiver<PageBuf>,
    /// One message per batch written.
    written: Receiver<()>,
    /// Batches sent, and batches known to be written.
    sent: usize,
    acked: usize,
    thread: JoinHandle<Result<(), WriteError>>,
}

impl PagePipe {
    fn start(file: File, path: PathBuf) -> PagePipe {
        let (full, full_rx) = sync_channel::<(Vec<Place>, PageBuf)>(BUFFERS_IN_FLIGHT - 1);
        let (free_tx, free) = sync_channel::<PageBuf>(BUFFERS_IN_FLIGHT);
        let (written_tx, written) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            for (places, buf) in full_rx {
                for p in places {
                    let piece = &buf.as_bytes()[p.from..p.from + p.len];
                    write_pages(&file, piece, p.at).map_err(write_err(&path))?;
                }
                let _ = free_tx.try_send(buf);
                let _ = written_tx.send(());
            }
            file.sync_all().map_err(write_err(&path))
        });
        PagePipe {
            full,
            free,
            written,
            sent: 0,
            acked: 0,
            thread,
        }
    }

    /// Waits until every batch sent so far is written (or the thread stopped on an error,
    /// which `finish` reports).
    fn drain(&mut self) {
        while self.acked < self.sent && self.written.recv().is_ok() {
            self.acked += 1;
        }
    }

    /// Waits for every batch to be written and durable; returns the buffers written.
    fn finish(self, rank_dir: &Path) -> Result<Vec<PageBuf>, WriteError> {
        drop(self.full);
        self.thread
            .join()
            .map_err(|_| WriteError::WriterPanicked {
                dir: rank_dir.to_path_buf(),
            })??;
        Ok(self.free.try_iter().collect())
    }
}

/// Writes `data` at `at`. A file system that accepted `O_DIRECT` at open but refuses it
/// for this write (a block size above the page size) gets a buffered write.
fn write_pages(file: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    match file.write_all_at(data, at) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && drop_direct_io(file) => {
            file.write_all_at(data, at)
        }
        other => other,
    }
}

/// Turns `O_DIRECT` off for `file`; false if it was not on (or cannot be turned off).
fn drop_direct_io(file: &File) -> bool {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let Ok(bits) = fcntl(file, FcntlArg::F_GETFL) else {
        return false;
    };
    let flags = OFlag::from_bits_truncate(bits);
    flags.contains(OFlag::O_DIRECT)
        && fcntl(file, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT)).is_ok()
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
        std::mem::take(&mut self.stage).recycle();
        self.spare.drain(..).for_each(PageBuf::recycle);
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data wraps on purpose
mod tests {
    use super::*;

    fn failed_write(errno: i32) -> WriteError {
        WriteError::Write {
            path: PathBuf::from("/store/job/rank0/.ckpt-000002.partial/pages.bin"),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn a_full_disk_names_the_cause_the_directory_and_the_fix() {
        let rank_dir = Path::new("/store/job/rank0");
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let text = failed_write(errno).naming_full_disk(rank_dir).to_string();
            let name = nix::errno::Errno::from_raw(errno).to_string();
            assert!(
                text.contains(&format!("in /store/job/rank0 ({name}")),
                "{text}"
            );
            assert!(text.contains("Free space there"), "{text}");
        }
    }

    #[test]
    fn a_directory_that_cannot_be_made_for_want_of_space_is_a_full_disk() {
        let e = WriteError::CreateDir {
            path: PathBuf::from("/store/job/rank0/.ckpt-000002.partial"),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let e = e.naming_full_disk(Path::new("/store/job/rank0"));
        assert!(matches!(e, WriteError::NoSpace { .. }), "{e}");
    }

    fn pages(n: usize, seed: u8) -> PageBuf {
        let mut buf = PageBuf::mapped(n * 4096);
        buf.resize(n * 4096);
        for (i, b) in buf.as_bytes_mut().iter_mut().enumerate() {
            *b = (i / 4096) as u8 ^ seed;
        }
        buf
    }

    /// Rewrites land where the pages went first, whether those were still staged or
    /// already written, and the hash is the final file's.
    #[test]
    fn rewritten_pages_replace_their_first_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(dir.path(), 1).unwrap();
        let mut expected = Vec::new();
        let big = STAGE_BYTES / 4096 + 3;
        for (n, seed, revisable) in [(big, 1, true), (5, 2, true), (7, 3, false)] {
            let data = pages(n, seed);
            expected.extend_from_slice(data.as_bytes());
            let at = if revisable {
                w.submit_revisable(data).unwrap()
            } else {
                w.submit(data).unwrap()
            };
            assert_eq!(at as usize + n * 4096, expected.len());
        }
        // Two pages at the end of the sent batch, and two pages that are still staged.
        let data = pages(4, 0x80);
        for (i, at) in [big - 2, big + 1].into_iter().enumerate() {
            expected[at * 4096..(at + 2) * 4096]
                .copy_from_slice(&data.as_bytes()[i * 8192..(i + 1) * 8192]);
        }
        let places = [
            (((big - 2) * 4096) as u64, 8192),
            (((big + 1) * 4096) as u64, 8192),
        ];
        w.hold();
        w.rewrite(&places, data).unwrap();
        w.let_go().unwrap();
        assert!(
            w.rewrite(&[(((big + 5) * 4096) as u64, 4096)], pages(1, 9))
                .is_err()
        );
        w.flush_stage().unwrap();
        w.take_pipe().unwrap().finish(dir.path()).unwrap();
        let file = fs::read(w.partial.join(PAGES_FILE)).unwrap();
        assert!(file == expected, "pages.bin differs");
        assert_eq!(w.hash.finalize(), blake3::hash(&expected));
    }

    #[test]
    fn other_write_errors_are_left_as_they_are() {
        let e = failed_write(libc::EIO).naming_full_disk(Path::new("/store/job/rank0"));
        assert!(matches!(e, WriteError::Write { .. }), "{e}");
    }
}
