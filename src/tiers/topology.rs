//! Which rank this process is, which node it runs on and which node is its partner.
//!
//! A pure function of the command-line rank, the environment (passed in as a map, so tests
//! need no launcher) and `[topology]`. The same inputs always give the same paths, which is
//! what lets `restore --auto` find the images `run` wrote.
//!
//! Sources, first match wins:
//! - rank: `--rank`, `MLCKPT_RANK`, `SLURM_PROCID`, `OMPI_COMM_WORLD_RANK`, `PMI_RANK`, else 0;
//! - node: test mode (`rank / ranks_per_node` of `nodes` simulated nodes); `MLCKPT_NODE` +
//!   `MLCKPT_NODES`; SLURM (`SLURM_NODEID`, `SLURM_NNODES`); Open MPI (`rank /
//!   OMPI_COMM_WORLD_LOCAL_SIZE` of `OMPI_COMM_WORLD_SIZE / OMPI_COMM_WORLD_LOCAL_SIZE`
//!   nodes: Open MPI's default mapping fills a node before the next); else `[topology]`;
//! - host names: `MLCKPT_NODELIST`, `SLURM_JOB_NODELIST`, `SLURM_NODELIST` (compressed
//!   `node[01-03,07],gpu5` form), else unknown.

use super::config::TopologyConfig;
use std::collections::HashMap;

/// The environment as a map: `std::env::vars().collect()` in the program, literals in tests.
pub type Env = HashMap<String, String>;

const RANK_VARS: [&str; 4] = [
    "MLCKPT_RANK",
    "SLURM_PROCID",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
];
/// The job's number of ranks, first match wins.
const RANKS_VARS: [&str; 5] = [
    "MLCKPT_RANKS",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
];
const NODELIST_VARS: [&str; 3] = ["MLCKPT_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"];
/// A node list longer than this is a typo (`node[0-99999999]`), not a cluster.
const MAX_HOSTS: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopologyError {
    #[error("{var}={value:?} is not a whole number >= 0")]
    NotANumber { var: String, value: String },
    #[error(
        "rank {rank} (from {from}) is too large: ranks of a job are below {}",
        crate::image::validate::MAX_RANK
    )]
    RankTooLarge { rank: u32, from: &'static str },
    #[error("{var} is 0; it must be at least 1")]
    Zero { var: &'static str },
    #[error(
        "rank {rank} is on node {node}, but there are only {nodes} node(s) ({how}); check \
         the rank or [topology] nodes / ranks_per_node"
    )]
    NodeOutOfRange {
        rank: u32,
        node: u32,
        nodes: u32,
        how: &'static str,
    },
    #[error("{var}: bad node list {list:?}: {why}")]
    NodeList {
        var: &'static str,
        list: String,
        why: String,
    },
    #[error("rank {rank} is not below the job's {ranks} rank(s) ({from})")]
    RankBeyondRanks {
        rank: u32,
        ranks: u32,
        from: &'static str,
    },
    #[error("{var} names {found} host(s), but there are {nodes} node(s)")]
    HostCount {
        var: &'static str,
        found: usize,
        nodes: u32,
    },
}

/// Where the node numbers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSource {
    /// `[topology] test_mode`: simulated nodes on this machine.
    TestMode,
    /// `MLCKPT_NODE` / `MLCKPT_NODES`.
    Explicit,
    Slurm,
    OpenMpi,
    /// `[topology] nodes` / `ranks_per_node`, no launcher.
    Config,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub rank: u32,
    /// Where the rank came from: `--rank`, an environment variable or `default`.
    pub rank_from: &'static str,
    /// This rank's node, `< nodes`.
    pub node: u32,
    pub nodes: u32,
    pub node_from: NodeSource,
    /// Host name of every node, by node number; empty when no launcher said.
    pub hosts: Vec<String>,
    /// The job's number of ranks, when known: from the launcher, or every rank of the
    /// configured nodes (test mode, or `[topology] nodes` > 1).
    pub ranks: Option<u32>,
    /// Where `ranks` came from.
    pub ranks_from: &'static str,
}

