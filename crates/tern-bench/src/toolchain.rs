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
    native_multi(&[src], out, flags)
}

/// Compiles and links several C files to a native executable with `flags`.
///
/// # Errors
/// When clang is missing or fails; the message carries clang's stderr.
pub fn native_multi(srcs: &[&Path], out: &Path, flags: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new(clang());
    cmd.args(flags).args(srcs).arg("-o").arg(out).arg("-lm");
    run(cmd, srcs[0])
}

/// Compiles `src` to a `wasm32-wasi` command module with `flags`.
///
/// # Errors
/// When clang is missing or fails; the message carries clang's stderr.
pub fn wasm(src: &Path, out: &Path, flags: &[&str]) -> anyhow::Result<()> {
    wasm_multi(&[src], out, flags, &[])
}

/// Compiles several C files for `wasm32-wasi` with `flags` and links them with
/// `link_flags`. Compiles and links in separate steps so that clang does not run
/// Binaryen's wasm-opt behind the caller's back (it does at link time with -O).
///
/// # Errors
/// When clang is missing or fails; the message carries clang's stderr.
pub fn wasm_multi(
    srcs: &[&Path],
    out: &Path,
    flags: &[&str],
    link_flags: &[&str],
) -> anyhow::Result<()> {
    const WASI: [&str; 2] = ["--target=wasm32-wasi", "--sysroot=/usr"];
    let mut objects = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        let obj = out.with_extension(format!("{i}.o"));
        let mut compile = Command::new(clang());
        compile
            .args(WASI)
            .arg("-c")
            .args(flags)
            .arg(src)
            .arg("-o")
            .arg(&obj);
        run(compile, src)?;
        objects.push(obj);
    }
    let mut link = Command::new(clang());
    link.args(WASI)
        .args(link_flags)
        .args(&objects)
        .arg("-o")
        .arg(out)
        .arg("-lm");
    run(link, srcs[0])?;
    for o in objects {
        let _ = std::fs::remove_file(o);
    }
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
