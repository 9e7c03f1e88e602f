use super::*;

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid wat")
}

const COUNTER: &str = r#"(module
    (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
    (memory (export "memory") 1)
    (global $sp (mut i32) (i32.const 4096))
    (func $main (export "_start") (local $i i32)
        (loop $l
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const 10))))
        (drop (call $close (i32.const 99)))))"#;

/// The instrumented module validates, adds the safe-point import, a poll after each
/// loop, a wrapper per import and the exports a snapshot needs.
#[test]
fn adds_polls_wrappers_and_exports() {
    let out = instrument(&wat(COUNTER)).expect("instruments");
    let text = wasmprinter::print_bytes(&out).expect("prints");
    assert!(text.contains(r#"(import "tern" "safepoint""#), "{text}");
    assert!(text.contains(r#"(import "tern" "note_fd_close""#), "{text}");
    assert!(
        text.contains(r#"(export "tern:global:0" (global $sp))"#),
        "{text}"
    );
    assert!(text.contains(r#"(export "tern:path_open""#), "{text}");
    assert!(text.contains("i32.load8_u offset=8"), "{text}");
    assert_eq!(text.matches("i32.load8_u offset=8").count(), 1, "{text}");
}

/// Loops carrying i32, i64, f64 and v128 values; the outer loop's bound is a
/// parameter (it keeps its poll), the inner one is counted (it needs none).
const CARRIED: &str = r#"(module
    (memory (export "memory") 1)
    (global $ask (export "ask") (mut i32) (i32.const 0))
    (func (export "run") (param $n i32) (result i64 f64 i32)
      (local $i i32) (local $j i32) (local $a i64) (local $x f64) (local $v v128)
      (loop $outer
        (local.set $j (i32.const 0))
        (loop $inner
          (local.set $a (i64.add (local.get $a) (i64.extend_i32_u (local.get $j))))
          (local.set $x (f64.add (local.get $x) (f64.convert_i32_s (local.get $i))))
          (local.set $v (i32x4.add (local.get $v) (i32x4.splat (local.get $j))))
          (local.get $j) (i32.const 1) (i32.add) (local.tee $j)
          (i32.const 100) (i32.lt_s) (br_if 0))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        ;; As a host would: ask for a safe point at the next loop header.
        (i32.store8 offset=8 (i32.const 0) (global.get $ask))
        (br_if $outer (i32.lt_u (local.get $i) (local.get $n))))
      (local.get $a) (local.get $x) (i32x4.extract_lane 3 (local.get $v))))"#;

/// Runs `run(1000)` of `wasm`, raising the poll flag after every outer iteration
/// when `ask`, with a safe point that lowers it and counts; returns the results and
/// the count.
fn run_carried(wasm: &[u8], ask: bool) -> (Vec<u128>, u32) {
    use wasmtime::{Engine, Linker, Module as WModule, Store, Val};
    let engine = Engine::default();
    let module = WModule::new(&engine, wasm).expect("compiles");
    let mut linker = Linker::new(&engine);
    for import in module.imports() {
        let ty = import.ty().func().expect("function import").clone();
        let counts = import.name() == SAFEPOINT.1;
        linker
            .func_new(import.module(), import.name(), ty, move |mut c, _, _| {
                if counts {
                    *c.data_mut() += 1;
                    let memory = c.get_export("memory").and_then(|e| e.into_memory());
                    let memory = memory.expect("memory");
                    memory.data_mut(&mut c)[POLL_FLAG_ADDR as usize] = 0;
                }
                Ok(())
            })
            .expect("defines");
    }
    let mut store = Store::new(&engine, 0u32);
    let instance = linker
        .instantiate(&mut store, &module)
        .expect("instantiates");
    let global = instance.get_global(&mut store, "ask").expect("ask");
    global.set(&mut store, Val::I32(ask.into())).expect("sets");
    let run = instance.get_func(&mut store, "run").expect("run");
    let mut out = [Val::I32(0), Val::I32(0), Val::I32(0)];
    run.call(&mut store, &[Val::I32(1000)], &mut out)
        .expect("runs");
    let bits = out
        .iter()
        .map(|v| match v {
            Val::I64(x) => *x as u64 as u128,
            Val::F64(x) => u128::from(*x),
            Val::I32(x) => *x as u32 as u128,
            _ => 0,
        })
        .collect();
    (bits, *store.data())
}

/// With the flag raised after every outer iteration, each iteration of the outer loop
/// leaves through its out-of-line safe point, spilling and reloading the carried
/// values: the results are those of the original, and the counted inner loop never
/// polls.
#[test]
fn spilled_locals_come_back_intact_and_counted_loops_do_not_poll() {
    let original = wat(CARRIED);
    let out = instrument(&original).expect("instruments");
    let text = wasmprinter::print_bytes(&out).expect("prints");
    assert_eq!(text.matches("i32.load8_u offset=8").count(), 1, "{text}");
    assert!(
        text.contains("f64.store offset="),
        "the f64 is spilled: {text}"
    );
    assert!(
        text.contains("v128.store offset=16"),
        "widest first: {text}"
    );
    let (expected, _) = run_carried(&original, false);
    let (calm, calm_calls) = run_carried(&out, false);
    let (raised, raised_calls) = run_carried(&out, true);
    assert_eq!(calm, expected);
    assert_eq!(raised, expected);
    assert_eq!(calm_calls, 0);
    assert_eq!(
        raised_calls, 999,
        "one safe point per later outer iteration"
    );
}

/// Data in the spill area turns spilling off rather than clobbering it.
#[test]
fn data_in_the_spill_area_turns_spills_off() {
    let with_data = CARRIED.replace(
        r#"(memory (export "memory") 1)"#,
        r#"(memory (export "memory") 1) (data (i32.const 100) "busy")"#,
    );
    let out = instrument(&wat(&with_data)).expect("instruments");
    let text = wasmprinter::print_bytes(&out).expect("prints");
    assert!(!text.contains("f64.store offset="), "{text}");
    let (expected, _) = run_carried(&wat(&with_data), false);
    assert_eq!(run_carried(&out, true).0, expected);
}

#[test]
fn exception_handling_is_refused() {
    let m = wat(r#"(module (memory 1) (tag $e) (func (throw $e)))"#);
    let err = instrument(&m).expect_err("exceptions cannot be unwound");
    assert!(err.to_string().contains("exception handling"), "{err}");
}

#[test]
fn data_on_the_poll_flag_is_refused() {
    let m = wat(r#"(module (memory 1) (data (i32.const 0) "0123456789"))"#);
    let err = instrument(&m).expect_err("flag address is taken");
    assert!(err.to_string().contains("poll flag"), "{err}");
}

#[test]
fn garbage_is_refused() {
    let err = instrument(b"\0asm\x01\0\0\0\x05").expect_err("truncated");
    assert!(
        err.to_string().contains("not a valid WebAssembly module"),
        "{err}"
    );
}
