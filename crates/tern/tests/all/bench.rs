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
