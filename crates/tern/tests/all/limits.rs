//! Limits and hostile guests: each ends the guest with a one-line message naming the
//! limit and a documented exit code below 128, and the host survives.

use crate::support::{guest, scratch, tern};

#[test]
fn endless_loop_without_host_calls_times_out() {
    let d = scratch();
    let out = tern(d.path())
        .args(["run", "--timeout", "1s"])
        .arg(guest("spin"))
        .run();
    assert_eq!(
        out.fails_with(124, "timed out"),
        "error: timed out after 1s"
    );
}

#[test]
fn guest_blocked_in_a_host_call_times_out() {
    let d = scratch();
    let out = tern(d.path())
        .args(["run", "--timeout", "300ms"])
        .arg(guest("sleepy"))
        .run();
    assert_eq!(
        out.fails_with(124, "timed out"),
        "error: timed out after 300ms"
    );
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let d = scratch();
    let out = tern(d.path())
        .args(["run", "--max-memory", "64MiB"])
        .arg(guest("membomb"))
        .run();
    assert_eq!(
        out.fails_with(122, "memory"),
        "error: memory limit of 64 MiB exceeded"
    );
    assert_eq!(out.stdout, "", "the guest was stopped, not left to recover");
}

#[test]
fn module_larger_than_the_limit_does_not_start() {
    let d = scratch();
    let out = tern(d.path())
        .args(["run", "--max-memory", "64K"])
        .arg(guest("hello"))
        .run();
    out.fails_with(122, "memory limit of 64 KiB exceeded");
}

#[test]
fn endless_recursion_hits_the_stack_limit() {
    let d = scratch();
    let out = tern(d.path()).arg("run").arg(guest("recurse")).run();
    assert_eq!(
        out.fails_with(121, "stack"),
        "error: stack limit of 512 KiB exceeded"
    );
    let out = tern(d.path())
        .args(["run", "--max-stack", "2MiB"])
        .arg(guest("recurse"))
        .run();
    assert_eq!(
        out.fails_with(121, "stack"),
        "error: stack limit of 2 MiB exceeded"
    );
}

#[test]
fn fuel_budget_stops_a_busy_guest_and_lets_a_small_one_finish() {
    let d = scratch();
    let out = tern(d.path())
        .args(["run", "--fuel", "1000000"])
        .arg(guest("spin"))
        .run();
    assert_eq!(
        out.fails_with(123, "fuel"),
        "error: fuel budget of 1000000 exhausted"
    );
    let out = tern(d.path())
        .args(["run", "--fuel", "100000000"])
        .arg(guest("hello"))
        .run();
    assert_eq!(out.succeeds(), "hello from WebAssembly\n");
}

#[test]
fn trap_prints_the_trap_and_a_named_backtrace() {
    let d = scratch();
    let out = tern(d.path()).arg("run").arg(guest("trap")).run();
    assert_eq!(out.code, Some(125), "{out:?}");
    assert_eq!(out.stdout, "about to trap\n");
    let mut lines = out.stderr.lines();
    assert_eq!(
        lines.next(),
        Some("error: guest trapped: wasm `unreachable` instruction executed")
    );
    assert_eq!(lines.next(), Some("wasm backtrace:"));
    let frames: Vec<&str> = lines.collect();
    assert!(frames[0].contains("0: check_invariant at 0x"), "{frames:?}");
    assert!(frames[1].contains("1: process_order at 0x"), "{frames:?}");
    assert!(frames.iter().any(|f| f.contains(": main at")), "{frames:?}");
}

#[test]
fn limits_hold_under_pulley_too() {
    let d = scratch();
    let spin = tern(d.path())
        .args(["run", "--engine", "pulley", "--timeout", "500ms"])
        .arg(guest("spin"))
        .run();
    spin.fails_with(124, "timed out after 500ms");
    let bomb = tern(d.path())
        .args(["run", "--engine", "pulley", "--max-memory", "32MiB"])
        .arg(guest("membomb"))
        .run();
    bomb.fails_with(122, "memory limit of 32 MiB exceeded");
    let deep = tern(d.path())
        .args(["run", "--engine", "pulley"])
        .arg(guest("recurse"))
        .run();
    deep.fails_with(121, "stack limit");
}
