//! The multicast side of a UDP socket: the groups it joined, each on its interface and
//! with its source filter (any-source, or source-specific), and how it sends to groups
//! (hops, loopback, outgoing interface).
//!
//! The kernel has no call that lists a socket's groups. It lists every group joined on
//! the host, per interface (`/proc/net/igmp`, `/proc/net/igmp6`), and it answers, for one
//! socket, one group and one interface, with that membership's source filter, or
//! `EADDRNOTAVAIL` if the socket is no member (`MCAST_MSFILTER`). So each host group is
//! asked about. At restore each membership is joined again on the interface of the same
//! name, and its filter set.
//!
//! Not kept: an IPv4 outgoing interface chosen by index alone (`ip_mreqn` with no
//! address), which the kernel does not report; on an IPv6 socket, the IPv4-level sending
//! options (TTL, loop, interface) of its IPv4-mapped traffic.

use crate::tracer::sock_syscalls as so;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Multicast {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memberships: Vec<Membership>,
    /// `IP_MULTICAST_TTL` / `IPV6_MULTICAST_HOPS`, when not the default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hops: Option<i32>,
    /// `IP_MULTICAST_LOOP` / `IPV6_MULTICAST_LOOP` turned off.
    #[serde(default)]
    pub no_loop: bool,
    /// `IP_MULTICAST_ALL` / `IPV6_MULTICAST_ALL` turned off: only the socket's own groups
    /// reach it, not every group joined on the host.
    #[serde(default)]
    pub own_groups_only: bool,
    /// IPv4: the local address of `IP_MULTICAST_IF`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_address: Option<Ipv4Addr>,
    /// IPv6: the interface of `IPV6_MULTICAST_IF`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_interface: Option<String>,
}

/// One group joined on one interface.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    pub group: IpAddr,
    pub interface: String,
    /// `MCAST_INCLUDE`: only from `sources` (source-specific); else from any but `sources`.
    #[serde(default)]
    pub include: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<IpAddr>,
}

/// More are not taken from an image (the kernel's defaults are 20 groups per socket,
/// `igmp_max_memberships`, and 10 sources per filter, `igmp_max_msf`).
const MAX_MEMBERSHIPS: usize = 1024;
const MAX_SOURCES: usize = 1024;

// `struct group_filter` and `struct group_req` (linux/in.h): an interface index, then
// `sockaddr_storage`s, 8-byte aligned.
const SOCKADDR_STORAGE: usize = 128;
const GROUP_OFFSET: usize = 8;
const FMODE_OFFSET: usize = GROUP_OFFSET + SOCKADDR_STORAGE;
const NUMSRC_OFFSET: usize = FMODE_OFFSET + 4;
const SOURCES_OFFSET: usize = NUMSRC_OFFSET + 4;
const GROUP_REQ_SIZE: usize = GROUP_OFFSET + SOCKADDR_STORAGE;
const GROUP_SOURCE_REQ_SIZE: usize = GROUP_REQ_SIZE + SOCKADDR_STORAGE;
const MCAST_EXCLUDE: u32 = 0;
const MCAST_INCLUDE: u32 = 1;
/// linux/in6.h (not in the libc crate).
const IPV6_MULTICAST_ALL: i32 = 29;

impl Multicast {
    pub fn is_unset(&self) -> bool {
        *self == Multicast::default()
    }

