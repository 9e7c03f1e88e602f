//! Module inputs and compiled artifacts.
//!
//! [`load_module`] takes what a user hands to `tern run` — a Wasm binary, WAT text or a
//! precompiled artifact (`.cwasm`) — and returns a compiled `wasmtime::Module`.
//! [`ArtifactCache`] keeps compiled artifacts on disk, content-addressed by
//! (module digest, engine fingerprint): a second run skips compilation. Each cache
//! entry carries a SHA-256 of its payload, checked before Wasmtime loads it, so a
//! corrupt entry is recompiled and never trusted.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::{Engine, RuntimeError};

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Tern artifacts (from `tern compile` and in the cache) are this magic, the SHA-256 of
/// the payload, then Wasmtime's artifact. The checksum is verified before Wasmtime sees
/// a byte: a damaged artifact is native code that would crash or misbehave if loaded.
const ARTIFACT_MAGIC: &[u8; 8] = b"TERNART\x01";
const ARTIFACT_HEADER: usize = ARTIFACT_MAGIC.len() + 32;

/// What kind of input a module file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleFormat {
    /// A core Wasm binary.
    Binary,
    /// WebAssembly text.
    Text,
    /// An artifact precompiled by Wasmtime (`tern compile`).
    Precompiled,
}

/// Hex SHA-256 of a byte string: the identity of a module.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Classifies the bytes of a module file.
///
/// # Errors
/// [`RuntimeError::BadModule`] when the bytes are a component or nothing Tern can run.
pub fn detect_format(path: &Path, bytes: &[u8]) -> Result<ModuleFormat, RuntimeError> {
    let bad = |reason: &str| RuntimeError::BadModule {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.starts_with(WASM_MAGIC) {
        return match bytes.get(4..8) {
            Some(v) if v == MODULE_VERSION => Ok(ModuleFormat::Binary),
            Some([_, _, 1, 0]) => Err(bad(
                "it is a WebAssembly component; Tern runs WASI preview1 core modules",
            )),
            _ => Err(bad("unsupported WebAssembly binary version")),
        };
    }
    if bytes.starts_with(ARTIFACT_MAGIC) {
        return Ok(ModuleFormat::Precompiled);
    }
    if bytes.starts_with(ELF_MAGIC) {
        return Err(bad(
            "an ELF file (a native program, or an artifact not made by `tern compile`), \
             not a WebAssembly module",
        ));
    }
    if std::str::from_utf8(bytes).is_ok() {
        return Ok(ModuleFormat::Text);
    }
    Err(bad(
        "not a WebAssembly module (no `\\0asm` header) nor WebAssembly text",
    ))
}

/// A compiled module and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedModule {
    /// The compiled module.
    pub module: wasmtime::Module,
    /// Digest of the Wasm binary, or of the artifact for precompiled input.
    pub digest: String,
    /// What the input was.
    pub format: ModuleFormat,
    /// How the artifact cache served it, when it was consulted.
    pub cache: Option<CacheOutcome>,
}

/// Reads and compiles a module file: Wasm binary, WAT, or precompiled artifact. Wasm is
/// compiled through `cache` when given.
///
/// Precompiled artifacts are native code: loading one trusts that it was produced by
/// `tern compile` (Wasmtime checks its version, target and settings, not its intent).
///
/// # Errors
/// [`RuntimeError::ReadModule`], [`RuntimeError::BadModule`] for malformed input,
/// [`RuntimeError::Compile`], and [`RuntimeError::IncompatibleArtifact`] for an
/// artifact from another Wasmtime version, target or setting.
pub fn load_module(
    engine: &Engine,
    path: &Path,
    cache: Option<&ArtifactCache>,
) -> Result<LoadedModule, RuntimeError> {
    let bytes = fs::read(path).map_err(|io| RuntimeError::ReadModule {
        path: path.to_owned(),
        io,
    })?;
    let format = detect_format(path, &bytes)?;
    if format == ModuleFormat::Precompiled {
        let module = deserialize_artifact(engine, path, &bytes)?;
        return Ok(LoadedModule {
            module,
            digest: digest(&bytes),
            format,
            cache: None,
        });
    }
    let wasm = wasm_binary(path, &bytes, format)?;
    let digest = digest(&wasm);
    let (module, cache) = match cache {
        Some(cache) if engine.is_native() => {
            let (m, outcome) = cache.load_or_compile(engine, &wasm, &digest, path)?;
            (m, Some(outcome))
        }
        _ => (compile(engine, path, &wasm)?, None),
    };
    Ok(LoadedModule {
        module,
        digest,
        format,
        cache,
    })
}

