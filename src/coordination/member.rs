//! A rank's side of its job's generations: joining the coordinator (rank 0 starts it
//! first), the barrier before the freeze, reports, and the recovery-line agreement.

use super::coordinator::{self, CoordinatorHandle};
use super::rendezvous;
use super::wire::{self, Conn, Held, Side, ToCoordinator, ToMember, Transcript, WireError, Writer};
use super::{CoordinationError, Settings};
use crate::image::auth::ImageKey;
use crate::image::format::TierKind;
use std::collections::{BTreeSet, VecDeque};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Between attempts to reach a coordinator that is not there yet.
const RETRY: Duration = Duration::from_millis(100);
const CONNECT: Duration = Duration::from_secs(2);
/// How long the coordinator has to complete the handshake, all of it.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// One rank's connection to its job's coordinator.
pub struct Member {
    conn: Conn,
    pub settings: Settings,
    /// Rank 0's coordinator thread.
    coordinator: Option<CoordinatorHandle>,
    /// For copy threads reporting their outcome.
    reporter: Reporter,
    /// Messages that came while waiting for another.
    backlog: VecDeque<ToMember>,
}

/// Sends to the coordinator from any thread, numbering its lines with the member's.
#[derive(Clone)]
pub struct Reporter(Writer);

impl Reporter {
    pub fn send(&self, message: &ToCoordinator) {
        if let Err(e) = self.0.send(message) {
            crate::debug!("to the coordinator: {e}");
        }
    }
}

/// What the ranks agreed on at a restore.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreed {
    pub generation: Option<u64>,
    /// This rank's tier to restore from.
    pub tier: Option<TierKind>,
    /// Why, the same lines on every rank.
    pub lines: Vec<String>,
}

impl Member {
    /// Joins the job's coordinator, waiting up to `[coordination] timeout` for it; rank 0
    /// starts it first. `tiers`: where the schedule may place checkpoints (rank 0's).
    /// `next_seq`: the rank's next free image number. `restoring`: the ranks will agree on
    /// a recovery line first.
    pub fn join(
        settings: &Settings,
        tiers: BTreeSet<TierKind>,
        next_seq: u64,
        pid: i32,
        restoring: bool,
    ) -> Result<Member, CoordinationError> {
        let key = ImageKey::own().map_err(|e| CoordinationError::Key(Box::new(e)))?;
        let coordinator = if settings.rank == 0 {
            let listener = rendezvous::listen(settings)?;
            Some(coordinator::start(
                settings,
                listener,
                key.clone(),
                tiers,
                restoring,
            )?)
        } else {
            None
        };
        let began = Instant::now();
        let conn = loop {
            let last = match try_join(settings, &key, next_seq, pid) {
                Ok(conn) => break conn,
                Err(why) => why,
            };
            if began.elapsed() >= settings.timeout {
                if coordinator.is_some() {
                    rendezvous::withdraw(&settings.meeting);
                }
                return Err(CoordinationError::Join {
                    rank: settings.rank,
                    meeting: settings.meeting.describe(),
                    secs: settings.timeout.as_secs_f64(),
                    last,
                });
            }
            std::thread::sleep(RETRY);
        };
        let reporter = Reporter(conn.writer());
        crate::info!(
            "rank {} of {} joined the coordinator of job {} ({})",
            settings.rank,
            settings.ranks,
            settings.job,
            settings.meeting.describe()
        );
        Ok(Member {
            conn,
            settings: settings.clone(),
            coordinator,
            reporter,
            backlog: VecDeque::new(),
        })
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.conn.raw_fd()
    }

    /// Whether a message can be taken without waiting on the socket.
    pub fn has_pending(&self) -> bool {
        !self.backlog.is_empty() || self.conn.has_buffered()
    }

    /// The next message: one kept back, else from the socket (called when it is readable).
    pub fn next_message(&mut self) -> Result<ToMember, WireError> {
        self.next_message_within(self.settings.timeout)
    }

    /// The next message, waiting up to `patience` for one.
    pub fn next_message_within(&mut self, patience: Duration) -> Result<ToMember, WireError> {
        if let Some(m) = self.backlog.pop_front() {
            return Ok(m);
        }
        self.conn.receive(Some(patience))
    }

    pub fn send(&mut self, message: &ToCoordinator) -> Result<(), WireError> {
        self.conn.send(message)
    }

