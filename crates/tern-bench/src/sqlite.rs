//! `tern bench sqlite`: SQLite's speedtest1, native against Wasm runtimes, like the
//! paper's Figure 3.
//!
//! Sources are obtained, not shipped: `test/speedtest1.c` from Debian's `sqlite3`
//! source package (`apt-get source`, adding a `deb-src` entry when the machine has
//! none), and the amalgamation from the `libsqlite3-sys` crate's bundled copy (through
//! `cargo vendor`, without building the crate). Both builds use the same SQLite options;
//! each runner first runs `--verify` once, and its verification hash must match native.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::progress::Progress;
use crate::report::SuiteReport;
use crate::runner::{Build, Program, Runner};
use crate::toolchain;

/// The crate whose bundled amalgamation is built (SQLite 3.54.1).
const LIBSQLITE3_SYS: &str = "0.40.0";

/// SQLite options for both builds. SQLite recognises WASI itself; these make the native
/// build the same SQLite: no threads, no extensions, no mmap or WAL (WASI has no shared
/// memory), temp files in memory, and the `unix-none` VFS (WASI has no POSIX advisory
/// locks; the dot-file locking SQLite picks for WASI makes each transaction a mkdir).
const SQLITE_FLAGS: &[&str] = &[
    "-O2",
    "-DSQLITE_THREADSAFE=0",
    "-DSQLITE_OMIT_LOAD_EXTENSION",
    "-DSQLITE_MAX_MMAP_SIZE=0",
    "-DSQLITE_OMIT_WAL",
    "-DSQLITE_TEMP_STORE=3",
    "-DSQLITE_DEFAULT_UNIX_VFS=\"unix-none\"",
];

/// A 1 MiB shadow stack placed first, so that an overflow traps instead of corrupting
/// data.
const WASM_LINK_FLAGS: &[&str] = &["-Wl,--stack-first", "-Wl,-z,stack-size=1048576"];

/// Where the database lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `--memdb`, the paper's setting.
    Memory,
    /// A database file in a preopened directory.
    Disk,
}

impl Storage {
    pub fn name(self) -> &'static str {
        match self {
            Storage::Memory => "memdb",
            Storage::Disk => "disk",
        }
    }
}

/// The two sources and where they came from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub dir: PathBuf,
    pub speedtest1: PathBuf,
    pub amalgamation: PathBuf,
}

/// Returns the sources in `dir`, fetching whichever is missing.
///
/// # Errors
/// When apt or cargo cannot fetch them; the message says which step failed and why.
pub fn obtain_sources(dir: &Path) -> anyhow::Result<Sources> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Runners start in a scratch directory: every path handed to them must be absolute.
    let dir = &std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let speedtest1 = dir.join("speedtest1.c");
    if !speedtest1.exists() {
        fetch_speedtest1(dir, &speedtest1)?;
    }
    let amalgamation = dir.join("sqlite3.c");
    if !amalgamation.exists() || !dir.join("sqlite3.h").exists() {
        fetch_amalgamation(dir)?;
    }
    Ok(Sources {
        dir: dir.to_owned(),
        speedtest1,
        amalgamation,
    })
}

