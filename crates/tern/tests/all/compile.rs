//! `tern compile`: artifacts for this machine, for Pulley and for other architectures,
//! and the refusal of artifacts that cannot run here.

use std::fs;
use std::path::Path;

use crate::support::{guest, scratch, tern};

/// ELF `e_machine` of an artifact.
/// Tern's artifact header: magic, then the SHA-256 of the Wasmtime artifact after it.
const HEADER: usize = 8 + 32;

/// Splits a Tern artifact into its header and Wasmtime's ELF payload.
fn payload(path: &Path) -> Vec<u8> {
    let b = fs::read(path).expect("artifact");
    assert_eq!(&b[..8], b"TERNART\x01");
    let elf = b[HEADER..].to_vec();
    assert_eq!(&elf[..4], b"\x7fELF");
    elf
}

/// Writes `elf` as a Tern artifact with a valid checksum, as another build would.
fn reseal(path: &Path, elf: &[u8]) {
    use sha2::Digest as _;
    let mut b = b"TERNART\x01".to_vec();
    b.extend_from_slice(&sha2::Sha256::digest(elf));
    b.extend_from_slice(elf);
    fs::write(path, b).expect("write artifact");
}

/// ELF `e_machine` of an artifact.
fn elf_machine(path: &Path) -> u16 {
    let b = payload(path);
    u16::from_le_bytes([b[18], b[19]])
}

/// The contents of the named ELF section, located by walking the section headers.
fn section_range(b: &[u8], wanted: &str) -> std::ops::Range<usize> {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes")) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18);
    for i in 0..shnum {
        let h = header(i);
        let name_at = strtab + u32_at(h);
        let end = b[name_at..].iter().position(|&c| c == 0).expect("nul") + name_at;
        if &b[name_at..end] == wanted.as_bytes() {
            let off = u64_at(h + 0x18);
            return off..off + u64_at(h + 0x20);
        }
    }
    panic!("no section {wanted}");
}

/// `tern compile FLAGS GUEST -o OUT`, which must succeed; returns its stdout.
fn compile(dir: &Path, flags: &[&str], guest_name: &str, out: &Path) -> String {
    tern(dir)
        .arg("compile")
        .args(flags)
        .arg(guest(guest_name))
        .arg("-o")
        .arg(out)
        .run()
        .succeeds()
        .to_owned()
}

#[test]
fn native_artifact_runs_like_the_module() {
    let d = scratch();
    let out_path = d.path().join("hello.cwasm");
    let c = compile(d.path(), &[], "hello", &out_path);
    assert!(c.contains("x86_64") || c.contains("aarch64"), "{c}");
    let r = tern(d.path()).arg("run").arg(&out_path).run();
    assert_eq!(r.succeeds(), "hello from WebAssembly\n");
}

#[test]
fn default_output_replaces_the_extension() {
    let d = scratch();
    let wasm = d.path().join("app.wasm");
    fs::copy(guest("hello"), &wasm).expect("copy");
    tern(d.path()).arg("compile").arg(&wasm).run().succeeds();
    assert!(d.path().join("app.cwasm").exists());
}

#[test]
fn cross_compiles_for_aarch64_and_refuses_to_run_it_here() {
    let d = scratch();
    let out_path = d.path().join("hello-arm64.cwasm");
    let c = compile(
        d.path(),
        &["--target", "aarch64-unknown-linux-gnu"],
        "hello",
        &out_path,
    );
    assert!(c.contains("aarch64-unknown-linux-gnu"), "{c}");
    const EM_AARCH64: u16 = 183;
    assert_eq!(elf_machine(&out_path), EM_AARCH64);
    if cfg!(target_arch = "x86_64") {
        let r = tern(d.path()).arg("run").arg(&out_path).run();
        let line = r.fails_with(1, "compiled for architecture 'aarch64'");
        assert!(line.contains("hello-arm64.cwasm"), "{line}");
    }
}

#[test]
fn pulley_artifact_needs_the_pulley_engine() {
    let d = scratch();
    let out_path = d.path().join("hello.pulley.cwasm");
    compile(d.path(), &["--engine", "pulley"], "hello", &out_path);
    let r = tern(d.path())
        .args(["run", "--engine", "pulley"])
        .arg(&out_path)
        .run();
    assert_eq!(r.succeeds(), "hello from WebAssembly\n");
    let r = tern(d.path()).arg("run").arg(&out_path).run();
    r.fails_with(1, "--engine pulley");
}