    pub fn reporter(&self) -> Reporter {
        self.reporter.clone()
    }

    /// Ready for `generation`'s freeze; returns once every rank is (or why not).
    pub fn barrier(&mut self, generation: u64) -> Result<(), String> {
        self.send(&ToCoordinator::Ready { generation })
            .map_err(|e| crate::error_chain(&e))?;
        let patience = self.patience();
        let why = self.wait_for(patience, |m| match m {
            ToMember::Freeze { generation: g } if *g == generation => Some(Ok(())),
            ToMember::Abandoned { generation: g, why } if *g == generation => {
                Some(Err(why.clone()))
            }
            _ => None,
        });
        why.unwrap_or_else(Err)
    }

    /// The recovery line: says what this rank holds, checks its copies of the generations
    /// the coordinator proposes (`verify` gives the intact tier, or the problems of each
    /// copy), and returns what every rank agreed on.
    pub fn agree(
        &mut self,
        held: Vec<Held>,
        mut verify: impl FnMut(u64) -> (Option<TierKind>, Vec<String>),
    ) -> Result<Agreed, CoordinationError> {
        self.send(&ToCoordinator::Holdings { held })?;
        let rank = self.settings.rank as usize;
        // Another rank may take VERIFY_AT_LEAST checking its copies while this one waits.
        let patience = super::VERIFY_AT_LEAST + self.patience();
        loop {
            let message = self.conn.receive::<ToMember>(Some(patience))?;
            match message {
                ToMember::Verify { generation } => {
                    let (tier, problems) = verify(generation);
                    self.send(&ToCoordinator::Verified {
                        generation,
                        tier,
                        problems,
                    })?;
                }
                ToMember::Chosen {
                    lines,
                    failed: Some(why),
                    ..
                } => {
                    lines.iter().for_each(|l| crate::info!("{l}"));
                    if let Some(c) = &self.coordinator {
                        // This rank's own connection is the one left.
                        let deadline = Instant::now() + self.patience();
                        c.wait_until_connected_at_most(1, Some(deadline));
                    }
                    return Err(CoordinationError::NoAgreement { why });
                }
                ToMember::Chosen {
                    generation,
                    tiers,
                    lines,
                    failed: None,
                } => {
                    return Ok(Agreed {
                        generation,
                        tier: tiers.get(rank).copied().flatten(),
                        lines,
                    });
                }
                other => self.backlog.push_back(other),
            }
        }
    }

    /// The rank's job has ended. Rank 0 then waits for the other ranks to end theirs:
    /// their generations need its coordinator.
    pub fn leave(mut self) {
        let _ = self.send(&ToCoordinator::Finished);
        let coordinator = self.coordinator.take();
        let meeting = self.settings.meeting.clone();
        drop(self);
        if let Some(c) = coordinator {
            c.wait_for_members_to_leave();
            rendezvous::withdraw(&meeting);
        }
    }

    /// Longer than the coordinator's own timeouts: it answers before this runs out unless
    /// it is gone.
    pub fn patience(&self) -> Duration {
        self.settings
            .timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(5))
    }

    /// Reads messages until `pick` takes one (others are kept back for later), or `None`
    /// after `patience`, with the reason.
    fn wait_for<T>(
        &mut self,
        patience: Duration,
        mut pick: impl FnMut(&ToMember) -> Option<T>,
    ) -> Result<T, String> {
        let began = Instant::now();
        loop {
            let left = patience.saturating_sub(began.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "no word from the coordinator within {} s",
                    patience.as_secs_f64()
                ));
            }
            let message = self
                .conn
                .receive::<ToMember>(Some(left))
                .map_err(|e| crate::error_chain(&e))?;
            match pick(&message) {
                Some(found) => return Ok(found),
                None => self.backlog.push_back(message),
            }
        }
    }
}

