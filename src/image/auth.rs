//! Who wrote an image. CHECKSUMS proves an image intact, but anyone who can write its
//! directory can recompute it; an image tells a restore which files to cut and what code to
//! run, so a restore must also know the image was written by someone it trusts.
//!
//! Each user has a secret key (32 random bytes, hex, in a 0600 file only they can read:
//! `~/.config/mlckpt/image.key` by default, `[security] key_file` to share one between
//! nodes). A checkpoint writes `AUTH` beside CHECKSUMS: the keyed blake3 of CHECKSUMS and the
//! uid whose key made it. A check recomputes it with that user's key: the restoring user's
//! own, or (for root) the key in that user's home. `docs/security.md` has the trust model.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const AUTH_FILE: &str = "AUTH";
const SCHEME: &str = "mlckpt-blake3-keyed-v1";
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "{path}: the image is not authenticated (no AUTH file): it was written by an older \
         mlckpt, or copied without it. Only images written with your key (or root's) restore"
    )]
    Missing { path: PathBuf },
    #[error("{path}: malformed AUTH file")]
    Malformed { path: PathBuf },
    #[error(
        "{path}: the image's AUTH does not match its CHECKSUMS under the key of uid {uid} \
         ({key}): it was changed by someone without that key, or written with another key \
         (on another node: set [security] key_file to the same key everywhere). Refused"
    )]
    Forged {
        path: PathBuf,
        uid: u32,
        key: PathBuf,
    },
    #[error(
        "{path} was written by uid {uid}; only that user or root can authenticate it (you are \
         uid {me})"
    )]
    OtherUser { path: PathBuf, uid: u32, me: u32 },
    #[error("image key {path}: {problem}")]
    Key { path: PathBuf, problem: String },
}

/// A user's image key.
#[derive(Clone)]
pub struct ImageKey {
    key: [u8; KEY_BYTES],
    pub uid: u32,
    pub path: PathBuf,
}

impl std::fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageKey(uid {}, {})", self.uid, self.path.display())
    }
}

/// `[security] key_file` of the loaded config, set once by the command line.
static CONFIGURED: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Makes `path` (from the config) the calling user's key file.
pub fn use_key_file(path: Option<PathBuf>) {
    let _ = CONFIGURED.set(path);
}

fn configured() -> Option<&'static Path> {
    CONFIGURED.get().and_then(|p| p.as_deref())
}

fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// `~/.config/mlckpt/image.key` of user `uid` (home from the user database, not `$HOME`:
/// root restoring a user's image reads that user's key).
pub fn default_key_path(uid: u32) -> Option<PathBuf> {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok()??;
    Some(user.dir.join(".config/mlckpt/image.key"))
}

impl ImageKey {
    /// The calling user's key, created the first time.
    pub fn own() -> Result<ImageKey, AuthError> {
        let uid = effective_uid();
        // A user's own key follows their $HOME; root's is always in root's home (a HOME
        // kept by sudo would put it in a directory a user owns).
        let home = std::env::var_os("HOME")
            .filter(|h| uid != 0 && !h.is_empty())
            .map(|h| PathBuf::from(h).join(".config/mlckpt/image.key"));
        let path = match configured() {
            Some(p) => p.to_path_buf(),
            None => home
                .or_else(|| default_key_path(uid))
                .ok_or_else(|| AuthError::Key {
                    path: "~/.config/mlckpt/image.key".into(),
                    problem: format!(
                        "uid {uid} has no home directory; set [security] key_file in the config"
                    ),
                })?,
        };
        match ImageKey::load(&path, uid) {
            Err(AuthError::Key { .. }) if !path.exists() => ImageKey::create(&path, uid),
            other => other,
        }
    }

    /// The key of user `uid` as a check needs it: the caller's own, or another user's when
    /// the caller is root.
    pub fn of(uid: u32, image: &Path) -> Result<ImageKey, AuthError> {
        let me = effective_uid();
        if uid == me {
            return ImageKey::own();
        }
        if me != 0 {
            return Err(AuthError::OtherUser {
                path: image.to_path_buf(),
                uid,
                me,
            });
        }
        let path = default_key_path(uid).ok_or_else(|| AuthError::Key {
            path: format!("(home of uid {uid})").into(),
            problem: "no such user".into(),
        })?;
        ImageKey::load(&path, uid)
    }