/// A native artifact under Pulley is refused with the command that makes one Pulley runs.
#[test]
fn native_artifact_under_pulley_names_the_compile_command() {
    let d = scratch();
    let out_path = d.path().join("hello.cwasm");
    compile(d.path(), &[], "hello", &out_path);
    let r = tern(d.path())
        .args(["run", "--engine", "pulley"])
        .arg(&out_path)
        .run();
    r.fails_with(1, "`tern compile --engine pulley`");
}

#[test]
fn artifact_from_another_wasmtime_version_is_refused() {
    let d = scratch();
    let out_path = d.path().join("old.cwasm");
    compile(d.path(), &[], "hello", &out_path);
    let mut b = payload(&out_path);
    // The engine section is [format version, length, Wasmtime major version, metadata].
    let engine = section_range(&b, ".wasmtime.engine");
    let len = b[engine.start + 1] as usize;
    let version = engine.start + 2..engine.start + 2 + len;
    let old = (b[version.start] - b'0' - 1 + b'0', b[version.end - 1]);
    b[version.start] = old.0;
    reseal(&out_path, &b);
    let r = tern(d.path()).arg("run").arg(&out_path).run();
    r.fails_with(1, "incompatible version");
}

/// A damaged artifact is refused before any of it is loaded, wherever the damage is:
/// loading it would run corrupted native code.
#[test]
fn damaged_artifact_is_refused_not_run() {
    let d = scratch();
    let good = d.path().join("good.cwasm");
    compile(d.path(), &[], "files", &good);
    let bytes = fs::read(&good).expect("artifact");
    let bad = d.path().join("bad.cwasm");
    for offset in [
        3,
        20,
        100,
        1000,
        5000,
        10_000,
        20_000,
        50_000,
        bytes.len() - 1,
    ] {
        let mut b = bytes.clone();
        for x in &mut b[offset..(offset + 8).min(bytes.len())] {
            *x ^= 0x5a;
        }
        fs::write(&bad, &b).expect("write");
        let r = tern(d.path()).arg("run").arg(&bad).arg("/").run();
        assert_eq!(r.stdout, "", "offset {offset}: nothing may run");
        r.fails_with(1, "bad.cwasm");
    }
    let truncated = &bytes[..bytes.len() / 2];
    fs::write(&bad, truncated).expect("write");
    tern(d.path())
        .arg("run")
        .arg(&bad)
        .run()
        .fails_with(1, "is corrupt");
}

#[test]
fn artifact_compiled_without_fuel_is_refused_by_a_fuel_run() {
    let d = scratch();
    let out_path = d.path().join("nofuel.cwasm");
    compile(d.path(), &[], "hello", &out_path);
    let r = tern(d.path())
        .args(["run", "--fuel", "1000"])
        .arg(&out_path)
        .run();
    let line = r.fails_with(1, "nofuel.cwasm");
    assert!(
        line.contains("recompile it with `tern compile --fuel`"),
        "{line}"
    );
    let fuel_path = d.path().join("fuel.cwasm");
    compile(d.path(), &["--fuel"], "hello", &fuel_path);
    let r = tern(d.path())
        .args(["run", "--fuel", "100000000"])
        .arg(&fuel_path)
        .run();
    assert_eq!(r.succeeds(), "hello from WebAssembly\n");
    let r = tern(d.path()).arg("run").arg(&fuel_path).run();
    r.fails_with(1, "run it with `--fuel N`");
}

#[test]
fn compile_refuses_bad_targets_and_overwrites() {
    let d = scratch();
    let r = tern(d.path())
        .args(["compile", "--target", "sparc-sun-solaris"])
        .arg(guest("hello"))
        .run();
    r.fails_with(1, "sparc-sun-solaris");
    let wasm = guest("hello");
    let r = tern(d.path())
        .arg("compile")
        .arg(&wasm)
        .arg("-o")
        .arg(&wasm)
        .run();
    r.fails_with(1, "would overwrite");
}
