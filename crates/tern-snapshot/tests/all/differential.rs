//! Differential testing of the migratable rewrite on generated modules (wasm-smith): the
//! rewritten module must behave exactly as the original as long as no checkpoint is
//! asked for. Every exported function is called with zero arguments; results, traps and
//! the final memory must match.

use arbitrary::Unstructured;
use tern_snapshot::Rewriter;
use wasm_smith::InstructionKind;
use wasmtime::{Config, Engine, Extern, Instance, Linker, Module, Store, Trap, Val};

/// Fuel for each call: generated functions may loop for ever.
const FUEL: u64 = 200_000;

pub(crate) fn config() -> wasm_smith::Config {
    wasm_smith::Config {
        min_memories: 1,
        max_memories: 1,
        max_memory32_bytes: 1 << 20,
        memory64_enabled: false,
        exceptions_enabled: false,
        gc_enabled: false,
        threads_enabled: false,
        tail_call_enabled: false,
        relaxed_simd_enabled: false,
        wide_arithmetic_enabled: false,
        custom_page_sizes_enabled: false,
        custom_descriptors_enabled: false,
        compact_imports_enabled: false,
        acquire_release_atomics_enabled: false,
        multibyte_array_access_enabled: false,
        extended_const_enabled: false,
        // Typed function references and tables of them are beyond what Tern's
        // migratable mode handles (and what C compilers emit).
        reference_types_enabled: false,
        // Table instructions (`table.init`, `elem.drop`, …) are left out: C compilers
        // do not emit them.
        allowed_instructions: wasm_smith::InstructionKinds::new(&[
            InstructionKind::Numeric,
            InstructionKind::Vector,
            InstructionKind::Parametric,
            InstructionKind::Variable,
            InstructionKind::Memory,
            InstructionKind::Control,
        ]),
        max_imports: 0,
        max_tables: 1,
        export_everything: true,
        // Cranelift may pick other NaN bit patterns for the same operation in other
        // surroundings, which Wasm allows; canonical NaNs keep the comparison about the
        // rewrite.
        canonicalize_nans: true,
        ..wasm_smith::Config::default()
    }
}

/// What a call did, comparable across the two modules.
#[derive(Debug, PartialEq)]
pub(crate) enum Effect {
    Returned(Vec<u128>),
    Trapped(String),
}

pub(crate) fn bits(v: &Val) -> u128 {
    match v {
        Val::I32(x) => *x as u32 as u128,
        Val::I64(x) => *x as u64 as u128,
        Val::F32(x) => *x as u128,
        Val::F64(x) => *x as u128,
        Val::V128(x) => x.as_u128(),
        // References are compared by being null or not.
        Val::FuncRef(f) => f.is_some() as u128,
        Val::ExternRef(r) => r.is_some() as u128,
        _ => 0,
    }
}