impl Topology {
    /// Works out the topology; errors only for values that are present but wrong.
    pub fn detect(
        rank_flag: Option<u32>,
        env: &Env,
        config: &TopologyConfig,
    ) -> Result<Topology, TopologyError> {
        let (rank, rank_from) = match rank_flag {
            Some(rank) => (rank, "--rank"),
            None => env_rank(env)?,
        };
        if rank >= crate::image::validate::MAX_RANK {
            return Err(TopologyError::RankTooLarge {
                rank,
                from: rank_from,
            });
        }
        let (node, nodes, node_from) = node_of(rank, env, config)?;
        if node >= nodes {
            return Err(TopologyError::NodeOutOfRange {
                rank,
                node,
                nodes,
                how: node_from.describe(),
            });
        }
        let hosts = if node_from == NodeSource::TestMode {
            Vec::new()
        } else {
            hosts(env, nodes)?
        };
        let (ranks, ranks_from) = job_ranks(env, config, node_from)?;
        if let Some(ranks) = ranks.filter(|&n| rank >= n) {
            return Err(TopologyError::RankBeyondRanks {
                rank,
                ranks,
                from: ranks_from,
            });
        }
        Ok(Topology {
            rank,
            rank_from,
            node,
            nodes,
            node_from,
            hosts,
            ranks,
            ranks_from,
        })
    }

    pub fn test_mode(&self) -> bool {
        self.node_from == NodeSource::TestMode
    }

    /// The next node, `(node + 1) mod nodes`; `None` on a single node.
    pub fn partner_node(&self) -> Option<u32> {
        (self.nodes > 1).then(|| (self.node + 1) % self.nodes)
    }

    /// The partner node's host name, when the launcher named the nodes.
    pub fn partner_host(&self) -> Option<&str> {
        let partner = usize::try_from(self.partner_node()?).ok()?;
        self.hosts.get(partner).map(String::as_str)
    }
}

impl NodeSource {
    fn describe(self) -> &'static str {
        match self {
            NodeSource::TestMode => "test mode: node = rank / ranks_per_node",
            NodeSource::Explicit => "MLCKPT_NODE / MLCKPT_NODES",
            NodeSource::Slurm => "SLURM_NODEID / SLURM_NNODES",
            NodeSource::OpenMpi => "Open MPI: rank / OMPI_COMM_WORLD_LOCAL_SIZE",
            NodeSource::Config => "[topology] nodes and ranks_per_node",
        }
    }
}

/// The job's number of ranks: the launcher's, else every rank of the configured nodes.
fn job_ranks(
    env: &Env,
    config: &TopologyConfig,
    node_from: NodeSource,
) -> Result<(Option<u32>, &'static str), TopologyError> {
    for var in RANKS_VARS {
        if let Some(n) = number(env, var)? {
            return Ok((Some(at_least_one(n, var)?), var));
        }
    }
    let configured = config.nodes.saturating_mul(config.ranks_per_node);
    Ok(match node_from {
        NodeSource::TestMode => (Some(configured), "test mode: nodes * ranks_per_node"),
        NodeSource::Config if config.nodes > 1 => {
            (Some(configured), "[topology] nodes * ranks_per_node")
        }
        _ => (None, "unknown"),
    })
}

fn env_rank(env: &Env) -> Result<(u32, &'static str), TopologyError> {
    for var in RANK_VARS {
        if let Some(rank) = number(env, var)? {
            return Ok((rank, var));
        }
    }
    Ok((0, "default"))
}

/// `Some(n)` if `var` is set to a number, `None` if unset or empty.
fn number(env: &Env, var: &str) -> Result<Option<u32>, TopologyError> {
    match env.get(var).map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|_| TopologyError::NotANumber {
                var: var.to_string(),
                value: value.to_string(),
            }),
    }
}

fn at_least_one(value: u32, var: &'static str) -> Result<u32, TopologyError> {
    if value == 0 {
        Err(TopologyError::Zero { var })
    } else {
        Ok(value)
    }
}

