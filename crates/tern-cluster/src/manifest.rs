//! The deployment manifest: what a user asks the continuum to run, written in TOML and
//! checked whole before anything is deployed. An invalid manifest is refused with the
//! line, the field and what is wrong with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tern_runtime::EngineKind;
use toml::Spanned;

use crate::model::{Tee, Tier};

/// Memory limit of an instance whose manifest names none.
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Replicas a manifest may ask for at most.
pub const MAX_REPLICAS: u32 = 1000;

/// A checked deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Lowercase letters, digits and `-`, at most 63: it names the app in every verb.
    pub name: String,
    pub module: ModuleRef,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub volumes: Vec<VolumeSpec>,
    /// `[limits] memory`: bytes of linear memory an instance may use; the scheduler
    /// reserves that much on its node.
    pub memory: u64,
    pub constraints: Constraints,
    pub affinities: Vec<Affinity>,
    /// `near` and `max_rtt_ms`: the site whose users the app serves.
    pub near: Option<Near>,
    /// Whether instances may be live-migrated (and checkpointed).
    pub migratable: bool,
    /// How often a migratable instance is checkpointed, so that it can be restored
    /// elsewhere if its node dies.
    pub checkpoint_every: Option<Duration>,
    pub replicas: u32,
    /// `spread = "site"`: replicas prefer sites that hold fewer of them.
    pub spread: bool,
    /// `signed_by`: the keys that must all have signed the module (`tern sign`); the
    /// control plane checks at deploy, and a node again before it runs any of it.
    pub signed_by: Vec<tern_trust::PublicKey>,
}

/// Where the module comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleRef {
    /// A file, relative to the manifest's directory unless absolute.
    Path(PathBuf),
    /// The SHA-256 (hex) of a module already uploaded.
    Digest(String),
}

/// A volume of the guest, optionally seeded from host files at deploy time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// An absolute guest path, such as `/data`.
    pub guest: String,
    pub seed: Option<PathBuf>,
}

/// Hard constraints: a node that fails one is never chosen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Constraints {
    pub arch: Option<String>,
    /// Empty: any tier.
    pub tiers: Vec<Tier>,
    pub engine: Option<EngineKind>,
    pub labels: BTreeMap<String, String>,
    /// Bytes of memory the node must have in all, free or not.
    pub min_memory: u64,
    pub tee: Option<Tee>,
}

/// A soft preference: nodes that match gain `weight` (negative: lose).
#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    pub target: AffinityTarget,
    /// -100 to 100, not 0.
    pub weight: i32,
}

/// What an affinity matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityTarget {
    Tier(Tier),
    Site(String),
    Arch(String),
    Label(String, String),
}

/// The site an app should be near, and how near.
#[derive(Debug, Clone, PartialEq)]
pub struct Near {
    pub site: String,
    /// A node farther than this (measured round trip) is refused.
    pub max_rtt_ms: Option<f64>,
}

/// Why a manifest was refused: where, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ManifestError {
    /// 1-based line of the manifest.
    pub line: usize,
    /// The field, in TOML's dotted form (`constraints.tier`), when one is at fault.
    pub field: Option<String>,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    module: Spanned<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    migratable: bool,
    checkpoint_every: Option<Spanned<String>>,
    near: Option<Spanned<String>>,
    max_rtt_ms: Option<Spanned<f64>>,
    replicas: Option<Spanned<i64>>,
    spread: Option<Spanned<String>>,
    limits: Option<RawLimits>,
    constraints: Option<RawConstraints>,
    #[serde(default)]
    affinity: Vec<Spanned<RawAffinity>>,
    #[serde(default)]
    volumes: Vec<Spanned<RawVolume>>,
    #[serde(default)]
    signed_by: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConstraints {
    arch: Option<Spanned<String>>,
    tier: Option<Spanned<OneOrMany>>,
    engine: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    min_memory: Option<Spanned<String>>,
    tee: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAffinity {
    tier: Option<String>,
    site: Option<String>,
    arch: Option<String>,
    label: Option<String>,
    weight: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    guest: String,
    seed: Option<String>,
}

/// Reads and checks a manifest. Every check runs before the first error is returned, so
/// the error is the one nearest the top of the file.
///
/// # Errors
/// [`ManifestError`] naming the line, the field and what is wrong.
pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
    let raw: Raw = toml::from_str(text).map_err(|e| ManifestError {
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        field: e.span().and_then(|s| field_at(text, s.start)),
        message: e.message().trim_end().to_owned(),
    })?;
    let mut c = Checker {
        text,
        errors: Vec::new(),
    };
    let m = c.check(raw);
    let mut errors = c.errors;
    errors.sort_by_key(|e| e.line);
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(m),
    }
}

