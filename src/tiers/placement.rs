//! Copies of committed local images to the partner and global tiers.
//!
//! A copy goes to `.ckpt-SEQ.partial/` in the destination rank directory; every file is
//! hashed with blake3 as it is copied and must match the source's `CHECKSUMS` (so a local
//! image damaged since its commit is not spread to the other tiers); then the files and
//! the directory are fsynced and the directory is renamed to `ckpt-SEQ`. A failed copy
//! removes its partial directory and leaves older copies alone. Images an incremental image
//! takes pages from are copied first when the destination lacks them.
//!
//! With `[image] compress = "zstd"` a copy stores `pages.bin` as `pages.bin.zst`
//! (`image::compress`): the hash is still taken of the bytes read, before compression, so
//! the copy's CHECKSUMS and AUTH are the local image's, unchanged.
//!
//! Outside test mode the partner node's storage is not reachable as a path: the
//! `partner_copy` command copies the image (as it is, uncompressed), and the copy is only
//! verified when a restore reads it.

use super::layout::Destination;
use super::retention;
use crate::image::compress::{self, Compression, FindPagesError, StoredPages};
use crate::image::format::{CHECKSUMS_FILE, PAGES_FILE};
use crate::image::store::{self, ImageDirError};
use crate::image::writer::{self, WriteError};
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes read, hashed and written at a time; also how far a copy gets after the gate
/// closes (a few ms of work).
const CHUNK: usize = 4 << 20;

