//! Building C programs for the benchmarks: natively with clang-19 and for `wasm32-wasi`
//! with clang-19 and Debian's wasi-libc.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The C compiler: `$TERN_CLANG` or clang-19.
pub fn clang() -> String {
    std::env::var("TERN_CLANG").unwrap_or_else(|_| "clang-19".into())
}

/// Compiles `src` to a native executable with `flags`.
///
/// # Errors
/// When clang is missing or fails; the message carries clang's stderr.
pub fn native(src: &Path, out: &Path, flags: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(clang());
    cmd.args(flags).arg(src).arg("-o").arg(out).arg("-lm");
    run(cmd, src)
}

/// Compiles `src` to a `wasm32-wasi` command module with `flags`. Compiles and links in
/// two steps so that clang does not run Binaryen's wasm-opt behind the caller's back.
///
/// # Errors
/// When clang is missing or fails; the message carries clang's stderr.
pub fn wasm(src: &Path, out: &Path, flags: &[&str]) -> anyhow::Result<()> {
    let obj = out.with_extension("o");
    let mut compile = Command::new(clang());
    compile
        .args(["--target=wasm32-wasi", "--sysroot=/usr", "-c"])
        .args(flags)
        .arg(src)
        .arg("-o")
        .arg(&obj);
    run(compile, src)?;
    let mut link = Command::new(clang());
    link.args(["--target=wasm32-wasi", "--sysroot=/usr"])
        .arg(&obj)
        .arg("-o")
        .arg(out)
        .arg("-lm");
    run(link, src)?;
    let _ = std::fs::remove_file(obj);
    Ok(())
}

fn run(mut cmd: Command, src: &Path) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {} (install it with scripts/setup.sh)", clang()))?;
    if !out.status.success() {
        bail!(
            "{} failed on {}: {}",
            clang(),
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
