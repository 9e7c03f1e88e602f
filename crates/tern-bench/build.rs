//! Embeds the benchmark sources (`polybench/*.c` and its header, `compute/*.c`) in the
//! crate, so that `tern bench` builds them wherever the binary runs.

use std::fmt::Write as _;
use std::path::Path;

/// `pub const NAME: &[(&str, &str)]` of (file stem, C source) for every `.c` in `dir`.
fn embed(out: &mut String, name: &str, doc: &str, dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".c"))
        .collect();
    names.sort();
    writeln!(
        out,
        "/// {doc}: (name, C source).\npub const {name}: &[(&str, &str)] = &["
    )
    .expect("writing to a String");
    for n in &names {
        let path = dir.join(n);
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            out,
            "    ({:?}, include_str!({:?})),",
            n.trim_end_matches(".c"),
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    out.push_str("];\n");
}

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&root).join("polybench");
    let mut out = String::new();
    embed(&mut out, "KERNELS", "PolyBench kernels", &dir);
    embed(
        &mut out,
        "COMPUTE",
        "Compute programs beside PolyBench",
        &Path::new(&root).join("compute"),
    );
    writeln!(
        out,
        "/// The harness header every kernel includes.\npub const HEADER: &str = include_str!({:?});",
        dir.join("polybench.h").display().to_string()
    )
    .expect("writing to a String");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.rs");
    std::fs::write(dest, out).expect("writing kernels.rs");
}