/// The field whose value is at `offset`: the key on that line, under the table
/// header above it (`limits.memory`), when the line is `key = value`.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('[') || key.contains(char::is_whitespace) {
        return None;
    }
    let table = text[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
    });
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    text: &'a str,
    errors: Vec<ManifestError>,
}

impl Checker<'_> {
    fn fail(&mut self, span: std::ops::Range<usize>, field: &str, message: impl Into<String>) {
        self.errors.push(ManifestError {
            line: line_of(self.text, span.start),
            field: Some(field.to_owned()),
            message: message.into(),
        });
    }

    /// `value` parsed by `parse`, or the error recorded against `field`.
    fn value<T, E: std::fmt::Display>(
        &mut self,
        value: &Spanned<String>,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match parse(value.get_ref()) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(value.span(), field, e.to_string());
                None
            }
        }
    }

    fn check(&mut self, raw: Raw) -> Manifest {
        let name = raw.name.get_ref().clone();
        if !valid_name(&name) {
            self.fail(
                raw.name.span(),
                "name",
                format!("`{name}` is not a name: use 1 to 63 lowercase letters, digits and `-`, starting with a letter"),
            );
        }
        let module = self.module(&raw.module);
        for k in raw.env.keys() {
            if k.get_ref().is_empty() || k.get_ref().contains('=') {
                self.fail(
                    k.span(),
                    "env",
                    format!("`{}` is not a variable name", k.get_ref()),
                );
            }
        }
        let env = raw
            .env
            .into_iter()
            .map(|(k, v)| (k.into_inner(), v))
            .collect();
        let checkpoint_every = raw.checkpoint_every.as_ref().and_then(|v| {
            let d = self.value(v, "checkpoint_every", tern_runtime::parse_duration)?;
            if !raw.migratable {
                self.fail(
                    v.span(),
                    "checkpoint_every",
                    "needs `migratable = true`: only a migratable app can be checkpointed",
                );
            } else if d < Duration::from_secs(1) {
                self.fail(v.span(), "checkpoint_every", "must be at least 1s");
            }
            Some(d)
        });
        let near = self.near(raw.near, raw.max_rtt_ms);
        let replicas = match raw.replicas {
            None => 1,
            Some(r) => match u32::try_from(*r.get_ref()) {
                Ok(n) if (1..=MAX_REPLICAS).contains(&n) => n,
                _ => {
                    self.fail(r.span(), "replicas", format!("must be 1 to {MAX_REPLICAS}"));
                    1
                }
            },
        };
        let spread = match &raw.spread {
            None => false,
            Some(s) if s.get_ref() == "site" => true,
            Some(s) => {
                self.fail(
                    s.span(),
                    "spread",
                    format!("`{}`: only `site` is known", s.get_ref()),
                );
                false
            }
        };
        let memory = raw
            .limits
            .and_then(|l| l.memory)
            .and_then(|m| {
                let bytes = self.value(&m, "limits.memory", tern_runtime::parse_size)?;
                if bytes < 64 << 10 {
                    self.fail(
                        m.span(),
                        "limits.memory",
                        "must be at least 64KiB, one Wasm page",
                    );
                }
                Some(bytes)
            })
            .unwrap_or(DEFAULT_MEMORY);
        let constraints = raw
            .constraints
            .map(|c| self.constraints(c))
            .unwrap_or_default();
        let affinities = raw
            .affinity
            .iter()
            .filter_map(|a| self.affinity(a))
            .collect();
        let volumes = self.volumes(&raw.volumes);
        let signed_by = raw
            .signed_by
            .iter()
            .filter_map(|k| self.value(k, "signed_by", str::parse::<tern_trust::PublicKey>))
            .collect();
        Manifest {
            name,
            module,
            args: raw.args,
            env,
            volumes,
            memory,
            constraints,
            affinities,
            near,
            migratable: raw.migratable,
            checkpoint_every,
            replicas,
            spread,
            signed_by,
        }
    }

    fn module(&mut self, module: &Spanned<String>) -> ModuleRef {
        let text = module.get_ref();
        if let Some(hex) = text.strip_prefix("sha256:") {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.fail(
                    module.span(),
                    "module",
                    "a digest is `sha256:` and 64 hex digits",
                );
            }
            return ModuleRef::Digest(hex.to_ascii_lowercase());
        }
        if text.is_empty() {
            self.fail(
                module.span(),
                "module",
                "give a path to a .wasm file or `sha256:` and a digest",
            );
        }
        ModuleRef::Path(PathBuf::from(text))
    }

    fn near(&mut self, near: Option<Spanned<String>>, max: Option<Spanned<f64>>) -> Option<Near> {
        let max_rtt_ms = max.map(|m| {
            let v = *m.get_ref();
            if !(v.is_finite() && v > 0.0) {
                self.fail(
                    m.span(),
                    "max_rtt_ms",
                    "must be a positive number of milliseconds",
                );
            }
            if near.is_none() {
                self.fail(
                    m.span(),
                    "max_rtt_ms",
                    "needs `near = \"SITE\"`: the round trip is measured to that site",
                );
            }
            v
        });
        let near = near?;
        if near.get_ref().is_empty() {
            self.fail(near.span(), "near", "name a site");
        }
        Some(Near {
            site: near.into_inner(),
            max_rtt_ms,
        })
    }

    fn constraints(&mut self, c: RawConstraints) -> Constraints {
        let tiers = match &c.tier {
            None => Vec::new(),
            Some(t) => {
                let names = match t.get_ref() {
                    OneOrMany::One(s) => vec![s.clone()],
                    OneOrMany::Many(v) => v.clone(),
                };
                if names.is_empty() {
                    self.fail(
                        t.span(),
                        "constraints.tier",
                        "name at least one tier, or leave it out",
                    );
                }
                let mut tiers = Vec::new();
                for n in names {
                    match n.parse::<Tier>() {
                        Ok(t) => tiers.push(t),
                        Err(e) => self.fail(t.span(), "constraints.tier", e),
                    }
                }
                tiers
            }
        };
        let engine = c
            .engine
            .as_ref()
            .and_then(|e| self.value(e, "constraints.engine", str::parse::<EngineKind>));
        let tee = c
            .tee
            .as_ref()
            .and_then(|t| self.value(t, "constraints.tee", str::parse::<Tee>));
        let min_memory = c
            .min_memory
            .as_ref()
            .and_then(|m| self.value(m, "constraints.min_memory", tern_runtime::parse_size))
            .unwrap_or(0);
        let arch = c.arch.map(|a| {
            if a.get_ref().is_empty() {
                self.fail(
                    a.span(),
                    "constraints.arch",
                    "name an architecture, such as x86_64 or aarch64",
                );
            }
            a.into_inner()
        });
        Constraints {
            arch,
            tiers,
            engine,
            labels: c.labels,
            min_memory,
            tee,
        }
    }

    fn affinity(&mut self, a: &Spanned<RawAffinity>) -> Option<Affinity> {
        let r = a.get_ref();
        let weight = match i32::try_from(r.weight) {
            Ok(w) if w != 0 && (-100..=100).contains(&w) => w,
            _ => {
                self.fail(
                    a.span(),
                    "affinity.weight",
                    "must be -100 to 100, and not 0",
                );
                return None;
            }
        };
        let set = [&r.tier, &r.site, &r.arch, &r.label]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            self.fail(
                a.span(),
                "affinity",
                "give exactly one of tier, site, arch or label (\"KEY=VALUE\"), with a weight",
            );
            return None;
        }
        let target = if let Some(t) = &r.tier {
            match t.parse() {
                Ok(t) => AffinityTarget::Tier(t),
                Err(e) => {
                    self.fail(a.span(), "affinity.tier", e);
                    return None;
                }
            }
        } else if let Some(s) = &r.site {
            AffinityTarget::Site(s.clone())
        } else if let Some(s) = &r.arch {
            AffinityTarget::Arch(s.clone())
        } else {
            let label = r.label.as_deref().unwrap_or_default();
            match label.split_once('=') {
                Some((k, v)) if !k.is_empty() => AffinityTarget::Label(k.into(), v.into()),
                _ => {
                    self.fail(
                        a.span(),
                        "affinity.label",
                        format!("`{label}`: write it as KEY=VALUE"),
                    );
                    return None;
                }
            }
        };
        Some(Affinity { target, weight })
    }

    fn volumes(&mut self, raw: &[Spanned<RawVolume>]) -> Vec<VolumeSpec> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for v in raw {
            let r = v.get_ref();
            let g = &r.guest;
            if !g.starts_with('/') || g.split('/').any(|c| c == "..") || g.contains('\0') {
                self.fail(
                    v.span(),
                    "volumes.guest",
                    format!("`{g}` is not an absolute guest path without `..`"),
                );
                continue;
            }
            let g = g.trim_end_matches('/');
            let g = if g.is_empty() { "/" } else { g };
            if !seen.insert(g.to_owned()) {
                self.fail(v.span(), "volumes.guest", format!("`{g}` is given twice"));
                continue;
            }
            out.push(VolumeSpec {
                guest: g.to_owned(),
                seed: r.seed.as_ref().map(PathBuf::from),
            });
        }
        out
    }
}

