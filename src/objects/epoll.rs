//! epoll: an interest list of (file, fd number) items, each with its events and user
//! data. The kernel keys an item by the fd number it was added with, so the items are
//! added again at restore by a process of the job that holds, at that number, the very
//! file watched (found with `kcmp(KCMP_EPOLL_TFD)` at checkpoint time), once its fds are
//! in place. An epoll watching another epoll (nested) works the same way. Readiness is
//! not stored: the kernel computes it again as each item is added (an edge-triggered item
//! whose edge was consumed before the checkpoint may report once more: a spurious wake-up
//! that edge-triggered code already handles).

use super::eventfd::recreate;
use super::{OpenFd, Refusal, line_word, unreadable};
use crate::tracer::fd_syscalls;
use serde::{Deserialize, Serialize};
use std::os::fd::OwnedFd;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EpollState {
    pub items: Vec<EpollItem>,
}

/// One watched file: added at restore by process `pid`, on its epoll fd `epfd`, for its fd
/// `fd`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EpollItem {
    pub pid: i32,
    pub epfd: i32,
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// (fd, events, data) of each `tfd:` line of an epoll's fdinfo.
fn parse_items(info: &str) -> Option<Vec<(i32, u32, u64)>> {
    info.lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(|l| {
            let mut words = l.split_whitespace();
            let mut after = |key: &str| words.by_ref().skip_while(|w| *w != key).nth(1);
            let fd = after("tfd:")?.parse().ok()?;
            let events = u32::from_str_radix(after("events:")?, 16).ok()?;
            let data = u64::from_str_radix(after("data:")?, 16).ok()?;
            Some((fd, events, data))
        })
        .collect()
}

pub fn capture(group: &[&OpenFd]) -> Result<EpollState, Refusal> {
    let Some(parsed) = parse_items(&group[0].info) else {
        return Err(unreadable("epoll", group[0]));
    };
    let mut items = Vec::with_capacity(parsed.len());
    for (fd, events, data) in parsed {
        let holder = group
            .iter()
            .find(|h| fd_syscalls::epoll_item_is(h.pid, h.fd, fd).unwrap_or(false));
        let Some(holder) = holder else {
            let ino = group[0]
                .info
                .lines()
                .find(|l| {
                    l.starts_with("tfd:") && l.split_whitespace().nth(1) == Some(&fd.to_string())
                })
                .and_then(|l| line_word(l, "ino:"))
                .unwrap_or("?");
            return Err((
                format!(
                    "an epoll watching a file (inode {ino:}, added as fd {fd}) that no process \
                     holding the epoll has at that fd number any more"
                ),
                "mlckpt adds the item again through that fd; keep the fd open while it is \
                 watched, or remove the item (EPOLL_CTL_DEL) before closing the fd",
            ));
        };
        items.push(EpollItem {
            pid: holder.pid,
            epfd: holder.fd,
            fd,
            events,
            data,
        });
    }
    Ok(EpollState { items })
}

impl EpollState {
    /// The epoll instance, empty: its items are added by the processes (see
    /// [`EpollState::items_of`]).
    pub fn open(&self) -> Result<OwnedFd, super::ObjectError> {
        fd_syscalls::epoll_create().map_err(recreate("an epoll instance"))
    }

    /// The items process `pid` adds through its fd `epfd`.
    pub fn items_of(&self, pid: i32, epfd: i32) -> impl Iterator<Item = &EpollItem> {
        self.items
            .iter()
            .filter(move |i| i.pid == pid && i.epfd == epfd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_read_in_hex() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
                    tfd:        3 events:       19 data:               4d  pos:0 ino:40e sdev:10\n\
                    tfd:       12 events: 80000001 data: ffffffffffffffff  pos:0 ino:1 sdev:9\n";
        assert_eq!(
            parse_items(info),
            Some(vec![(3, 0x19, 0x4d), (12, 0x8000_0001, u64::MAX)])
        );
        assert_eq!(parse_items("pos:\t0\n"), Some(vec![]));
        assert_eq!(parse_items("tfd: x events: 1 data: 1\n"), None);
    }
}
