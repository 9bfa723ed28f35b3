//! Page data compressed at rest: `pages.bin.zst`, a zstd stream whose decompressed bytes
//! are exactly `pages.bin`.
//!
//! Only copies are compressed (`[image] compress`, applied when an image is copied to the
//! partner or global tier): the checkpoint writer writes `pages.bin` raw with `O_DIRECT`
//! and may rewrite pages of it in place until the image is committed, which a stream
//! cannot take. Integrity stays where it was: CHECKSUMS and AUTH keep listing the blake3
//! of the uncompressed `pages.bin`, which a reader computes while it decompresses. zstd's
//! own frame checksum is therefore left out. The frame header records the decompressed
//! size, so a copy of the wrong size is refused before anything is decompressed.

use super::format::{PAGES_FILE, PAGES_ZSTD_FILE};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;

/// zstd levels `[image] compress_level` accepts: 1 is the fastest, 19 the smallest
/// (20-22 need far more memory to compress and to decompress; negative levels compress
/// little).
pub const MIN_LEVEL: i32 = 1;
pub const MAX_LEVEL: i32 = 19;
pub const DEFAULT_LEVEL: i32 = 1;

/// Bytes decompressed, hashed and handed on at a time.
const CHUNK: usize = 4 << 20;

/// The largest zstd frame header (`ZSTD_FRAMEHEADERSIZE_MAX`): enough to read the
/// decompressed size it records.
const FRAME_HEADER_MAX: usize = 18;

/// How copies on the partner and global tiers store `pages.bin` (`[image] compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// `pages.bin` as it is.
    #[default]
    None,
    /// `pages.bin.zst` at this zstd level (`MIN_LEVEL..=MAX_LEVEL`).
    Zstd { level: i32 },
}

impl Compression {
    /// The name the page data gets in a copy.
    pub fn pages_file(self) -> &'static str {
        match self {
            Compression::None => PAGES_FILE,
            Compression::Zstd { .. } => PAGES_ZSTD_FILE,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd { level } => write!(f, "zstd level {level}"),
        }
    }
}

/// Which file of an image directory holds its page contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredPages {
    Raw(PathBuf),
    Zstd(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum FindPagesError {
    #[error(
        "{dir} holds both {PAGES_FILE} and {PAGES_ZSTD_FILE}, an image stores its pages in \
         one of them: remove the one that is not meant (after `zstd -d {PAGES_ZSTD_FILE}`, \
         remove {PAGES_ZSTD_FILE})"
    )]
    Both { dir: PathBuf },
    #[error("{dir} has neither {PAGES_FILE} nor {PAGES_ZSTD_FILE}: the image is incomplete")]
    Neither { dir: PathBuf },
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StoredPages {
    /// The page file of the image at `dir`: exactly one of `pages.bin` and
    /// `pages.bin.zst` must be there.
    pub fn find(dir: &Path) -> Result<StoredPages, FindPagesError> {
        let present = |name: &str| {
            let path = dir.join(name);
            match std::fs::symlink_metadata(&path) {
                Ok(_) => Ok(Some(path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(FindPagesError::Io { path, source }),
            }
        };
        match (present(PAGES_FILE)?, present(PAGES_ZSTD_FILE)?) {
            (Some(raw), None) => Ok(StoredPages::Raw(raw)),
            (None, Some(zstd)) => Ok(StoredPages::Zstd(zstd)),
            (Some(_), Some(_)) => Err(FindPagesError::Both {
                dir: dir.to_path_buf(),
            }),
            (None, None) => Err(FindPagesError::Neither {
                dir: dir.to_path_buf(),
            }),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            StoredPages::Raw(p) | StoredPages::Zstd(p) => p,
        }
    }

    /// Opens the page data for reading, decompressing it on the way when it is stored
    /// compressed: what is read is `pages.bin` either way.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        let file = File::open(self.path())?;
        Ok(match self {
            StoredPages::Raw(_) => Box::new(file),
            StoredPages::Zstd(_) => Box::new(zstd::stream::read::Decoder::new(file)?),
        })
    }
}

/// Wraps `out` in a zstd encoder at `level` compressing on every core. `size` (the bytes
/// that will be written, when known) goes into the frame header: a reader compares it
/// with the manifest before it decompresses anything, and the encoder fails if more or
/// fewer bytes come.
pub fn encoder<W: Write>(
    out: W,
    level: i32,
    size: Option<u64>,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
    encoder.set_pledged_src_size(size)?;
    encoder.include_contentsize(true)?;
    // CHECKSUMS holds the blake3 of the decompressed data, checked on every read.
    encoder.include_checksum(false)?;
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if workers > 1 {
        encoder.multithread(u32::try_from(workers).unwrap_or(u32::MAX))?;
    }
    Ok(encoder)
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: the zstd stream is damaged ({source}); the compressed copy is corrupt")]
    Damaged {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: the zstd stream ends after {unpacked} of the {expected} bytes the manifest \
         says (pages_bytes): the compressed copy is truncated"
    )]
    Truncated {
        path: PathBuf,
        unpacked: u64,
        expected: u64,
    },
    #[error(
        "{path} holds {found} bytes of pages but the manifest says {expected} (pages_bytes): \
         the compressed copy is not this image's"
    )]
    WrongSize {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "{path} decompresses to more than the {expected} bytes the manifest says \
         (pages_bytes): the compressed copy is not this image's"
    )]
    TooLong { path: PathBuf, expected: u64 },
    #[error(
        "cannot hold the {bytes} bytes of pages decompressed from {path} in memory (a \
         restore from a compressed copy keeps them in RAM until the processes are rebuilt)"
    )]
    Memory {
        path: PathBuf,
        bytes: u64,
        #[source]
        source: io::Error,
    },
    #[error("the thread decompressing {path} panicked")]
    Panicked { path: PathBuf },
}

