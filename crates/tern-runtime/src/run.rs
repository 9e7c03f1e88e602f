//! Running a WASI command to completion under a policy and limits.
//!
//! [`Program`] is a compiled module linked against WASI preview1 once (an
//! `InstancePre`), so each [`Program::run`] only builds a store, a WASI context and an
//! instance. The result is an [`Outcome`]: the guest's exit code, a trap, or the limit
//! that stopped it. Whatever the guest does is an outcome, never a host error.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::{CallHook, InstancePre, Linker, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::limits::StoreLimiter;
use crate::{Engine, LimitExceeded, Limits, Policy, RuntimeError, StdioTap};

/// Deadline far enough away never to be reached, yet safe from overflow when Wasmtime
/// adds the current epoch to it.
const NO_DEADLINE: u64 = u64::MAX / 2;

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest returned from `_start` (code 0) or called `proc_exit(code)`.
    Exited(i32),
    /// The guest trapped.
    Trapped {
        /// What trapped (`integer divide by zero`, `wasm 'unreachable' instruction executed`).
        message: String,
        /// The Wasm backtrace, with function names when the module has a name section.
        backtrace: Option<String>,
    },
    /// A limit stopped the guest.
    LimitExceeded(LimitExceeded),
    /// The guest wrote to a stdout or stderr whose reader had gone, got `EPIPE`, and was
    /// ended at its next call into the host, as `SIGPIPE` ends a native process.
    BrokenPipe,
}

/// The trap that ends a guest after a write to a closed pipe.
#[derive(Debug)]
struct BrokenPipe;

impl std::fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the guest's stdout or stderr was closed by its reader")
    }
}

impl std::error::Error for BrokenPipe {}

/// State of one store: the guest's WASI context, its resource limiter, and whatever an
/// embedder that adds its own imports ([`Program::with_imports`]) keeps beside them.
pub struct Host {
    wasi: WasiP1Ctx,
    stdio: StdioTap,
    limiter: StoreLimiter,
    extension: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Host {
    /// The guest's WASI context.
    pub fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }

    /// What the guest has done with this process's stdio.
    pub fn stdio(&self) -> &StdioTap {
        &self.stdio
    }

    /// Replaces the guest's WASI context and stdio tap whole, as a restore does before
    /// any guest code runs.
    pub fn replace_context(&mut self, wasi: WasiP1Ctx, stdio: StdioTap) {
        self.wasi = wasi;
        self.stdio = stdio;
    }

    /// The embedder's state given to [`Program::instantiate`], if it is a `T`.
    pub fn extension<T: 'static>(&mut self) -> Option<&mut T> {
        self.extension.as_mut()?.downcast_mut::<T>()
    }
}

/// A live instance of a [`Program`] with its store, for embedders that drive the guest
/// themselves (call exports, read memory) rather than through [`Program::run`].
pub struct Session {
    /// The store holding the instance, its WASI context and limits.
    pub store: Store<Host>,
    /// The instance.
    pub instance: wasmtime::Instance,
    flags: Vec<RemoteFlag>,
}

impl Session {
    /// A handle that lets any thread set the byte at `addr` of the guest's exported
    /// `memory` to 1, for as long as this session lives (it does nothing afterwards).
    ///
    /// # Errors
    /// [`RuntimeError::Engine`] when the guest exports no memory or `addr` is outside it.
    pub fn remote_flag(&mut self, addr: u32) -> Result<RemoteFlag, RuntimeError> {
        let memory = self
            .instance
            .get_memory(&mut self.store, "memory")
            .ok_or_else(|| RuntimeError::Engine {
                reason: "the guest exports no `memory`".into(),
            })?;
        if addr as usize >= memory.data_size(&self.store) {
            return Err(RuntimeError::Engine {
                reason: format!("flag address {addr} is outside the guest's memory"),
            });
        }
        // The engine never moves linear memory (see `Engine::new`), so this address stays
        // valid until the store is dropped, and `Drop for Session` disarms the flag first.
        let ptr = memory.data_ptr(&self.store) as usize + addr as usize;
        let flag = RemoteFlag(Arc::new(Mutex::new(Some(ptr))));
        self.flags.push(flag.clone());
        Ok(flag)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for f in &self.flags {
            f.disarm();
        }
    }
}

