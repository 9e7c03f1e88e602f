//! Unwinding and rewinding generated modules (wasm-smith) at their safe points: every
//! import call of a rewritten module is a safe point, and here each one unwinds
//! the whole stack into the rewrite's unwind memory and rewinds it at once, as a checkpoint that
//! carries on does. Results, traps and memory must be those of the original module.
//! Generated code puts calls under values on the operand stack, inside `if`s, blocks
//! with parameters and loops, and through tables: the shapes the unwind pass must get
//! right.

use tern_passes::unwind::UNWIND_MEMORY;
use tern_snapshot::Rewriter;
use wasmtime::{Caller, Config, Engine, Extern, Linker, Memory, Module, Store, Trap, Val};

use crate::differential::{Effect, bits, config, generate, rewrite};

const FUEL: u64 = 400_000;
/// Unwinds per exported call at most, so a guest calling an import in an endless loop
/// still runs out of fuel.
const MAX_UNWINDS: u32 = 40;

/// The only imports generated modules may have: functions of assorted types.
const IMPORTS: &str = r#"(module
    (import "env" "ping" (func))
    (import "env" "add" (func (param i32 i32) (result i32)))
    (import "env" "mix" (func (param i64 f64) (result f32)))
    (import "env" "pair" (func (param i32) (result i64 i32))))"#;

/// What a module did when its exports were called.
struct Observed {
    effects: Vec<Effect>,
    memory: Vec<u8>,
    /// The chained hashes of its import calls.
    log: Vec<u128>,
    unwinds: u32,
}

#[derive(Default)]
struct Host {
    /// Safe-point calls so far.
    calls: u32,
    /// Unwinds in the current exported call, and in all.
    unwinds: u32,
    total: u32,
    /// Whether exports are being called (not the start function).
    ready: bool,
    /// A hash of each call to the guest's own imports, chained.
    log: Vec<u128>,
}

fn export(caller: &mut Caller<'_, Host>, name: &str) -> wasmtime::Func {
    match caller.get_export(name) {
        Some(Extern::Func(f)) => f,
        _ => panic!("the rewritten module exports {name}"),
    }
}

fn unwind_memory(caller: &mut Caller<'_, Host>) -> Memory {
    match caller.get_export(UNWIND_MEMORY) {
        Some(Extern::Memory(m)) => m,
        _ => panic!("the rewritten module exports {UNWIND_MEMORY}"),
    }
}

/// `tern.safepoint`: ends a rewind, or starts an unwind.
fn safepoint(mut caller: Caller<'_, Host>) -> wasmtime::Result<()> {
    let mut state = [Val::I32(0)];
    export(&mut caller, "asyncify_get_state").call(&mut caller, &[], &mut state)?;
    if state[0].unwrap_i32() == 2 {
        export(&mut caller, "asyncify_stop_rewind").call(&mut caller, &[], &mut [])?;
        return Ok(());
    }
    let host = caller.data_mut();
    host.calls += 1;
    // Not during instantiation (a start function), nor too often in one call.
    if !host.ready || host.unwinds >= MAX_UNWINDS {
        return Ok(());
    }
    host.unwinds += 1;
    host.total += 1;
    // The records go to the rewrite's own memory, which the guest never sees: its
    // memory must end as the original module's does, byte for byte.
    let memory = unwind_memory(&mut caller);
    if memory.data_size(&caller) == 0 {
        memory.grow(&mut caller, 16)?;
    }
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&8u32.to_le_bytes());
    header[4..].copy_from_slice(&(memory.data_size(&caller) as u32).to_le_bytes());
    memory.write(&mut caller, 0, &header)?;
    export(&mut caller, "asyncify_start_unwind").call(&mut caller, &[Val::I32(0)], &mut [])
}

