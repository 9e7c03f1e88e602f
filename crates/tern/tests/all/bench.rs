//! `tern bench startup` runs end to end and reports every sample (no timing asserted).

use crate::support::{scratch, tern};

#[test]
fn startup_bench_reports_every_runner_and_sample() {
    let d = scratch();
    let json = d.path().join("startup.json");
    let out = tern(d.path())
        .args([
            "bench",
            "startup",
            "--runs",
            "3",
            "--wasmtime",
            "/no/such/wasmtime",
            "--json",
        ])
        .arg(&json)
        .run();
    assert_eq!(
        out.code,
        Some(1),
        "a missing --wasmtime is an error: {out:?}"
    );

    let out = tern(d.path())
        .args(["bench", "startup", "--runs", "3", "--json"])
        .arg(&json)
        .run();
    let text = out.succeeds();
    assert!(text.starts_with("machine: "), "{text}");
    assert!(text.contains("| instantiate + run empty _start"), "{text}");
    assert!(text.contains("| tern run hello.wasm"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid json");
    let rows = report["in_process"].as_array().expect("in_process rows");
    assert_eq!(rows.len(), 3);
    for r in rows
        .iter()
        .chain(report["processes"].as_array().expect("process rows"))
    {
        assert_eq!(r["samples"].as_array().expect("samples").len(), 3, "{r}");
        assert!(r["summary"]["median"].as_f64().expect("median") > 0.0);
    }
}

fn samples(report: &serde_json::Value, item: &str, runner: &str) -> usize {
    report["samples"][item][runner]
        .as_array()
        .map_or(0, |s| s.len())
}

/// Runs `tern bench SUITE --size mini --runs 1 --no-peers -q --json …` with `extra`
/// arguments; returns its stdout and the saved report, after checking that every item
/// has one sample on native and on Tern, scalar and SIMD.
fn mini_run(dir: &std::path::Path, suite: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let json = dir.join(format!("{suite}.json"));
    let out = tern(dir)
        .args([
            "bench",
            suite,
            "--size",
            "mini",
            "--runs",
            "1",
            "--no-peers",
            "-q",
        ])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .run();
    let text = out.succeeds().to_owned();
    assert!(text.contains("| **geomean**"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid json");
    for item in report["items"].as_array().expect("items") {
        let item = item.as_str().expect("name");
        for runner in ["native", "tern", "tern-simd"] {
            assert_eq!(samples(&report, item, runner), 1, "{item} on {runner}");
        }
    }
    (text, report)
}

/// All 30 kernels build three ways and run on native and Tern (scalar and SIMD) with
/// matching checksums; a mismatch would fail the command.
#[test]
fn polybench_mini_runs_every_kernel_with_matching_checksums() {
    let d = scratch();
    let svg = d.path().join("polybench.svg");
    let (text, report) = mini_run(
        d.path(),
        "polybench",
        &["--plot", svg.to_str().expect("utf-8 path")],
    );
    assert_eq!(report["items"].as_array().expect("items").len(), 30);
    assert!(d.path().join("polybench.png").exists());

    // A saved run renders the same table again, without running anything.
    let json = d.path().join("polybench.json");
    let again = tern(d.path()).args(["bench", "report"]).arg(&json).run();
    let table = text
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert_eq!(again.succeeds(), table, "the machine line is not saved");
    let junk = d.path().join("junk.json");
    std::fs::write(&junk, "{}").expect("write");
    let bad = tern(d.path()).args(["bench", "report"]).arg(&junk).run();
    assert_eq!(bad.code, Some(1), "{bad:?}");
}

/// The compute programs beside PolyBench build and run with checksums that match native;
/// an unknown program is refused with the list of known ones.
#[test]
fn compute_programs_run_with_matching_checksums() {
    let d = scratch();
    let (text, report) = mini_run(d.path(), "compute", &[]);
    assert!(text.contains("compute (MINI, 1 runs"), "{text}");
    let items: Vec<&str> = report["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i.as_str())
        .collect();
    assert_eq!(items, ["graph", "hashtable", "matmul", "stencil"]);
    let unknown = tern(d.path())
        .args(["bench", "compute", "--size", "mini", "--programs", "nbody"])
        .run();
    unknown.fails_with(
        1,
        "unknown program `nbody`; known: graph, hashtable, matmul, stencil",
    );
}

/// speedtest1 is fetched, built, verified against native and timed in memory and on
/// disk. The sources are kept across test runs in the target directory.
#[test]
fn sqlite_speedtest1_runs_in_memory_and_on_disk() {
    let d = scratch();
    let sources = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqlite-src");
    let json = d.path().join("sqlite.json");
    let out = tern(d.path())
        // Fetching the amalgamation runs `cargo vendor`.
        .inherit(&["HOME", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"])
        .args([
            "bench",
            "sqlite",
            "--size",
            "5",
            "--runs",
            "1",
            "--no-peers",
            "-q",
            "--sources",
        ])
        .arg(&sources)
        .arg("--json")
        .arg(&json)
        .run();
    let text = out.succeeds();
    assert!(
        text.contains("memdb: TOTAL") && text.contains("disk: TOTAL"),
        "{text}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid json");
    for item in [
        "memdb: TOTAL",
        "disk: TOTAL",
        "memdb: 100 2500 INSERTs into table with no index",
    ] {
        for runner in ["native", "tern", "tern-simd"] {
            assert_eq!(
                samples(&report, item, runner),
                1,
                "{item} on {runner}: {text}"
            );
        }
    }
}