    /// The multicast state of UDP socket `fd` (an IPv6 one may have joined IPv4 groups
    /// too, at the IPv4 level).
    pub fn capture(fd: BorrowedFd, ipv6: bool) -> Result<Multicast, Errno> {
        let mut memberships = Vec::new();
        for (interface, index, group) in host_groups()? {
            if group.is_ipv6() && !ipv6 {
                continue;
            }
            if let Some((include, sources)) = filter(fd, index, group)? {
                // An include filter with no source receives nothing: no membership.
                if include && sources.is_empty() {
                    continue;
                }
                memberships.push(Membership {
                    group,
                    interface,
                    include,
                    sources,
                });
            }
        }
        let (level, hops_name, loop_name, all_name) = send_options(ipv6);
        let hops = so::get_int(fd, level, hops_name)?;
        let looped = so::get_int(fd, level, loop_name)?;
        let all = so::get_int(fd, level, all_name)?;
        let (send_address, send_interface) = if ipv6 {
            let index = so::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF)?;
            let name = u32::try_from(index)
                .ok()
                .filter(|&i| i != 0)
                .and_then(interface_name);
            (None, name)
        } else {
            let mut addr = [0u8; 4];
            so::get_bytes(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mut addr)?;
            (
                Some(Ipv4Addr::from(addr)).filter(|a| !a.is_unspecified()),
                None,
            )
        };
        Ok(Multicast {
            memberships,
            hops: (hops != 1).then_some(hops),
            no_loop: looped == 0,
            own_groups_only: all == 0,
            send_address,
            send_interface,
        })
    }

    /// Why this cannot be a socket's multicast state, if it cannot.
    pub fn problem(&self, ipv6: bool) -> Option<String> {
        if self.memberships.len() > MAX_MEMBERSHIPS {
            return Some(format!("more than {MAX_MEMBERSHIPS} multicast groups"));
        }
        for m in &self.memberships {
            if !m.group.is_multicast() || (m.group.is_ipv6() && !ipv6) {
                return Some(format!(
                    "a membership of {}, not a group it can join",
                    m.group
                ));
            }
            if m.include && m.sources.is_empty() {
                return Some(format!(
                    "a source-specific membership of {} with no source",
                    m.group
                ));
            }
            if m.sources.len() > MAX_SOURCES
                || m.sources.iter().any(|s| s.is_ipv6() != m.group.is_ipv6())
            {
                return Some(format!("a source filter of group {} out of range", m.group));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(m) = self
            .memberships
            .iter()
            .find(|m| !seen.insert((m.group, &m.interface)))
        {
            return Some(format!("group {} joined twice on {}", m.group, m.interface));
        }
        if (ipv6 && self.send_address.is_some()) || (!ipv6 && self.send_interface.is_some()) {
            return Some("a multicast interface option of the other address family".into());
        }
        let names = self.memberships.iter().map(|m| &m.interface);
        if let Some(name) = names
            .chain(&self.send_interface)
            .find(|n| !valid_interface_name(n))
        {
            return Some(format!("an interface named {name:?}"));
        }
        if self.hops.is_some_and(|h| !(0..=255).contains(&h)) {
            return Some("multicast hops out of range".into());
        }
        None
    }

    /// Sets it all on the new socket `fd`; on failure, what failed and why.
    pub fn apply(&self, fd: BorrowedFd, ipv6: bool) -> Result<(), (String, Errno)> {
        let (level, hops_name, loop_name, all_name) = send_options(ipv6);
        let option = |what: &str| {
            let what = format!("multicast {what}");
            move |e| (what, e)
        };
        if let Some(hops) = self.hops {
            so::set_int(fd, level, hops_name, hops).map_err(option("hops"))?;
        }
        if self.no_loop {
            so::set_int(fd, level, loop_name, 0).map_err(option("loop"))?;
        }
        if self.own_groups_only {
            so::set_int(fd, level, all_name, 0).map_err(option("all groups"))?;
        }
        if let Some(address) = self.send_address {
            so::set_bytes(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &address.octets(),
            )
            .map_err(option(&format!("interface of address {address}")))?;
        }
        if let Some(name) = &self.send_interface {
            let on = format!("interface {name}");
            let index = interface_index(name).map_err(option(&on))?;
            so::set_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_IF,
                index as i32,
            )
            .map_err(option(&on))?;
        }
        for m in &self.memberships {
            let what = format!("membership of group {} on {}", m.group, m.interface);
            let index = interface_index(&m.interface).map_err(|e| (what.clone(), e))?;
            join(fd, index, m).map_err(|e| (what, e))?;
        }
        Ok(())
    }
}

