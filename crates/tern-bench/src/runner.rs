//! Runners: the ways a benchmark program is run, and running one to get its stdout.
//!
//! A [`Runner`] is native code (the program built by clang for this machine), Tern
//! itself (`tern run --engine …`), a built-in peer found on the machine (the Wasmtime
//! CLI, Wasmtime through its Python bindings, Node's `node:wasi`), or a peer given on
//! the command line as a shell template with `{wasm}`, `{aot}`, `{dir}` and `{args}`
//! placeholders. A peer that is not installed is skipped with a reason, never faked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Which Wasm build a runner consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Build {
    /// The native executable (clang -O3 for this machine).
    Native,
    /// `wasm32-wasi`, scalar.
    Wasm,
    /// `wasm32-wasi` with `-msimd128`.
    WasmSimd,
}

/// The files of one benchmark program.
#[derive(Debug, Clone)]
pub struct Program {
    pub native: PathBuf,
    pub wasm: PathBuf,
    pub wasm_simd: PathBuf,
}

impl Program {
    pub fn path(&self, build: Build) -> &Path {
        match build {
            Build::Native => &self.native,
            Build::Wasm => &self.wasm,
            Build::WasmSimd => &self.wasm_simd,
        }
    }
}

#[derive(Debug, Clone)]
enum How {
    Native,
    Tern {
        exe: PathBuf,
        engine: &'static str,
    },
    /// argv[0], fixed arguments, then the module and a preopen directory or `-`, then
    /// the guest's arguments (for the built-in script-based peers).
    Script {
        argv: Vec<String>,
    },
    /// `sh -c` on a user template.
    Template(String),
}

/// One way of running programs, for one build.
#[derive(Debug, Clone)]
pub struct Runner {
    /// Column name: `native`, `tern`, `tern-simd`, `wasmtime-cli`, …
    pub name: String,
    pub build: Build,
    how: How,
}

impl Runner {
    pub fn native() -> Runner {
        Runner {
            name: "native".into(),
            build: Build::Native,
            how: How::Native,
        }
    }

    pub fn tern(exe: &Path, engine: &'static str, build: Build) -> Runner {
        let base = if engine == "cranelift" {
            "tern".to_owned()
        } else {
            format!("tern-{engine}")
        };
        Runner {
            name: with_suffix(&base, build),
            build,
            how: How::Tern {
                exe: exe.to_owned(),
                engine,
            },
        }
    }

    /// A user-given peer: `template` runs under `sh -c` with `{wasm}` (the module),
    /// `{aot}` (a scratch path beside it for an ahead-of-time artifact), `{dir}` (the
    /// directory to preopen as `/data`) and `{args}` (the guest's arguments, quoted).
    pub fn template(name: &str, template: &str, build: Build) -> Runner {
        Runner {
            name: with_suffix(name, build),
            build,
            how: How::Template(template.to_owned()),
        }
    }

    /// Whether this runner is a peer runtime: its failure drops it from the run (with the
    /// reason reported), where a failure of native or Tern fails the run.
    pub fn is_peer(&self) -> bool {
        matches!(self.how, How::Script { .. } | How::Template(_))
    }