/// (node, nodes, source) for `rank`.
fn node_of(
    rank: u32,
    env: &Env,
    config: &TopologyConfig,
) -> Result<(u32, u32, NodeSource), TopologyError> {
    if config.test_mode {
        return Ok((
            rank / config.ranks_per_node,
            config.nodes,
            NodeSource::TestMode,
        ));
    }
    if let Some(node) = number(env, "MLCKPT_NODE")? {
        let nodes = number(env, "MLCKPT_NODES")?.unwrap_or(config.nodes);
        return Ok((
            node,
            at_least_one(nodes, "MLCKPT_NODES")?,
            NodeSource::Explicit,
        ));
    }
    if let Some(node) = number(env, "SLURM_NODEID")? {
        let nodes = match number(env, "SLURM_NNODES")? {
            Some(n) => n,
            None => slurm_node_count(env)?,
        };
        return Ok((
            node,
            at_least_one(nodes, "SLURM_NNODES")?,
            NodeSource::Slurm,
        ));
    }
    if let Some(per_node) = number(env, "OMPI_COMM_WORLD_LOCAL_SIZE")? {
        let per_node = at_least_one(per_node, "OMPI_COMM_WORLD_LOCAL_SIZE")?;
        let size = number(env, "OMPI_COMM_WORLD_SIZE")?.unwrap_or(rank + 1);
        return Ok((
            rank / per_node,
            size.div_ceil(per_node),
            NodeSource::OpenMpi,
        ));
    }
    // One machine by default: every rank on node 0, however many there are.
    let node = if config.nodes == 1 {
        0
    } else {
        rank / config.ranks_per_node
    };
    Ok((node, config.nodes, NodeSource::Config))
}

fn slurm_node_count(env: &Env) -> Result<u32, TopologyError> {
    let count = hosts(env, 0)?.len().max(1);
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Host names from the first node-list variable set; `nodes` = 0 skips the count check.
fn hosts(env: &Env, nodes: u32) -> Result<Vec<String>, TopologyError> {
    let Some((var, list)) = NODELIST_VARS
        .iter()
        .find_map(|&v| Some((v, env.get(v).filter(|l| !l.trim().is_empty())?)))
    else {
        return Ok(Vec::new());
    };
    let hosts = expand_nodelist(list).map_err(|why| TopologyError::NodeList {
        var,
        list: list.clone(),
        why,
    })?;
    if nodes != 0 && hosts.len() != nodes as usize {
        return Err(TopologyError::HostCount {
            var,
            found: hosts.len(),
            nodes,
        });
    }
    Ok(hosts)
}

/// Expands SLURM's compressed host list: `node[01-03,07],gpu5` is node01 node02 node03
/// node07 gpu5. Zero padding follows the range's first number; several brackets in one
/// name multiply (`r[1-2]n[1-2]` is r1n1 r1n2 r2n1 r2n2).
pub fn expand_nodelist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for entry in split_top_level(list)? {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err("empty host name".into());
        }
        expand_entry(entry, &mut String::new(), &mut hosts)?;
    }
    Ok(hosts)
}

/// Splits at commas outside brackets.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0u32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err("nested `[`".into()),
            ']' if depth == 0 => return Err("`]` without `[`".into()),
            ']' => depth = 0,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("`[` without `]`".into());
    }
    parts.push(&list[start..]);
    Ok(parts)
}

/// Appends every host `prefix` + `entry` stands for.
fn expand_entry(entry: &str, prefix: &mut String, out: &mut Vec<String>) -> Result<(), String> {
    let Some(open) = entry.find('[') else {
        out.push(format!("{prefix}{entry}"));
        return Ok(());
    };
    let close = open + entry[open..].find(']').ok_or("`[` without `]`")?;
    let base = prefix.len();
    prefix.push_str(&entry[..open]);
    for range in entry[open + 1..close].split(',') {
        for number in expand_range(range)? {
            if out.len() >= MAX_HOSTS {
                return Err(format!("more than {MAX_HOSTS} hosts"));
            }
            let before = prefix.len();
            prefix.push_str(&number);
            expand_entry(&entry[close + 1..], prefix, out)?;
            prefix.truncate(before);
        }
    }
    prefix.truncate(base);
    Ok(())
}