fn fetch_speedtest1(dir: &Path, dest: &Path) -> anyhow::Result<()> {
    ensure_deb_src()?;
    if !has_command("dpkg-source") {
        apt(&["install", "-y", "-qq", "--no-upgrade", "dpkg-dev"])?;
    }
    let work = tempfile::tempdir_in(dir)?;
    let out = Command::new("apt-get")
        .args(["source", "-qq", "sqlite3"])
        .current_dir(work.path())
        .output()
        .context("running apt-get source sqlite3")?;
    if !out.status.success() {
        bail!(
            "apt-get source sqlite3 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let found = std::fs::read_dir(work.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("test/speedtest1.c"))
        .find(|p| p.exists())
        .context("Debian's sqlite3 source package has no test/speedtest1.c")?;
    std::fs::copy(&found, dest)?;
    Ok(())
}

/// Adds a `deb-src` twin of Debian's `deb` entries when the machine has none.
fn ensure_deb_src() -> anyhow::Result<()> {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.filter_map(|e| e.ok()) {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                texts.push(t);
            }
        }
    }
    let has_src = texts.iter().any(|t| {
        t.lines().any(|l| {
            let l = l.trim_start();
            l.starts_with("deb-src ") || (l.starts_with("Types:") && l.contains("deb-src"))
        })
    });
    if has_src {
        return Ok(());
    }
    let debian = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").context(
        "no deb-src entry and no /etc/apt/sources.list.d/debian.sources to derive one from; \
         add a deb-src line for Debian's main archive",
    )?;
    let twin: String = debian
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("Types:") {
                "Types: deb-src".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = "/etc/apt/sources.list.d/tern-deb-src.sources";
    std::fs::write(path, twin + "\n")
        .with_context(|| format!("writing {path} (adding Debian source entries needs root)"))?;
    tracing::info!(path, "added deb-src entries for apt-get source");
    apt(&["update", "-qq"])
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn has_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// Copies the amalgamation out of the `libsqlite3-sys` crate, vendored by cargo into a
/// scratch project (nothing is built).
fn fetch_amalgamation(dir: &Path) -> anyhow::Result<()> {
    let work = tempfile::tempdir_in(dir)?;
    let manifest = format!(
        "[workspace]\n\n[package]\nname = \"tern-sqlite-sources\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nlibsqlite3-sys = {{ version = \"={LIBSQLITE3_SYS}\", features = [\"bundled\"] }}\n"
    );
    std::fs::write(work.path().join("Cargo.toml"), manifest)?;
    std::fs::create_dir(work.path().join("src"))?;
    std::fs::write(work.path().join("src/lib.rs"), "")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["vendor", "--quiet", "--versioned-dirs", "vendor"])
        .current_dir(work.path())
        .output()
        .with_context(|| {
            format!("running {cargo} vendor (cargo is needed to fetch libsqlite3-sys)")
        })?;
    if !out.status.success() {
        bail!(
            "cargo vendor of libsqlite3-sys {LIBSQLITE3_SYS} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let bundled = work
        .path()
        .join(format!("vendor/libsqlite3-sys-{LIBSQLITE3_SYS}/sqlite3"));
    for f in ["sqlite3.c", "sqlite3.h"] {
        std::fs::copy(bundled.join(f), dir.join(f))
            .with_context(|| format!("copying {f} from libsqlite3-sys"))?;
    }
    Ok(())
}

/// Builds speedtest1 natively and for Wasm (scalar and SIMD) into `sources.dir/build`,
/// reusing earlier builds.
///
/// # Errors
/// A compiler failure.
pub fn build(sources: &Sources, progress: &Progress) -> anyhow::Result<Program> {
    let out = sources.dir.join("build");
    std::fs::create_dir_all(&out)?;
    let p = Program {
        native: out.join("speedtest1"),
        wasm: out.join("speedtest1.wasm"),
        wasm_simd: out.join("speedtest1.simd.wasm"),
    };
    let include = format!("-I{}", sources.dir.display());
    let mut flags: Vec<&str> = SQLITE_FLAGS.to_vec();
    flags.push(&include);
    let srcs = [sources.speedtest1.as_path(), sources.amalgamation.as_path()];
    let bar = progress.bar("building sqlite", 3);
    if !p.native.exists() {
        toolchain::native_multi(&srcs, &p.native, &flags)?;
    }
    bar.inc(1);
    if !p.wasm.exists() {
        toolchain::wasm_multi(&srcs, &p.wasm, &flags, WASM_LINK_FLAGS)?;
    }
    bar.inc(1);
    if !p.wasm_simd.exists() {
        let mut simd = flags.clone();
        simd.push("-msimd128");
        toolchain::wasm_multi(&srcs, &p.wasm_simd, &simd, WASM_LINK_FLAGS)?;
    }
    bar.finish();
    Ok(p)
}

/// Builds another C program (`src`, which includes `sqlite3.h`) with the same SQLite to
/// a `wasm32-wasi` module at `out`, for tests of programs that keep a database open.
///
/// # Errors
/// A compiler failure.
pub fn build_wasm_with_sqlite(sources: &Sources, src: &Path, out: &Path) -> anyhow::Result<()> {
    let include = format!("-I{}", sources.dir.display());
    let mut flags: Vec<&str> = SQLITE_FLAGS.to_vec();
    flags.push(&include);
    toolchain::wasm_multi(
        &[src, sources.amalgamation.as_path()],
        out,
        &flags,
        WASM_LINK_FLAGS,
    )
}

/// One timed line of speedtest1's output: `(test, seconds)`. The test is named by its
/// number and title (`100 50000 INSERTs into table with no index`); the total is
/// `TOTAL`.
pub fn parse_output(stdout: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let Some(secs) = line.trim_end().strip_suffix('s') else {
            continue;
        };
        let Some((head, time)) = secs.rsplit_once(' ') else {
            continue;
        };
        let Ok(seconds) = time.trim().parse::<f64>() else {
            continue;
        };
        let head = head.trim().trim_end_matches('.').trim();
        let name = if head.starts_with("TOTAL") {
            "TOTAL".to_owned()
        } else if let Some((id, title)) = head.split_once(" - ") {
            format!("{} {}", id.trim(), title.trim_end_matches('.').trim())
        } else {
            continue;
        };
        out.push((name, seconds));
    }
    if !out.iter().any(|(n, _)| n == "TOTAL") {
        bail!("no TOTAL line in speedtest1 output: {stdout:?}");
    }
    Ok(out)
}

/// The `Verification Hash: …` line of a `--verify` run.
fn verification_hash(stdout: &str) -> anyhow::Result<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Verification Hash:"))
        .map(|h| h.trim().to_owned())
        .with_context(|| format!("no verification hash in speedtest1 output: {stdout:?}"))
}

