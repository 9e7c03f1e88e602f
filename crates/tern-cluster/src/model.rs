//! What the continuum is made of: nodes as they describe themselves and as they are
//! measured, and the instances of deployments on them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tern_runtime::EngineKind;

/// Where on the continuum a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Cloud,
    Edge,
    Iot,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Cloud, Tier::Edge, Tier::Iot];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Cloud => "cloud",
            Tier::Edge => "edge",
            Tier::Iot => "iot",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Tier, String> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown tier `{s}` (expected cloud, edge or iot)"))
    }
}

/// The trusted execution environment a node offers. Only `none` exists yet; the others
/// are names a manifest may already ask for, which no node then matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tee {
    #[default]
    None,
    Sgx,
    SevSnp,
    Tdx,
}

impl Tee {
    pub const ALL: [Tee; 4] = [Tee::None, Tee::Sgx, Tee::SevSnp, Tee::Tdx];

    pub fn as_str(self) -> &'static str {
        match self {
            Tee::None => "none",
            Tee::Sgx => "sgx",
            Tee::SevSnp => "sev-snp",
            Tee::Tdx => "tdx",
        }
    }
}

impl fmt::Display for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tee {
    type Err = String;
    fn from_str(s: &str) -> Result<Tee, String> {
        Tee::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown TEE `{s}` (expected none, sgx, sev-snp or tdx)"))
    }
}

/// A node: what it declares when it joins, what was measured then, and its live load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeDescriptor {
    /// Unique in the continuum; also the node's `--name`.
    pub name: String,
    /// The machine's architecture as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    pub tier: Tier,
    #[serde(with = "engine_name")]
    pub engine: EngineKind,
    /// Cores the node gives its instances.
    pub cores: u32,
    /// Bytes of memory the node gives its instances.
    pub memory: u64,
    /// Where the node is: nodes of a site share its links to other sites.
    pub site: String,
    pub labels: BTreeMap<String, String>,
    pub tee: Tee,
    /// Measured when the node joined: runs of a benchmark guest per second under the
    /// node's own engine and limits, times its cores. Higher is faster.
    pub compute_score: f64,
    /// Live load, from the node's heartbeats (empty in the registry's entry).
    pub load: NodeLoad,
    /// Where other nodes reach this one for pings (and migrations): `HOST:PORT`.
    #[serde(default)]
    pub link: Option<String>,
    /// Round trips this node measured to others, in ms, by node name, from its
    /// heartbeats (empty in the registry's entry).
    #[serde(default)]
    pub rtt_ms: BTreeMap<String, f64>,
}

/// What a node says every [`crate::backbone::HEARTBEAT`] on `tern.alive.NAME`: that it
/// is alive, what its instances use and the round trips it measured. Only the control
/// plane listens: nodes learn of each other from the registry, whose entries change
/// only when a node joins, changes or leaves.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub name: String,
    pub load: NodeLoad,
    /// Round trips this node measured to others, in ms, by node name.
    #[serde(default)]
    pub rtt_ms: BTreeMap<String, f64>,
}

/// What a node's instances use now.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeLoad {
    /// Cores the instances kept busy over the last heartbeat, 0 to `cores`.
    pub cpu: f64,
    /// Bytes of memory reserved by the instances' limits.
    pub memory: u64,
    /// Bytes of memory the instances' processes hold (resident).
    #[serde(default)]
    pub used: u64,
    pub instances: u32,
}

impl NodeDescriptor {
    /// Memory not yet reserved by an instance.
    pub fn free_memory(&self) -> u64 {
        self.memory.saturating_sub(self.load.memory)
    }
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum InstanceState {
    /// Waiting for a node that passes every filter.
    Pending,
    /// A node was chosen; the agent has not started it yet.
    Placed,
    /// Its node started it: its module is being loaded (compiled, the first time on
    /// that node) or its checkpoint restored.
    Starting,
    Running,
    /// Moving to another node while it runs.
    Migrating {
        to: String,
    },
    Exited {
        code: i32,
    },
    Failed {
        reason: String,
    },
}

impl InstanceState {
    /// The state's name, as tables and `--json` show it.
    pub fn name(&self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Placed => "placed",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Migrating { .. } => "migrating",
            InstanceState::Exited { .. } => "exited",
            InstanceState::Failed { .. } => "failed",
        }
    }
}

/// The `EngineKind` of a node, by the name the command line uses.
pub(crate) mod engine_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use tern_runtime::EngineKind;

    pub fn serialize<S: Serializer>(e: &EngineKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(e.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EngineKind, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>(), Ok(t));
        }
        for t in Tee::ALL {
            assert_eq!(t.as_str().parse::<Tee>(), Ok(t));
        }
        assert_eq!(
            "fog".parse::<Tier>(),
            Err("unknown tier `fog` (expected cloud, edge or iot)".into())
        );
    }
}
