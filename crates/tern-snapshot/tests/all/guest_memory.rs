//! A checkpoint never writes to the guest's memory. Its unwind records go to the
//! rewrite's own memory; pages added to the guest's memory were taken by allocators that
//! claim everything up to `memory.size` at their first call (wasi-libc's malloc of 2022
//! does), so a checkpoint before that call gave the allocator the records' pages, and
//! every later checkpoint overwrote the guest's data there. Seen in the continuum as a
//! wrong checksum from an app whose first checkpoint came before its first `malloc`.

use std::cell::Cell;

use tern_runtime::{Engine, EngineOptions, Limits, Outcome, Policy};
use tern_snapshot::{Checkpoint, Migratable, Rewriter, RunEnd, Trigger};

/// Yields (a WASI call: a safe point) before it sets up its "heap", which, like that
/// malloc, is everything from page 1 to `memory.size` at that moment; fills it with a
/// pattern (`memory.fill`: no loop, so no safe point), yields again, and exits 0 when
/// the pattern is whole, 1 when any byte of it changed.
const GUEST: &str = r#"(module
  (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $end i32) (local $p i32) (local $bad i32)
    (drop (call $yield))
    (local.set $end (i32.mul (memory.size) (i32.const 65536)))
    (memory.fill (i32.const 65536) (i32.const 0xa5)
      (i32.sub (local.get $end) (i32.const 65536)))
    (drop (call $yield))
    (local.set $p (i32.const 65536))
    (loop $check
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0xa5))
        (then (local.set $bad (i32.const 1))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $check (i32.lt_u (local.get $p) (local.get $end))))
    (call $exit (local.get $bad))))"#;

#[test]
fn a_checkpoint_before_the_guest_sets_up_its_heap_leaves_its_heap_alone() {
    let engine = Engine::new(EngineOptions::default()).expect("engine");
    let wasm = wat::parse_str(GUEST).expect("wat");
    let migratable = Migratable::new(&engine, &Rewriter::new(None), &wasm).expect("migratable");
    // A checkpoint at the first yield, before the heap is set up; it asks for the next
    // at once, which is the second yield, with the heap full: two in all.
    let trigger = Trigger::at_safepoint(1);
    let sizes = Cell::new(Vec::new());
    let end = migratable
        .run(
            &Policy::default(),
            &Limits::default(),
            &trigger,
            |captured| {
                let mut seen = sizes.take();
                seen.push(captured.memory().len());
                if seen.len() == 1 {
                    trigger.fire();
                }
                sizes.set(seen);
                Checkpoint::Continue
            },
        )
        .expect("runs");
    let RunEnd::Finished(outcome) = end else {
        panic!("stopped without being asked")
    };
    assert!(
        matches!(outcome, Outcome::Exited(0)),
        "the guest found its heap changed: {outcome:?}"
    );
    // A checkpoint at each yield, and the guest's memory as it sized it.
    assert_eq!(sizes.take(), [2 * 65536, 2 * 65536]);
}

#[test]
fn unwind_records_that_are_missing_or_too_large_are_refused_before_the_guest_runs() {
    let engine = Engine::new(EngineOptions::default()).expect("engine");
    let wasm = wat::parse_str(GUEST).expect("wat");
    let migratable = Migratable::new(&engine, &Rewriter::new(None), &wasm).expect("migratable");
    let snapshot = std::cell::RefCell::new(None);
    let end = migratable
        .run(
            &Policy::default(),
            &Limits::default(),
            &Trigger::at_safepoint(1),
            |captured| {
                *snapshot.borrow_mut() = Some(captured.to_snapshot());
                Checkpoint::Stop
            },
        )
        .expect("runs");
    assert!(matches!(end, RunEnd::Stopped));
    let snapshot = snapshot.take().expect("a snapshot");
    let limits = Limits::default();
    let place = tern_snapshot::Placement {
        dirs: &[],
        inherit_stdio: false,
        skip_stdin: false,
        limits: &limits,
    };
    for (records, why) in [
        (Vec::new(), "it holds no unwind records"),
        (
            vec![0; 1 << 20],
            "its unwind records (1048576 bytes) do not fit the unwind memory",
        ),
    ] {
        let mut bad = snapshot.clone();
        bad.meta.unwind = records;
        let ran = Cell::new(false);
        let err = migratable
            .restore(
                &bad,
                &place,
                &Trigger::new(),
                || {
                    ran.set(true);
                    Ok(())
                },
                |_| Checkpoint::Continue,
            )
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!("snapshot is corrupt, nothing was restored: {why}")
        );
        assert!(!ran.get(), "nothing was confirmed before the refusal");
    }
    // The snapshot as taken resumes and runs to its end.
    let end = migratable
        .restore(
            &snapshot,
            &place,
            &Trigger::new(),
            || Ok(()),
            |_| Checkpoint::Continue,
        )
        .expect("restores");
    assert!(
        matches!(end, RunEnd::Finished(Outcome::Exited(0))),
        "{end:?}"
    );
}