/// The Wasm binary of a module file, translating WAT text.
///
/// # Errors
/// [`RuntimeError::BadModule`] for malformed text or a precompiled artifact.
pub fn wasm_binary(
    path: &Path,
    bytes: &[u8],
    format: ModuleFormat,
) -> Result<Vec<u8>, RuntimeError> {
    match format {
        ModuleFormat::Binary => Ok(bytes.to_vec()),
        ModuleFormat::Text => wat::parse_bytes(bytes)
            .map(|b| b.into_owned())
            .map_err(|e| RuntimeError::BadModule {
                path: path.to_owned(),
                reason: format!(
                    "not a WebAssembly binary, and not valid WebAssembly text: {}",
                    one_line_wat_error(&e)
                ),
            }),
        ModuleFormat::Precompiled => Err(RuntimeError::BadModule {
            path: path.to_owned(),
            reason: "it is already a precompiled artifact; give the .wasm instead".into(),
        }),
    }
}

/// `wat` reports errors over several lines with a source excerpt; keep the message and
/// its `line:column`.
fn one_line_wat_error(e: &wat::Error) -> String {
    let text = e.to_string();
    let message = text.lines().next().unwrap_or_default().trim();
    let at = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .and_then(|loc| {
            loc.rsplit_once(':').and_then(|(rest, col)| {
                rest.rsplit_once(':')
                    .map(|(_, line)| format!("{line}:{col}"))
            })
        });
    match at {
        Some(at) => format!("{message} at {at}"),
        None => message.to_owned(),
    }
}

/// Compiles Wasm to a precompiled artifact for the engine's target (which need not be
/// this machine's).
///
/// # Errors
/// [`RuntimeError::Compile`] when the module is invalid or uses unsupported features.
pub fn precompile(engine: &Engine, path: &Path, wasm: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    let payload = engine
        .wasmtime()
        .precompile_module(&prepare(engine, wasm))
        .map_err(|e| compile_error(path, e))?;
    Ok(seal(&payload))
}

/// Wraps Wasmtime's artifact in Tern's header (magic and SHA-256).
fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ARTIFACT_HEADER + payload.len());
    out.extend_from_slice(ARTIFACT_MAGIC);
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// Why a Tern artifact was not loaded.
enum Refusal {
    /// The bytes are damaged: wrong header or checksum.
    Corrupt(String),
    /// Intact, but built for another Wasmtime version, target or setting.
    Incompatible(String),
}

/// Checks the header and checksum of a Tern artifact, then hands the payload to
/// Wasmtime.
fn unseal_and_load(engine: &Engine, bytes: &[u8]) -> Result<wasmtime::Module, Refusal> {
    if bytes.len() < ARTIFACT_HEADER || !bytes.starts_with(ARTIFACT_MAGIC) {
        return Err(Refusal::Corrupt("not a Tern artifact (bad header)".into()));
    }
    let (header, payload) = bytes.split_at(ARTIFACT_HEADER);
    if Sha256::digest(payload).as_slice() != &header[ARTIFACT_MAGIC.len()..] {
        return Err(Refusal::Corrupt(
            "checksum mismatch: the file is damaged".into(),
        ));
    }
    match wasmtime::Engine::detect_precompiled(payload) {
        Some(wasmtime::Precompiled::Module) => {}
        Some(wasmtime::Precompiled::Component) => {
            return Err(Refusal::Incompatible(
                "it is a precompiled component; Tern runs WASI preview1 core modules".into(),
            ));
        }
        None => {
            return Err(Refusal::Corrupt(
                "the payload is not a Wasmtime artifact".into(),
            ));
        }
    }
    // SAFETY: the payload is byte for byte what `Engine::precompile_module` wrote (its
    // SHA-256 matches the header written with it) and Wasmtime identified it as a module
    // artifact; `deserialize` checks the Wasmtime version, target and settings, and
    // copies the code into fresh executable memory. Whoever gave the artifact vouches
    // for its origin, as for any native program; signatures bind that origin (tern-trust).
    unsafe { wasmtime::Module::deserialize(engine.wasmtime(), payload) }
        .map_err(|e| Refusal::Incompatible(format!("{e:#}")))
}

fn compile(engine: &Engine, path: &Path, wasm: &[u8]) -> Result<wasmtime::Module, RuntimeError> {
    wasmtime::Module::from_binary(engine.wasmtime(), &prepare(engine, wasm))
        .map_err(|e| compile_error(path, e))
}

