//! `tern run` on well-behaved guests: output, arguments, environment, exit codes, stdio,
//! clocks, randomness, text modules and both engines.

use crate::support::{guest, scratch, tern};

#[test]
fn hello_prints_and_exits_zero() {
    let d = scratch();
    let out = tern(d.path()).arg("run").arg(guest("hello")).run();
    assert_eq!(out.succeeds(), "hello from WebAssembly\n");
    assert_eq!(out.stderr, "");
}

#[test]
fn arguments_reach_the_guest_with_or_without_double_dash() {
    let d = scratch();
    let wasm = guest("args_env");
    let with = tern(d.path())
        .arg("run")
        .arg(&wasm)
        .args(["--", "one", "--flag", "-x"])
        .run();
    let text = with.succeeds();
    assert!(text.contains("argc=4\n"), "{text}");
    assert!(
        text.contains("argv[0]=args_env-"),
        "argv[0] is the module's file name: {text}"
    );
    assert!(text.contains("argv[2]=--flag\nargv[3]=-x\n"), "{text}");
    let without = tern(d.path())
        .arg("run")
        .arg(&wasm)
        .args(["one", "two"])
        .run();
    assert!(without.succeeds().contains("argc=3\nargv[0]=args_env-"));
    let named = tern(d.path())
        .args(["run", "--argv0", "app"])
        .arg(&wasm)
        .run();
    assert!(named.succeeds().contains("argv[0]=app\n"));
}

#[test]
fn environment_is_only_what_is_given() {
    let d = scratch();
    let out = tern(d.path())
        .env("HOST_SECRET", "do-not-leak")
        .args([
            "run",
            "--env",
            "URL=postgres://u@h/db?a=b",
            "--env",
            "EMPTY=",
        ])
        .arg(guest("args_env"))
        .run();
    let text = out.succeeds();
    assert!(text.contains("env: URL=postgres://u@h/db?a=b\n"), "{text}");
    assert!(text.contains("env: EMPTY=\n"), "{text}");
    assert!(text.contains("envc=2\n"), "{text}");
    assert!(
        !text.contains("HOST_SECRET") && !text.contains("PATH="),
        "{text}"
    );
}

#[test]
fn guest_exit_code_is_terns_exit_code() {
    let d = scratch();
    for code in ["0", "1", "3", "42", "120"] {
        let out = tern(d.path())
            .args(["run", "--env", &format!("EXIT_CODE={code}")])
            .arg(guest("args_env"))
            .run();
        assert_eq!(out.code, Some(code.parse().expect("number")), "{out:?}");
        assert_eq!(out.stderr, "", "a guest's own exit is not an error");
    }
    // WASI preview1 allows exit statuses below 126 only, as in Wasmtime.
    let out = tern(d.path())
        .args(["run", "--env", "EXIT_CODE=200"])
        .arg(guest("args_env"))
        .run();
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr
            .starts_with("error: guest trapped: exit with invalid exit status"),
        "{}",
        out.stderr
    );
}

#[test]
fn stdin_stdout_and_stderr_are_the_processs() {
    let d = scratch();
    let out = tern(d.path())
        .arg("run")
        .arg(guest("stdin_upper"))
        .stdin(b"tern moves work\nto the edge\n")
        .run();
    assert_eq!(out.succeeds(), "TERN MOVES WORK\nTO THE EDGE\n");
    assert_eq!(out.stderr, "28 bytes\n");
}

#[test]
fn clocks_and_randomness_work() {
    let d = scratch();
    let out = tern(d.path()).arg("run").arg(guest("clocks_random")).run();
    assert_eq!(
        out.succeeds(),
        "realtime after 2020: yes\nmonotonic never goes back: yes\n\
         slept at least 20ms: yes\nrandom draws differ: yes\n"
    );
}

#[test]
fn text_modules_run() {
    let d = scratch();
    let wat = d.path().join("exit.wat");
    std::fs::write(
        &wat,
        r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 9))))"#,
    )
    .expect("write wat");
    let out = tern(d.path()).arg("run").arg(&wat).run();
    assert_eq!(out.code, Some(9), "{out:?}");
}

/// Pulley, the portable interpreter, gives the same output and exit code as Cranelift.
#[test]
fn pulley_matches_cranelift() {
    let d = scratch();
    for name in ["hello", "args_env", "clocks_random"] {
        let wasm = guest(name);
        let run = |engine: &str| {
            tern(d.path())
                .args([
                    "run",
                    "--engine",
                    engine,
                    "--env",
                    "EXIT_CODE=5",
                    "--argv0",
                    "x",
                ])
                .arg(&wasm)
                .args(["a", "b"])
                .run()
        };
        let (c, p) = (run("cranelift"), run("pulley"));
        assert_eq!((c.code, &c.stdout), (p.code, &p.stdout), "{name}");
        assert!(!c.stdout.is_empty());
    }
}

/// Everything after MODULE belongs to the guest, even what looks like Tern's flags.
#[test]
fn flags_after_the_module_go_to_the_guest() {
    let d = scratch();
    let out = tern(d.path())
        .arg("run")
        .arg(guest("args_env"))
        .args(["--env", "A=1", "--help", "--", "x"])
        .run();
    let text = out.succeeds();
    assert!(
        text.contains("argc=6\n") && text.contains("argv[1]=--env\nargv[2]=A=1\nargv[3]=--help\n"),
        "{text}"
    );
    assert!(
        text.contains("argv[4]=--\nargv[5]=x\n"),
        "only the first `--` separates: {text}"
    );
    assert!(text.contains("envc=0\n"), "{text}");
}