/// Bytes per `write` call of a copy. Buffered writes of 1 MiB and more are far slower on
/// this kind of machine than smaller ones, for the same bytes (1 GiB with fdatasync: 3.5 s
/// in 1 MiB writes, 1.0 s in 128 KiB ones; scripts/compress_bench.sh shows both); zstd
/// hands its output on in pieces of about this size too.
const WRITE_PIECE: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{} is not an image directory (ckpt-NNNNNN)", path.display())]
    NotAnImage { path: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: line {line} is not '<blake3 hex>  <file>'", path.display())]
    BadChecksums { path: PathBuf, line: usize },
    #[error(
        "{}: checksum mismatch while copying (CHECKSUMS says {expected}, the data read \
         hashes to {found}): the source image is damaged, so it is not copied",
        path.display()
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("cannot delete {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run the partner_copy command `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("the partner_copy command `{command}` failed ({status})")]
    Command { command: String, status: String },
    #[error(transparent)]
    List(#[from] ImageDirError),
    #[error(transparent)]
    Image(#[from] WriteError),
    #[error(transparent)]
    Pages(#[from] FindPagesError),
}

/// A committed copy.
#[derive(Debug)]
pub struct Copied {
    /// The copy (for a remote partner: its path on the partner node).
    pub path: PathBuf,
    /// Bytes copied, as read from the image, parents included; 0 if the copy was already
    /// there.
    pub bytes: u64,
    /// What they take at the destination (less than `bytes` when compressed).
    pub stored: u64,
    /// How the copy stores its pages.
    pub compression: Compression,
    pub elapsed: Duration,
    /// Older copies retention deleted after this one was committed, or why it could not
    /// (the copy itself is committed either way).
    pub pruned: Result<Vec<PathBuf>, PlaceError>,
}

/// Holds copies back while the supervisor checkpoints: a copy must not compete with the
/// target's freeze for CPU and disk. Copies wait at their next chunk while it is held.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<u32>, Condvar)>);

/// The gate is held until this is dropped.
pub struct Held<'a>(&'a Gate);

impl Gate {
    pub fn hold(&self) -> Held<'_> {
        *self.count() += 1;
        Held(self)
    }

    /// Returns at once unless the gate is held; then when it is released.
    pub fn pass(&self) {
        let mut held = self.count();
        while *held > 0 {
            held = self.0.1.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn count(&self) -> MutexGuard<'_, u32> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        *self.0.count() -= 1;
        self.0.0.1.notify_all();
    }
}

/// Places committed images on one tier: copies them and applies retention there.
#[derive(Debug)]
pub struct Placer {
    dest: Destination,
    keep: u32,
    gate: Gate,
    /// How copies into a directory store their pages (a remote partner's command copies
    /// the image as it is).
    compression: Compression,
    /// Images a remote partner already received from us: the command cannot tell.
    sent: BTreeSet<PathBuf>,
    /// Retention counts complete generations (a coordinated job), not images.
    generations: bool,
}

impl Placer {
    pub fn new(dest: Destination, keep: u32) -> Placer {
        Placer {
            dest,
            keep,
            gate: Gate::default(),
            compression: Compression::None,
            sent: BTreeSet::new(),
            generations: false,
        }
    }

    /// Retention in a directory keeps complete generations ([`retention::prune_generations`])
    /// instead of the newest images.
    pub fn with_generations(self, on: bool) -> Placer {
        Placer {
            generations: on,
            ..self
        }
    }

    /// Copies wait while `gate` is held.
    pub fn with_gate(self, gate: Gate) -> Placer {
        Placer { gate, ..self }
    }

    /// Copies into a directory store their pages with `compression` (`[image] compress`).
    pub fn with_compression(self, compression: Compression) -> Placer {
        Placer {
            compression,
            ..self
        }
    }

    /// Copies the committed image `src` (and parents the destination lacks), then deletes
    /// copies beyond `keep` there.
    pub fn place(&mut self, src: &Path) -> Result<Copied, PlaceError> {
        let started = Instant::now();
        let seq = image_seq(src)?;
        let (path, size, compression, pruned) = match &self.dest {
            Destination::Dir(dir) => {
                let (path, size) = copy_image(src, dir, &self.gate, self.compression)?;
                let protect = BTreeSet::from([path.clone()]);
                let pruned = if self.generations {
                    retention::prune_generations(dir, self.keep, &BTreeSet::new(), &protect)
                } else {
                    retention::prune(dir, self.keep, seq, &protect)
                };
                (path, size, self.compression, pruned)
            }
            Destination::Remote { command, host, dir } => {
                self.gate.pass();
                let bytes = send_with_parents(src, command, host, dir, &mut self.sent)?;
                let size = CopySize {
                    read: bytes,
                    stored: bytes,
                };
                let path = dir.join(store::image_dir_name(seq));
                (path, size, Compression::None, Ok(Vec::new()))
            }
        };
        Ok(Copied {
            path,
            bytes: size.read,
            stored: size.stored,
            compression,
            elapsed: started.elapsed(),
            pruned,
        })
    }
}

fn image_seq(path: &Path) -> Result<u64, PlaceError> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(store::parse_image_dir_name)
        .ok_or_else(|| PlaceError::NotAnImage {
            path: path.to_path_buf(),
        })
}

/// Bytes of a copy: as read from the image, and as stored at the destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopySize {
    pub read: u64,
    pub stored: u64,
}

impl std::ops::AddAssign for CopySize {
    fn add_assign(&mut self, other: CopySize) {
        self.read += other.read;
        self.stored += other.stored;
    }
}

/// Copies committed image `src` into `dest_dir` under the same name, parents first,
/// pausing while `gate` is held, its pages stored with `compression`; returns the copy and
/// the bytes copied. A copy already there is complete (it was committed by rename) and is
/// not copied again.
pub fn copy_image(
    src: &Path,
    dest_dir: &Path,
    gate: &Gate,
    compression: Compression,
) -> Result<(PathBuf, CopySize), PlaceError> {
    let mut size = CopySize::default();
    for parent in store::dependencies(src) {
        let name = parent.file_name().unwrap_or_default();
        if !dest_dir.join(name).is_dir() {
            size += copy_image(&parent, dest_dir, gate, compression)?.1;
        }
    }
    let seq = image_seq(src)?;
    let target = dest_dir.join(store::image_dir_name(seq));
    if target.is_dir() {
        return Ok((target, size));
    }
    writer::create_private_dir(dest_dir)?;
    let partial = Partial::create(dest_dir.join(store::partial_dir_name(seq)))?;
    for (file, expected) in read_checksums(src)? {
        // CHECKSUMS lists `pages.bin` whichever way the pages are stored; only they are
        // compressed (the other files are small).
        let (from, to, encoding) = if file == PAGES_FILE {
            let to = partial.0.join(compression.pages_file());
            (StoredPages::find(src)?, to, compression)
        } else {
            let to = partial.0.join(&file);
            (StoredPages::Raw(src.join(&file)), to, Compression::None)
        };
        let (hash, n) = copy_file(&from, &to, gate, encoding)?;
        let found = hash.to_hex().to_string();
        if found != expected {
            return Err(PlaceError::Mismatch {
                path: from.path().to_path_buf(),
                expected,
                found,
            });
        }
        size += n;
    }
    for file in [CHECKSUMS_FILE, crate::image::auth::AUTH_FILE] {
        let from = src.join(file);
        // Images before AUTH existed have none; a restore refuses them, a copy keeps them.
        if file == CHECKSUMS_FILE || from.is_file() {
            let raw = StoredPages::Raw(from);
            size += copy_file(&raw, &partial.0.join(file), gate, Compression::None)?.1;
        }
    }
    partial.commit(&target)?;
    Ok((target, size))
}

/// (file, blake3 hex) of every line of `<image>/CHECKSUMS`.
fn read_checksums(image: &Path) -> Result<Vec<(String, String)>, PlaceError> {
    let path = image.join(CHECKSUMS_FILE);
    let text = fs::read_to_string(&path).map_err(|source| PlaceError::Read {
        path: path.clone(),
        source,
    })?;
    let entry = |line: &str| {
        let (hex, file) = line.split_once("  ")?;
        let plain = !file.is_empty() && !file.contains('/') && !file.starts_with('.');
        let hex_ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        (plain && hex_ok).then(|| (file.to_string(), hex.to_ascii_lowercase()))
    };
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            entry(line).ok_or_else(|| PlaceError::BadChecksums {
                path: path.clone(),
                line: i + 1,
            })
        })
        .collect()
}

