//! Where one rank's images live on each tier (design §7):
//!
//! - local: `<local>/<job>/rank<R>/`, in test mode `<local>/node<K>/<job>/rank<R>/`;
//! - partner copy: in the partner node's local storage, `<local>/<job>/partner/rank<R>/`;
//! - global: `<global>/<job>/rank<R>/`.

use super::config::Config;
use super::topology::Topology;
use crate::image::format::TierKind;
use crate::image::store;
use std::path::{Path, PathBuf};

/// Where copies of this rank's images go on one tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A directory on this machine: the global tier, or a test-mode partner node.
    Dir(PathBuf),
    /// A real cluster: `[topology] partner_copy` run with this host and directory.
    Remote {
        command: String,
        host: String,
        dir: PathBuf,
    },
}

/// Why this rank has no partner tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoPartner {
    #[error("there is only one node, so no partner node to copy to")]
    OneNode,
    #[error(
        "[topology] partner_copy is not set: outside test mode a shell command must copy \
         images to the partner node"
    )]
    NoCommand,
    #[error(
        "the partner node's host name is unknown: set MLCKPT_NODELIST (or run under SLURM, \
         which sets SLURM_JOB_NODELIST), or leave {{host}} out of partner_copy"
    )]
    NoHost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankPaths {
    pub local: PathBuf,
    pub partner: Result<Destination, NoPartner>,
    /// Where `restore --auto` on this node finds a partner copy of this rank: the partner
    /// node's directory in test mode, this node's own `partner/` directory otherwise (a
    /// copy only lands there if it was staged back, see docs/tiers.md).
    pub partner_here: PathBuf,
    pub global: Option<PathBuf>,
}

impl RankPaths {
    pub fn new(config: &Config, job: &str, topology: &Topology) -> RankPaths {
        let root = |node| node_root(config, topology, node);
        let own_root = root(topology.node);
        let partner_dir = |root: &Path| partner_rank_dir(root, job, topology.rank);
        let partner = match topology.partner_node() {
            None => Err(NoPartner::OneNode),
            Some(node) if topology.test_mode() => Ok(Destination::Dir(partner_dir(&root(node)))),
            Some(_) => remote_partner(config, topology, partner_dir(&own_root)),
        };
        let partner_here = match &partner {
            Ok(Destination::Dir(dir)) => dir.clone(),
            _ => partner_dir(&own_root),
        };
        RankPaths {
            local: store::rank_dir(&own_root, job, topology.rank),
            partner,
            partner_here,
            global: config
                .storage
                .global
                .as_ref()
                .map(|g| store::rank_dir(g, job, topology.rank)),
        }
    }

    /// The rank directory this node can read for `tier`, if the tier exists.
    pub fn readable(&self, tier: TierKind) -> Option<&Path> {
        match tier {
            TierKind::Local => Some(&self.local),
            TierKind::Partner => Some(&self.partner_here),
            TierKind::Global => self.global.as_deref(),
        }
    }

    /// Where copies to `tier` go; `None` for the local tier (written there directly) and
    /// for tiers that do not exist.
    pub fn destination(&self, tier: TierKind) -> Option<Destination> {
        match tier {
            TierKind::Local => None,
            TierKind::Partner => self.partner.clone().ok(),
            TierKind::Global => self.global.clone().map(Destination::Dir),
        }
    }

    /// Whether checkpoints can be placed on `tier`.
    pub fn has(&self, tier: TierKind) -> bool {
        match tier {
            TierKind::Local => true,
            TierKind::Partner => self.partner.is_ok(),
            TierKind::Global => self.global.is_some(),
        }
    }

    /// The highest tier checkpoints can be placed on: where SIGTERM's last image goes.
    pub fn highest(&self) -> TierKind {
        TierKind::ALL
            .into_iter()
            .rev()
            .find(|&t| self.has(t))
            .unwrap_or(TierKind::Local)
    }
}

/// Node `node`'s local storage: `<local>/node<K>` in test mode, else `<local>` itself.
pub fn node_root(config: &Config, topology: &Topology, node: u32) -> PathBuf {
    if topology.test_mode() {
        config.storage.local.join(format!("node{node}"))
    } else {
        config.storage.local.clone()
    }
}

