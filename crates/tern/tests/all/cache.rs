//! The artifact cache: a second run skips compilation, a corrupt entry is recompiled
//! and replaced, `--no-cache` leaves no trace.

use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{guest, scratch, tern};

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(fingerprints) = fs::read_dir(cache) else {
        return found;
    };
    for fp in fingerprints {
        for e in fs::read_dir(fp.expect("entry").path()).expect("list") {
            found.push(e.expect("entry").path());
        }
    }
    found
}

fn run_logged(dir: &Path) -> crate::support::Run {
    tern(dir)
        .env("TERN_LOG", "tern_runtime=debug")
        .arg("run")
        .arg(guest("hello"))
        .run()
}

#[test]
fn second_run_loads_the_cached_artifact() {
    let d = scratch();
    let first = run_logged(d.path());
    assert_eq!(first.succeeds(), "hello from WebAssembly\n");
    assert!(
        first.stderr.contains("artifact compiled and cached"),
        "{}",
        first.stderr
    );
    assert_eq!(entries(&d.path().join("cache")).len(), 1);
    let second = run_logged(d.path());
    assert_eq!(second.succeeds(), "hello from WebAssembly\n");
    assert!(
        second.stderr.contains("artifact cache hit"),
        "{}",
        second.stderr
    );
    assert!(
        !second.stderr.contains("compiled and cached"),
        "{}",
        second.stderr
    );
}

#[test]
fn corrupt_entry_is_recompiled_not_trusted() {
    let d = scratch();
    run_logged(d.path()).succeeds();
    let entry = entries(&d.path().join("cache")).pop().expect("one entry");
    let mut b = fs::read(&entry).expect("read entry");
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    fs::write(&entry, &b).expect("corrupt entry");

    let third = run_logged(d.path());
    assert_eq!(third.succeeds(), "hello from WebAssembly\n");
    assert!(
        third.stderr.contains("checksum mismatch"),
        "{}",
        third.stderr
    );
    let fourth = run_logged(d.path());
    assert!(
        fourth.stderr.contains("artifact cache hit"),
        "entry was replaced: {}",
        fourth.stderr
    );

    fs::write(&entry, b"").expect("truncate entry");
    let fifth = run_logged(d.path());
    assert_eq!(fifth.succeeds(), "hello from WebAssembly\n");
    assert!(
        fifth.stderr.contains("refusing cache entry"),
        "{}",
        fifth.stderr
    );
}

#[test]
fn no_cache_writes_nothing() {
    let d = scratch();
    tern(d.path())
        .args(["run", "--no-cache"])
        .arg(guest("hello"))
        .run()
        .succeeds();
    assert!(entries(&d.path().join("cache")).is_empty());
}

#[test]
fn engines_and_fuel_get_separate_entries() {
    let d = scratch();
    tern(d.path())
        .arg("run")
        .arg(guest("hello"))
        .run()
        .succeeds();
    tern(d.path())
        .args(["run", "--fuel", "100000000"])
        .arg(guest("hello"))
        .run()
        .succeeds();
    tern(d.path())
        .args(["run", "--engine", "pulley"])
        .arg(guest("hello"))
        .run()
        .succeeds();
    assert_eq!(entries(&d.path().join("cache")).len(), 3);
}

#[test]
fn unwritable_cache_still_runs() {
    let d = scratch();
    let blocker = d.path().join("cache");
    fs::write(&blocker, "a file where the cache directory should be").expect("write");
    let out = tern(d.path()).arg("run").arg(guest("hello")).run();
    assert_eq!(out.succeeds(), "hello from WebAssembly\n");
    assert!(
        out.stderr.contains("could not write artifact cache entry"),
        "{}",
        out.stderr
    );
}
