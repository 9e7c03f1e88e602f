//! Engine set-up: which Wasmtime back end compiles guests (Cranelift native code or the
//! portable Pulley interpreter), for which target, and with which instrumentation.
//!
//! [`Engine`] wraps a `wasmtime::Engine` with the [`EngineOptions`] that made it and a
//! stable [`Engine::fingerprint`], the part of an artifact cache key that says "code
//! compiled by this engine can be loaded by that one". Every engine is compiled with
//! epoch interruption when asked ([`EngineOptions::interruptible`]), so a wall-clock
//! deadline can stop a guest that never calls the host; the epoch ticker thread starts
//! only when a deadline is first asked for. Without it, generated code carries no
//! deadline checks at all.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::RuntimeError;

/// How often the epoch ticker advances the engine's epoch. Deadlines are checked at
/// this granularity, so `--timeout 2s` fires between 2.000 s and 2.010 s.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Address space reserved for each 32-bit linear memory on 64-bit hosts: all of it, so
/// that a memory never moves and needs no bounds checks.
pub(crate) const MEMORY_RESERVATION: u64 = 1 << 32;

/// Default bound on the native stack used by Wasm frames.
pub const DEFAULT_MAX_STACK: usize = 512 * 1024;

/// Which Wasmtime back end runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EngineKind {
    /// Cranelift compiles Wasm ahead of time to native code for the target.
    #[default]
    Cranelift,
    /// Pulley: Cranelift compiles to portable bytecode that Wasmtime's interpreter runs,
    /// for machines where no JIT may run and to prove state is not tied to native code.
    Pulley,
}

impl EngineKind {
    /// The name used on the command line and in artifacts' cache keys.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Cranelift => "cranelift",
            EngineKind::Pulley => "pulley",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EngineKind {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cranelift" => Ok(EngineKind::Cranelift),
            "pulley" => Ok(EngineKind::Pulley),
            other => Err(RuntimeError::UnknownEngine(other.to_owned())),
        }
    }
}

/// Everything that changes the code an engine generates or accepts, and how its guests'
/// memories are backed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EngineOptions {
    /// The back end.
    pub kind: EngineKind,
    /// A target triple to compile for (`aarch64-unknown-linux-gnu`), or `None` for this
    /// machine. An engine with a foreign target can compile artifacts but not run them.
    pub target: Option<String>,
    /// Instrument code to count fuel, so that [`crate::Limits::fuel`] can bound the
    /// instructions a guest executes. Costs speed, so it is off unless asked for.
    pub fuel: bool,
    /// Bound on the native stack Wasm frames may use, in bytes.
    pub max_stack: usize,
    /// Compile in epoch checks at function entries and loop headers, so that
    /// [`crate::Limits::timeout`] can stop a guest in a loop that never calls the host.
    /// Costs a little speed in tight loops, so it is off unless a deadline is wanted.
    pub interruptible: bool,
    /// Give the guest's libc `memcpy`, `memmove`, `memset`, `memcmp` and `strlen` fast
    /// paths before compiling (see [`crate::builtins`]): the same results and traps, at
    /// the host's memory-copy speed. On unless turned off.
    pub libc_builtins: bool,
    /// Run the innermost float loops of scalar guests several iterations at a time on
    /// `f64x2`/`f32x4` vectors (see [`crate::vectorize`]): bit-identical results, checked
    /// before each loop. Cranelift only; on unless turned off.
    pub vectorize: bool,
    /// Back guests' linear memories with transparent huge pages where the kernel offers
    /// them (Linux `MADV_HUGEPAGE`): fewer TLB misses for guests that stride over large
    /// arrays. Changes no code, so it is not part of the fingerprint. On unless turned
    /// off.
    pub huge_pages: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            kind: EngineKind::Cranelift,
            target: None,
            fuel: false,
            max_stack: DEFAULT_MAX_STACK,
            interruptible: false,
            libc_builtins: true,
            vectorize: true,
            huge_pages: true,
        }
    }
}