/// Copies `from` to the new file `to` (mode 0600), durably, stored with `encoding`; the
/// blake3 of what was read (decompressed, for a compressed `from`) and the bytes read and
/// written. This thread reads and hashes while a second one compresses and writes.
fn copy_file(
    from: &StoredPages,
    to: &Path,
    gate: &Gate,
    encoding: Compression,
) -> Result<(blake3::Hash, CopySize), PlaceError> {
    let read_err = |source| PlaceError::Read {
        path: from.path().to_path_buf(),
        source,
    };
    let write_err = |source| PlaceError::Write {
        path: to.to_path_buf(),
        source,
    };
    let mut src = from.open().map_err(read_err)?;
    // Recorded in a compressed copy's header, so a reader can check it before
    // decompressing; a compressed source's size is known only once decompressed.
    let size = match from {
        StoredPages::Raw(path) => Some(fs::metadata(path).map_err(read_err)?.len()),
        StoredPages::Zstd(_) => None,
    };
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(write_err)?;
    let (full, filled) = sync_channel::<Vec<u8>>(1);
    let (give_back, free) = sync_channel::<Vec<u8>>(3);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_all(dst, encoding, size, filled, &give_back));
        let mut hasher = blake3::Hasher::new();
        let mut read = 0u64;
        let reading = loop {
            gate.pass();
            let mut buf = free.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            buf.resize(CHUNK, 0);
            match crate::image::compress::read_full(&mut src, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => buf.truncate(n),
                Err(e) => break Err(e),
            }
            hasher.update_rayon(&buf);
            read += buf.len() as u64;
            if full.send(buf).is_err() {
                break Ok(()); // the writer failed; it says why
            }
        };
        drop(full);
        let written = writer
            .join()
            .map_err(|_| write_err(io::Error::other("the copy's writer thread panicked")))?
            .map_err(write_err)?;
        reading.map_err(read_err)?;
        Ok((
            hasher.finalize(),
            CopySize {
                read,
                stored: written,
            },
        ))
    })
}

/// Writes the buffers in order, compressed with `encoding` (`size`: the bytes that will
/// come, when known), then makes the file durable; returns the bytes written.
fn write_all(
    dst: File,
    encoding: Compression,
    size: Option<u64>,
    buffers: Receiver<Vec<u8>>,
    give_back: &SyncSender<Vec<u8>>,
) -> io::Result<u64> {
    let mut out = Output::new(dst);
    match encoding {
        Compression::None => {
            for buf in buffers {
                for piece in buf.chunks(WRITE_PIECE) {
                    out.write_all(piece)?;
                }
                let _ = give_back.try_send(buf);
            }
        }
        Compression::Zstd { level } => {
            let mut encoder = compress::encoder(&mut out, level, size)?;
            for buf in buffers {
                encoder.write_all(&buf)?;
                let _ = give_back.try_send(buf);
            }
            encoder.finish()?;
        }
    }
    out.finish()
}

/// The file a copy writes, its writeback started every CHUNK bytes so the final fsync
/// finds little left to do (and the copy does not crowd the page cache).
struct Output {
    file: File,
    written: u64,
    /// Where the writeback started last.
    advised: u64,
}