impl UnpackError {
    /// One word for `restore --auto`: what is wrong with a compressed copy.
    pub fn verdict(&self) -> &'static str {
        match self {
            UnpackError::Truncated { .. } => "incomplete",
            UnpackError::Read { .. }
            | UnpackError::Memory { .. }
            | UnpackError::Panicked { .. } => "unreadable",
            UnpackError::Damaged { .. }
            | UnpackError::WrongSize { .. }
            | UnpackError::TooLong { .. } => "damaged",
        }
    }
}

/// Checks the decompressed size the frame header of `path` records against `expected`,
/// without decompressing: a copy of another size is refused at once.
pub fn check_header(path: &Path, expected: u64) -> Result<(), UnpackError> {
    match frame_content_size(path, expected)? {
        Some(found) if found != expected => Err(UnpackError::WrongSize {
            path: path.to_path_buf(),
            expected,
            found,
        }),
        _ => Ok(()),
    }
}

/// The decompressed size the frame header of `path` records, for when the manifest that
/// says it cannot be read; 0 if the header records none (the check then fails on the
/// first byte decompressed).
pub fn recorded_size(path: &Path) -> Result<u64, UnpackError> {
    Ok(frame_content_size(path, 0)?.unwrap_or(0))
}

/// What the frame header of `path` says about the decompressed size (`None`: nothing);
/// `expected` only goes into the error for an empty file.
fn frame_content_size(path: &Path, expected: u64) -> Result<Option<u64>, UnpackError> {
    let mut head = Vec::with_capacity(FRAME_HEADER_MAX);
    File::open(path)
        .and_then(|f| f.take(FRAME_HEADER_MAX as u64).read_to_end(&mut head))
        .map_err(|source| UnpackError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if head.is_empty() {
        return Err(UnpackError::Truncated {
            path: path.to_path_buf(),
            unpacked: 0,
            expected,
        });
    }
    zstd::zstd_safe::get_frame_content_size(&head).map_err(|_| UnpackError::Damaged {
        path: path.to_path_buf(),
        source: io::Error::other("it does not start with a zstd frame header"),
    })
}

/// Decompresses `path`, which must hold exactly `expected` bytes of pages, handing them to
/// `sink` in order; returns their blake3. A second thread decompresses while this one
/// hashes and sinks. Stops as soon as the stream proves damaged or too long: a hostile
/// copy cannot make it write more than `expected` bytes. A failing `sink` is reported as
/// memory that cannot be had: the one sink that can fail fills a memory file.
pub fn unpack(
    path: &Path,
    expected: u64,
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<blake3::Hash, UnpackError> {
    check_header(path, expected)?;
    let read_err = |source| UnpackError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let mut decoder = zstd::stream::read::Decoder::new(file).map_err(read_err)?;
    let (full, filled) = sync_channel::<Vec<u8>>(2);
    let (give_back, free) = sync_channel::<Vec<u8>>(3);
    std::thread::scope(|scope| {
        let decoding = scope.spawn(move || -> Result<u64, UnpackError> {
            let mut unpacked = 0u64;
            loop {
                let mut buf = free.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                let n = read_full(&mut decoder, &mut buf)
                    .map_err(|e| stream_error(path, e, unpacked, expected))?;
                if n == 0 {
                    return Ok(unpacked);
                }
                unpacked += n as u64;
                if unpacked > expected {
                    return Err(UnpackError::TooLong {
                        path: path.to_path_buf(),
                        expected,
                    });
                }
                buf.truncate(n);
                if full.send(buf).is_err() {
                    return Ok(unpacked); // the sink failed; the caller says why
                }
            }
        });
        let mut hasher = blake3::Hasher::new();
        let mut sunk = Ok(());
        for buf in filled.iter() {
            hasher.update(&buf);
            crate::progress::advance(buf.len() as u64);
            if let Err(e) = sink(&buf) {
                sunk = Err(e);
                break;
            }
            let _ = give_back.try_send(buf);
        }
        drop(filled);
        let unpacked = decoding.join().map_err(|_| UnpackError::Panicked {
            path: path.to_path_buf(),
        })??;
        sunk.map_err(|source| UnpackError::Memory {
            path: path.to_path_buf(),
            bytes: expected,
            source,
        })?;
        if unpacked != expected {
            return Err(UnpackError::Truncated {
                path: path.to_path_buf(),
                unpacked,
                expected,
            });
        }
        Ok(hasher.finalize())
    })
}

/// What a failed read of the decompressed stream means.
fn stream_error(path: &Path, e: io::Error, unpacked: u64, expected: u64) -> UnpackError {
    let path = path.to_path_buf();
    if e.raw_os_error().is_some() {
        UnpackError::Read { path, source: e }
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        UnpackError::Truncated {
            path,
            unpacked,
            expected,
        }
    } else {
        UnpackError::Damaged { path, source: e }
    }
}

/// Reads until `buf` is full or the stream ends (fewer, larger hashing and writing calls);
/// returns how much it read.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decompresses `path` (`expected` bytes of pages) into a new memory file (memfd), sealed
/// read-only once full; returns it with the blake3 of its contents. `name` shows in
/// `/proc/PID/fd` while it is open.
pub fn unpack_to_memory(
    path: &Path,
    expected: u64,
    name: &str,
) -> Result<(OwnedFd, blake3::Hash), UnpackError> {
    let memory_err = |source| UnpackError::Memory {
        path: path.to_path_buf(),
        bytes: expected,
        source,
    };
    let mut file = memory_file(name).map_err(memory_err)?;
    let hash = unpack(path, expected, &mut |data| file.write_all(data))?;
    seal_read_only(&file).map_err(memory_err)?;
    Ok((OwnedFd::from(file), hash))
}

/// A new, empty memory file that can be sealed.
fn memory_file(name: &str) -> io::Result<File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let fd = memfd_create(
        name.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    Ok(File::from(fd))
}

/// From now on nobody can change the file's contents or size, through any fd of it: what
/// was verified is what a restore reads.
fn seal_read_only(file: &File) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE
        | SealFlag::F_SEAL_SEAL;
    fcntl(file, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(())
}

/// The compressed page files of an image and of its parents, decompressed into sealed
/// memory files and verified, by image seq: a restore reads pages from these instead.
/// The memory is freed when this is dropped (and every process that got a copy of an fd
/// closed it).
#[derive(Debug, Default)]
pub struct UnpackedPages {
    by_seq: BTreeMap<u64, OwnedFd>,
    bytes: u64,
}

impl UnpackedPages {
    pub fn insert(&mut self, seq: u64, memory: OwnedFd, bytes: u64) {
        self.by_seq.insert(seq, memory);
        self.bytes += bytes;
    }

    /// The memory file holding image `seq`'s pages, if they were compressed.
    pub fn get(&self, seq: u64) -> Option<BorrowedFd<'_>> {
        self.by_seq.get(&seq).map(AsFd::as_fd)
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Page-like data that compresses: runs of a few values, some noise.
    #[allow(clippy::cast_possible_truncation)] // test data wraps on purpose
    fn pages(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 4096 < 3000 {
                    (i / 4096) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    fn compress(data: &[u8], level: i32) -> Vec<u8> {
        let mut e = encoder(Vec::new(), level, Some(data.len() as u64)).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unpack_vec(path: &Path, expected: u64) -> Result<(Vec<u8>, blake3::Hash), UnpackError> {
        let mut out = Vec::new();
        let hash = unpack(path, expected, &mut |d| {
            out.extend_from_slice(d);
            Ok(())
        })?;
        Ok((out, hash))
    }

    fn write_zst(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join(PAGES_ZSTD_FILE);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn round_trip_gives_the_bytes_and_their_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(3 * CHUNK + 4096 * 5);
        for level in [MIN_LEVEL, 3, MAX_LEVEL] {
            let packed = compress(&data, level);
            assert!(packed.len() < data.len() / 2, "level {level}");
            let path = write_zst(tmp.path(), &packed);
            let (out, hash) = unpack_vec(&path, data.len() as u64).unwrap();
            assert!(out == data, "level {level}: different bytes");
            assert_eq!(hash, blake3::hash(&data));
        }
    }

    #[test]
    fn empty_pages_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_zst(tmp.path(), &compress(&[], 1));
        let (out, hash) = unpack_vec(&path, 0).unwrap();
        assert!(out.is_empty());
        assert_eq!(hash, blake3::hash(&[]));
    }

    #[test]
    fn a_damaged_stream_is_named_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(CHUNK);
        let mut packed = compress(&data, 1);
        // Past the header, into the first block: zstd or the hash must notice.
        let at = packed.len() / 3;
        packed[at] ^= 0xff;
        packed[at + 1] ^= 0x55;
        let path = write_zst(tmp.path(), &packed);
        match unpack_vec(&path, data.len() as u64) {
            Err(e @ UnpackError::Damaged { .. }) => {
                assert_eq!(e.verdict(), "damaged");
                let text = e.to_string();
                assert!(
                    text.contains(PAGES_ZSTD_FILE) && text.contains("damaged"),
                    "{text}"
                );
            }
            // zstd did not notice: the hash must differ.
            Ok((_, hash)) => assert_ne!(hash, blake3::hash(&data)),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn garbage_is_not_a_zstd_stream() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_zst(tmp.path(), b"this is no zstd stream at all");
        let e = unpack_vec(&path, 100).unwrap_err();
        assert!(matches!(e, UnpackError::Damaged { .. }), "{e}");
    }

    #[test]
    fn a_truncated_stream_is_named_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(2 * CHUNK);
        let packed = compress(&data, 1);
        for cut in [packed.len() / 2, packed.len() - 1] {
            let path = write_zst(tmp.path(), &packed[..cut]);
            let e = unpack_vec(&path, data.len() as u64).unwrap_err();
            assert!(matches!(e, UnpackError::Truncated { .. }), "cut {cut}: {e}");
            assert_eq!(e.verdict(), "incomplete");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        let path = write_zst(tmp.path(), &[]);
        let e = unpack_vec(&path, data.len() as u64).unwrap_err();
        assert!(
            matches!(e, UnpackError::Truncated { unpacked: 0, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_stream_of_another_size_is_refused_before_decompressing() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(CHUNK);
        let path = write_zst(tmp.path(), &compress(&data, 1));
        let e = check_header(&path, data.len() as u64 + 4096).unwrap_err();
        assert!(matches!(e, UnpackError::WrongSize { .. }), "{e}");
        assert!(check_header(&path, data.len() as u64).is_ok());
    }

    #[test]
    fn a_stream_without_a_recorded_size_stops_at_the_expected_size() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(2 * CHUNK);
        // As another tool would write it: no size in the header.
        let packed = zstd::stream::encode_all(&data[..], 1).unwrap();
        let path = write_zst(tmp.path(), &packed);
        let e = unpack_vec(&path, CHUNK as u64).unwrap_err();
        assert!(matches!(e, UnpackError::TooLong { .. }), "{e}");
        let e = unpack_vec(&path, 3 * CHUNK as u64).unwrap_err();
        assert!(matches!(e, UnpackError::Truncated { .. }), "{e}");
        assert_eq!(unpack_vec(&path, data.len() as u64).unwrap().0, data);
    }

    #[test]
    fn unpacked_memory_is_sealed_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let data = pages(CHUNK + 4096);
        let path = write_zst(tmp.path(), &compress(&data, 1));
        let (fd, hash) = unpack_to_memory(&path, data.len() as u64, "test-pages").unwrap();
        assert_eq!(hash, blake3::hash(&data));
        let file = File::from(fd);
        let mut back = vec![0u8; data.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data);
        assert!(
            file.write_at(b"x", 0).is_err(),
            "the memory file is writable"
        );
        assert!(file.set_len(1).is_err(), "the memory file can shrink");
    }

    #[test]
    fn an_image_has_one_page_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let e = StoredPages::find(dir).unwrap_err();
        assert!(matches!(e, FindPagesError::Neither { .. }), "{e}");
        std::fs::write(dir.join(PAGES_FILE), b"raw").unwrap();
        assert_eq!(
            StoredPages::find(dir).unwrap(),
            StoredPages::Raw(dir.join(PAGES_FILE))
        );
        std::fs::write(dir.join(PAGES_ZSTD_FILE), compress(b"raw", 1)).unwrap();
        let e = StoredPages::find(dir).unwrap_err();
        assert!(matches!(e, FindPagesError::Both { .. }), "{e}");
        assert!(e.to_string().contains("remove"), "{e}");
        std::fs::remove_file(dir.join(PAGES_FILE)).unwrap();
        let zstd = StoredPages::find(dir).unwrap();
        assert_eq!(zstd, StoredPages::Zstd(dir.join(PAGES_ZSTD_FILE)));
        let mut back = Vec::new();
        zstd.open().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, b"raw");
    }
}
