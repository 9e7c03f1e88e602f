//! Every name Tern uses on its backbone, in one place: the KV buckets, object stores and
//! stream, the subjects, the message headers, and who writes or publishes each
//! ([`NAMES`]); and the wire types of the control plane's requests to a node.
//!
//! Nothing else in Tern spells a bucket or builds a subject: it calls the functions here.

use serde::{Deserialize, Serialize};

/// Deployments: one key per app, its [`crate::apps::AppRecord`].
pub const APPS: &str = "tern-apps";
/// Instances' statuses: one key per app, its [`crate::apps::InstanceStatus`].
pub const STATUS: &str = "tern-status";
/// The node registry: one key per node, its [`crate::model::NodeDescriptor`]. Its
/// entries do not expire: whether a node is alive is the control plane's decision, made
/// from heartbeats on its own clock, never the server's.
pub const REGISTRY: &str = "tern-registry";
/// Drained nodes: one key per node.
pub const DRAINS: &str = "tern-drains";
/// Moves: one key per move, its [`crate::moves::MoveRecord`].
pub const MOVES: &str = "tern-moves";
/// Node identities: one key per node, its [`crate::identity::Identity`] (the key its
/// name is bound to).
pub const IDENTITIES: &str = "tern-identities";
/// Join tokens not spent yet: one key per token, the SHA-256 of the token.
pub const JOIN_TOKENS: &str = "tern-join-tokens";
/// Object store of modules and seed files, by SHA-256.
pub const MODULES: &str = "tern-modules";
/// Object store of checkpoints, by SHA-256.
pub const SNAPSHOTS: &str = "tern-snapshots";
/// The stream of apps' output, on [`log_subject`]s.
pub const LOGS: &str = "tern-logs";

/// Every subject of the [`LOGS`] stream.
pub const LOG_SUBJECTS: &str = "tern.logs.>";
/// Every node's heartbeats.
pub const ALIVE_ALL: &str = "tern.alive.*";
/// The prefix of a heartbeat's subject, before the node's name.
pub const ALIVE_PREFIX: &str = "tern.alive.";

/// Where node `node` says it is alive, every [`crate::backbone::HEARTBEAT`].
pub fn alive_subject(node: &str) -> String {
    format!("{ALIVE_PREFIX}{node}")
}

/// The subject a node takes its commands on ([`NodeCommand`], request and reply).
pub fn command_subject(node: &str) -> String {
    format!("tern.node.{node}.cmd")
}

/// Subject of an app's stdout (`out`) or stderr (`err`).
pub fn log_subject(app: &str, err: bool) -> String {
    format!("tern.logs.{app}.{}", if err { "err" } else { "out" })
}

/// Both of an app's output subjects.
pub fn log_subjects(app: &str) -> String {
    format!("tern.logs.{app}.*")
}

/// Where what happens to an app is said, one line each.
pub fn app_events_subject(app: &str) -> String {
    format!("tern.events.{app}")
}

/// Where what happens to a node is said, one line each.
pub fn node_events_subject(node: &str) -> String {
    format!("tern.events.node.{node}")
}

/// A control plane's echo through the server, unique to that control plane.
pub fn echo_subject(id: u64) -> String {
    format!("tern.echo.{id}")
}

/// Header of a log chunk: the byte offset of its first byte in the app's stdout.
pub const OFFSET: &str = "Tern-Offset";
/// Header of a log message: the incarnation that wrote it.
pub const INCARNATION: &str = "Tern-Incarnation";
/// Header of the empty message a node writes when an incarnation's output has all
/// been published (it migrated away or ended).
pub const END: &str = "Tern-End";
/// Header of a note in an app's output stream, which `tern logs` prints apart from the
/// app's own output (on stderr): say, that an app restarted from its start repeats
/// what it printed before.
pub const NOTE: &str = "Tern-Note";
/// Header of a `Read` answer: the size of the whole file.
pub const SIZE: &str = "Tern-Size";
/// Header of a `Read` answer that failed: why.
pub const ERROR: &str = "Tern-Error";

/// Who writes a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// The control plane only.
    ControlPlane,
    /// The node the name is about (its `NODE`), and the control plane, which removes a
    /// lost node's entry.
    TheNode,
    /// The node the app's record places it on: it reports the instance it runs.
    AppsNode,
    /// The control plane and the node the app's record places it on.
    ControlPlaneAndAppsNode,
}

/// A name on the backbone, and who writes it. `APP` and `NODE` stand for an app's and a
/// node's name.
#[derive(Debug, Clone, Copy)]
pub struct Name {
    pub name: &'static str,
    pub kind: &'static str,
    pub writer: Writer,
    pub readers: &'static str,
}