fn join(fd: BorrowedFd, index: u32, m: &Membership) -> Result<(), Errno> {
    let level = level_of(m.group);
    // Source-specific: joined with its first source, so that no other source gets in
    // before the whole filter is set.
    let first_source = m.sources.first().filter(|_| m.include);
    let mut request = [0u8; GROUP_SOURCE_REQ_SIZE];
    request[..4].copy_from_slice(&index.to_ne_bytes());
    request[GROUP_OFFSET..GROUP_REQ_SIZE].copy_from_slice(&sockaddr(m.group));
    match first_source {
        Some(&source) => {
            request[GROUP_REQ_SIZE..].copy_from_slice(&sockaddr(source));
            so::set_bytes(fd, level, libc::MCAST_JOIN_SOURCE_GROUP, &request)?;
        }
        None => so::set_bytes(
            fd,
            level,
            libc::MCAST_JOIN_GROUP,
            &request[..GROUP_REQ_SIZE],
        )?,
    }
    if m.sources.len() > usize::from(first_source.is_some()) {
        let mode = if m.include {
            MCAST_INCLUDE
        } else {
            MCAST_EXCLUDE
        };
        let mut buf = group_filter(index, m.group, m.sources.len());
        buf[FMODE_OFFSET..NUMSRC_OFFSET].copy_from_slice(&mode.to_ne_bytes());
        for (i, source) in m.sources.iter().enumerate() {
            let at = SOURCES_OFFSET + i * SOCKADDR_STORAGE;
            buf[at..at + SOCKADDR_STORAGE].copy_from_slice(&sockaddr(*source));
        }
        so::set_bytes(fd, level, libc::MCAST_MSFILTER, &buf)?;
    }
    Ok(())
}

/// The source filter of `fd`'s membership of `group` on interface `index`: (include,
/// sources); None if it is no member.
fn filter(fd: BorrowedFd, index: u32, group: IpAddr) -> Result<Option<(bool, Vec<IpAddr>)>, Errno> {
    let mut room = 0;
    // Asked again with room for every source; the process runs, so its filter may grow
    // in between: a few tries.
    for _ in 0..4 {
        let mut buf = group_filter(index, group, room);
        match so::get_bytes(fd, level_of(group), libc::MCAST_MSFILTER, &mut buf) {
            Ok(_) => {}
            // Not a member; or not a group of this socket's kind.
            Err(Errno::EADDRNOTAVAIL | Errno::EINVAL | Errno::ENODEV) => return Ok(None),
            Err(e) => return Err(e),
        }
        let word = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default());
        let count = usize::try_from(word(NUMSRC_OFFSET)).unwrap_or(usize::MAX);
        if count > MAX_SOURCES {
            return Err(Errno::E2BIG);
        }
        if count > room {
            room = count;
            continue;
        }
        let sources = (0..count)
            .filter_map(|i| address_in(&buf[SOURCES_OFFSET + i * SOCKADDR_STORAGE..]))
            .collect();
        return Ok(Some((word(FMODE_OFFSET) == MCAST_INCLUDE, sources)));
    }
    Err(Errno::EAGAIN)
}

/// A `struct group_filter` for `group` on interface `index`, with room for `sources`.
fn group_filter(index: u32, group: IpAddr, sources: usize) -> Vec<u8> {
    let mut buf = vec![0u8; SOURCES_OFFSET + sources * SOCKADDR_STORAGE];
    buf[..4].copy_from_slice(&index.to_ne_bytes());
    buf[GROUP_OFFSET..FMODE_OFFSET].copy_from_slice(&sockaddr(group));
    buf[NUMSRC_OFFSET..SOURCES_OFFSET]
        .copy_from_slice(&u32::try_from(sources).unwrap_or(u32::MAX).to_ne_bytes());
    buf
}