/// A byte in a guest's linear memory that another thread may raise, made by
/// [`Session::remote_flag`]. Raising it after its session is gone does nothing.
#[derive(Debug, Clone)]
pub struct RemoteFlag(Arc<Mutex<Option<usize>>>);

impl RemoteFlag {
    /// Sets the byte to 1.
    pub fn raise(&self) {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ptr) = *guard {
            // SAFETY: `ptr` points into a linear memory that never moves and is alive while
            // the pointer is `Some` (the session clears it, under this lock, before its
            // store is dropped). The guest reads the byte with plain loads; an atomic store
            // is the same access Wasmtime's shared memories allow from other threads.
            unsafe { AtomicU8::from_ptr(ptr as *mut u8).store(1, Ordering::SeqCst) };
        }
    }

    fn disarm(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

/// A compiled WASI command, linked and ready to instantiate many times.
#[derive(Clone)]
pub struct Program {
    engine: Engine,
    module: wasmtime::Module,
    pre: InstancePre<Host>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("module", &self.module.name())
            .finish_non_exhaustive()
    }
}

impl Program {
    /// Links a compiled module against WASI preview1.
    ///
    /// # Errors
    /// [`RuntimeError::NotACommand`] when the module exports no `_start`, and
    /// [`RuntimeError::Link`] when it imports something Tern does not provide.
    pub fn new(engine: &Engine, module: wasmtime::Module) -> Result<Program, RuntimeError> {
        Program::with_imports(engine, module, |_| Ok(()))
    }