/// Every name on the backbone.
pub const NAMES: &[Name] = &[
    Name {
        name: APPS,
        kind: "KV bucket",
        writer: Writer::ControlPlane,
        readers: "the control plane; every node (its watch)",
    },
    Name {
        name: STATUS,
        kind: "KV bucket",
        writer: Writer::AppsNode,
        readers: "the control plane; the app's node",
    },
    Name {
        name: REGISTRY,
        kind: "KV bucket",
        writer: Writer::TheNode,
        readers: "the control plane; every node (its peers' links)",
    },
    Name {
        name: DRAINS,
        kind: "KV bucket",
        writer: Writer::ControlPlane,
        readers: "the control plane",
    },
    Name {
        name: MOVES,
        kind: "KV bucket",
        writer: Writer::ControlPlane,
        readers: "the control plane",
    },
    Name {
        name: IDENTITIES,
        kind: "KV bucket",
        writer: Writer::ControlPlane,
        readers: "the control plane",
    },
    Name {
        name: JOIN_TOKENS,
        kind: "KV bucket",
        writer: Writer::ControlPlane,
        readers: "the control plane",
    },
    Name {
        name: MODULES,
        kind: "object store",
        writer: Writer::ControlPlane,
        readers: "the control plane; every node",
    },
    Name {
        name: SNAPSHOTS,
        kind: "object store",
        writer: Writer::AppsNode,
        readers: "the control plane; every node (restores)",
    },
    Name {
        name: "tern.logs.APP.out|err",
        kind: "subject of the tern-logs stream",
        writer: Writer::AppsNode,
        readers: "the control plane; the app's node (where its output stands)",
    },
    Name {
        name: "tern.alive.NODE",
        kind: "subject",
        writer: Writer::TheNode,
        readers: "the control plane",
    },
    Name {
        name: "tern.node.NODE.cmd",
        kind: "subject (request; the node answers on the reply subject)",
        writer: Writer::ControlPlane,
        readers: "the node NODE",
    },
    Name {
        name: "tern.events.APP",
        kind: "subject",
        writer: Writer::ControlPlaneAndAppsNode,
        readers: "whoever follows the app",
    },
    Name {
        name: "tern.events.node.NODE",
        kind: "subject",
        writer: Writer::ControlPlane,
        readers: "whoever follows the node",
    },
    Name {
        name: "tern.echo.ID",
        kind: "subject",
        writer: Writer::ControlPlane,
        readers: "the control plane that sent it",
    },
];

/// The prefix of node `node`'s inboxes, where the answers to its requests (JetStream's
/// acknowledgements, a watch's messages) come: a node receives on its own inboxes only,
/// never on another's.
pub fn node_inbox(node: &str) -> String {
    format!("_INBOX.node.{node}")
}

/// Every stream behind Tern's buckets and object stores, and the [`LOGS`] stream.
const STREAMS: [&str; 8] = [
    "KV_tern-apps",
    "KV_tern-status",
    "KV_tern-registry",
    "KV_tern-drains",
    "KV_tern-moves",
    "OBJ_tern-modules",
    "OBJ_tern-snapshots",
    LOGS,
];

/// The streams a node reads: the apps it is to run and their statuses, its peers, the
/// modules and checkpoints it starts from, and its apps' output (where it stands).
const NODE_READS: [&str; 6] = [
    "KV_tern-apps",
    "KV_tern-status",
    "KV_tern-registry",
    "OBJ_tern-modules",
    "OBJ_tern-snapshots",
    LOGS,
];

/// What node `node`'s credentials allow, made from [`NAMES`]: it publishes the names
/// whose writer is [`Writer::TheNode`] for its own `NODE` only, the app-keyed names
/// whose writer is the app's node, and the JetStream API calls that read the streams a
/// node reads (never one that makes, changes or deletes a stream); it takes its own
/// command subject and its own inboxes; it answers the requests it receives.
pub fn node_rights(node: &str) -> tern_trust::nats::Rights {
    let mut publish = Vec::new();
    for n in NAMES {
        let subjects = match (n.kind, n.writer) {
            (_, Writer::ControlPlane) => continue,
            ("KV bucket", Writer::TheNode) => vec![format!("$KV.{}.{node}", n.name)],
            ("KV bucket", _) => vec![format!("$KV.{}.*", n.name)],
            ("object store", _) => vec![format!("$O.{}.C.>", n.name), format!("$O.{}.M.>", n.name)],
            (_, Writer::TheNode) => vec![n.name.replace("NODE", node)],
            (_, _) => vec![pattern(n.name)],
        };
        publish.extend(subjects);
    }
    for stream in STREAMS {
        publish.push(format!("$JS.API.STREAM.INFO.{stream}"));
    }
    for stream in NODE_READS {
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.>"),
            format!("$JS.API.DIRECT.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            format!("$JS.API.STREAM.MSG.GET.{stream}"),
            format!("$JS.FC.{stream}.>"),
        ]);
    }
    tern_trust::nats::Rights {
        publish,
        subscribe: vec![format!("{}.>", node_inbox(node)), command_subject(node)],
        replies: true,
    }
}