/// One attempt: the coordinator's address, a connection, the handshake.
fn try_join(settings: &Settings, key: &ImageKey, next_seq: u64, pid: i32) -> Result<Conn, String> {
    let addrs = rendezvous::find(&settings.meeting).map_err(|e| crate::error_chain(&e))?;
    let mut last = "no address".to_string();
    for addr in addrs {
        let stream = match TcpStream::connect_timeout(&addr, CONNECT) {
            Ok(s) => s,
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        match handshake(stream, addr.to_string(), settings, key, next_seq, pid) {
            Ok(conn) => return Ok(conn),
            Err(e) => last = crate::error_chain(&e),
        }
    }
    Err(last)
}

fn handshake(
    stream: TcpStream,
    peer: String,
    settings: &Settings,
    key: &ImageKey,
    next_seq: u64,
    pid: i32,
) -> Result<Conn, WireError> {
    let mut conn = Conn::new(stream, peer)?;
    let deadline = Instant::now() + HANDSHAKE;
    let not_proven = |conn: &Conn| WireError::NotProven {
        peer: conn.peer.clone(),
    };
    let challenge = match conn.receive_by(Some(deadline))? {
        ToMember::Challenge { nonce } if wire::is_nonce(&nonce) => nonce,
        _ => return Err(not_proven(&conn)),
    };
    let transcript = Transcript {
        job: settings.job.clone(),
        rank: settings.rank,
        ranks: settings.ranks,
        pid,
        next_seq,
        challenge,
        nonce: wire::nonce()?,
    };
    conn.send(&ToCoordinator::Hello {
        job: settings.job.clone(),
        rank: settings.rank,
        ranks: settings.ranks,
        pid,
        next_seq,
        nonce: transcript.nonce.clone(),
        proof: transcript.member_proof(key),
    })?;
    match conn.receive_by(Some(deadline))? {
        ToMember::Welcome { proof }
            if wire::same_proof(&proof, &transcript.coordinator_proof(key)) =>
        {
            conn.authenticate(key, &transcript, Side::Member);
            Ok(conn)
        }
        ToMember::Refused { why } => Err(WireError::Refused {
            peer: conn.peer.clone(),
            why,
        }),
        _ => Err(not_proven(&conn)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::config::Config;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};

    /// A coordinator of a job of 2 ranks, started as rank 0's would be, and its address.
    fn coordinator(key: &ImageKey) -> (Settings, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = Settings {
            job: "sim".into(),
            rank: 1,
            ranks: 2,
            timeout: Duration::from_secs(5),
            meeting: rendezvous::Meeting::Fixed {
                host: "127.0.0.1".into(),
                port: addr.port(),
            },
            same_machine: true,
            config: Config::parse("", std::path::Path::new("/c/mlckpt.toml")).unwrap(),
        };
        let handle =
            coordinator::start(&settings, listener, key.clone(), BTreeSet::new(), false).unwrap();
        // The threads serve until the test ends.
        std::mem::forget(handle);
        (settings, addr)
    }

    fn join_as(settings: &Settings, key: &ImageKey, addr: SocketAddr) -> Result<Conn, WireError> {
        let stream = TcpStream::connect(addr).unwrap();
        handshake(stream, addr.to_string(), settings, key, 1, 0)
    }

    fn refusal(joined: Result<Conn, WireError>) -> WireError {
        match joined {
            Ok(_) => panic!("joined"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_rank_connects_once_at_a_time() {
        let key = ImageKey::for_tests(3);
        let (settings, addr) = coordinator(&key);
        let first = join_as(&settings, &key, addr).unwrap();
        let e = refusal(join_as(&settings, &key, addr));
        assert!(
            e.to_string()
                .contains("rank 1 is already connected (a stale supervisor of the same job?)"),
            "{e}"
        );
        let e = refusal(join_as(&settings, &ImageKey::for_tests(4), addr));
        assert!(matches!(e, WireError::Refused { .. }), "{e}");
        // Once the first has gone, the rank may join again.
        drop(first);
        let began = Instant::now();
        while let Err(e) = join_as(&settings, &key, addr) {
            assert!(began.elapsed() < Duration::from_secs(5), "{e}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn connections_that_never_prove_anything_are_bounded() {
        let key = ImageKey::for_tests(3);
        let (_settings, addr) = coordinator(&key);
        let silent: Vec<TcpStream> = (0..64)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                // Each gets its challenge: it is being served.
                s.read_exact(&mut [0u8; 1]).unwrap();
                s
            })
            .collect();
        let mut more = TcpStream::connect(addr).unwrap();
        more.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        more.read_to_end(&mut got).unwrap();
        assert!(
            got.is_empty(),
            "served: {:?}",
            String::from_utf8_lossy(&got)
        );
        drop(silent);
    }
}