/// Instantiates `wasm`, calls every export in `names`, and for the rewritten module
/// (`unwinding`) rewinds each unwind at once. `None` when a call runs out of fuel or
/// stack, or the memory cannot grow.
fn run(engine: &Engine, wasm: &[u8], names: &[String], unwinding: bool) -> Option<Observed> {
    let module = Module::new(engine, wasm).expect("generated and rewritten modules compile");
    let mut linker: Linker<Host> = Linker::new(engine);
    for import in module.imports() {
        let Some(ty) = import.ty().func().cloned() else {
            continue;
        };
        if unwinding && import.module() == "tern" && import.name() == "safepoint" {
            linker
                .func_wrap("tern", "safepoint", safepoint)
                .expect("define safepoint");
            continue;
        }
        if import.module() == "tern" || import.module() == "wasi_snapshot_preview1" {
            // Added by the rewrite, and never called by these modules but for the
            // safe point.
            let results: Vec<_> = ty.results().collect();
            linker
                .func_new(import.module(), import.name(), ty, move |_, _, out| {
                    for (slot, t) in out.iter_mut().zip(&results) {
                        *slot = Val::default_for_ty(t).unwrap_or(Val::I32(0));
                    }
                    Ok(())
                })
                .expect("define import");
            continue;
        }
        // The guest's own imports: each call is logged with its arguments, and returns
        // values that depend on them and on every call before, so a value lost in an
        // unwind or a rewind shows in the log or in what the guest computes.
        let results: Vec<_> = ty.results().collect();
        linker
            .func_new(
                import.module(),
                import.name(),
                ty,
                move |mut c, args, out| {
                    let host = c.data_mut();
                    let mut h = host.log.last().copied().unwrap_or(0x9E37_79B9);
                    for a in args {
                        h = (h ^ bits(a)).wrapping_mul(0x1000_0000_01B3);
                    }
                    host.log.push(h);
                    for (k, (slot, t)) in out.iter_mut().zip(&results).enumerate() {
                        let x = (h >> (k * 7)) as u64;
                        *slot = match t {
                            wasmtime::ValType::I64 => Val::I64(x as i64),
                            wasmtime::ValType::F32 => Val::F32((x as u32 >> 9) | 0x3f80_0000),
                            wasmtime::ValType::F64 => Val::F64((x >> 12) | 0x3ff0_0000_0000_0000),
                            _ => Val::I32(x as i32),
                        };
                    }
                    Ok(())
                },
            )
            .expect("define import");
    }
    // Generated modules export everything, their one memory under some name.
    let memory_name = module
        .exports()
        .find(|e| e.ty().memory().is_some() && e.name() != UNWIND_MEMORY)?
        .name()
        .to_owned();
    let mut store = Store::new(engine, Host { ..Host::default() });
    store.set_fuel(FUEL).ok()?;
    let instance = linker.instantiate(&mut store, &module).ok()?;
    let memory = instance.get_memory(&mut store, &memory_name)?;
    // The rewrite's poll flag and spill area lie in the first KiB of the guest's memory,
    // which generated modules may start without: both modules get one more page.
    memory.grow(&mut store, 1).ok()?;
    store.data_mut().ready = true;
    let mut effects = Vec::new();
    for name in names {
        let Some(Extern::Func(f)) = instance.get_export(&mut store, name) else {
            continue;
        };
        let ty = f.ty(&store);
        // Small non-zero arguments, so values the guest carries are rarely zero.
        let params: Vec<Val> = ty
            .params()
            .enumerate()
            .map(|(k, t)| match t {
                wasmtime::ValType::I32 => Val::I32(3 + k as i32),
                wasmtime::ValType::I64 => Val::I64(5 + k as i64),
                wasmtime::ValType::F32 => Val::F32(1.25f32.to_bits()),
                wasmtime::ValType::F64 => Val::F64(2.5f64.to_bits()),
                t => Val::default_for_ty(&t).unwrap_or(Val::I32(0)),
            })
            .collect();
        let mut results: Vec<Val> = ty.results().map(|_| Val::I32(0)).collect();
        store.data_mut().unwinds = 0;
        store.set_fuel(FUEL).ok()?;
        let effect = loop {
            let outcome = f.call(&mut store, &params, &mut results);
            let unwound = unwinding && outcome.is_ok() && {
                let get = instance.get_func(&mut store, "asyncify_get_state")?;
                let mut state = [Val::I32(0)];
                get.call(&mut store, &[], &mut state).ok()?;
                state[0].unwrap_i32() == 1
            };
            if !unwound {
                break match outcome {
                    Ok(()) => Effect::Returned(results.iter().map(bits).collect()),
                    Err(e) => match e.downcast_ref::<Trap>() {
                        Some(Trap::OutOfFuel | Trap::StackOverflow) => return None,
                        Some(t) => Effect::Trapped(t.to_string()),
                        None => Effect::Trapped(format!("{e:#}")),
                    },
                };
            }
            let call = |store: &mut Store<Host>, name: &str, args: &[Val]| {
                let f = instance
                    .get_func(&mut *store, name)
                    .expect("asyncify export");
                f.call(store, args, &mut []).expect("asyncify export runs");
            };
            call(&mut store, "asyncify_stop_unwind", &[]);
            call(&mut store, "asyncify_start_rewind", &[Val::I32(0)]);
        };
        effects.push(effect);
    }
    let bytes = memory.data(&store).to_vec();
    Some(Observed {
        effects,
        memory: bytes,
        log: store.data().log.clone(),
        unwinds: store.data().total,
    })
}