/// Runs speedtest1 on every runner: once with `--verify` (hashes must match the first
/// runner's), then `runs` timed rounds, interleaved. Items are `<storage>: <test>`.
///
/// # Errors
/// A runner failure or a verification mismatch.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    program: &Program,
    runners: &[Runner],
    size: u32,
    storage: Storage,
    tests: &[String],
    runs: usize,
    report: &mut SuiteReport,
    progress: &Progress,
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    let args_for = |runner: &Runner, verify: bool| -> Vec<String> {
        let mut a = vec!["--size".to_owned(), size.to_string()];
        match storage {
            Storage::Memory => a.push("--memdb".into()),
            // Native runs in the directory; Wasm guests see it as /data.
            Storage::Disk => a.push(if runner.build == Build::Native {
                "test.db".into()
            } else {
                "/data/test.db".into()
            }),
        }
        if verify {
            a.push("--verify".into());
        }
        a
    };
    let run = |runner: &Runner, verify: bool| -> anyhow::Result<String> {
        let _ = std::fs::remove_file(dir.join("test.db"));
        let out = runner.run(program, &args_for(runner, verify), Some(dir));
        out.with_context(|| {
            format!(
                "speedtest1 --size {size} ({}) on {}",
                storage.name(),
                runner.name
            )
        })
    };

    let bar = progress.bar(storage.name(), (runners.len() * (runs + 1)) as u64);
    let mut expected: Option<String> = None;
    let mut active: Vec<&Runner> = Vec::new();
    for runner in runners {
        if !report.runners.contains(&runner.name) {
            continue;
        }
        bar.set_message(format!("verifying on {}", runner.name));
        let verified = run(runner, true).and_then(|out| verification_hash(&out));
        let Some(hash) = report.tolerate_peer(runner, verified)? else {
            continue;
        };
        match &expected {
            None => expected = Some(hash),
            Some(e) if *e != hash => bail!(
                "verification mismatch: speedtest1 ({}) on {} gives {hash}, {} gives {e}",
                storage.name(),
                runner.name,
                runners[0].name
            ),
            Some(_) => {}
        }
        active.push(runner);
        bar.inc(1);
    }
    for _ in 0..runs {
        let mut failed = Vec::new();
        for runner in &active {
            bar.set_message(format!("on {}", runner.name));
            let timed = run(runner, false).and_then(|o| parse_output(&o));
            let Some(out) = report.tolerate_peer(runner, timed)? else {
                failed.push(runner.name.clone());
                continue;
            };
            for (test, seconds) in out {
                let id = test.split(' ').next().unwrap_or_default();
                if test != "TOTAL" && !tests.is_empty() && !tests.iter().any(|t| t == id) {
                    continue;
                }
                let item = format!("{}: {test}", storage.name());
                if !report.items.contains(&item) {
                    report.items.push(item.clone());
                }
                report.push(&item, &runner.name, seconds);
            }
            bar.inc(1);
        }
        active.retain(|r| !failed.contains(&r.name));
    }
    bar.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speedtest1_output_parses() {
        let out = "-- Speedtest1 for SQLite 3.54.1 2026-10-16\n \
             100 - 50000 INSERTs into table with no index......................    0.030s\n \
             410 - 70000 SELECTS on an IPK.....................................    1.035s\n       \
             TOTAL.......................................................    2.595s\n";
        let tests = parse_output(out).expect("parses");
        assert_eq!(
            tests,
            vec![
                (
                    "100 50000 INSERTs into table with no index".to_owned(),
                    0.030
                ),
                ("410 70000 SELECTS on an IPK".to_owned(), 1.035),
                ("TOTAL".to_owned(), 2.595),
            ]
        );
        assert!(parse_output("SQL error: disk I/O error\n").is_err());
    }

    #[test]
    fn verification_hash_is_read() {
        let out = "x\nVerification Hash: 23674002 573a4409\n";
        assert_eq!(
            verification_hash(out).ok().as_deref(),
            Some("23674002 573a4409")
        );
        assert!(verification_hash("none").is_err());
    }
}