#[test]
fn repeated_environment_key_keeps_the_last_value() {
    let d = scratch();
    let out = tern(d.path())
        .args(["run", "--env", "K=first", "--env", "K=second=2"])
        .arg(guest("args_env"))
        .run();
    let text = out.succeeds();
    assert!(text.contains("env: K=second=2\nenvc=1\n"), "{text}");
}

/// Tern's fast paths for libc's `memcpy`, `memmove`, `memset`, `memcmp` and `strlen`
/// change nothing a guest can see: the same bytes and results after thousands of calls of
/// every size, overlapping copies included, in plain and migratable runs, and the same
/// trap, in the same function, for a copy that runs past the end of memory.
#[test]
fn libc_fast_paths_change_nothing_the_guest_sees() {
    let pass = r#"fast paths routines=["memcpy", "memmove", "memset", "memcmp", "strlen"]"#;
    let traps = same_as_written("memops", "--keep-libc", pass, Some(pass));
    assert!(traps[0].ends_with("memcpy"), "{traps:?}");
}

/// Tern's loop vectoriser changes nothing a guest can see: stencils, a matrix product
/// and scaled adds over every size from 1 to 70 and on overlapping arrays give the same
/// bits as written, plain or checkpointed and restored (a migratable module's loops
/// carry safe points, which the vectoriser leaves alone), and a stencil whose input runs
/// past the end of memory traps in the same function after the same output.
#[test]
fn vectorised_loops_change_nothing_the_guest_sees() {
    let pass = "loops given a vector version";
    let traps = same_as_written("stencils", "--no-vectorize", pass, None);
    assert!(traps[0].ends_with("jacobi_1d"), "{traps:?}");
}

/// Runs `name` as written (with `flag`) and as Tern compiles it by default, plain and
/// checkpointed then restored, and with the argument `oob`, which must trap: asserts the
/// same output each time, that the debug log shows `pass` ran (and `migratable_pass` in
/// the migratable run), and the same trapping frames; returns those frames' function
/// names.
fn same_as_written(
    name: &str,
    flag: &str,
    pass: &str,
    migratable_pass: Option<&str>,
) -> Vec<String> {
    let d = scratch();
    let wasm = guest(name);
    let written = tern(d.path()).args(["run", flag]).arg(&wasm).run();
    let expected = written.succeeds().to_owned();
    assert!(expected.contains("final: "), "{expected}");
    let rewritten = tern(d.path())
        .env("TERN_LOG", "tern_runtime=debug,tern_passes=debug")
        .arg("run")
        .arg(&wasm)
        .run();
    assert_eq!(rewritten.succeeds(), expected);
    assert!(
        rewritten.stderr.contains(pass),
        "the pass ran: {}",
        rewritten.stderr
    );
    // Migratable: the rewrite's output goes through the same passes.
    let snap = d.path().join(format!("{name}.snap"));
    let first = tern(d.path())
        .env("TERN_LOG", "tern_runtime=debug,tern_passes=debug")
        .args([
            "run",
            "--checkpoint-at-safepoint",
            "20000",
            "--checkpoint-out",
        ])
        .arg(&snap)
        .arg(&wasm)
        .run();
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(first.stderr.contains("checkpoint:"), "{first:?}");
    if let Some(p) = migratable_pass {
        assert!(first.stderr.contains(p), "{first:?}");
    }
    let rest = tern(d.path()).arg("restore").arg(&snap).run();
    assert_eq!(format!("{}{}", first.stdout, rest.succeeds()), expected);
    // Past the end of memory: the rewritten code declines, the original traps part-way.
    let traps: Vec<String> = [&[flag][..], &[]]
        .iter()
        .map(|flags| {
            let out = tern(d.path())
                .arg("run")
                .args(*flags)
                .arg(&wasm)
                .arg("oob")
                .run();
            assert_eq!(out.code, Some(125), "{out:?}");
            assert_eq!(out.stdout, expected);
            out.stderr
        })
        .collect();
    for t in &traps {
        assert!(
            t.starts_with("error: guest trapped: out of bounds memory access\n"),
            "{t}"
        );
    }
    let frames = |t: &str| -> Vec<String> {
        t.lines()
            .skip(2)
            .filter_map(|l| l.split(" at ").next().map(str::to_owned))
            .collect()
    };
    assert_eq!(frames(&traps[0]), frames(&traps[1]));
    frames(&traps[1])
}

/// A guest whose stdout reader has gone gets `EPIPE` and is ended at its next host call
/// with status 141, quietly, as `SIGPIPE` ends a native process: `tern run app | head -1`
/// never spins.
#[test]
fn closed_stdout_ends_the_guest_with_status_141() {
    use std::io::Read as _;
    let d = scratch();
    let mut child = tern(d.path())
        .arg("run")
        .arg(guest("endless_output"))
        .spawn();
    let mut out = child.stdout.take().expect("stdout piped");
    let mut first = [0u8; 2];
    out.read_exact(&mut first).expect("the guest writes");
    assert_eq!(&first, b"y\n");
    drop(out);
    // Without the fix the guest spins for ever; the test harness's timeout catches it.
    let status = child.wait_with_output().expect("tern ends");
    assert_eq!(status.status.code(), Some(141), "{status:?}");
    assert_eq!(String::from_utf8_lossy(&status.stderr), "", "quietly");
}