/// What the control plane's credentials allow: everything, since it makes the streams,
/// writes the apps and the moves, and removes a lost node's entries.
pub fn control_plane_rights() -> tern_trust::nats::Rights {
    tern_trust::nats::Rights {
        publish: vec![">".into()],
        subscribe: vec![">".into()],
        replies: true,
    }
}

/// The subject pattern of a [`Name`]: each `APP`, `NODE` or `ID` is one token, `out|err`
/// either.
fn pattern(name: &str) -> String {
    name.split('.')
        .map(|t| match t {
            "APP" | "NODE" | "ID" | "out|err" => "*",
            t => t,
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// A request of the control plane to a node, on [`command_subject`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum NodeCommand {
    /// Start incarnation `incarnation` of `app` as the destination of a live migration
    /// from incarnation `from`; the answer is where it listens.
    Receive {
        app: String,
        incarnation: u64,
        from: u64,
        /// The source's node: the only peer the destination lets in.
        #[serde(default)]
        source: String,
    },
    /// Live-migrate incarnation `incarnation` of `app` to `addr` (node `to`); the
    /// answer comes when the destination has it, or the migration failed.
    Migrate {
        app: String,
        incarnation: u64,
        to: String,
        /// The destination's site.
        site: String,
        addr: String,
    },
    /// Give up incarnation `incarnation` of `app` (a migration to here failed).
    Cancel { app: String, incarnation: u64 },
    /// Up to [`READ_CHUNK`] bytes of a file in `app`'s volumes from `offset`: the
    /// answer's payload, with headers [`SIZE`] (the file's) or [`ERROR`].
    Read {
        app: String,
        path: String,
        offset: u64,
    },
}

/// A node's answer to a [`NodeCommand`] other than `Read`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
    /// With `error`: the app's guest ended before it could be migrated (it does not run
    /// on, whatever else the error says).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

/// What a live migration between nodes measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub downtime_ms: f64,
    pub total_ms: f64,
    pub rounds: u32,
    pub bytes: u64,
    /// Why the guest stopped when it did, when the pre-copy did not converge (empty
    /// when it did).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub precopy: String,
}

/// The most bytes one `Read` answers (NATS messages stay under 1 MiB).
pub const READ_CHUNK: usize = 512 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `subject` is an instance of `pattern`, where `APP`, `NODE` and `ID`
    /// stand for one token and `out|err` for either.
    fn instance_of(subject: &str, pattern: &str) -> bool {
        let (s, p): (Vec<_>, Vec<_>) = (subject.split('.').collect(), pattern.split('.').collect());
        s.len() == p.len()
            && s.iter().zip(&p).all(|(s, p)| match *p {
                "APP" | "NODE" | "ID" => !s.is_empty(),
                "out|err" => *s == "out" || *s == "err",
                p => *s == p,
            })
    }

    #[test]
    fn every_subject_made_here_is_named_in_the_table() {
        let made = [
            alive_subject("edge"),
            command_subject("edge"),
            log_subject("ticker", false),
            log_subject("ticker", true),
            app_events_subject("ticker"),
            node_events_subject("edge"),
            echo_subject(7),
        ];
        for subject in &made {
            let named = NAMES
                .iter()
                .filter(|n| instance_of(subject, n.name))
                .count();
            assert_eq!(named, 1, "{subject} is named {named} times in NAMES");
        }
        for bucket in [
            APPS,
            STATUS,
            REGISTRY,
            DRAINS,
            MOVES,
            IDENTITIES,
            JOIN_TOKENS,
            MODULES,
            SNAPSHOTS,
        ] {
            assert!(
                NAMES.iter().any(|n| n.name == bucket),
                "{bucket} is not in NAMES"
            );
        }
        assert!(alive_subject("edge").starts_with(ALIVE_PREFIX));
        assert!(instance_of(
            &alive_subject("edge"),
            &ALIVE_ALL.replace('*', "NODE")
        ));
        assert!(log_subject("a", false).starts_with(LOG_SUBJECTS.trim_end_matches('>')));
    }

    #[test]
    fn a_command_reads_back_as_it_was_sent() {
        let cmd = NodeCommand::Migrate {
            app: "ticker".into(),
            incarnation: 3,
            to: "cloud".into(),
            site: "cloud".into(),
            addr: "127.0.0.1:9".into(),
        };
        let json = serde_json::to_string(&cmd).expect("json");
        assert!(json.starts_with(r#"{"do":"migrate""#), "{json}");
        assert_eq!(
            serde_json::from_str::<NodeCommand>(&json).expect("reads back"),
            cmd
        );
    }
}
