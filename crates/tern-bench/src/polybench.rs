//! `tern bench polybench`: the 30 PolyBench/C 4.2.1 kernels (sources in `polybench/`),
//! native against Wasm runtimes, like the paper's Figure 2.
//!
//! Each kernel is built three ways (native clang -O3, `wasm32-wasi` -O3, and with
//! `-msimd128`), then every runner runs it `runs` times, interleaved round by round so
//! machine drift spreads over all runners alike. A kernel reports its own kernel-only
//! time and a checksum of its outputs; a checksum that differs from native fails the
//! whole run.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::progress::Progress;
use crate::report::SuiteReport;
use crate::runner::{Build, Program, Runner};
use crate::toolchain;

mod sources {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

/// PolyBench's dataset sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataset {
    Mini,
    Small,
    Medium,
    Large,
    ExtraLarge,
}

impl Dataset {
    /// The preprocessor macro that selects it.
    pub fn define(self) -> &'static str {
        match self {
            Dataset::Mini => "-DMINI_DATASET",
            Dataset::Small => "-DSMALL_DATASET",
            Dataset::Medium => "-DMEDIUM_DATASET",
            Dataset::Large => "-DLARGE_DATASET",
            Dataset::ExtraLarge => "-DEXTRALARGE_DATASET",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mini => "MINI",
            Dataset::Small => "SMALL",
            Dataset::Medium => "MEDIUM",
            Dataset::Large => "LARGE",
            Dataset::ExtraLarge => "EXTRALARGE",
        }
    }
}

impl std::str::FromStr for Dataset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mini" => Ok(Dataset::Mini),
            "small" => Ok(Dataset::Small),
            "medium" => Ok(Dataset::Medium),
            "large" => Ok(Dataset::Large),
            "extralarge" | "extra-large" => Ok(Dataset::ExtraLarge),
            _ => Err(format!(
                "unknown dataset `{s}` (mini, small, medium, large, extralarge)"
            )),
        }
    }
}

/// The names of all kernels, in order.
pub fn kernel_names() -> Vec<&'static str> {
    sources::KERNELS.iter().map(|(n, _)| *n).collect()
}

/// Builds every selected kernel three ways under `dir`.
///
/// # Errors
/// An unknown kernel name, or a compiler failure.
pub fn build(
    dir: &Path,
    dataset: Dataset,
    kernels: &[String],
    progress: &Progress,
) -> anyhow::Result<Vec<(String, Program)>> {
    build_from(sources::KERNELS, "kernel", dir, dataset, kernels, progress)
}

/// Builds the selected compute programs (`compute/`: graph relaxation, hash table,
/// matrix multiply, 2-D stencil) three ways under `dir`. They use PolyBench's harness
/// and output; `Dataset::Mini` is a quick check, any other size the full problem.
///
/// # Errors
/// An unknown program name, or a compiler failure.
pub fn build_compute(
    dir: &Path,
    dataset: Dataset,
    programs: &[String],
    progress: &Progress,
) -> anyhow::Result<Vec<(String, Program)>> {
    build_from(
        sources::COMPUTE,
        "program",
        dir,
        dataset,
        programs,
        progress,
    )
}

