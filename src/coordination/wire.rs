//! What the coordinator and the ranks' supervisors say to each other: one JSON object per
//! line over TCP.
//!
//! A connection opens with a handshake in plain lines: the coordinator sends a challenge;
//! the member answers with a hello (job, rank, its own nonce, ...) and a proof that it
//! holds the user's image key, bound to everything the hello says; the coordinator proves
//! the key back. A peer that cannot (another user, a stale address, a scanner) is dropped
//! before it can ask for anything. Until it has proven itself a peer may send lines of at
//! most 4 KiB, and the whole handshake has one deadline: a peer trickling bytes holds no
//! thread.
//!
//! Every line after the handshake is authenticated, because whoever can write the
//! rendezvous file can stand between a member and its coordinator and relay the handshake;
//! without the key it then cannot inject, change, replay, reorder or drop a message:
//!
//! ```text
//! <seq> <mac> <json>\n
//! ```
//!
//! `seq` (decimal) counts the lines sent in that direction, from 0; `mac` (hex) is the
//! keyed blake3 of `seq` (8 bytes, little-endian) followed by `json`, under that direction's
//! key. Both keys derive from the image key and the handshake's transcript (both nonces,
//! job, rank, ...), so every connection has its own. A line whose MAC is wrong or whose
//! `seq` is not the next one is an error, and the connection is dropped as broken.

use crate::image::auth::ImageKey;
use crate::image::format::TierKind;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Before the peer has proven it holds the key: a challenge or a hello is far shorter.
const MAX_HANDSHAKE_LINE: usize = 4096;
/// A line longer than this is not one of ours.
const MAX_LINE: usize = 1 << 20;
/// Bytes in a nonce (sent as hex).
const NONCE_BYTES: usize = 16;

/// The keys of a connection's two directions.
const TO_COORDINATOR_CONTEXT: &str = "mlckpt 2026-12 coordination: lines to the coordinator";
const TO_MEMBER_CONTEXT: &str = "mlckpt 2026-12 coordination: lines to a member";

/// How a dead peer's node is noticed: probes after 30 s of silence, every 10 s, 3 lost.
const KEEPALIVE_IDLE_SECS: u32 = 30;
const KEEPALIVE_INTERVAL_SECS: u32 = 10;
const KEEPALIVE_PROBES: u32 = 3;
/// Probes are not sent while sent data waits for its acknowledgement: this bounds that wait.
const UNACKNOWLEDGED_MS: u32 = 60_000;
/// How long one line may take to leave. Lines are short and both sides read all the time:
/// a peer whose kernel stops taking them (a stopped or wedged supervisor) must not hold up
/// the sender, which is the coordinator's one deciding thread.
const SEND_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection to {peer} failed")]
    Io {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{peer} closed the connection")]
    Closed { peer: String },
    #[error("no complete message from {peer} in time")]
    TimedOut { peer: String },
    #[error("{peer} sent something that is not part of the protocol: {why}")]
    Garbled { peer: String, why: String },
    #[error(
        "{peer} could not prove it holds this user's image key: it is not a supervisor of \
         this job (another user's, or a stale address)"
    )]
    NotProven { peer: String },
    #[error(
        "a message from {peer} fails its authentication ({why}): someone between the two \
         supervisors changed the connection; it is dropped"
    )]
    Unauthentic { peer: String, why: String },
    #[error("{peer} refused us: {why}")]
    Refused { peer: String, why: String },
    #[error("cannot read random bytes for a handshake from /dev/urandom")]
    Random(#[source] std::io::Error),
}

/// From a rank's supervisor to the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToCoordinator {
    Hello {
        job: String,
        rank: u32,
        ranks: u32,
        /// The process the rank supervises (0 before it has one).
        pid: i32,
        /// The rank's next free image number: generations continue above every rank's.
        next_seq: u64,
        nonce: String,
        proof: String,
    },
    /// A checkpoint this rank was asked for (control socket, SIGUSR1, an intercepted
    /// signal): the coordinator makes it a generation of every rank.
    Ask {
        tier: TierKind,
        stop: bool,
        /// Echoed in [`ToMember::Asked`]: which generation serves this request.
        id: u64,
    },
    /// Pre-copy done: waiting at the barrier before the freeze.
    Ready {
        generation: u64,
    },
    Committed {
        generation: u64,
        freeze_began_unix_us: u64,
        freeze_ms: f64,
        bytes: u64,
    },
    Failed {
        generation: u64,
        why: String,
    },
    Copied {
        generation: u64,
        tier: TierKind,
    },
    CopyFailed {
        generation: u64,
        tier: TierKind,
        why: String,
    },
    /// At a restore: the generations this rank holds a copy of.
    Holdings {
        held: Vec<Held>,
    },
    /// At a restore: the tier whose copy of `generation` is intact, or why none is.
    Verified {
        generation: u64,
        tier: Option<TierKind>,
        problems: Vec<String>,
    },
    /// The rank's job has ended: no more generations for it.
    Finished,
}