/// `ip` as the bytes of a `sockaddr_storage` (port 0). Not `sock_syscalls`' typed
/// conversion: these addresses sit inside byte buffers (`group_filter`, `group_req`), and
/// copying a typed `sockaddr_storage` into one would read its padding, which needs `unsafe`.
fn sockaddr(ip: IpAddr) -> [u8; SOCKADDR_STORAGE] {
    let mut ss = [0u8; SOCKADDR_STORAGE];
    match ip {
        IpAddr::V4(a) => {
            ss[..2].copy_from_slice(&family(libc::AF_INET));
            ss[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            ss[..2].copy_from_slice(&family(libc::AF_INET6));
            ss[8..24].copy_from_slice(&a.octets());
        }
    }
    ss
}

/// An address family as the first field of a `sockaddr`.
fn family(af: i32) -> [u8; 2] {
    libc::sa_family_t::try_from(af)
        .unwrap_or_default()
        .to_ne_bytes()
}

/// The address in a `sockaddr_storage` the kernel wrote.
fn address_in(ss: &[u8]) -> Option<IpAddr> {
    let family = i32::from(u16::from_ne_bytes(ss.get(..2)?.try_into().ok()?));
    match family {
        libc::AF_INET => Some(IpAddr::V4(<[u8; 4]>::try_from(ss.get(4..8)?).ok()?.into())),
        libc::AF_INET6 => Some(IpAddr::V6(
            <[u8; 16]>::try_from(ss.get(8..24)?).ok()?.into(),
        )),
        _ => None,
    }
}

fn level_of(group: IpAddr) -> i32 {
    if group.is_ipv6() {
        libc::IPPROTO_IPV6
    } else {
        libc::IPPROTO_IP
    }
}

/// The level and names of the hops, loop and all-groups options for a socket of this
/// family.
fn send_options(ipv6: bool) -> (i32, i32, i32, i32) {
    if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            libc::IPV6_MULTICAST_LOOP,
            IPV6_MULTICAST_ALL,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_TTL,
            libc::IP_MULTICAST_LOOP,
            libc::IP_MULTICAST_ALL,
        )
    }
}

/// Every group joined on this host: (interface name, its index, group). A file that is not
/// there (a kernel without IPv6) lists none; one that cannot be read fails the capture.
fn host_groups() -> Result<Vec<(String, u32, IpAddr)>, Errno> {
    let read = |path| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
    };
    let mut groups = parse_igmp(&read("/proc/net/igmp")?);
    groups.extend(parse_igmp6(&read("/proc/net/igmp6")?));
    Ok(groups)
}

/// `/proc/net/igmp`: a line per interface (`1\tlo        :     2      V3`), then its groups
/// indented, each as the hex of the address's bytes read as a native integer.
fn parse_igmp(text: &str) -> Vec<(String, u32, IpAddr)> {
    let mut groups = Vec::new();
    let mut interface: Option<(String, u32)> = None;
    for line in text.lines().skip(1) {
        let mut words = line.split_whitespace();
        if line.starts_with(char::is_whitespace) {
            let (Some((name, index)), Some(hex)) = (&interface, words.next()) else {
                continue;
            };
            if let Ok(raw) = u32::from_str_radix(hex, 16) {
                let group = Ipv4Addr::from(raw.to_ne_bytes());
                groups.push((name.clone(), *index, IpAddr::V4(group)));
            }
        } else {
            interface = match (words.next().map(str::parse), words.next()) {
                (Some(Ok(index)), Some(name)) => {
                    Some((name.trim_end_matches(':').to_string(), index))
                }
                _ => None,
            };
        }
    }
    groups
}