    /// Runs `program` with `args`, with `dir` preopened as `/data` when given, and
    /// returns its stdout.
    ///
    /// # Errors
    /// When the runner cannot start or exits non-zero; the message carries its stderr.
    pub fn run(
        &self,
        program: &Program,
        args: &[String],
        dir: Option<&Path>,
    ) -> anyhow::Result<String> {
        let module = program.path(self.build);
        let mut cmd = match &self.how {
            How::Native => {
                let mut c = Command::new(module);
                c.args(args);
                if let Some(d) = dir {
                    c.current_dir(d);
                }
                c
            }
            How::Tern { exe, engine } => {
                let mut c = Command::new(exe);
                c.args(["run", "--engine", engine]);
                if let Some(d) = dir {
                    c.arg("--dir").arg(format!("{}::/data", d.display()));
                }
                c.arg(module).arg("--").args(args);
                c
            }
            How::Script { argv } => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]).arg(module);
                c.arg(dir.map_or_else(|| "-".into(), |d| d.display().to_string()));
                c.args(args);
                c
            }
            How::Template(t) => {
                let aot = module.with_extension("aot");
                let text = t
                    .replace("{wasm}", &shell_quote(&module.display().to_string()))
                    .replace("{aot}", &shell_quote(&aot.display().to_string()))
                    .replace(
                        "{dir}",
                        &shell_quote(&dir.map_or_else(|| ".".into(), |d| d.display().to_string())),
                    )
                    .replace(
                        "{args}",
                        &args
                            .iter()
                            .map(|a| shell_quote(a))
                            .collect::<Vec<_>>()
                            .join(" "),
                    );
                let mut c = Command::new("sh");
                c.arg("-c").arg(text);
                c
            }
        };
        // Rust runtimes (Tern, Wasmtime) capture a backtrace for every error when these
        // are set, WASI errno returns included: a developer's shell must not slow them.
        let out = cmd
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting runner {}", self.name))?;
        if !out.status.success() {
            bail!(
                "runner {} failed on {} (exit {:?}): {}",
                self.name,
                module.display(),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn with_suffix(base: &str, build: Build) -> String {
    match build {
        Build::WasmSimd => format!("{base}-simd"),
        _ => base.to_owned(),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Node's `node:wasi` runner: `node node-wasi.mjs MODULE DIR|- ARGS…`.
const NODE_RUNNER: &str = r#"import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
const [module, dir, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1', args: [module, ...args], env: {}, returnOnExit: true,
  preopens: dir === '-' ? {} : { '/data': dir },
});
const wasm = await WebAssembly.compile(await readFile(module));
const instance = await WebAssembly.instantiate(wasm, wasi.getImportObject());
process.exitCode = wasi.start(instance);
"#;

/// Wasmtime through its Python bindings: `python wasmtime-py.py MODULE DIR|- ARGS…`.
const WASMTIME_PY_RUNNER: &str = r#"import sys, wasmtime
module_path, directory, args = sys.argv[1], sys.argv[2], sys.argv[3:]
engine = wasmtime.Engine(wasmtime.Config())
module = wasmtime.Module.from_file(engine, module_path)
linker = wasmtime.Linker(engine)
linker.define_wasi()
store = wasmtime.Store(engine)
wasi = wasmtime.WasiConfig()
wasi.argv = [module_path] + args
wasi.inherit_stdout()
wasi.inherit_stderr()
if directory != '-':
    wasi.preopen_dir(directory, '/data')
store.set_wasi(wasi)
instance = linker.instantiate(store, module)
try:
    instance.exports(store)['_start'](store)
except wasmtime.ExitTrap as e:
    sys.exit(e.code)
"#;

/// Runners that were not measured, each with the reason.
pub type Skipped = Vec<(String, String)>;

/// Finds the built-in peers on this machine. Returns the runners found (one per Wasm
/// build) and, for each peer not found, why.
///
/// Looks on PATH and in `peers_dir` (`target/peers`, filled by `scripts/peers.sh`).
pub fn discover_peers(
    scratch: &Path,
    peers_dir: &Path,
    builds: &[Build],
) -> (Vec<Runner>, Skipped) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    // The Wasmtime CLI maps the preopen itself, so it is a template runner.
    match find_tool("wasmtime", peers_dir) {
        Some(w) => {
            let t = format!(
                "{} run --dir {{dir}}::/data {{wasm}} {{args}}",
                shell_quote(&w.display().to_string())
            );
            for &b in builds {
                found.push(Runner::template("wasmtime-cli", &t, b));
            }
        }
        None => skipped.push((
            "wasmtime-cli".into(),
            "no working `wasmtime` on PATH or in target/peers/bin (scripts/peers.sh)".into(),
        )),
    }

    let mut add = |name: &str, how: Option<How>, why: String| match how {
        Some(how) => {
            for &b in builds {
                found.push(Runner {
                    name: with_suffix(name, b),
                    build: b,
                    how: how.clone(),
                });
            }
        }
        None => skipped.push((name.to_owned(), why)),
    };

    let python = peers_dir.join("venv/bin/python");
    let py_ok = answers(&python, &["-c", "import wasmtime"]);
    let py_script = scratch.join("wasmtime-py.py");
    add(
        "wasmtime-py",
        (py_ok && std::fs::write(&py_script, WASMTIME_PY_RUNNER).is_ok()).then(|| How::Script {
            argv: vec![
                python.display().to_string(),
                py_script.display().to_string(),
            ],
        }),
        "PyPI's wasmtime bindings not installed in target/peers/venv (scripts/peers.sh)".into(),
    );

    let node = find_tool("node", peers_dir).filter(|n| answers(n, &["--version"]));
    let node_script = scratch.join("node-wasi.mjs");
    add(
        "node",
        node.filter(|_| std::fs::write(&node_script, NODE_RUNNER).is_ok())
            .map(|n| How::Script {
                argv: vec![
                    n.display().to_string(),
                    "--no-warnings".into(),
                    node_script.display().to_string(),
                ],
            }),
        "no `node` on PATH".into(),
    );
    (found, skipped)
}

fn find_tool(name: &str, peers_dir: &Path) -> Option<PathBuf> {
    let in_peers = peers_dir.join("bin").join(name);
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .filter(|p| answers(p, &["--version"]))
        .or_else(|| in_peers.is_file().then_some(in_peers))
}

fn answers(exe: &Path, args: &[&str]) -> bool {
    Command::new(exe)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_quote_their_substitutions() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn names_carry_the_build() {
        let exe = Path::new("/bin/tern");
        assert_eq!(Runner::tern(exe, "cranelift", Build::Wasm).name, "tern");
        assert_eq!(
            Runner::tern(exe, "cranelift", Build::WasmSimd).name,
            "tern-simd"
        );
        assert_eq!(Runner::tern(exe, "pulley", Build::Wasm).name, "tern-pulley");
        assert_eq!(
            Runner::template("wamr", "x", Build::WasmSimd).name,
            "wamr-simd"
        );
    }

    /// A template runner really runs its command and returns its stdout, and a failing
    /// command is an error that carries its stderr.
    #[test]
    fn template_runner_runs_and_reports_failure() {
        let p = Program {
            native: "/bin/true".into(),
            wasm: "/tmp/x y.wasm".into(),
            wasm_simd: "/tmp/s.wasm".into(),
        };
        let r = Runner::template("echo", "echo {wasm} {args}", Build::Wasm);
        let out = r
            .run(&p, &["1".into(), "two words".into()], None)
            .expect("echo runs");
        assert_eq!(out, "/tmp/x y.wasm 1 two words\n");
        let bad = Runner::template("bad", "echo oops >&2; exit 3", Build::Wasm);
        let err = bad.run(&p, &[], None).expect_err("exit 3");
        assert!(err.to_string().contains("oops"), "{err}");
    }
}
