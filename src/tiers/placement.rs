//! Copies of committed local images to the partner and global tiers.
//!
//! A copy goes to `.ckpt-SEQ.partial/` in the destination rank directory; every file is
//! hashed with blake3 as it is copied and must match the source's `CHECKSUMS` (so a local
//! image damaged since its commit is not spread to the other tiers); then the files and
//! the directory are fsynced and the directory is renamed to `ckpt-SEQ`. A failed copy
//! removes its partial directory and leaves older copies alone. Images an incremental image
//! takes pages from are copied first when the destination lacks them.
//!
//! Outside test mode the partner node's storage is not reachable as a path: the
//! `partner_copy` command copies the image, and the copy is only verified when a restore
//! reads it.

use super::layout::Destination;
use super::retention;
use crate::image::format::CHECKSUMS_FILE;
use crate::image::store::{self, ImageDirError};
use crate::image::writer::{self, WriteError};
use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes read, hashed and written at a time; also how far a copy gets after the gate
/// closes (a few ms of work).
const CHUNK: usize = 4 << 20;

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
}

/// A committed copy.
#[derive(Debug)]
pub struct Copied {
    /// The copy (for a remote partner: its path on the partner node).
    pub path: PathBuf,
    /// Bytes copied, parents included; 0 if the copy was already there.
    pub bytes: u64,
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
    /// Images a remote partner already received from us: the command cannot tell.
    sent: BTreeSet<PathBuf>,
}

impl Placer {
    pub fn new(dest: Destination, keep: u32) -> Placer {
        Placer {
            dest,
            keep,
            gate: Gate::default(),
            sent: BTreeSet::new(),
        }
    }

    /// Copies wait while `gate` is held.
    pub fn with_gate(self, gate: Gate) -> Placer {
        Placer { gate, ..self }
    }

    /// Copies the committed image `src` (and parents the destination lacks), then deletes
    /// copies beyond `keep` there.
    pub fn place(&mut self, src: &Path) -> Result<Copied, PlaceError> {
        let started = Instant::now();
        let seq = image_seq(src)?;
        let (path, bytes, pruned) = match &self.dest {
            Destination::Dir(dir) => {
                let (path, bytes) = copy_image(src, dir, &self.gate)?;
                let protect = BTreeSet::from([path.clone()]);
                let pruned = retention::prune(dir, self.keep, seq, &protect);
                (path, bytes, pruned)
            }
            Destination::Remote { command, host, dir } => {
                self.gate.pass();
                let bytes = send_with_parents(src, command, host, dir, &mut self.sent)?;
                (dir.join(store::image_dir_name(seq)), bytes, Ok(Vec::new()))
            }
        };
        Ok(Copied {
            path,
            bytes,
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

/// Copies committed image `src` into `dest_dir` under the same name, parents first,
/// pausing while `gate` is held; returns the copy and the bytes copied. A copy already
/// there is complete (it was committed by rename) and is not copied again.
pub fn copy_image(src: &Path, dest_dir: &Path, gate: &Gate) -> Result<(PathBuf, u64), PlaceError> {
    let mut bytes = 0;
    for parent in store::dependencies(src) {
        let name = parent.file_name().unwrap_or_default();
        if !dest_dir.join(name).is_dir() {
            bytes += copy_image(&parent, dest_dir, gate)?.1;
        }
    }
    let seq = image_seq(src)?;
    let target = dest_dir.join(store::image_dir_name(seq));
    if target.is_dir() {
        return Ok((target, bytes));
    }
    writer::create_private_dir(dest_dir)?;
    let partial = Partial::create(dest_dir.join(store::partial_dir_name(seq)))?;
    for (file, expected) in read_checksums(src)? {
        let copied = partial.0.join(&file);
        let (hash, n) = copy_file(&src.join(&file), &copied, gate)?;
        let found = hash.to_hex().to_string();
        if found != expected {
            return Err(PlaceError::Mismatch {
                path: src.join(&file),
                expected,
                found,
            });
        }
        bytes += n;
    }
    let checksums = partial.0.join(CHECKSUMS_FILE);
    bytes += copy_file(&src.join(CHECKSUMS_FILE), &checksums, gate)?.1;
    let auth = src.join(crate::image::auth::AUTH_FILE);
    if auth.is_file() {
        bytes += copy_file(&auth, &partial.0.join(crate::image::auth::AUTH_FILE), gate)?.1;
    }
    partial.commit(&target)?;
    Ok((target, bytes))
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

/// Copies `from` to the new file `to` (mode 0600), durably; the blake3 of what was
/// written and its length. This thread reads and hashes while a second one writes.
fn copy_file(from: &Path, to: &Path, gate: &Gate) -> Result<(blake3::Hash, u64), PlaceError> {
    let read_err = |source| PlaceError::Read {
        path: from.to_path_buf(),
        source,
    };
    let write_err = |source| PlaceError::Write {
        path: to.to_path_buf(),
        source,
    };
    let mut src = File::open(from).map_err(read_err)?;
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(write_err)?;
    let (full, filled) = sync_channel::<Vec<u8>>(1);
    let (give_back, free) = sync_channel::<Vec<u8>>(3);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_all(dst, filled, &give_back));
        let mut hasher = blake3::Hasher::new();
        let read = loop {
            gate.pass();
            let mut buf = free.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            buf.resize(CHUNK, 0);
            match read_full(&mut src, &mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => buf.truncate(n),
                Err(e) => break Err(e),
            }
            hasher.update_rayon(&buf);
            if full.send(buf).is_err() {
                break Ok(()); // the writer failed; it says why
            }
        };
        drop(full);
        let written = writer
            .join()
            .expect("copy writer panicked")
            .map_err(write_err)?;
        read.map_err(read_err)?;
        Ok((hasher.finalize(), written))
    })
}

/// Writes the buffers in order, starting their writeback at once so the final fsync
/// finds little left to do (and the copy does not crowd the page cache).
fn write_all(
    mut dst: File,
    buffers: Receiver<Vec<u8>>,
    give_back: &SyncSender<Vec<u8>>,
) -> io::Result<u64> {
    let mut at = 0u64;
    for buf in buffers {
        dst.write_all(&buf)?;
        let len = buf.len() as u64;
        let (off, n) = (i64::try_from(at), i64::try_from(len));
        if let (Ok(off), Ok(n)) = (off, n) {
            let _ = posix_fadvise(&dst, off, n, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
        }
        at += len;
        let _ = give_back.try_send(buf);
    }
    dst.sync_all()?;
    Ok(at)
}

/// Reads until `buf` is full or the file ends: fewer, larger hashing calls.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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
        let (copy, bytes) = copy_image(&src, &dest, &Gate::default()).unwrap();
        assert_eq!(copy, dest.join("ckpt-000003"));
        assert_eq!(names(&dest), ["ckpt-000003"]);
        assert_eq!(names(&copy), ["CHECKSUMS", "m", "pages.bin"]);
        assert_eq!(fs::read(copy.join("pages.bin")).unwrap(), big);
        assert!(bytes > big.len() as u64);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&copy), mode(&copy.join("m"))), (0o700, 0o600));
        // Already there: not copied again.
        assert_eq!(
            copy_image(&src, &dest, &Gate::default()).unwrap(),
            (copy, 0)
        );
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
        let e = copy_image(&src, &tmp.path().join("b"), &Gate::default()).unwrap_err();
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