    /// Links a compiled module against WASI preview1 and the imports `add` defines
    /// (which may shadow WASI functions).
    ///
    /// # Errors
    /// As [`Program::new`]; an error from `add` is a [`RuntimeError::Link`].
    pub fn with_imports(
        engine: &Engine,
        module: wasmtime::Module,
        add: impl FnOnce(&mut Linker<Host>) -> wasmtime::Result<()>,
    ) -> Result<Program, RuntimeError> {
        match module.get_export("_start") {
            Some(wasmtime::ExternType::Func(f))
                if f.params().len() == 0 && f.results().len() == 0 => {}
            Some(_) => {
                return Err(RuntimeError::NotACommand {
                    reason: "its `_start` export is not a function of no parameters and no results"
                        .into(),
                });
            }
            None => {
                let reason = if module.get_export("_initialize").is_some() {
                    "it is a WASI reactor (exports `_initialize`, no `_start`)"
                } else {
                    "it exports no `_start` function"
                };
                return Err(RuntimeError::NotACommand {
                    reason: reason.into(),
                });
            }
        }
        let mut linker: Linker<Host> = Linker::new(engine.wasmtime());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi).map_err(
            |e| RuntimeError::Link {
                reason: format!("{e:#}"),
            },
        )?;
        linker.allow_shadowing(true);
        add(&mut linker).map_err(|e| RuntimeError::Link {
            reason: format!("{e:#}"),
        })?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| RuntimeError::Link {
                reason: format!("{e:#}"),
            })?;
        Ok(Program {
            engine: engine.clone(),
            module,
            pre,
        })
    }

    /// The compiled module.
    pub fn module(&self) -> &wasmtime::Module {
        &self.module
    }

    /// Instantiates the program and runs `_start` to completion on this thread.
    ///
    /// # Errors
    /// Host-side set-up failures only ([`RuntimeError::Preopen`], a fuel budget on an
    /// engine built without fuel). Everything the guest does is an [`Outcome`].
    pub fn run(&self, policy: &Policy, limits: &Limits) -> Result<Outcome, RuntimeError> {
        let stdio = StdioTap::new();
        let mut session =
            match self.instantiate(policy.wasi_context(&stdio)?, stdio, limits, None)? {
                Ok(session) => session,
                Err(outcome) => return Ok(outcome),
            };
        let result = session
            .instance
            .get_typed_func::<(), ()>(&mut session.store, "_start")
            .and_then(|start| start.call(&mut session.store, ()));
        Ok(self.outcome(result, limits))
    }

    /// Builds a store with `wasi`, `limits` and the embedder's `extension` (see
    /// [`Host::extension`]), and instantiates the program in it without running
    /// anything. An instantiation that fails because of the guest (a memory over the
    /// limit, a trapping start function) is an `Err(Outcome)`.
    ///
    /// # Errors
    /// A fuel budget or deadline the engine cannot enforce.
    pub fn instantiate(
        &self,
        wasi: WasiP1Ctx,
        stdio: StdioTap,
        limits: &Limits,
        extension: Option<Box<dyn Any + Send>>,
    ) -> Result<Result<Session, Outcome>, RuntimeError> {
        let mut store = Store::new(
            self.engine.wasmtime(),
            Host {
                wasi,
                stdio,
                limiter: StoreLimiter::new(limits),
                extension,
            },
        );
        store.limiter(|h| &mut h.limiter);
        // A guest whose stdout or stderr lost its reader got `EPIPE` from that write;
        // it ends at its next call into the host, as SIGPIPE ends a native process.
        store.call_hook(|store, hook| {
            if matches!(hook, CallHook::CallingHost) && store.data().stdio.broken_pipe() {
                Err(BrokenPipe.into())
            } else {
                Ok(())
            }
        });
        let fuel = match (self.engine.options().fuel, limits.fuel) {
            (true, budget) => Some(budget.unwrap_or(u64::MAX)),
            (false, None) => None,
            (false, Some(_)) => return Err(RuntimeError::FuelNeedsFuelEngine),
        };
        if let Some(f) = fuel {
            store.set_fuel(f).map_err(|e| RuntimeError::Engine {
                reason: format!("{e:#}"),
            })?;
        }
        match limits.timeout {
            Some(_) if !self.engine.options().interruptible => {
                return Err(RuntimeError::TimeoutNeedsInterruptibleEngine);
            }
            Some(limit) => {
                self.engine.ensure_ticker();
                let deadline = Instant::now() + limit;
                store.set_epoch_deadline(1);
                store.epoch_deadline_callback(move |_| {
                    if Instant::now() >= deadline {
                        Err(LimitExceeded::Timeout { limit }.into())
                    } else {
                        Ok(UpdateDeadline::Continue(1))
                    }
                });
            }
            None if self.engine.options().interruptible => store.set_epoch_deadline(NO_DEADLINE),
            None => {}
        }
        Ok(match self.pre.instantiate(&mut store) {
            Ok(instance) => {
                if self.engine.options().huge_pages {
                    advise_huge_pages(&instance, &mut store);
                }
                Ok(Session {
                    store,
                    instance,
                    flags: Vec::new(),
                })
            }
            Err(e) => Err(self.outcome(Err(e), limits)),
        })
    }

    /// What the result of calling into the guest means: an exit, a trap or a limit.
    pub fn outcome(&self, result: wasmtime::Result<()>, limits: &Limits) -> Outcome {
        match result {
            Ok(()) => Outcome::Exited(0),
            Err(e) => self.classify(e, limits),
        }
    }

    fn classify(&self, err: wasmtime::Error, limits: &Limits) -> Outcome {
        if let Some(exit) = err.downcast_ref::<I32Exit>() {
            return Outcome::Exited(exit.0);
        }
        if let Some(limit) = err.downcast_ref::<LimitExceeded>() {
            return Outcome::LimitExceeded(limit.clone());
        }
        if err.downcast_ref::<BrokenPipe>().is_some() {
            return Outcome::BrokenPipe;
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::StackOverflow) => {
                return Outcome::LimitExceeded(LimitExceeded::Stack {
                    limit: self.engine.options().max_stack,
                });
            }
            Some(Trap::OutOfFuel) => {
                return Outcome::LimitExceeded(LimitExceeded::Fuel {
                    limit: limits.fuel.unwrap_or(u64::MAX),
                });
            }
            _ => {}
        }
        let backtrace = err
            .downcast_ref::<WasmBacktrace>()
            .and_then(format_backtrace);
        let message = match err.downcast_ref::<Trap>() {
            Some(trap) => {
                let text = trap.to_string();
                text.strip_prefix("wasm trap: ").unwrap_or(&text).to_owned()
            }
            // A host function failed in a way WASI cannot report as an errno: the guest
            // cannot continue, which is a trap from its point of view.
            None => format!("{:#}", err.root_cause()),
        };
        Outcome::Trapped { message, backtrace }
    }
}