/// One generation a rank holds at restore time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub generation: u64,
    pub tiers: Vec<TierKind>,
    /// A record next to one of the copies says every rank committed it.
    pub complete: bool,
}

/// From the coordinator to a rank's supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToMember {
    Challenge {
        nonce: String,
    },
    Welcome {
        proof: String,
    },
    Refused {
        why: String,
    },
    /// Take your part of generation `generation`: pre-copy, then wait for `Freeze`.
    Checkpoint {
        generation: u64,
        tier: TierKind,
        stop: bool,
    },
    /// Every rank is at the barrier.
    Freeze {
        generation: u64,
    },
    /// Every rank committed `generation` on `tier`: write its record there.
    Complete {
        generation: u64,
        tier: TierKind,
        summary: Summary,
    },
    /// A rank's copy of `generation` to `tier` failed: it is not complete there.
    NotComplete {
        generation: u64,
        tier: TierKind,
        why: String,
    },
    /// The generation failed for everyone; no record is written.
    Abandoned {
        generation: u64,
        why: String,
    },
    /// The generation that serves this rank's request `id`: one started for it, the
    /// running one (it covers the request), or, for a request kept while another ran, the
    /// one started next. Sent before that generation's `Checkpoint` or `Abandoned`.
    Asked {
        id: u64,
        generation: u64,
    },
    /// At a restore: check your copies of `generation`.
    Verify {
        generation: u64,
    },
    /// At a restore: the recovery line every rank takes, and why (the same lines for all).
    Chosen {
        generation: Option<u64>,
        tiers: Vec<Option<TierKind>>,
        lines: Vec<String>,
        /// The ranks could not agree (one did not join or answer in time): nobody
        /// restores, and nobody starts afresh either.
        #[serde(default)]
        failed: Option<String>,
    },
}

/// What every rank learns of a generation once it is committed everywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub ranks: u32,
    pub skew_ms: f64,
    pub commit_ms: f64,
    pub freeze_ms_max: f64,
}

/// Which end of a connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Coordinator,
    Member,
}

/// What a handshake establishes. The proofs and the connection's keys cover all of it: a
/// relay that changes any of it makes the handshake fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub job: String,
    pub rank: u32,
    pub ranks: u32,
    pub pid: i32,
    pub next_seq: u64,
    /// The coordinator's nonce.
    pub challenge: String,
    /// The member's nonce.
    pub nonce: String,
}

impl Transcript {
    /// What a member proves: that it holds the key, for all it said and the challenge.
    pub fn member_proof(&self, key: &ImageKey) -> String {
        key.prove("mlckpt coordination member v2", &self.encoded())
    }

    /// What the coordinator proves back, for the same and the member's own nonce.
    pub fn coordinator_proof(&self, key: &ImageKey) -> String {
        key.prove("mlckpt coordination coordinator v2", &self.encoded())
    }

    /// The keys of the lines sent to the coordinator and to the member.
    fn line_keys(&self, key: &ImageKey) -> ([u8; 32], [u8; 32]) {
        let session = key.prove("mlckpt coordination session v1", &self.encoded());
        (
            blake3::derive_key(TO_COORDINATOR_CONTEXT, session.as_bytes()),
            blake3::derive_key(TO_MEMBER_CONTEXT, session.as_bytes()),
        )
    }