/// `/proc/net/igmp6`: `index name group-hex users flags timer`, the group in network order.
fn parse_igmp6(text: &str) -> Vec<(String, u32, IpAddr)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let index = words.next()?.parse().ok()?;
            let name = words.next()?.to_string();
            let group = u128::from_str_radix(words.next()?, 16).ok()?;
            Some((name, index, IpAddr::V6(Ipv6Addr::from(group))))
        })
        .collect()
}

fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name.contains(['/', '\0'])
        && !name.chars().any(char::is_whitespace)
}

fn interface_name(index: u32) -> Option<String> {
    nix::net::if_::if_indextoname(index)
        .ok()
        .map(|n| n.to_string_lossy().into_owned())
}

/// The index of the interface `name` on this host (`ENODEV` if it has none).
fn interface_index(name: &str) -> Result<u32, Errno> {
    nix::net::if_::if_nametoindex(name).map_err(|_| Errno::ENODEV)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_groups_are_read_per_interface() {
        let igmp = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
                    1\tlo        :     2      V3\n\
                    \t\t\t\t070707EF     1 0:00000000\t\t0\n\
                    \t\t\t\t010000E0     1 0:00000000\t\t0\n\
                    4\teth0      :     1      V3\n\
                    \t\t\t\t010000E0     1 0:00000000\t\t0\n";
        let groups = parse_igmp(igmp);
        let expected_first: Ipv4Addr = if cfg!(target_endian = "little") {
            "239.7.7.7".parse().unwrap()
        } else {
            "7.7.7.239".parse().unwrap()
        };
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0], ("lo".into(), 1, IpAddr::V4(expected_first)));
        assert_eq!(groups[2].0, "eth0");
        assert_eq!(groups[2].1, 4);
        let igmp6 = "1    lo              ff150000000000000000000000000077     1 00000004 0\n\
                     4    eth0            ff020000000000000000000000000001     1 0000000C 0\n";
        let groups = parse_igmp6(igmp6);
        assert_eq!(
            groups[0],
            ("lo".into(), 1, IpAddr::V6("ff15::77".parse().unwrap()))
        );
        assert_eq!(groups[1].1, 4);
    }

    #[test]
    fn hostile_states_are_refused() {
        let member = |group: &str, interface: &str| Membership {
            group: group.parse().unwrap(),
            interface: interface.into(),
            include: false,
            sources: vec![],
        };
        let with = |m: Membership| Multicast {
            memberships: vec![m],
            ..Multicast::default()
        };
        assert_eq!(with(member("239.1.1.1", "lo")).problem(false), None);
        assert!(with(member("10.0.0.1", "lo")).problem(false).is_some());
        assert!(with(member("ff15::1", "lo")).problem(false).is_some());
        assert!(with(member("239.1.1.1", "../x")).problem(false).is_some());
        assert!(with(member("239.1.1.1", "")).problem(false).is_some());
        let mut m = member("239.1.1.1", "lo");
        m.sources = vec!["::1".parse().unwrap()];
        assert!(with(m).problem(false).is_some());
        let hops = Multicast {
            hops: Some(300),
            ..Multicast::default()
        };
        assert!(hops.problem(false).is_some());
        let mut specific = member("232.1.1.1", "lo");
        specific.include = true;
        assert!(
            with(specific).problem(false).is_some(),
            "include with no source"
        );
        let twice = Multicast {
            memberships: vec![member("239.1.1.1", "lo"), member("239.1.1.1", "lo")],
            ..Multicast::default()
        };
        assert!(twice.problem(false).is_some());
        let v6_interface_on_v4 = Multicast {
            send_interface: Some("lo".into()),
            ..Multicast::default()
        };
        assert!(v6_interface_on_v4.problem(false).is_some());
        assert_eq!(v6_interface_on_v4.problem(true), None);
    }

    #[test]
    fn sockaddrs_round_trip() {
        for ip in ["239.1.2.3", "ff15::77"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_in(&sockaddr(ip)), Some(ip));
        }
    }
}