/// Property: generated modules that call imports behave exactly as their originals when
/// every import call unwinds the stack and rewinds it.
#[test]
fn unwinding_and_rewinding_at_every_safe_point_changes_nothing() {
    let mut cfg = Config::new();
    cfg.consume_fuel(true);
    let engine = Engine::new(&cfg).expect("engine");
    let rewriter = Rewriter::new(None);
    let mut generator = config();
    generator.max_imports = 4;
    generator.available_imports = Some(wat::parse_str(IMPORTS).expect("imports parse"));
    let (mut compared, mut unwound, mut skipped) = (0, 0, 0);
    for seed in 0..1000u64 {
        let Some((wasm, names)) = generate(&engine, &generator, seed, 0x5eed) else {
            continue;
        };
        let Some(original) = run(&engine, &wasm, &names, false) else {
            skipped += 1;
            continue;
        };
        let Some(rewritten) = rewrite(&rewriter, &wasm, seed) else {
            skipped += 1;
            continue;
        };
        match run(&engine, &rewritten, &names, true) {
            Some(o) => {
                assert_eq!(original.effects, o.effects, "seed {seed}: calls differ");
                assert!(original.memory == o.memory, "seed {seed}: memory differs");
                assert_eq!(original.log, o.log, "seed {seed}: import calls differ");
                compared += 1;
                unwound += u32::from(o.unwinds > 0);
            }
            None => skipped += 1,
        }
    }
    eprintln!("compared {compared} ({unwound} unwound at least once), skipped {skipped}");
    assert!(compared >= 40, "only {compared} modules compared");
    assert!(unwound >= 10, "only {unwound} modules unwound");
}

/// Hand-written shapes: a call under a value on the operand stack in a loop, a call in
/// each arm of an `if` under a block with a parameter, and a call through a table.
const SHAPES: &str = r#"(module
    (import "env" "add" (func $add (param i32 i32) (result i32)))
    (import "env" "mix" (func $mix (param i64 f64) (result f32)))
    (memory (export "memory") 1)
    (table 2 funcref)
    (elem (i32.const 0) $twice $thrice)
    (type $unary (func (param i32) (result i32)))
    (func $twice (param $x i32) (result i32)
        (call $add (local.get $x) (local.get $x)))
    (func $thrice (param $x i32) (result i32)
        (i32.add (local.get $x) (call $add (local.get $x) (local.get $x))))
    (func (export "run") (param $n i32) (result i32)
        (local $acc i32) (local $i i32) (local $f f64)
        (local.set $f (f64.const 1.5))
        (loop $l
            (local.set $acc
                (i32.add (local.get $acc) (call $add (local.get $i) (i32.const 7))))
            (i32.const 1000)
            (if (param i32) (result i32) (i32.and (local.get $i) (i32.const 1))
                (then (i32.add (call $add (local.get $acc) (i32.const 1))))
                (else (i32.sub (i32.trunc_f32_s (call $mix (i64.extend_i32_u (local.get $i)) (local.get $f))))))
            (local.set $acc (i32.xor (local.get $acc)))
            (local.set $acc (i32.add (local.get $acc)
                (call_indirect (type $unary) (local.get $i) (i32.and (local.get $i) (i32.const 1)))))
            (local.set $f (f64.add (local.get $f) (f64.const 0.25)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 10))))
        (i32.add (local.get $acc) (i32.trunc_f64_s (local.get $f)))))"#;

#[test]
fn calls_under_stack_values_in_ifs_and_through_tables_unwind_and_rewind() {
    let mut cfg = Config::new();
    cfg.consume_fuel(true);
    let engine = Engine::new(&cfg).expect("engine");
    let wasm = wat::parse_str(SHAPES).expect("valid wat");
    let names = vec!["run".to_owned()];
    let original = run(&engine, &wasm, &names, false).expect("runs");
    let rewritten = Rewriter::new(None).rewrite(&wasm).expect("rewrites");
    let o = run(&engine, &rewritten, &names, true).expect("runs");
    assert_eq!(o.unwinds as usize, o.log.len(), "every import call unwinds");
    assert_eq!(original.effects, o.effects);
    assert_eq!(original.log, o.log);
    assert!(original.memory == o.memory);
}