/// The Wasm an engine compiles for `wasm`: Tern's passes over the module, as the
/// engine's options ask.
fn prepare<'a>(engine: &Engine, wasm: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    let options = engine.options();
    let wasm = if options.libc_builtins {
        tern_passes::builtins::apply(wasm)
    } else {
        Cow::Borrowed(wasm)
    };
    if !(options.vectorize && options.kind == crate::EngineKind::Cranelift) {
        return wasm;
    }
    match wasm {
        Cow::Borrowed(b) => tern_passes::vectorize::apply(b),
        // Keep the fast paths' output when the vectoriser leaves it as it is.
        Cow::Owned(o) => match tern_passes::vectorize::apply(&o) {
            Cow::Owned(v) => Cow::Owned(v),
            Cow::Borrowed(_) => Cow::Owned(o),
        },
    }
}

fn compile_error(path: &Path, e: wasmtime::Error) -> RuntimeError {
    RuntimeError::Compile {
        path: path.to_owned(),
        reason: format!("{e:#}").replace('\n', " "),
    }
}

fn deserialize_artifact(
    engine: &Engine,
    path: &Path,
    bytes: &[u8],
) -> Result<wasmtime::Module, RuntimeError> {
    unseal_and_load(engine, bytes).map_err(|refusal| match refusal {
        Refusal::Corrupt(reason) => RuntimeError::CorruptArtifact {
            path: path.to_owned(),
            reason,
        },
        Refusal::Incompatible(reason) => RuntimeError::IncompatibleArtifact {
            path: path.to_owned(),
            hint: incompatibility_hint(engine.options().kind, &reason),
            reason,
        },
    })
}

/// What to do about an artifact Wasmtime refuses, from Wasmtime's reason and the
/// engine that refused it.
fn incompatibility_hint(engine: crate::EngineKind, reason: &str) -> &'static str {
    if engine == crate::EngineKind::Pulley && !reason.contains("pulley") {
        "it holds native code, which Pulley cannot run: compile the .wasm with `tern compile --engine pulley`, or run it without `--engine pulley`"
    } else if reason.contains("pulley") {
        "run it with `--engine pulley`, or run the .wasm"
    } else if reason.contains("compiled for architecture") {
        "compile the .wasm for this machine with `tern compile`, or run the .wasm"
    } else if reason.contains("with fuel support") {
        "it was compiled with `--fuel`: run it with `--fuel N`, or recompile without `--fuel`"
    } else if reason.contains("without fuel support") {
        "recompile it with `tern compile --fuel` to run it with `--fuel`"
    } else if reason.contains("with epoch interruption") {
        "it was compiled with `--interruptible`: run it with `--timeout`, or recompile without"
    } else if reason.contains("without epoch interruption") {
        "recompile it with `tern compile --interruptible` to run it with `--timeout`"
    } else {
        "recompile it from the .wasm with this `tern compile`"
    }
}

/// How [`ArtifactCache::load_or_compile`] served a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid cache entry; nothing was compiled.
    Hit,
    /// No entry: compiled and stored.
    Miss,
    /// An entry existed but was corrupt or stale: recompiled and replaced.
    Replaced {
        /// Why the old entry was refused.
        reason: String,
    },
}