/// A configured Wasmtime engine. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Engine {
    inner: wasmtime::Engine,
    options: Arc<EngineOptions>,
    target: Arc<str>,
    fingerprint: Arc<str>,
    ticker: Arc<OnceLock<()>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.options)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds an engine.
    ///
    /// # Errors
    /// [`RuntimeError::Engine`] when the target triple is unknown or the combination of
    /// settings is unsupported by Wasmtime.
    pub fn new(options: EngineOptions) -> Result<Engine, RuntimeError> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(options.interruptible);
        config.consume_fuel(options.fuel);
        config.max_wasm_stack(options.max_stack);
        // Wasmtime requires the async fiber stack to hold the whole Wasm stack bound, even
        // though Tern runs guests synchronously (WASI's async support is compiled in).
        config.async_stack_size(options.max_stack.max(DEFAULT_MAX_STACK) + (1 << 20));
        // Each linear memory gets its full 4 GiB of address space up front and never
        // moves: its base stays valid for the instance's life, which lets a snapshot's
        // watcher raise a guest's poll flag through a pointer from another thread. (This
        // is Wasmtime's default on 64-bit hosts, made a guarantee.)
        if cfg!(target_pointer_width = "64") {
            config.memory_reservation(MEMORY_RESERVATION);
            config.memory_may_move(false);
        }
        let target = match (options.kind, &options.target) {
            (EngineKind::Pulley, _) => Some(pulley_target()),
            (EngineKind::Cranelift, Some(t)) => Some(t.clone()),
            (EngineKind::Cranelift, None) => None,
        };
        if let Some(t) = &target {
            config.target(t).map_err(|e| RuntimeError::Engine {
                reason: format!("target `{t}`: {e:#}"),
            })?;
        }
        let inner = wasmtime::Engine::new(&config).map_err(|e| RuntimeError::Engine {
            reason: match &target {
                Some(t) => format!("target `{t}`: {e:#}"),
                None => format!("{e:#}"),
            },
        })?;
        let target = target.unwrap_or_else(host_target);
        let fingerprint = fingerprint(&inner, &options, &target);
        Ok(Engine {
            inner,
            target: target.into(),
            options: Arc::new(options),
            fingerprint: fingerprint.into(),
            ticker: Arc::new(OnceLock::new()),
        })
    }

    /// The underlying Wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner
    }

    /// The options this engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The target triple code is generated for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether code generated by this engine can run on this machine.
    pub fn is_native(&self) -> bool {
        self.options.kind == EngineKind::Pulley || self.options.target.is_none()
    }

    /// Hex digest that changes whenever Wasmtime, its settings or the target change:
    /// two engines with the same fingerprint load each other's artifacts.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Starts, once per engine, the thread that advances the epoch every [`EPOCH_TICK`].
    /// It holds only a weak reference and ends when the engine is dropped.
    pub(crate) fn ensure_ticker(&self) {
        self.ticker.get_or_init(|| {
            let weak = self.inner.weak();
            let spawned = thread::Builder::new()
                .name("tern-epoch".into())
                .spawn(move || {
                    while let Some(engine) = weak.upgrade() {
                        engine.increment_epoch();
                        drop(engine);
                        thread::sleep(EPOCH_TICK);
                    }
                });
            if let Err(e) = spawned {
                // Without a ticker deadlines cannot fire; say so rather than hang silently.
                tracing::error!(error = %e, "could not start the epoch ticker thread");
            }
        });
    }
}

fn pulley_target() -> String {
    if cfg!(target_pointer_width = "64") {
        "pulley64".into()
    } else {
        "pulley32".into()
    }
}

/// Feeds `Hash` output into SHA-256 so the fingerprint is stable across processes
/// (std's `DefaultHasher` makes no such promise).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        // Never called: the digest is taken with `finalize` below.
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// This machine's triple, as Cranelift names it.
fn host_target() -> String {
    format!(
        "{}-unknown-{}-gnu",
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

fn fingerprint(engine: &wasmtime::Engine, options: &EngineOptions, target: &str) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    options.kind.as_str().hash(&mut h);
    target.hash(&mut h);
    options.fuel.hash(&mut h);
    options.interruptible.hash(&mut h);
    if options.libc_builtins {
        tern_passes::builtins::IDENTITY.hash(&mut h);
    }
    if options.vectorize && options.kind == EngineKind::Cranelift {
        tern_passes::vectorize::IDENTITY.hash(&mut h);
    }
    hex::encode(&h.0.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(options: EngineOptions) -> Engine {
        Engine::new(options).expect("valid engine options")
    }

    /// Fingerprints are deterministic, and differ for anything that changes code.
    #[test]
    fn fingerprint_tracks_code_generation_settings() {
        let a = engine(EngineOptions::default());
        let b = engine(EngineOptions::default());
        assert_eq!(a.fingerprint(), b.fingerprint());
        let pulley = engine(EngineOptions {
            kind: EngineKind::Pulley,
            ..EngineOptions::default()
        });
        let fuel = engine(EngineOptions {
            fuel: true,
            ..EngineOptions::default()
        });
        let arm = engine(EngineOptions {
            target: Some("aarch64-unknown-linux-gnu".into()),
            ..EngineOptions::default()
        });
        let epochs = engine(EngineOptions {
            interruptible: true,
            ..EngineOptions::default()
        });
        let libc = engine(EngineOptions {
            libc_builtins: false,
            ..EngineOptions::default()
        });
        let scalar = engine(EngineOptions {
            vectorize: false,
            ..EngineOptions::default()
        });
        let prints = [
            libc.fingerprint(),
            scalar.fingerprint(),
            epochs.fingerprint(),
            a.fingerprint(),
            pulley.fingerprint(),
            fuel.fingerprint(),
            arm.fingerprint(),
        ];
        for (i, x) in prints.iter().enumerate() {
            for y in &prints[i + 1..] {
                assert_ne!(x, y);
            }
        }
        // How memories are backed changes no code: artifacts stay shared.
        let small_pages = engine(EngineOptions {
            huge_pages: false,
            ..EngineOptions::default()
        });
        assert_eq!(small_pages.fingerprint(), a.fingerprint());
        assert!(!arm.is_native());
        assert!(pulley.is_native());
        assert!(arm.target().starts_with("aarch64"));
    }

    #[test]
    fn unknown_target_is_an_error() {
        let err = Engine::new(EngineOptions {
            target: Some("sparc-sun-solaris".into()),
            ..EngineOptions::default()
        })
        .expect_err("sparc is not a Cranelift target");
        assert!(err.to_string().contains("sparc-sun-solaris"), "{err}");
    }

    #[test]
    fn engine_kind_parses() {
        assert_eq!(
            "pulley".parse::<EngineKind>().ok(),
            Some(EngineKind::Pulley)
        );
        let err = "v8".parse::<EngineKind>().expect_err("not an engine");
        assert!(err.to_string().contains("v8"));
    }
}