/// One line per frame, innermost first: `    0: check_invariant at 0x1cc`. `None` when
/// the module has no name section, since bare function indices help no one reading it.
fn format_backtrace(bt: &WasmBacktrace) -> Option<String> {
    let frames = bt.frames();
    if frames.iter().all(|f| f.func_name().is_none()) {
        return None;
    }
    let mut out = String::from("wasm backtrace:");
    for (i, f) in frames.iter().enumerate() {
        let name = f
            .func_name()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("<function {}>", f.func_index()));
        match f.module_offset() {
            Some(off) => out.push_str(&format!("\n    {i}: {name} at {off:#x}")),
            None => out.push_str(&format!("\n    {i}: {name}")),
        }
    }
    Some(out)
}

/// Asks the kernel to back the instance's exported 32-bit memories with transparent huge
/// pages (`MADV_HUGEPAGE`), the whole range they may grow into, so that pages the guest
/// maps later by `memory.grow` are covered too. A guest striding over a large array
/// then walks 2 MiB pages instead of 4 KiB ones and misses the TLB far less (PolyBench
/// LARGE: gramschmidt 1.07x to 0.75x native, syr2k 0.80x to 0.66x). It is a hint: where
/// the kernel has no huge pages or none free, nothing changes but speed, so a refusal is
/// only logged. Memories a module does not export are left as they are.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn advise_huge_pages(instance: &wasmtime::Instance, store: &mut Store<Host>) {
    let memories: Vec<wasmtime::Memory> = instance
        .exports(&mut *store)
        .filter_map(|e| e.into_memory())
        .collect();
    for memory in memories {
        let ty = memory.ty(&*store);
        if ty.is_64() || ty.is_shared() {
            continue;
        }
        // Every 32-bit memory has its whole 4 GiB reserved and never moves (see
        // `Engine::new`), so the range up to its maximum is this memory's own mapping.
        let reserved = crate::engine::MEMORY_RESERVATION;
        let len = ty
            .maximum()
            .map_or(reserved, |pages| pages.saturating_mul(ty.page_size()))
            .min(reserved);
        let Ok(len) = usize::try_from(len) else {
            continue;
        };
        let ptr = memory.data_ptr(&*store);
        // SAFETY: `[ptr, ptr + len)` lies inside the memory's reservation (above), and
        // MADV_HUGEPAGE changes how the kernel backs those pages, never their contents.
        let status = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
        if status != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "the kernel declined huge pages for a guest memory"
            );
        }
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn advise_huge_pages(_: &wasmtime::Instance, _: &mut Store<Host>) {}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::EngineOptions;

    fn program(wat: &str) -> Result<Program, RuntimeError> {
        let engine = Engine::new(EngineOptions {
            interruptible: true,
            ..EngineOptions::default()
        })
        .expect("interruptible engine");
        let module = wasmtime::Module::new(engine.wasmtime(), wat).expect("valid wat");
        Program::new(&engine, module)
    }

    fn run(wat: &str, limits: Limits) -> Outcome {
        program(wat)
            .expect("links")
            .run(&Policy::default(), &limits)
            .expect("runs")
    }

    const EXIT_7: &str = r#"(module
        (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
        (memory (export "memory") 1)
        (func (export "_start") (call $exit (i32.const 7))))"#;

    #[test]
    fn exit_code_is_the_outcome() {
        assert_eq!(run(EXIT_7, Limits::default()), Outcome::Exited(7));
        let ret = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
        assert_eq!(run(ret, Limits::default()), Outcome::Exited(0));
    }

    #[test]
    fn infinite_loop_times_out() {
        let spin = r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop $l (br $l))))"#;
        let limit = Duration::from_millis(100);
        let outcome = run(
            spin,
            Limits {
                timeout: Some(limit),
                ..Limits::default()
            },
        );
        assert_eq!(
            outcome,
            Outcome::LimitExceeded(LimitExceeded::Timeout { limit })
        );
    }

    /// The kernel's flags (`VmFlags` in `/proc/self/smaps`) of the mapping holding `addr`.
    #[cfg(target_os = "linux")]
    fn mapping_flags(addr: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let head = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = head.split_once('-')
                && let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_owned).collect();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn guest_memory_is_advised_huge_pages_unless_turned_off() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        // The guest grows its memory after instantiation: the pages it gains must be
        // covered by the advice given at instantiation.
        let grow = r#"(module (memory (export "memory") 1)
            (func (export "_start") (drop (memory.grow (i32.const 64)))))"#;
        for huge_pages in [true, false] {
            let engine = Engine::new(EngineOptions {
                huge_pages,
                ..EngineOptions::default()
            })
            .expect("engine");
            let module = wasmtime::Module::new(engine.wasmtime(), grow).expect("valid wat");
            let program = Program::new(&engine, module).expect("links");
            let policy = Policy::default();
            let stdio = StdioTap::new();
            let mut session = program
                .instantiate(
                    policy.wasi_context(&stdio).expect("wasi"),
                    stdio,
                    &Limits::default(),
                    None,
                )
                .expect("instantiates")
                .expect("no outcome");
            let start = session
                .instance
                .get_typed_func::<(), ()>(&mut session.store, "_start")
                .expect("_start");
            start.call(&mut session.store, ()).expect("grows");
            let memory = session
                .instance
                .get_memory(&mut session.store, "memory")
                .expect("memory");
            assert_eq!(memory.data_size(&session.store), 65 << 16);
            let base = memory.data_ptr(&session.store) as usize;
            for addr in [base, base + (64 << 16)] {
                let flags = mapping_flags(addr);
                assert_eq!(
                    flags.iter().any(|f| f == "hg"),
                    huge_pages,
                    "huge_pages {huge_pages}, {addr:#x} flags {flags:?}"
                );
            }
        }
    }

    #[test]
    fn memory_growth_past_limit_is_stopped() {
        let grow = r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))))"#;
        let outcome = run(
            grow,
            Limits {
                max_memory: Some(1 << 20),
                ..Limits::default()
            },
        );
        assert_eq!(
            outcome,
            Outcome::LimitExceeded(LimitExceeded::Memory { limit: 1 << 20 })
        );
    }

    #[test]
    fn trap_carries_message_and_named_backtrace() {
        let trap = r#"(module (memory (export "memory") 1)
            (func $inner (unreachable))
            (func (export "_start") (call $inner)))"#;
        match run(trap, Limits::default()) {
            Outcome::Trapped { message, backtrace } => {
                assert!(message.contains("unreachable"), "{message}");
                let bt = backtrace.expect("backtrace");
                assert!(bt.contains("inner"), "{bt}");
            }
            other => panic!("expected a trap, got {other:?}"),
        }
    }

    #[test]
    fn non_commands_and_unknown_imports_are_refused() {
        let reactor = r#"(module (func (export "_initialize")))"#;
        let err = program(reactor).expect_err("reactor");
        assert!(err.to_string().contains("reactor"), "{err}");
        let foreign = r#"(module (import "env" "launch_missiles" (func))
            (func (export "_start")))"#;
        let err = program(foreign).expect_err("unknown import");
        assert!(err.to_string().contains("launch_missiles"), "{err}");
    }

    #[test]
    fn timeout_needs_interruptible_engine() {
        let engine = Engine::new(EngineOptions::default()).expect("default engine");
        let module = wasmtime::Module::new(engine.wasmtime(), EXIT_7).expect("valid wat");
        let p = Program::new(&engine, module).expect("links");
        assert_eq!(
            p.run(&Policy::default(), &Limits::default()).ok(),
            Some(Outcome::Exited(7))
        );
        let limits = Limits {
            timeout: Some(Duration::from_secs(1)),
            ..Limits::default()
        };
        let err = p.run(&Policy::default(), &limits).expect_err("no epochs");
        assert!(matches!(err, RuntimeError::TimeoutNeedsInterruptibleEngine));
    }

    #[test]
    fn fuel_budget_needs_fuel_engine() {
        let p = program(EXIT_7).expect("links");
        let limits = Limits {
            fuel: Some(10),
            ..Limits::default()
        };
        let err = p
            .run(&Policy::default(), &limits)
            .expect_err("no fuel engine");
        assert!(matches!(err, RuntimeError::FuelNeedsFuelEngine));
    }
}
