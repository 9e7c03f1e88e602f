//! The pre-copy stops when it stops paying: a guest that rewrites its whole working
//! set between rounds is stopped for the final round as soon as a round resends about
//! as much as the one before, instead of being copied round after round, and the
//! migration says why. A guest with a small hot set converges. Both run to the same
//! end on the destination as without a migration.

use std::net::TcpListener;
use std::time::Duration;

use tern_runtime::{Engine, EngineOptions, Limits, Outcome, Policy};
use tern_snapshot::{Migratable, MigrateEnd, PrecopyEnd, Rewriter, RunEnd};

/// Writes the first word of each of `pages` 64 KiB pages, `rounds` times over, then
/// exits with the sum of those words, mod 100.
fn guest(pages: u32, rounds: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 66)
  (func (export "_start") (local $r i32) (local $p i32) (local $sum i32)
    (loop $round
      (local.set $p (i32.const 0))
      (loop $page
        (i32.store
          (i32.add (i32.const 131072) (i32.mul (local.get $p) (i32.const 65536)))
          (i32.add (local.get $r) (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br_if $page (i32.lt_u (local.get $p) (i32.const {pages}))))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br_if $round (i32.lt_u (local.get $r) (i32.const {rounds}))))
    (local.set $p (i32.const 0))
    (loop $add
      (local.set $sum (i32.add (local.get $sum)
        (i32.load (i32.add (i32.const 131072) (i32.mul (local.get $p) (i32.const 65536))))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br_if $add (i32.lt_u (local.get $p) (i32.const {pages}))))
    (call $exit (i32.rem_u (local.get $sum) (i32.const 100)))))"#
    )
}

/// Migrates `wat` after a moment to a receiver in this process; returns why the
/// pre-copy stopped, the rounds, and the exit codes of the destination's run and of an
/// uninterrupted one.
fn migrate(wat: &str) -> (PrecopyEnd, u32, Outcome, Outcome) {
    let engine = Engine::new(EngineOptions::default()).expect("engine");
    let wasm = wat::parse_str(wat).expect("wat");
    let rewriter = Rewriter::new(None);
    let alone = Migratable::new(&engine, &rewriter, &wasm)
        .expect("migratable")
        .run(
            &Policy::default(),
            &Limits::default(),
            &tern_snapshot::Trigger::new(),
            |_| tern_snapshot::Checkpoint::Continue,
        )
        .expect("runs");
    let RunEnd::Finished(alone) = alone else {
        panic!("stopped without being asked")
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let destination = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            tern_snapshot::receive(
                listener,
                &engine,
                &Rewriter::new(None),
                &[],
                &Limits::default(),
                |_| {},
            )
        })
    };
    let migratable = Migratable::new(&engine, &rewriter, &wasm).expect("migratable");
    let end = tern_snapshot::migrate_run(
        &migratable,
        &Policy::default(),
        &Limits::default(),
        &addr,
        Duration::from_millis(50),
        |_| {},
    )
    .expect("the guest runs");
    let MigrateEnd::Migrated(stats) = end else {
        panic!("not migrated: {end:?}")
    };
    let there = match destination.join().expect("receiver").expect("received") {
        RunEnd::Finished(o) => o,
        RunEnd::Stopped => panic!("the destination stopped"),
    };
    (stats.precopy, stats.rounds, there, alone)
}

#[test]
fn a_guest_rewriting_its_whole_working_set_is_stopped_when_a_round_pays_no_more() {
    let (why, rounds, there, alone) = migrate(&guest(64, 4_000_000));
    assert!(
        matches!(why, PrecopyEnd::NotConverging { .. }),
        "{why:?} after {rounds} rounds"
    );
    assert!(rounds <= 4, "{rounds} rounds: {why}");
    assert!(
        why.to_string()
            .starts_with("the pre-copy did not converge ("),
        "{why}"
    );
    assert_eq!(there, alone);
}

#[test]
fn a_guest_with_a_small_hot_set_converges() {
    let (why, _, there, alone) = migrate(&guest(1, 400_000_000));
    assert_eq!(why, PrecopyEnd::Converged);
    assert_eq!(there, alone);
}
