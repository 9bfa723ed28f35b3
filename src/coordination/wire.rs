//! What the coordinator and the ranks' supervisors say to each other: one JSON object per
//! line over TCP, after a handshake in which each side proves it holds the user's image
//! key. A peer that cannot prove it (another user, a stale address, a scanner) is dropped
//! before it can ask for anything.

use crate::image::auth::ImageKey;
use crate::image::format::TierKind;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A line longer than this is not one of ours.
const MAX_LINE: u64 = 1 << 20;

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
    #[error("{peer} sent something that is not part of the protocol: {why}")]
    Garbled { peer: String, why: String },
    #[error(
        "{peer} could not prove it holds this user's image key: it is not a supervisor of \
         this job (another user's, or a stale address)"
    )]
    NotProven { peer: String },
    #[error("{peer} refused us: {why}")]
    Refused { peer: String, why: String },
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

/// One end of a connection: writes go straight out, reads come through a buffer.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub peer: String,
}

impl Conn {
    pub fn new(stream: TcpStream, peer: String) -> Result<Conn, WireError> {
        let _ = stream.set_nodelay(true);
        let writer = stream.try_clone().map_err(|source| WireError::Io {
            peer: peer.clone(),
            source,
        })?;
        Ok(Conn {
            reader: BufReader::new(stream),
            writer,
            peer,
        })
    }

    /// Another handle on the same connection, for writing from another thread.
    pub fn writer(&self) -> Result<Writer, WireError> {
        let stream = self.writer.try_clone().map_err(|e| self.io(e))?;
        Ok(Writer {
            stream,
            peer: self.peer.clone(),
        })
    }

    pub fn send<T: Serialize>(&mut self, message: &T) -> Result<(), WireError> {
        send_on(&mut self.writer, &self.peer, message)
    }

    /// The next message; with `timeout`, an error once it passes (`None`: wait for ever).
    pub fn receive<T: DeserializeOwned>(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<T, WireError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|e| self.io(e))?;
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io(e))?;
        if read == 0 {
            return Err(WireError::Closed {
                peer: self.peer.clone(),
            });
        }
        if line.last() != Some(&b'\n') {
            return Err(self.garbled(format!("a message longer than {MAX_LINE} bytes")));
        }
        serde_json::from_slice(&line).map_err(|e| self.garbled(e.to_string()))
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

    fn garbled(&self, why: String) -> WireError {
        WireError::Garbled {
            peer: self.peer.clone(),
            why,
        }
    }
}

/// The writing half of a [`Conn`], for another thread (copy results).
pub struct Writer {
    stream: TcpStream,
    peer: String,
}

impl Writer {
    pub fn send<T: Serialize>(&mut self, message: &T) -> Result<(), WireError> {
        send_on(&mut self.stream, &self.peer, message)
    }
}

fn send_on<T: Serialize>(stream: &mut TcpStream, peer: &str, message: &T) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(message).map_err(|e| WireError::Garbled {
        peer: peer.to_string(),
        why: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|source| WireError::Io {
        peer: peer.to_string(),
        source,
    })
}

/// A fresh random nonce, hex.
pub fn nonce() -> String {
    let mut bytes = [0u8; 16];
    if getrandom_into(&mut bytes).is_err() {
        // Unique enough for a challenge when the kernel's pool cannot be read.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes[..16].copy_from_slice(&now.as_nanos().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom_into(bytes: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(bytes)
}

/// What a member proves: that it holds the key, for this job, rank and challenge.
pub fn member_proof(key: &ImageKey, job: &str, rank: u32, challenge: &str) -> String {
    key.prove(
        "mlckpt coordination member",
        format!("{job}\0{rank}\0{challenge}").as_bytes(),
    )
}

/// What the coordinator proves back, for the member's own nonce.
pub fn coordinator_proof(key: &ImageKey, job: &str, nonce: &str) -> String {
    key.prove(
        "mlckpt coordination coordinator",
        format!("{job}\0{nonce}").as_bytes(),
    )
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
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn garbage_and_overlong_lines_are_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut conn = Conn::new(server, "test".into()).unwrap();
        client.write_all(b"{not json}\n").unwrap();
        let e = conn.receive::<ToCoordinator>(None).unwrap_err();
        assert!(matches!(e, WireError::Garbled { .. }), "{e}");
        drop(client);
        let e = conn.receive::<ToCoordinator>(None).unwrap_err();
        assert!(matches!(e, WireError::Closed { .. }), "{e}");
    }
}