    /// Every field, length-prefixed: no two transcripts encode alike.
    fn encoded(&self) -> Vec<u8> {
        let fields: [&[u8]; 7] = [
            self.job.as_bytes(),
            &self.rank.to_le_bytes(),
            &self.ranks.to_le_bytes(),
            &self.pid.to_le_bytes(),
            &self.next_seq.to_le_bytes(),
            self.challenge.as_bytes(),
            self.nonce.as_bytes(),
        ];
        let mut out = Vec::new();
        for field in fields {
            out.extend_from_slice(&(field.len() as u64).to_le_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// One direction's key and the number of its next line.
struct LineKey {
    key: [u8; 32],
    seq: u64,
}

impl LineKey {
    fn new(key: [u8; 32]) -> LineKey {
        LineKey { key, seq: 0 }
    }

    fn mac(&self, seq: u64, json: &[u8]) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(&seq.to_le_bytes());
        hasher.update(json);
        hasher.finalize()
    }

    /// `json` as the next authenticated line.
    fn seal(&mut self, json: &[u8]) -> Vec<u8> {
        let seq = self.seq;
        // 2^64 lines are never sent; saturating keeps a wrapped counter from reusing seq 0.
        self.seq = self.seq.saturating_add(1);
        let mut line = format!("{seq} {} ", self.mac(seq, json).to_hex()).into_bytes();
        line.extend_from_slice(json);
        line.push(b'\n');
        line
    }

    /// The JSON of `line` if it is the next authenticated line, else why not.
    fn open<'a>(&mut self, line: &'a [u8]) -> Result<&'a [u8], String> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let mut parts = line.splitn(3, |&b| b == b' ');
        let (Some(seq), Some(mac), Some(json)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("it is not a sequence number, a MAC and a message".into());
        };
        let seq = std::str::from_utf8(seq)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("its sequence number is not a number")?;
        let mac = std::str::from_utf8(mac)
            .ok()
            .and_then(|m| blake3::Hash::from_hex(m).ok())
            .ok_or("its MAC is not 64 hex digits")?;
        // blake3::Hash compares in constant time.
        if self.mac(seq, json) != mac {
            return Err(format!(
                "the MAC of line {seq} is wrong: it was changed, or sent by someone without \
                 the key"
            ));
        }
        if seq != self.seq {
            return Err(format!(
                "line {seq} came where line {} was due: a line was replayed, reordered or \
                 dropped",
                self.seq
            ));
        }
        self.seq = self.seq.saturating_add(1);
        Ok(json)
    }
}

/// One end of a connection: reads come through a buffer, writes through a [`Writer`]
/// other threads may share.
pub struct Conn {
    reader: BufReader<TcpStream>,
    /// What was read of a line before a receive's deadline passed.
    partial: Vec<u8>,
    /// The key of the lines received, once the handshake succeeded.
    opening: Option<LineKey>,
    writer: Writer,
    pub peer: String,
}

impl Conn {
    pub fn new(stream: TcpStream, peer: String) -> Result<Conn, WireError> {
        let io = |source| WireError::Io {
            peer: peer.clone(),
            source,
        };
        let _ = stream.set_nodelay(true);
        keep_alive(&stream).map_err(|e| io(e.into()))?;
        stream.set_write_timeout(Some(SEND_PATIENCE)).map_err(io)?;
        let writer = Writer {
            sending: Arc::new(Mutex::new(Sending {
                stream: stream.try_clone().map_err(io)?,
                sealing: None,
            })),
            peer: peer.clone(),
        };
        Ok(Conn {
            reader: BufReader::new(stream),
            partial: Vec::new(),
            opening: None,
            writer,
            peer,
        })
    }

    /// The handshake succeeded: from now on every line, both ways, is authenticated with
    /// this connection's keys.
    pub fn authenticate(&mut self, key: &ImageKey, transcript: &Transcript, side: Side) {
        let (to_coordinator, to_member) = transcript.line_keys(key);
        let (sending, receiving) = match side {
            Side::Coordinator => (to_member, to_coordinator),
            Side::Member => (to_coordinator, to_member),
        };
        self.opening = Some(LineKey::new(receiving));
        self.writer.lock().sealing = Some(LineKey::new(sending));
    }

    /// Another handle on the same connection, for writing from another thread; it numbers
    /// its lines with this one.
    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    pub fn send<T: Serialize>(&self, message: &T) -> Result<(), WireError> {
        self.writer.send(message)
    }