impl Output {
    fn new(file: File) -> Output {
        Output {
            file,
            written: 0,
            advised: 0,
        }
    }

    fn start_writeback(&mut self) {
        let (off, n) = (
            i64::try_from(self.advised),
            i64::try_from(self.written - self.advised),
        );
        if let (Ok(off), Ok(n)) = (off, n) {
            let _ = posix_fadvise(&self.file, off, n, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
        self.advised = self.written;
    }

    /// Durable; the bytes written.
    fn finish(mut self) -> io::Result<u64> {
        self.start_writeback();
        self.file.sync_all()?;
        Ok(self.written)
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.advised >= CHUNK as u64 {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `.ckpt-SEQ.partial` copy being written; removed unless committed.
struct Partial(PathBuf);

impl Partial {
    fn create(path: PathBuf) -> Result<Partial, PlaceError> {
        // Left by a copy that was killed: never valid, safe to replace.
        let _ = fs::remove_dir_all(&path);
        writer::create_private_dir(&path)?;
        Ok(Partial(path))
    }

    fn commit(self, target: &Path) -> Result<(), PlaceError> {
        writer::sync_dir(&self.0)?;
        fs::rename(&self.0, target).map_err(|source| PlaceError::Write {
            path: target.to_path_buf(),
            source,
        })?;
        if let Some(parent) = target.parent() {
            writer::sync_dir(parent)?;
        }
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `partner_copy` for `src`'s parents not sent yet, then for `src`.
fn send_with_parents(
    src: &Path,
    command: &str,
    host: &str,
    dir: &Path,
    sent: &mut BTreeSet<PathBuf>,
) -> Result<u64, PlaceError> {
    let mut bytes = 0;
    for parent in store::dependencies(src) {
        if !sent.contains(&parent) {
            bytes += send_with_parents(&parent, command, host, dir, sent)?;
        }
    }
    let seq = image_seq(src)?;
    run_partner_copy(command, src, host, &dir.join(store::image_dir_name(seq)))?;
    sent.insert(src.to_path_buf());
    Ok(bytes + dir_size(src))
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// `sh -c` with the placeholders replaced by shell-quoted values. Its output goes to
/// mlckpt's stderr: mlckpt's stdout is the job's.
pub fn run_partner_copy(
    command: &str,
    src: &Path,
    host: &str,
    dst: &Path,
) -> Result<(), PlaceError> {
    let line = fill_placeholders(
        command,
        &[
            ("{src}", &shell_quote(&src.to_string_lossy())),
            ("{host}", &shell_quote(host)),
            ("{dst}", &shell_quote(&dst.to_string_lossy())),
        ],
    );
    let spawn_err = |source| PlaceError::Spawn {
        command: line.clone(),
        source,
    };
    let stderr = io::stderr().lock();
    let out = std::os::fd::AsFd::as_fd(&stderr)
        .try_clone_to_owned()
        .map_err(spawn_err)?;
    drop(stderr);
    let status = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .env(crate::tracer::tree::HELPER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .status()
        .map_err(spawn_err)?;
    if status.success() {
        return Ok(());
    }
    Err(PlaceError::Command {
        command: line,
        status: status.to_string(),
    })
}

/// One pass, so a value that contains a placeholder is not replaced again; `${word}`
/// belongs to the shell.
fn fill_placeholders(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after_dollar = out.ends_with('$');
        let hit = values
            .iter()
            .find(|(key, _)| !after_dollar && rest[i..].starts_with(key));
        match hit {
            Some((key, value)) => {
                out.push_str(value);
                rest = &rest[i + key.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `'...'` with every `'` written as `'\''`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A committed image with the given files and a correct CHECKSUMS.
    fn image(rank_dir: &Path, seq: u64, files: &[(&str, &[u8])]) -> PathBuf {
        let dir = rank_dir.join(store::image_dir_name(seq));
        fs::create_dir_all(&dir).unwrap();
        let mut sums = String::new();
        for (name, data) in files {
            fs::write(dir.join(name), data).unwrap();
            sums.push_str(&format!("{}  {name}\n", blake3::hash(data).to_hex()));
        }
        fs::write(dir.join(CHECKSUMS_FILE), sums).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn copy_is_verified_private_and_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let big = vec![7u8; CHUNK + 123];
        let src = image(
            &tmp.path().join("a"),
            3,
            &[("pages.bin", &big), ("m", b"{}")],
        );
        let dest = tmp.path().join("b/job/rank0");
        let (copy, size) = copy_image(&src, &dest, &Gate::default(), Compression::None).unwrap();
        assert_eq!(copy, dest.join("ckpt-000003"));
        assert_eq!(names(&dest), ["ckpt-000003"]);
        assert_eq!(names(&copy), ["CHECKSUMS", "m", "pages.bin"]);
        assert_eq!(fs::read(copy.join("pages.bin")).unwrap(), big);
        assert!(size.read > big.len() as u64);
        assert_eq!(size.read, size.stored);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&copy), mode(&copy.join("m"))), (0o700, 0o600));
        // Already there: not copied again.
        assert_eq!(
            copy_image(&src, &dest, &Gate::default(), Compression::None).unwrap(),
            (copy, CopySize::default())
        );
    }

    const ZSTD: Compression = Compression::Zstd { level: 1 };

    /// Pages that compress: page numbers with some noise.
    #[allow(clippy::cast_possible_truncation)] // test data wraps on purpose
    fn compressible(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if i % 512 == 0 {
                    (i / 7) as u8
                } else {
                    (i / 4096) as u8
                }
            })
            .collect()
    }

    #[test]
    fn a_compressed_copy_holds_the_same_pages_and_checksums() {
        let tmp = tempfile::tempdir().unwrap();
        let pages = compressible(3 * CHUNK + 4096);
        let src = image(
            &tmp.path().join("a"),
            4,
            &[("manifest.json", b"{}"), ("pages.bin", &pages)],
        );
        fs::write(src.join("AUTH"), b"auth").unwrap();
        let dest = tmp.path().join("b");
        let (copy, size) = copy_image(&src, &dest, &Gate::default(), ZSTD).unwrap();
        assert_eq!(
            names(&copy),
            ["AUTH", "CHECKSUMS", "manifest.json", "pages.bin.zst"]
        );
        // Integrity is unchanged: the copy's CHECKSUMS and AUTH are the image's own.
        for file in ["AUTH", "CHECKSUMS", "manifest.json"] {
            assert_eq!(
                fs::read(copy.join(file)).unwrap(),
                fs::read(src.join(file)).unwrap(),
                "{file}"
            );
        }
        let packed = fs::metadata(copy.join("pages.bin.zst")).unwrap().len();
        assert!(packed < pages.len() as u64 / 4, "{packed} bytes");
        assert!(size.stored < size.read / 4, "{size:?}");
        let mut back = Vec::new();
        let hash = compress::unpack(&copy.join("pages.bin.zst"), pages.len() as u64, &mut |d| {
            back.extend_from_slice(d);
            Ok(())
        })
        .unwrap();
        assert!(back == pages, "the pages differ");
        assert_eq!(hash, blake3::hash(&pages));
        // A compressed copy can be copied again, either way; its pages stay the same.
        let (raw, _) = copy_image(
            &copy,
            &tmp.path().join("c"),
            &Gate::default(),
            Compression::None,
        )
        .unwrap();
        assert_eq!(fs::read(raw.join("pages.bin")).unwrap(), pages);
        let (again, _) = copy_image(&copy, &tmp.path().join("d"), &Gate::default(), ZSTD).unwrap();
        assert!(again.join("pages.bin.zst").is_file());
    }

    #[test]
    fn a_damaged_source_is_not_compressed_either() {
        let tmp = tempfile::tempdir().unwrap();
        let pages = compressible(CHUNK + 4096);
        let src = image(&tmp.path().join("a"), 1, &[("pages.bin", &pages)]);
        let mut bad = pages.clone();
        bad[CHUNK] ^= 1;
        fs::write(src.join("pages.bin"), &bad).unwrap();
        let dest = tmp.path().join("b");
        let e = copy_image(&src, &dest, &Gate::default(), ZSTD).unwrap_err();
        assert!(matches!(e, PlaceError::Mismatch { .. }), "{e}");
        assert!(names(&dest).is_empty(), "{:?}", names(&dest));
    }

    #[test]
    fn a_source_with_both_page_files_is_not_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let src = image(&tmp.path().join("a"), 1, &[("pages.bin", b"p")]);
        fs::write(src.join("pages.bin.zst"), b"z").unwrap();
        let e = copy_image(&src, &tmp.path().join("b"), &Gate::default(), ZSTD).unwrap_err();
        assert!(
            matches!(e, PlaceError::Pages(FindPagesError::Both { .. })),
            "{e}"
        );
    }

    #[test]
    fn placing_compressed_copies_prunes_them_too() {
        let tmp = tempfile::tempdir().unwrap();
        let rank = tmp.path().join("a");
        let dest = tmp.path().join("b");
        let mut placer = Placer::new(Destination::Dir(dest.clone()), 1).with_compression(ZSTD);
        for seq in 1u8..=3 {
            let src = image(&rank, seq.into(), &[("pages.bin", &[seq; 10000])]);
            let copied = placer.place(&src).unwrap();
            assert_eq!(copied.compression, ZSTD);
            assert!(copied.stored < copied.bytes, "{copied:?}");
        }
        assert_eq!(names(&dest), ["ckpt-000003"]);
    }

    #[test]
    fn damaged_source_is_not_copied_and_older_copies_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let rank = tmp.path().join("a");
        let good = image(&rank, 1, &[("pages.bin", b"one")]);
        let bad = image(&rank, 2, &[("pages.bin", b"two")]);
        fs::write(bad.join("pages.bin"), b"tw0").unwrap();
        let dest = tmp.path().join("b");
        let mut placer = Placer::new(Destination::Dir(dest.clone()), 1);
        placer.place(&good).unwrap();
        let e = placer.place(&bad).unwrap_err();
        assert!(matches!(e, PlaceError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("damaged"), "{e}");
        assert_eq!(names(&dest), ["ckpt-000001"]);
    }

    #[test]
    fn placing_prunes_the_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let rank = tmp.path().join("a");
        let dest = tmp.path().join("b");
        let mut placer = Placer::new(Destination::Dir(dest.clone()), 2);
        for seq in 1u8..=4 {
            let src = image(&rank, seq.into(), &[("pages.bin", &[seq; 10])]);
            let copied = placer.place(&src).unwrap();
            assert_eq!(copied.path, dest.join(store::image_dir_name(seq.into())));
        }
        assert_eq!(names(&dest), ["ckpt-000003", "ckpt-000004"]);
    }

    #[test]
    fn bad_checksums_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = image(&tmp.path().join("a"), 1, &[("pages.bin", b"x")]);
        fs::write(src.join(CHECKSUMS_FILE), "abc  ../../etc/passwd\n").unwrap();
        let e = copy_image(
            &src,
            &tmp.path().join("b"),
            &Gate::default(),
            Compression::None,
        )
        .unwrap_err();
        assert!(matches!(e, PlaceError::BadChecksums { line: 1, .. }), "{e}");
        assert!(names(&tmp.path().join("b")).is_empty());
    }

    #[test]
    fn partner_command_gets_quoted_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let src = image(&tmp.path().join("it's"), 5, &[("pages.bin", b"p")]);
        let dir = tmp.path().join("remote dir");
        let mut placer = Placer::new(
            Destination::Remote {
                command: "test {host} = 'h 1' && mkdir -p {dst} && cp -a {src}/. {dst}/".into(),
                host: "h 1".into(),
                dir: dir.clone(),
            },
            1,
        );
        let copied = placer.place(&src).unwrap();
        assert_eq!(copied.path, dir.join("ckpt-000005"));
        assert_eq!(names(&copied.path), ["CHECKSUMS", "pages.bin"]);
        let mut failing = Placer::new(
            Destination::Remote {
                command: "exit 3 # {src} {dst}".into(),
                host: String::new(),
                dir,
            },
            1,
        );
        let e = failing.place(&src).unwrap_err();
        assert!(matches!(e, PlaceError::Command { .. }), "{e}");
    }

    #[test]
    fn a_held_gate_holds_copies_back() {
        let tmp = tempfile::tempdir().unwrap();
        let src = image(&tmp.path().join("a"), 1, &[("pages.bin", b"p")]);
        let gate = Gate::default();
        let held = gate.hold();
        let mut placer =
            Placer::new(Destination::Dir(tmp.path().join("b")), 1).with_gate(gate.clone());
        let copy = std::thread::spawn(move || placer.place(&src).map(|c| c.path));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!copy.is_finished(), "the copy ran while the gate was held");
        drop(held);
        assert!(copy.join().unwrap().unwrap().is_dir());
    }

    #[test]
    fn placeholders_are_filled_once() {
        let values = [("{src}", "{dst}"), ("{dst}", "D")];
        assert_eq!(
            fill_placeholders("a {src} {dst} ${dst} {x", &values),
            "a {dst} D ${dst} {x"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