fn build_from(
    all: &[(&'static str, &'static str)],
    noun: &str,
    dir: &Path,
    dataset: Dataset,
    names: &[String],
    progress: &Progress,
) -> anyhow::Result<Vec<(String, Program)>> {
    let selected: Vec<(&str, &str)> = if names.is_empty() {
        all.to_vec()
    } else {
        names
            .iter()
            .map(|k| {
                all.iter().find(|(n, _)| n == k).copied().with_context(|| {
                    let known: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
                    format!("unknown {noun} `{k}`; known: {}", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    std::fs::write(dir.join("polybench.h"), sources::HEADER)?;
    let bar = progress.bar(&format!("building {noun}s"), selected.len() as u64);
    let mut programs = Vec::new();
    for (name, src) in selected {
        let c = dir.join(format!("{name}.c"));
        std::fs::write(&c, src)?;
        let out = |suffix: &str| -> PathBuf { dir.join(format!("{name}{suffix}")) };
        let p = Program {
            native: out(".native"),
            wasm: out(".wasm"),
            wasm_simd: out(".simd.wasm"),
        };
        let d = dataset.define();
        toolchain::native(&c, &p.native, &["-O3", d])?;
        toolchain::wasm(&c, &p.wasm, &["-O3", d])?;
        toolchain::wasm(&c, &p.wasm_simd, &["-O3", "-msimd128", d])?;
        programs.push((name.to_owned(), p));
        bar.inc(1);
    }
    bar.finish();
    Ok(programs)
}

/// Parses a kernel's two output lines.
///
/// # Errors
/// When either line is missing or malformed.
pub fn parse_output(stdout: &str) -> anyhow::Result<(String, f64)> {
    let field = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .with_context(|| format!("no `{key}` line in kernel output {stdout:?}"))
    };
    let checksum = field("checksum:")?.to_owned();
    let time: f64 = field("time:")?
        .parse()
        .with_context(|| format!("bad time in kernel output {stdout:?}"))?;
    Ok((checksum, time))
}

/// Runs every program on every runner, `runs` rounds, interleaved. The first runner is
/// the baseline whose checksum every other runner must reproduce.
///
/// # Errors
/// A runner failure, or a checksum mismatch (which names kernel and runner).
pub fn measure(
    programs: &[(String, Program)],
    runners: &[Runner],
    runs: usize,
    report: &mut SuiteReport,
    progress: &Progress,
) -> anyhow::Result<()> {
    let bar = progress.bar("running", (programs.len() * runs * runners.len()) as u64);
    let mut active: Vec<&Runner> = runners.iter().collect();
    for (name, program) in programs {
        report.items.push(name.clone());
        let mut expected: Option<String> = None;
        for _ in 0..runs {
            let mut failed = Vec::new();
            for runner in &active {
                bar.set_message(format!("{name} on {}", runner.name));
                let result = runner
                    .run(program, &[], None)
                    .and_then(|out| parse_output(&out))
                    .with_context(|| format!("{name} on {}", runner.name));
                let Some((checksum, time)) = report.tolerate_peer(runner, result)? else {
                    failed.push(runner.name.clone());
                    continue;
                };
                match &expected {
                    None => expected = Some(checksum),
                    Some(e) if *e != checksum => bail!(
                        "checksum mismatch: {name} on {} gives {checksum}, {} gives {e}",
                        runner.name,
                        runners[0].name
                    ),
                    Some(_) => {}
                }
                report.push(name, &runner.name, time);
                bar.inc(1);
            }
            active.retain(|r| !failed.contains(&r.name));
        }
    }
    bar.finish();
    Ok(())
}

/// Which Wasm builds to run.
pub fn builds(scalar: bool, simd: bool) -> Vec<Build> {
    let mut b = Vec::new();
    if scalar {
        b.push(Build::Wasm);
    }
    if simd {
        b.push(Build::WasmSimd);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_thirty_kernels_are_embedded() {
        let names = kernel_names();
        assert_eq!(names.len(), 30, "{names:?}");
        for k in ["2mm", "floyd-warshall", "seidel-2d", "trmm"] {
            assert!(names.contains(&k), "{k} missing: {names:?}");
        }
        assert!(!sources::HEADER.is_empty());
    }

    #[test]
    fn kernel_output_parses() {
        let (c, t) = parse_output("checksum: 00ff\ntime: 0.5\n").expect("valid");
        assert_eq!((c.as_str(), t), ("00ff", 0.5));
        assert!(parse_output("time: 1\n").is_err());
        assert!(parse_output("checksum: 1\ntime: soon\n").is_err());
    }

    /// A peer that fails is dropped with its reason; a peer with another checksum fails
    /// the whole run.
    #[test]
    fn failing_peer_is_dropped_and_wrong_checksum_fails() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let native = dir.path().join("kernel");
        std::fs::write(
            &native,
            "#!/bin/sh\necho 'checksum: 00aa'; echo 'time: 0.5'\n",
        )
        .expect("script");
        std::fs::set_permissions(&native, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let program = Program {
            native: native.clone(),
            wasm: native.clone(),
            wasm_simd: native,
        };
        let programs = vec![("k".to_owned(), program)];
        let runners = vec![
            Runner::native(),
            Runner::template(
                "same",
                "printf 'checksum: 00aa\\ntime: 0.6\\n'",
                Build::Wasm,
            ),
            Runner::template("broken", "echo boom >&2; exit 3", Build::Wasm),
        ];
        let mut report = SuiteReport {
            runners: runners.iter().map(|r| r.name.clone()).collect(),
            ..SuiteReport::default()
        };
        measure(&programs, &runners, 2, &mut report, &Progress::new(false)).expect("runs");
        assert_eq!(report.runners, ["native", "same"]);
        assert!(
            report.skipped[0].0 == "broken" && report.skipped[0].1.contains("boom"),
            "{:?}",
            report.skipped
        );
        assert_eq!(report.ratio("k", "same"), Some(1.2));

        let liar = vec![
            Runner::native(),
            Runner::template(
                "liar",
                "printf 'checksum: 00bb\\ntime: 0.6\\n'",
                Build::Wasm,
            ),
        ];
        let err = measure(
            &programs,
            &liar,
            1,
            &mut SuiteReport::default(),
            &Progress::new(false),
        )
        .expect_err("checksum differs");
        assert!(
            err.to_string().contains("checksum mismatch: k on liar"),
            "{err}"
        );
    }

    #[test]
    fn datasets_parse() {
        assert_eq!("LARGE".parse::<Dataset>(), Ok(Dataset::Large));
        assert!("huge".parse::<Dataset>().is_err());
    }
}