    /// The next message; with `timeout`, an error once it passes (`None`: wait for ever).
    pub fn receive<T: DeserializeOwned>(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<T, WireError> {
        // A timeout too long to add is as good as none.
        self.receive_by(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// The next message, whole by `deadline` (`None`: wait for ever).
    pub fn receive_by<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<T, WireError> {
        let line = self.read_line(deadline)?;
        let json = match &mut self.opening {
            Some(key) => key.open(&line).map_err(|why| WireError::Unauthentic {
                peer: self.peer.clone(),
                why,
            })?,
            None => &line[..],
        };
        serde_json::from_slice(json).map_err(|e| self.garbled(e.to_string()))
    }

    fn read_line(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, WireError> {
        let limit = if self.opening.is_some() {
            MAX_LINE
        } else {
            MAX_HANDSHAKE_LINE
        };
        loop {
            if self.reader.buffer().is_empty() {
                // Set before every read: the deadline is for the whole line, however
                // slowly its bytes come.
                let wait = match deadline {
                    None => None,
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(left) if !left.is_zero() => Some(left),
                        _ => return Err(self.timed_out()),
                    },
                };
                self.reader
                    .get_ref()
                    .set_read_timeout(wait)
                    .map_err(|e| self.io(e))?;
            }
            let available = match self.reader.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timed_out());
                }
                Err(e) => return Err(self.io(e)),
            };
            if available.is_empty() {
                return Err(WireError::Closed {
                    peer: self.peer.clone(),
                });
            }
            let (take, whole) = match available.iter().position(|&b| b == b'\n') {
                Some(end) => (end + 1, true),
                None => (available.len(), false),
            };
            if self.partial.len() + take > limit {
                return Err(self.garbled(format!("a line longer than {limit} bytes")));
            }
            self.partial.extend_from_slice(&available[..take]);
            self.reader.consume(take);
            if whole {
                return Ok(std::mem::take(&mut self.partial));
            }
        }
    }

    /// Whether a message is waiting to be read (buffered or on the socket).
    pub fn has_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    pub fn raw_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.reader.get_ref().as_fd()
    }

    fn io(&self, source: std::io::Error) -> WireError {
        WireError::Io {
            peer: self.peer.clone(),
            source,
        }
    }

    fn timed_out(&self) -> WireError {
        WireError::TimedOut {
            peer: self.peer.clone(),
        }
    }

    fn garbled(&self, why: String) -> WireError {
        WireError::Garbled {
            peer: self.peer.clone(),
            why,
        }
    }
}

/// The writing half of a [`Conn`], for other threads (copy results). All handles on one
/// connection number their lines from one counter.
#[derive(Clone)]
pub struct Writer {
    sending: Arc<Mutex<Sending>>,
    peer: String,
}

struct Sending {
    stream: TcpStream,
    /// The key of the lines sent, once the handshake succeeded.
    sealing: Option<LineKey>,
}