/// `<root>/<job>/partner/rank<R>`.
pub fn partner_rank_dir(root: &Path, job: &str, rank: u32) -> PathBuf {
    store::rank_dir(&root.join(job), PARTNER_DIR, rank)
}

/// The directory between `<job>` and `rank<R>` that holds other nodes' copies.
pub const PARTNER_DIR: &str = "partner";

fn remote_partner(
    config: &Config,
    topology: &Topology,
    dir: PathBuf,
) -> Result<Destination, NoPartner> {
    let command = config
        .topology
        .partner_copy
        .clone()
        .ok_or(NoPartner::NoCommand)?;
    let host = match topology.partner_host() {
        Some(host) => host.to_string(),
        None if command.contains("{host}") => return Err(NoPartner::NoHost),
        None => String::new(),
    };
    Ok(Destination::Remote { command, host, dir })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::topology::{Env, NodeSource};

    fn topology(rank: u32, node: u32, nodes: u32, from: NodeSource) -> Topology {
        Topology {
            rank,
            rank_from: "--rank",
            node,
            nodes,
            node_from: from,
            hosts: Vec::new(),
            ranks: None,
            ranks_from: "unknown",
        }
    }

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/c/mlckpt.toml")).unwrap()
    }

    #[test]
    fn test_mode_paths() {
        let c = config(
            "[storage]\nlocal='/l'\nglobal='/g'\n[topology]\ntest_mode=true\nnodes=2\n\
             ranks_per_node=1\n",
        );
        let t = Topology::detect(Some(1), &Env::new(), &c.topology).unwrap();
        let p = RankPaths::new(&c, "sim", &t);
        assert_eq!(p.local, Path::new("/l/node1/sim/rank1"));
        let partner = Path::new("/l/node0/sim/partner/rank1");
        assert_eq!(p.partner, Ok(Destination::Dir(partner.to_path_buf())));
        assert_eq!(p.partner_here, partner);
        assert_eq!(p.global.as_deref(), Some(Path::new("/g/sim/rank1")));
        assert_eq!(p.highest(), TierKind::Global);
    }

    #[test]
    fn real_cluster_paths() {
        let c = config("[storage]\nlocal='/l'\n[topology]\npartner_copy='cp -r {src} {dst}'\n");
        let t = topology(3, 1, 2, NodeSource::Slurm);
        let p = RankPaths::new(&c, "sim", &t);
        assert_eq!(p.local, Path::new("/l/sim/rank3"));
        let here = Path::new("/l/sim/partner/rank3");
        assert_eq!(p.partner_here, here);
        assert_eq!(
            p.partner,
            Ok(Destination::Remote {
                command: "cp -r {src} {dst}".into(),
                host: String::new(),
                dir: here.to_path_buf()
            })
        );
        assert_eq!(p.highest(), TierKind::Partner);
    }

    #[test]
    fn why_there_is_no_partner() {
        let plain = config("[storage]\nlocal='/l'\n");
        let p = RankPaths::new(&plain, "j", &topology(0, 0, 1, NodeSource::Config));
        assert_eq!(p.partner, Err(NoPartner::OneNode));
        assert_eq!(p.highest(), TierKind::Local);
        let p = RankPaths::new(&plain, "j", &topology(0, 0, 2, NodeSource::Slurm));
        assert_eq!(p.partner, Err(NoPartner::NoCommand));
        let rsync = config("[topology]\npartner_copy='rsync -a {src}/ {host}:{dst}/'\n");
        let mut t = topology(0, 0, 2, NodeSource::Slurm);
        assert_eq!(
            RankPaths::new(&rsync, "j", &t).partner,
            Err(NoPartner::NoHost)
        );
        t.hosts = vec!["a".into(), "b".into()];
        let p = RankPaths::new(&rsync, "j", &t);
        assert!(matches!(p.partner, Ok(Destination::Remote { ref host, .. }) if host == "b"));
    }
}
