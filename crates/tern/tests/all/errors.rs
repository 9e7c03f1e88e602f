//! Bad input: each gets one clear line on stderr and a non-zero exit, never a panic.

use std::fs;

use crate::support::{guest, scratch, tern};

#[test]
fn missing_module() {
    let d = scratch();
    let r = tern(d.path()).args(["run", "/no/such/app.wasm"]).run();
    r.fails_with(
        1,
        "cannot read module /no/such/app.wasm: No such file or directory",
    );
}

#[test]
fn malformed_modules() {
    let d = scratch();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "junk.wasm",
            b"\xff\xfe\x00garbage",
            "not a WebAssembly module",
        ),
        ("text.wasm", b"hello world", "not valid WebAssembly text"),
        (
            "truncated.wasm",
            b"\0asm\x01\x00\x00\x00\x01\xff\xff\xff\x0f",
            "does not compile",
        ),
        ("empty.wasm", b"", "not valid WebAssembly text"),
        ("component.wasm", b"\0asm\x0d\x00\x01\x00", "component"),
        (
            "elf.cwasm",
            b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            "an ELF file",
        ),
        ("short.cwasm", b"TERNART\x01\x00", "is corrupt"),
        (
            "bad.wat",
            b"(module (func (export \"_start\") (i32.const 1)))",
            "type mismatch",
        ),
    ];
    for (name, bytes, needle) in cases {
        let path = d.path().join(name);
        fs::write(&path, bytes).expect("write");
        let r = tern(d.path()).arg("run").arg(&path).run();
        let line = r.fails_with(1, needle);
        assert!(line.contains(name), "the message names the file: {line}");
    }
}

#[test]
fn modules_that_are_not_wasi_commands() {
    let d = scratch();
    let cases = [
        (
            "reactor.wat",
            r#"(module (func (export "_initialize")))"#,
            "WASI reactor",
        ),
        (
            "library.wat",
            r#"(module (func (export "add")))"#,
            "no `_start`",
        ),
        (
            "foreign.wat",
            r#"(module (import "env" "launch_missiles" (func)) (func (export "_start")))"#,
            "env::launch_missiles",
        ),
        (
            "badstart.wat",
            r#"(module (func (export "_start") (param i32)))"#,
            "not a function of no parameters",
        ),
    ];
    for (name, wat, needle) in cases {
        let path = d.path().join(name);
        fs::write(&path, wat).expect("write");
        let r = tern(d.path()).arg("run").arg(&path).run();
        let line = r.fails_with(1, needle);
        assert!(line.contains(name), "{line}");
    }
}

#[test]
fn bad_flag_values_name_the_flag() {
    let d = scratch();
    let hello = guest("hello");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--max-memory", "12parsecs"], 2, "--max-memory"),
        (&["--timeout", "soon"], 2, "--timeout"),
        (&["--engine", "v8"], 2, "unknown engine `v8`"),
        (
            &["--env", "NOEQUALS"],
            2,
            "invalid environment variable `NOEQUALS`",
        ),
        (&["--dir", "::/x"], 2, "invalid directory `::/x`"),
        (
            &["--dir", "/no/such/dir::/d"],
            1,
            "cannot preopen directory /no/such/dir",
        ),
        (&["--max-stack", "1K"], 2, "between 16KiB and 64MiB"),
        (&["--max-memory", "64"], 2, "`64` has no unit: write 64MiB"),
        (
            &["--checkpoint-out", "/no/such/dir/app.snap"],
            1,
            "--checkpoint-out /no/such/dir/app.snap: cannot write there",
        ),
        (
            &["--max-memroy", "64MiB"],
            2,
            "a similar argument exists: '--max-memory'",
        ),
        (
            &["--dir", "/no/such/dir"],
            1,
            "cannot preopen directory /no/such/dir: it does not exist",
        ),
        (
            &["--timeout", "0s"],
            2,
            "the duration must be longer than zero",
        ),
        (
            &["--checkpoint-after", "0", "--checkpoint-out", "x.snap"],
            2,
            "the duration must be longer than zero",
        ),
        (
            &["--dir", "/tmp::/x", "--ro-dir", "/tmp::/x"],
            1,
            "`/x` is preopened twice",
        ),
    ];
    for (flags, code, needle) in cases {
        let r = tern(d.path()).arg("run").args(*flags).arg(&hello).run();
        assert_eq!(r.code, Some(*code), "{flags:?}: {r:?}");
        assert!(
            r.stderr.contains(needle),
            "{flags:?}: expected {needle:?} in {}",
            r.stderr
        );
        assert_eq!(r.stdout, "", "{flags:?}: the guest must not run");
    }
}

#[test]
fn preopen_of_a_file_is_refused() {
    let d = scratch();
    let file = d.path().join("plain.txt");
    fs::write(&file, "x").expect("write");
    let r = tern(d.path())
        .args(["run", "--dir"])
        .arg(&file)
        .arg(guest("hello"))
        .run();
    r.fails_with(1, "not a directory");
}