/// Whether `name` can name an app: a DNS label (lowercase letters, digits and `-`,
/// starting with a letter, at most 63 bytes), which is safe in NATS subjects, KV keys
/// and paths alike.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "sensor-agg"
module = "apps/agg.wasm"
args = ["--window", "60"]
env = { LEVEL = "info" }
migratable = true
checkpoint_every = "30s"
near = "edge-1"
max_rtt_ms = 10
replicas = 3
spread = "site"

[limits]
memory = "256MiB"

[constraints]
arch = "x86_64"
tier = ["edge", "cloud"]
labels = { region = "eu" }
min_memory = "512MiB"

[[affinity]]
tier = "edge"
weight = 50

[[affinity]]
label = "disk=ssd"
weight = -20

[[volumes]]
guest = "/data"
seed = "./data"
"#;

    #[test]
    fn a_full_manifest_reads_as_written() {
        let m = parse(FULL).expect("valid");
        assert_eq!(m.name, "sensor-agg");
        assert_eq!(m.module, ModuleRef::Path("apps/agg.wasm".into()));
        assert_eq!(m.args, ["--window", "60"]);
        assert_eq!(m.env.get("LEVEL").map(String::as_str), Some("info"));
        assert_eq!(m.checkpoint_every, Some(Duration::from_secs(30)));
        assert_eq!(
            m.near,
            Some(Near {
                site: "edge-1".into(),
                max_rtt_ms: Some(10.0)
            })
        );
        assert_eq!((m.replicas, m.spread, m.memory), (3, true, 256 << 20));
        assert_eq!(m.constraints.tiers, [Tier::Edge, Tier::Cloud]);
        assert_eq!(m.constraints.min_memory, 512 << 20);
        assert_eq!(
            m.affinities[1].target,
            AffinityTarget::Label("disk".into(), "ssd".into())
        );
        assert_eq!(m.affinities[1].weight, -20);
        assert_eq!(m.volumes[0].guest, "/data");
    }

    #[test]
    fn the_smallest_manifest_takes_the_defaults() {
        let digest = "ab".repeat(32);
        let m = parse(&format!("name = \"a\"\nmodule = \"sha256:{digest}\"\n")).expect("valid");
        assert_eq!(m.module, ModuleRef::Digest(digest));
        assert_eq!(
            (m.replicas, m.memory, m.migratable),
            (1, DEFAULT_MEMORY, false)
        );
    }

    /// Each bad manifest is refused with its line, its field and the reason.
    #[test]
    fn bad_manifests_name_line_field_and_reason() {
        let cases: &[(&str, &str)] = &[
            (
                "name = \"Bad_Name\"\nmodule = \"a.wasm\"",
                "line 1: name: `Bad_Name` is not a name",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nmigratable = \"perhaps\"",
                "line 3: migratable: invalid type: string \"perhaps\", expected a boolean",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\n[limits]\nmemory = 64",
                "line 4: limits.memory: invalid type: integer `64`",
            ),
            (
                "name = \"a\"\nmodule = \"sha256:xyz\"",
                "line 2: module: a digest is `sha256:` and 64 hex digits",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\n[constraints]\ntier = \"fog\"",
                "line 4: constraints.tier: unknown tier `fog`",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\n[limits]\nmemory = \"lots\"",
                "line 4: limits.memory: invalid size `lots`",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\ncheckpoint_every = \"30s\"",
                "line 3: checkpoint_every: needs `migratable = true`",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nmax_rtt_ms = 5",
                "line 3: max_rtt_ms: needs `near = \"SITE\"`",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nreplicas = 0",
                "line 3: replicas: must be 1 to 1000",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\n[constraints]\nengine = \"v8\"",
                "line 4: constraints.engine: unknown engine `v8`",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\n\n[[affinity]]\ntier = \"edge\"\nweight = 500",
                "line 4: affinity.weight: must be -100 to 100",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\n[[volumes]]\nguest = \"data/../x\"",
                "line 3: volumes.guest: `data/../x` is not an absolute guest path",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nreplica = 2",
                "line 3: replica: unknown field `replica`",
            ),
            ("name = \"a\"\n", "missing field `module`"),
            ("name = \"a\"\nmodule = [1", "line 2: "),
        ];
        for (text, want) in cases {
            let e = parse(text).expect_err(text);
            assert!(
                e.to_string().starts_with(want)
                    || (want.starts_with("missing") && e.to_string().contains(want)),
                "{text:?}: got `{e}`, want `{want}`"
            );
        }
    }

    #[test]
    fn the_error_nearest_the_top_is_given() {
        let text = "name = \"a\"\nmodule = \"a.wasm\"\nreplicas = 0\n[limits]\nmemory = \"lots\"";
        assert!(
            parse(text)
                .expect_err("two errors")
                .to_string()
                .starts_with("line 3: replicas")
        );
    }
}