/// Instantiates `wasm` (its imports, all added by the rewrite, as no-ops returning
/// zeros) and calls every exported function; `None` if any call runs out of fuel or
/// stack (the rewritten code is longer, so those say nothing).
fn run(engine: &Engine, wasm: &[u8], names: &[String]) -> Option<(Vec<Effect>, Vec<u8>)> {
    let module = Module::new(engine, wasm).expect("generated and rewritten modules compile");
    let mut linker = Linker::new(engine);
    for import in module.imports() {
        if let Some(ty) = import.ty().func() {
            let results: Vec<_> = ty.results().collect();
            linker
                .func_new(
                    import.module(),
                    import.name(),
                    ty.clone(),
                    move |_, _, out| {
                        for (slot, t) in out.iter_mut().zip(&results) {
                            *slot = Val::default_for_ty(t).unwrap_or(Val::I32(0));
                        }
                        Ok(())
                    },
                )
                .expect("define import");
        }
    }
    let mut store = Store::new(engine, ());
    store.set_fuel(FUEL).ok()?;
    let instance: Instance = match linker.instantiate(&mut store, &module) {
        Ok(i) => i,
        Err(_) => return None,
    };
    let mut effects = Vec::new();
    for name in names {
        let Some(Extern::Func(f)) = instance.get_export(&mut store, name) else {
            continue;
        };
        let ty = f.ty(&store);
        let params: Vec<Val> = ty
            .params()
            .map(|t| Val::default_for_ty(&t).unwrap_or(Val::I32(0)))
            .collect();
        let mut results: Vec<Val> = ty.results().map(|_| Val::I32(0)).collect();
        store.set_fuel(FUEL).ok()?;
        effects.push(match f.call(&mut store, &params, &mut results) {
            Ok(()) => Effect::Returned(results.iter().map(bits).collect()),
            Err(e) => match e.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel | Trap::StackOverflow) => return None,
                Some(t) => Effect::Trapped(t.to_string()),
                None => Effect::Trapped(format!("{e:#}")),
            },
        });
    }
    let memory = instance
        .get_export(&mut store, "memory")
        .or_else(|| {
            module
                .exports()
                .find(|e| e.ty().memory().is_some())
                .and_then(|e| instance.get_export(&mut store, e.name()))
        })
        .and_then(Extern::into_memory)
        .map(|m| m.data(&store).to_vec())
        .unwrap_or_default();
    Some((effects, memory))
}

/// The module wasm-smith generates from seed `n` (mixed with `salt`) under `config`, and
/// the names of its exported functions; `None` when the bytes make no module.
pub(crate) fn generate(
    engine: &Engine,
    config: &wasm_smith::Config,
    n: u64,
    salt: u64,
) -> Option<(Vec<u8>, Vec<String>)> {
    let bytes = seed_bytes(n ^ salt, 8192);
    let mut u = Unstructured::new(&bytes);
    let wasm = wasm_smith::Module::new(config.clone(), &mut u)
        .ok()?
        .to_bytes();
    let names = Module::new(engine, &wasm)
        .expect("wasm-smith modules compile")
        .exports()
        .filter(|e| e.ty().func().is_some())
        .map(|e| e.name().to_owned())
        .collect();
    Some((wasm, names))
}

/// The rewritten module, or `None` when it is refused for the one reason a generated
/// module may meet: data where Tern keeps its poll flag. Any other refusal is a rewrite
/// bug and fails the test.
pub(crate) fn rewrite(rewriter: &Rewriter, wasm: &[u8], seed: u64) -> Option<Vec<u8>> {
    match rewriter.rewrite(wasm) {
        Ok(r) => Some(r),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("poll flag"), "seed {seed}: {text}");
            None
        }
    }
}

/// Deterministic bytes for seed `n` (xorshift), so a failure names its seed.
fn seed_bytes(n: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Property: for generated modules, original and rewritten module return the same values,
/// trap the same way and leave the same memory, call after call.
#[test]
fn rewritten_modules_behave_like_their_originals() {
    let mut cfg = Config::new();
    cfg.consume_fuel(true);
    let engine = Engine::new(&cfg).expect("engine");
    let rewriter = Rewriter::new(None);
    let (mut compared, mut refused, mut skipped) = (0, 0, 0);
    for seed in 0..120u64 {
        let Some((wasm, names)) = generate(&engine, &config(), seed, 0) else {
            continue;
        };
        // Modules that cannot even be instantiated (a data segment past the memory, say)
        // or that run out of fuel say nothing about the rewrite.
        let Some(original) = run(&engine, &wasm, &names) else {
            skipped += 1;
            continue;
        };
        let Some(rewritten) = rewrite(&rewriter, &wasm, seed) else {
            refused += 1;
            continue;
        };
        match run(&engine, &rewritten, &names) {
            Some(b) => {
                assert_eq!(original.0, b.0, "seed {seed}: calls differ");
                assert!(original.1 == b.1, "seed {seed}: memory differs");
                compared += 1;
            }
            None => skipped += 1,
        }
    }
    eprintln!(
        "compared {compared}, refused for data on the poll flag {refused}, skipped {skipped}"
    );
    assert!(compared >= 40, "only {compared} modules compared");
}