/// Compiled artifacts on disk, keyed by module digest and engine fingerprint.
///
/// Layout: `<dir>/<fingerprint>/<digest>.cwasm`; each file is `TERNART\x01`, the
/// SHA-256 of the payload, then Wasmtime's artifact. Writes go to a temporary file
/// renamed into place, so readers never see half an entry. The cache is an
/// optimisation: when it cannot be written, the module still runs.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// A cache rooted at `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> ArtifactCache {
        ArtifactCache { dir: dir.into() }
    }

    /// The default location: `$TERN_CACHE_DIR`, else `$XDG_CACHE_HOME/tern/artifacts`,
    /// else `$HOME/.cache/tern/artifacts`; `None` when none is set.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("TERN_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("tern/artifacts")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/tern/artifacts")))
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds (or would hold) the artifact of `digest` for `engine`.
    pub fn entry_path(&self, engine: &Engine, digest: &str) -> PathBuf {
        self.dir
            .join(engine.fingerprint())
            .join(format!("{digest}.cwasm"))
    }

    /// Loads the artifact of `wasm` from the cache, or compiles and stores it.
    ///
    /// # Errors
    /// [`RuntimeError::Compile`] when the module does not compile. Cache read and write
    /// failures are logged and fall back to compiling.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
        path: &Path,
    ) -> Result<(wasmtime::Module, CacheOutcome), RuntimeError> {
        let entry = self.entry_path(engine, digest);
        let refused = match fs::read(&entry) {
            Ok(bytes) => match self.check_entry(engine, &bytes) {
                Ok(module) => {
                    tracing::debug!(entry = %entry.display(), "artifact cache hit");
                    return Ok((module, CacheOutcome::Hit));
                }
                Err(reason) => {
                    tracing::warn!(entry = %entry.display(), %reason, "refusing cache entry; recompiling");
                    Some(reason)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(format!("unreadable: {e}")),
        };
        let artifact = precompile(engine, path, wasm)?;
        if let Err(e) = self.store(&entry, &artifact) {
            tracing::warn!(entry = %entry.display(), error = %e, "could not write artifact cache entry");
        }
        let module =
            self.check_entry(engine, &artifact)
                .map_err(|reason| RuntimeError::Compile {
                    path: path.to_owned(),
                    reason: format!("fresh artifact did not load: {reason}"),
                })?;
        tracing::debug!(entry = %entry.display(), "artifact compiled and cached");
        let outcome = match refused {
            Some(reason) => CacheOutcome::Replaced { reason },
            None => CacheOutcome::Miss,
        };
        Ok((module, outcome))
    }

    fn check_entry(&self, engine: &Engine, bytes: &[u8]) -> Result<wasmtime::Module, String> {
        unseal_and_load(engine, bytes).map_err(|r| match r {
            Refusal::Corrupt(reason) | Refusal::Incompatible(reason) => reason,
        })
    }

    fn store(&self, entry: &Path, artifact: &[u8]) -> std::io::Result<()> {
        crate::write_atomically(entry, artifact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineOptions;

    const WAT: &str = r#"(module (func (export "_start")) (memory (export "memory") 1))"#;

    fn engine() -> Engine {
        Engine::new(EngineOptions::default()).expect("default engine")
    }

    #[test]
    fn formats_are_detected() {
        let p = Path::new("m");
        let wasm = wat::parse_str(WAT).expect("valid wat");
        assert_eq!(detect_format(p, &wasm).ok(), Some(ModuleFormat::Binary));
        assert_eq!(
            detect_format(p, WAT.as_bytes()).ok(),
            Some(ModuleFormat::Text)
        );
        assert_eq!(
            detect_format(p, b"TERNART\x01....").ok(),
            Some(ModuleFormat::Precompiled)
        );
        let err = detect_format(p, b"\x7fELF....").expect_err("raw ELF");
        assert!(err.to_string().contains("an ELF file"), "{err}");
        let component = b"\0asm\x0d\x00\x01\x00";
        let err = detect_format(p, component).expect_err("component");
        assert!(err.to_string().contains("component"), "{err}");
        let err = detect_format(p, &[0xff, 0xfe, 0x00, 0x80]).expect_err("binary junk");
        assert!(
            err.to_string().contains("not a WebAssembly module"),
            "{err}"
        );
    }

    /// A second load hits; a flipped byte in the entry is detected and replaced.
    #[test]
    fn cache_hits_and_replaces_corrupt_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ArtifactCache::new(dir.path());
        let engine = engine();
        let wasm = wat::parse_str(WAT).expect("valid wat");
        let d = digest(&wasm);
        let p = Path::new("m.wasm");
        let (_, first) = cache
            .load_or_compile(&engine, &wasm, &d, p)
            .expect("compiles");
        assert_eq!(first, CacheOutcome::Miss);
        let (_, second) = cache.load_or_compile(&engine, &wasm, &d, p).expect("loads");
        assert_eq!(second, CacheOutcome::Hit);

        let entry = cache.entry_path(&engine, &d);
        let mut bytes = fs::read(&entry).expect("entry written");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        fs::write(&entry, &bytes).expect("rewrite entry");
        let (_, third) = cache
            .load_or_compile(&engine, &wasm, &d, p)
            .expect("recompiles");
        assert!(
            matches!(&third, CacheOutcome::Replaced { reason } if reason.contains("checksum mismatch")),
            "{third:?}"
        );
        let (_, fourth) = cache.load_or_compile(&engine, &wasm, &d, p).expect("loads");
        assert_eq!(fourth, CacheOutcome::Hit);

        fs::write(&entry, b"garbage").expect("truncate entry");
        let (_, fifth) = cache
            .load_or_compile(&engine, &wasm, &d, p)
            .expect("recompiles");
        assert!(matches!(fifth, CacheOutcome::Replaced { .. }), "{fifth:?}");
    }

    #[test]
    fn invalid_module_is_a_compile_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.wasm");
        // Valid header, then a section id with a length running past the end.
        fs::write(&path, b"\0asm\x01\x00\x00\x00\x01\xff\xff\xff\x0f").expect("write");
        let err = load_module(&engine(), &path, None).expect_err("truncated");
        assert!(err.to_string().contains("bad.wasm"), "{err}");
    }
}