impl Writer {
    pub fn send<T: Serialize>(&self, message: &T) -> Result<(), WireError> {
        let json = serde_json::to_vec(message).map_err(|e| WireError::Garbled {
            peer: self.peer.clone(),
            why: e.to_string(),
        })?;
        // One lock over numbering and writing: lines leave in the order of their numbers.
        let mut sending = self.lock();
        let line = match &mut sending.sealing {
            Some(key) => key.seal(&json),
            None => {
                let mut line = json;
                line.push(b'\n');
                line
            }
        };
        sending.stream.write_all(&line).map_err(|source| {
            // Part of a line may have left: nothing more can be said on this connection.
            // Closing it wakes its reader, which reports the peer gone.
            let _ = sending.stream.shutdown(std::net::Shutdown::Both);
            WireError::Io {
                peer: self.peer.clone(),
                source,
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sending> {
        self.sending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Probes a connection whose peer is silent: a peer whose node died sends no FIN, and a
/// reader would wait on it for ever.
fn keep_alive(stream: &TcpStream) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(stream, sockopt::KeepAlive, &true)?;
    setsockopt(stream, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS)?;
    setsockopt(stream, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_SECS)?;
    setsockopt(stream, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)?;
    setsockopt(stream, sockopt::TcpUserTimeout, &UNACKNOWLEDGED_MS)
}

/// A fresh random nonce, hex. No stand-in when the kernel's pool cannot be read: a
/// guessable challenge would let a recorded handshake be replayed.
pub fn nonce() -> Result<String, WireError> {
    let mut bytes = [0u8; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut bytes))
        .map_err(WireError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `text` could be a nonce of ours.
pub fn is_nonce(text: &str) -> bool {
    text.len() == 2 * NONCE_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Constant-time comparison of two proofs.
pub fn same_proof(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_lines() {
        let m = ToCoordinator::Committed {
            generation: 7,
            freeze_began_unix_us: 1,
            freeze_ms: 2.5,
            bytes: 9,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<ToCoordinator>(&text).unwrap(), m);
        let c = ToMember::Chosen {
            failed: None,
            generation: Some(3),
            tiers: vec![Some(TierKind::Partner), None],
            lines: vec!["x".into()],
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<ToMember>(&text).unwrap(), c);
    }

    #[test]
    fn proofs_compare_exactly() {
        assert!(same_proof("abc", "abc"));
        assert!(!same_proof("abc", "abd"));
        assert!(!same_proof("abc", "ab"));
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(a, b);
        assert!(is_nonce(&a));
        assert!(!is_nonce("x") && !is_nonce(&"g".repeat(32)));
    }

    fn transcript() -> Transcript {
        Transcript {
            job: "sim".into(),
            rank: 1,
            ranks: 2,
            pid: 42,
            next_seq: 7,
            challenge: "00".repeat(16),
            nonce: "11".repeat(16),
        }
    }

    #[test]
    fn proofs_cover_the_whole_hello() {
        let key = ImageKey::for_tests(1);
        let t = transcript();
        let proof = t.member_proof(&key);
        assert_ne!(proof, t.coordinator_proof(&key));
        assert_ne!(proof, t.member_proof(&ImageKey::for_tests(2)));
        let changed = [
            Transcript {
                next_seq: u64::MAX,
                ..t.clone()
            },
            Transcript {
                ranks: 3,
                ..t.clone()
            },
            Transcript {
                nonce: "22".repeat(16),
                ..t.clone()
            },
            // The same bytes split differently between two fields.
            Transcript {
                job: "si".into(),
                ..t.clone()
            },
        ];
        for other in changed {
            assert_ne!(other.member_proof(&key), proof, "{other:?}");
        }
    }

    /// A raw client socket and the server's end as a `Conn`.
    fn raw_pair() -> (TcpStream, Conn) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, Conn::new(server, "test".into()).unwrap())
    }

    /// A coordinator's end after the handshake, and the key a member sends with.
    fn authenticated(member_key: &ImageKey) -> (TcpStream, Conn, LineKey) {
        let (client, mut conn) = raw_pair();
        conn.authenticate(&ImageKey::for_tests(1), &transcript(), Side::Coordinator);
        let (to_coordinator, _) = transcript().line_keys(member_key);
        (client, conn, LineKey::new(to_coordinator))
    }

    fn ready(generation: u64) -> Vec<u8> {
        serde_json::to_vec(&ToCoordinator::Ready { generation }).unwrap()
    }

    fn refusal(conn: &mut Conn) -> String {
        match conn.receive::<ToCoordinator>(Some(Duration::from_secs(5))) {
            Err(e @ WireError::Unauthentic { .. }) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn authenticated_lines_arrive_in_order_from_every_writer() {
        let key = ImageKey::for_tests(1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut member = Conn::new(client, "coordinator".into()).unwrap();
        let mut coordinator = Conn::new(server, "member".into()).unwrap();
        member.authenticate(&key, &transcript(), Side::Member);
        coordinator.authenticate(&key, &transcript(), Side::Coordinator);
        let writers: Vec<Writer> = (0..4).map(|_| member.writer()).collect();
        std::thread::scope(|s| {
            for (i, w) in writers.iter().enumerate() {
                s.spawn(move || {
                    for g in 0..50 {
                        w.send(&ToCoordinator::Ready {
                            generation: (i * 1000 + g) as u64,
                        })
                        .unwrap();
                    }
                });
            }
        });
        member.send(&ToCoordinator::Finished).unwrap();
        for _ in 0..200 {
            let m = coordinator.receive::<ToCoordinator>(None).unwrap();
            assert!(matches!(m, ToCoordinator::Ready { .. }), "{m:?}");
        }
        assert_eq!(
            coordinator.receive::<ToCoordinator>(None).unwrap(),
            ToCoordinator::Finished
        );
        coordinator
            .send(&ToMember::Freeze { generation: 3 })
            .unwrap();
        assert_eq!(
            member.receive::<ToMember>(None).unwrap(),
            ToMember::Freeze { generation: 3 }
        );
    }

    #[test]
    fn a_tampered_line_is_refused() {
        let (mut client, mut conn, mut sealer) = authenticated(&ImageKey::for_tests(1));
        let line = sealer.seal(&ready(1));
        let text = String::from_utf8(line).unwrap();
        let forged = text.replace("\"generation\":1", "\"generation\":2");
        assert_ne!(forged, text);
        client.write_all(forged.as_bytes()).unwrap();
        assert!(refusal(&mut conn).contains("MAC of line 0 is wrong"));
    }

    #[test]
    fn a_replayed_or_lost_line_is_refused() {
        let (mut client, mut conn, mut sealer) = authenticated(&ImageKey::for_tests(1));
        let first = sealer.seal(&ready(1));
        client.write_all(&first).unwrap();
        assert_eq!(
            conn.receive::<ToCoordinator>(None).unwrap(),
            ToCoordinator::Ready { generation: 1 }
        );
        client.write_all(&first).unwrap();
        assert!(refusal(&mut conn).contains("line 0 came where line 1 was due"));

        let (mut client, mut conn, mut sealer) = authenticated(&ImageKey::for_tests(1));
        let _lost = sealer.seal(&ready(1));
        client.write_all(&sealer.seal(&ready(2))).unwrap();
        assert!(refusal(&mut conn).contains("line 1 came where line 0 was due"));
    }

    #[test]
    fn lines_under_another_key_or_plain_are_refused() {
        let (mut client, mut conn, mut sealer) = authenticated(&ImageKey::for_tests(2));
        client.write_all(&sealer.seal(&ready(1))).unwrap();
        assert!(refusal(&mut conn).contains("MAC of line 0 is wrong"));

        let (mut client, mut conn, _) = authenticated(&ImageKey::for_tests(1));
        let mut plain = ready(1);
        plain.push(b'\n');
        client.write_all(&plain).unwrap();
        assert!(refusal(&mut conn).contains("not a sequence number"));
    }

    #[test]
    fn a_trickling_peer_misses_the_handshake_deadline() {
        let (mut client, mut conn) = raw_pair();
        let trickle = std::thread::spawn(move || {
            // A byte every 50 ms: each read alone is well within any per-read timeout.
            for _ in 0..40 {
                if client.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let began = Instant::now();
        let e = conn
            .receive_by::<ToCoordinator>(Some(began + Duration::from_millis(400)))
            .unwrap_err();
        assert!(matches!(e, WireError::TimedOut { .. }), "{e}");
        assert!(
            began.elapsed() < Duration::from_millis(1500),
            "{:?}",
            began.elapsed()
        );
        drop(conn);
        trickle.join().unwrap();
    }

    /// A peer that stops reading: the sender's lines fail once its kernel takes no more
    /// (after `SEND_PATIENCE`, shortened here), and the connection is closed, so its
    /// reader learns the peer is gone instead of waiting on it.
    #[test]
    fn a_peer_that_reads_nothing_fails_the_sender_and_closes_the_connection() {
        let (mut client, mut conn) = raw_pair();
        conn.reader
            .get_ref()
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let writer = conn.writer();
        let big = ToMember::Chosen {
            failed: None,
            generation: None,
            tiers: Vec::new(),
            lines: vec!["x".repeat(256 * 1024)],
        };
        let began = Instant::now();
        let failed = (0..1000).find_map(|_| writer.send(&big).err());
        assert!(
            matches!(failed, Some(WireError::Io { .. })),
            "{failed:?} after {:?}",
            began.elapsed()
        );
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{:?}",
            began.elapsed()
        );
        let e = conn
            .receive::<ToCoordinator>(Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(matches!(e, WireError::Closed { .. }), "{e}");
        // The peer reads what had left, then the end of the stream.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(!rest.is_empty());
    }

    #[test]
    fn garbage_and_overlong_lines_are_errors() {
        let (mut client, mut conn) = raw_pair();
        client.write_all(b"{not json}\n").unwrap();
        let e = conn.receive::<ToCoordinator>(None).unwrap_err();
        assert!(matches!(e, WireError::Garbled { .. }), "{e}");
        drop(client);
        let e = conn.receive::<ToCoordinator>(None).unwrap_err();
        assert!(matches!(e, WireError::Closed { .. }), "{e}");

        // Before the handshake, 4 KiB is the most a line may be.
        let (mut client, mut conn) = raw_pair();
        client.write_all(&[b' '; 5000]).unwrap();
        let e = conn.receive::<ToCoordinator>(None).unwrap_err();
        assert!(e.to_string().contains("longer than 4096 bytes"), "{e}");
    }

    #[test]
    fn connections_probe_a_silent_peer() {
        use nix::sys::socket::{getsockopt, sockopt};
        let (_client, conn) = raw_pair();
        let fd = conn.raw_fd();
        assert!(getsockopt(&fd, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepIdle).unwrap(), 30);
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepInterval).unwrap(), 10);
        assert_eq!(getsockopt(&fd, sockopt::TcpKeepCount).unwrap(), 3);
    }
}