    /// Reads a key file, which must be a regular file of `uid`'s that nobody else can read
    /// or write.
    fn load(path: &Path, uid: u32) -> Result<ImageKey, AuthError> {
        let bad = |problem: String| AuthError::Key {
            path: path.to_path_buf(),
            problem,
        };
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| bad(e.to_string()))?;
        let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
        if !meta.is_file() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "must be a regular file owned by uid {uid} with mode 0600 (it is owned by uid {}, \
                 mode {:o}); fix it with: chown {uid} {p} && chmod 600 {p}",
                meta.uid(),
                meta.mode() & 0o7777,
                p = path.display()
            )));
        }
        let text = std::io::read_to_string(file).map_err(|e| bad(e.to_string()))?;
        // A key is as long as a blake3 hash: its hex parser and printer serve.
        let key = blake3::Hash::from_hex(text.trim())
            .map(|h| *h.as_bytes())
            .map_err(|_| bad(format!("must hold {} hex digits", 2 * KEY_BYTES)))?;
        Ok(ImageKey {
            key,
            uid,
            path: path.to_path_buf(),
        })
    }

    fn create(path: &Path, uid: u32) -> Result<ImageKey, AuthError> {
        let bad = |e: std::io::Error| AuthError::Key {
            path: path.to_path_buf(),
            problem: format!("cannot create it: {e}"),
        };
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(bad)?;
        }
        let mut key = [0u8; KEY_BYTES];
        fs::File::open("/dev/urandom")
            .and_then(|mut r| std::io::Read::read_exact(&mut r, &mut key))
            .map_err(bad)?;
        // Written aside and linked into place: several mlckpt starting at once must all end
        // up with the one key, and none may read a half-written file.
        let hex = blake3::Hash::from_bytes(key).to_hex();
        let fresh = path.with_extension(format!("new-{}", &hex[..16]));
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&fresh)
            .and_then(|mut file| {
                file.write_all(format!("{hex}\n").as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| fs::hard_link(&fresh, path));
        let _ = fs::remove_file(&fresh);
        match written {
            Ok(()) => Ok(ImageKey {
                key,
                uid,
                path: path.to_path_buf(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => ImageKey::load(path, uid),
            Err(e) => Err(bad(e)),
        }
    }

    /// Proof of holding the key, bound to `context` (what it is for) and `message`: the
    /// ranks of a job authenticate each other with it.
    pub fn prove(&self, context: &str, message: &[u8]) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(context.as_bytes());
        hasher.update(&[0]);
        hasher.update(message);
        hasher.finalize().to_hex().to_string()
    }

    /// A fixed key, for tests that must not read or create a user's key file.
    #[cfg(test)]
    pub(crate) fn for_tests(byte: u8) -> ImageKey {
        ImageKey {
            key: [byte; KEY_BYTES],
            uid: effective_uid(),
            path: "/test/image.key".into(),
        }
    }

    /// The AUTH file's text for an image whose CHECKSUMS is `checksums`.
    pub fn seal(&self, checksums: &[u8]) -> String {
        let mac = blake3::keyed_hash(&self.key, checksums);
        format!("{SCHEME} uid={} {}\n", self.uid, mac.to_hex())
    }
}

/// Checks `AUTH` of the image at `dir` against its CHECKSUMS (`checksums`, as read);
/// returns the uid whose key wrote it.
pub fn check(dir: &Path, checksums: &[u8]) -> Result<u32, AuthError> {
    let path = dir.join(AUTH_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuthError::Missing { path });
        }
        Err(_) => return Err(AuthError::Malformed { path }),
    };
    let (uid, mac) = parse(&text).ok_or_else(|| AuthError::Malformed { path: path.clone() })?;
    let key = ImageKey::of(uid, dir)?;
    // blake3::Hash compares in constant time.
    if blake3::keyed_hash(&key.key, checksums) != mac {
        return Err(AuthError::Forged {
            path,
            uid,
            key: key.path,
        });
    }
    Ok(uid)
}

fn parse(text: &str) -> Option<(u32, blake3::Hash)> {
    let mut words = text.trim_end_matches('\n').split(' ');
    let (scheme, uid, mac) = (words.next()?, words.next()?, words.next()?);
    if scheme != SCHEME || words.next().is_some() {
        return None;
    }
    let uid = uid.strip_prefix("uid=")?.parse().ok()?;
    let mac = blake3::Hash::from_hex(mac).ok()?;
    Some((uid, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ImageKey {
        ImageKey {
            key: [7; KEY_BYTES],
            uid: 1234,
            path: "/k".into(),
        }
    }

    #[test]
    fn seal_parses_back() {
        let text = key().seal(b"sums");
        let (uid, mac) = parse(&text).unwrap();
        assert_eq!(uid, 1234);
        assert_eq!(mac, blake3::keyed_hash(&[7; KEY_BYTES], b"sums"));
    }

    #[test]
    fn malformed_auth_is_refused() {
        for text in [
            "",
            "mlckpt-blake3-keyed-v1 uid=1",
            "other uid=1 00",
            "mlckpt-blake3-keyed-v1 uid=x 00",
            "mlckpt-blake3-keyed-v1 uid=1 zz",
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn concurrent_first_uses_share_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/image.key");
        let keys: Vec<[u8; KEY_BYTES]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ImageKey::create(&path, effective_uid()).map(|k| k.key)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.key");
        fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let err = ImageKey::load(&path, effective_uid())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode 0600"), "{err}");
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        assert!(ImageKey::load(&path, effective_uid()).is_ok());
    }
}