/// `07` -> ["07"]; `01-03` -> ["01", "02", "03"].
fn expand_range(range: &str) -> Result<Vec<String>, String> {
    let range = range.trim();
    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
    let parse = |s: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{range:?} is not a number or range like 01-03"));
        }
        s.parse().map_err(|_| format!("{s:?} is too large"))
    };
    let (from, to) = (parse(lo)?, parse(hi)?);
    if from > to {
        return Err(format!("range {range:?} runs backwards"));
    }
    if to - from >= MAX_HOSTS as u64 {
        return Err(format!("range {range:?} has more than {MAX_HOSTS} hosts"));
    }
    let width = lo.len();
    Ok((from..=to).map(|n| format!("{n:0width$}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config(test_mode: bool, nodes: u32, ranks_per_node: u32) -> TopologyConfig {
        TopologyConfig {
            test_mode,
            nodes,
            ranks_per_node,
            partner_copy: None,
        }
    }

    fn single() -> TopologyConfig {
        config(false, 1, 1)
    }

    /// Outside test mode, no --rank, the environment `pairs`.
    fn detect(pairs: &[(&str, &str)]) -> Topology {
        Topology::detect(None, &env(pairs), &single()).unwrap()
    }

    #[test]
    fn nothing_set_is_rank_0_on_one_node() {
        let t = Topology::detect(None, &Env::new(), &single()).unwrap();
        assert_eq!((t.rank, t.rank_from, t.node, t.nodes), (0, "default", 0, 1));
        assert_eq!(t.node_from, NodeSource::Config);
        assert_eq!(t.partner_node(), None);
        assert!(t.hosts.is_empty());
    }

    #[test]
    fn rank_flag_beats_the_environment() {
        let e = env(&[("MLCKPT_RANK", "3"), ("SLURM_PROCID", "5")]);
        let t = Topology::detect(Some(7), &e, &single()).unwrap();
        assert_eq!((t.rank, t.rank_from), (7, "--rank"));
        let t = Topology::detect(None, &e, &single()).unwrap();
        assert_eq!((t.rank, t.rank_from), (3, "MLCKPT_RANK"));
    }

    #[test]
    fn test_mode_simulates_nodes() {
        let c = config(true, 3, 2);
        let node = |rank| {
            let t = Topology::detect(Some(rank), &Env::new(), &c).unwrap();
            (t.node, t.partner_node())
        };
        assert_eq!(node(0), (0, Some(1)));
        assert_eq!(node(1), (0, Some(1)));
        assert_eq!(node(3), (1, Some(2)));
        assert_eq!(node(5), (2, Some(0)));
        let e = env(&[("MLCKPT_RANK", "2"), ("SLURM_NODEID", "9")]);
        let t = Topology::detect(None, &e, &c).unwrap();
        assert_eq!((t.rank, t.node, t.node_from), (2, 1, NodeSource::TestMode));
        assert!(t.test_mode() && t.hosts.is_empty());
    }

    #[test]
    fn test_mode_rank_beyond_the_nodes_is_an_error() {
        let e = Topology::detect(Some(4), &Env::new(), &config(true, 2, 2)).unwrap_err();
        assert!(matches!(
            e,
            TopologyError::NodeOutOfRange {
                rank: 4,
                node: 2,
                nodes: 2,
                ..
            }
        ));
        assert!(e.to_string().contains("ranks_per_node"), "{e}");
    }

    #[test]
    fn slurm() {
        let t = detect(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NODEID", "2"),
            ("SLURM_NNODES", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "node[01-03],gpu5"),
        ]);
        assert_eq!((t.rank, t.rank_from), (5, "SLURM_PROCID"));
        assert_eq!((t.node, t.nodes, t.node_from), (2, 4, NodeSource::Slurm));
        assert_eq!(t.hosts, ["node01", "node02", "node03", "gpu5"]);
        assert_eq!(t.partner_node(), Some(3));
        assert_eq!(t.partner_host(), Some("gpu5"));
        let t = detect(&[
            ("SLURM_PROCID", "7"),
            ("SLURM_NODEID", "3"),
            ("SLURM_NODELIST", "a,b,c,d"),
        ]);
        assert_eq!((t.nodes, t.partner_host()), (4, Some("a")));
    }

    #[test]
    fn slurm_inconsistent_values() {
        let e = env(&[("SLURM_NODEID", "4"), ("SLURM_NNODES", "4")]);
        assert!(matches!(
            Topology::detect(None, &e, &single()),
            Err(TopologyError::NodeOutOfRange { node: 4, .. })
        ));
        let e = env(&[
            ("SLURM_NODEID", "0"),
            ("SLURM_NNODES", "3"),
            ("SLURM_JOB_NODELIST", "n[1-2]"),
        ]);
        assert!(matches!(
            Topology::detect(None, &e, &single()),
            Err(TopologyError::HostCount {
                found: 2,
                nodes: 3,
                ..
            })
        ));
        let e = env(&[("SLURM_PROCID", "x1")]);
        assert_eq!(
            Topology::detect(None, &e, &single()).unwrap_err(),
            TopologyError::NotANumber {
                var: "SLURM_PROCID".into(),
                value: "x1".into()
            }
        );
    }

    #[test]
    fn open_mpi() {
        let mut e = vec![
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "4"),
            ("OMPI_COMM_WORLD_SIZE", "10"),
        ];
        let t = detect(&e);
        assert_eq!((t.rank, t.rank_from), (5, "OMPI_COMM_WORLD_RANK"));
        assert_eq!((t.node, t.nodes, t.node_from), (1, 3, NodeSource::OpenMpi));
        assert_eq!((t.partner_node(), t.partner_host()), (Some(2), None));
        e.push(("MLCKPT_NODELIST", "h[7-9]"));
        assert_eq!(detect(&e).partner_host(), Some("h9"));
    }

    #[test]
    fn explicit_node_variables_beat_launchers() {
        let t = detect(&[
            ("PMI_RANK", "1"),
            ("MLCKPT_NODE", "1"),
            ("MLCKPT_NODES", "2"),
            ("SLURM_NODEID", "0"),
        ]);
        assert_eq!((t.rank, t.rank_from), (1, "PMI_RANK"));
        assert_eq!((t.node, t.nodes, t.node_from), (1, 2, NodeSource::Explicit));
        assert_eq!(t.partner_node(), Some(0));
    }

    #[test]
    fn config_without_launcher() {
        let t = Topology::detect(Some(5), &Env::new(), &config(false, 4, 2)).unwrap();
        assert_eq!((t.node, t.nodes, t.node_from), (2, 4, NodeSource::Config));
        let t = Topology::detect(Some(5), &Env::new(), &single()).unwrap();
        assert_eq!((t.node, t.nodes), (0, 1));
    }

    #[test]
    fn nodelist_forms() {
        let expand = |s| expand_nodelist(s).unwrap();
        assert_eq!(
            expand("node[01-03,07],gpu5"),
            ["node01", "node02", "node03", "node07", "gpu5"]
        );
        assert_eq!(expand("n1"), ["n1"]);
        assert_eq!(expand("n[8-11]"), ["n8", "n9", "n10", "n11"]);
        assert_eq!(expand("n[098-100]"), ["n098", "n099", "n100"]);
        assert_eq!(expand("r[1-2]n[1-2]"), ["r1n1", "r1n2", "r2n1", "r2n2"]);
        assert_eq!(expand("a[1]-ib,b"), ["a1-ib", "b"]);
        assert_eq!(expand("x[3,1]"), ["x3", "x1"]);
    }

    #[test]
    fn nodelist_errors() {
        for bad in [
            "n[1-3", "n1-3]", "n[3-1]", "n[a-b]", "n[]", "a,,b", "n[[1]]", "n[1-]",
        ] {
            assert!(expand_nodelist(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(expand_nodelist("n[0-99999999]").is_err());
    }
}
