//! Capability policy: exactly what of the host a guest may see.
//!
//! A [`Policy`] starts empty: no directories, no environment variables, no arguments,
//! no sockets. Each capability is granted explicitly, and [`Policy::wasi_context`]
//! turns it into a WASI preview1 context. Directory access is confined by
//! Wasmtime's WASI implementation (cap-std): `..`, absolute paths and symlinks that
//! lead outside a preopen are refused inside the guest with a WASI error.

use std::path::{Path, PathBuf};

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::RuntimeError;
use crate::stdio::StdioTap;

/// Whether a guest may change what is under a preopened directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DirAccess {
    /// Read only: writes, creations, renames and removals fail inside the guest.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// A host directory made visible to the guest under a guest path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Preopen {
    /// Directory on the host.
    pub host: PathBuf,
    /// The name the guest opens it by (`/data`, `.`).
    pub guest: String,
    /// What the guest may do there.
    pub access: DirAccess,
}

impl Preopen {
    /// Parses `HOST[::GUEST]` as written after `--dir`; without `::GUEST` the guest
    /// sees the directory under the same path as the host.
    ///
    /// # Errors
    /// [`RuntimeError::InvalidValue`] for an empty host or guest part.
    pub fn parse(spec: &str, access: DirAccess) -> Result<Preopen, RuntimeError> {
        let (host, guest) = match spec.split_once("::") {
            Some((h, g)) => (h, g),
            None => (spec, spec),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(RuntimeError::InvalidValue {
                what: "directory",
                text: spec.to_owned(),
                expected: "HOST or HOST::GUEST, such as ./data::/data",
            });
        }
        Ok(Preopen {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            access,
        })
    }
}

/// What a guest is given. `Policy::default()` grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `argv`, including `argv[0]` (by convention the program's name).
    pub args: Vec<String>,
    /// Environment variables, in order. No host variable is passed unless listed.
    pub env: Vec<(String, String)>,
    /// Preopened directories.
    pub preopens: Vec<Preopen>,
    /// Give the guest this process's stdin, stdout and stderr (counted and watched
    /// through a [`StdioTap`]). When false the guest reads end-of-file and its output is
    /// discarded.
    pub inherit_stdio: bool,
}

impl Policy {
    /// Parses `KEY=VALUE` (the value may contain `=`).
    ///
    /// # Errors
    /// [`RuntimeError::InvalidValue`] when there is no `=` or the key is empty.
    pub fn parse_env(spec: &str) -> Result<(String, String), RuntimeError> {
        match spec.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(RuntimeError::InvalidValue {
                what: "environment variable",
                text: spec.to_owned(),
                expected: "KEY=VALUE",
            }),
        }
    }

    /// Builds the WASI preview1 context that grants exactly this policy; with
    /// `inherit_stdio`, the guest's stdio goes through `stdio`.
    ///
    /// # Errors
    /// [`RuntimeError::Preopen`] when a host directory cannot be opened.
    pub fn wasi_context(&self, stdio: &StdioTap) -> Result<WasiP1Ctx, RuntimeError> {
        Ok(self.wasi_builder(stdio)?.build_p1())
    }

    /// The WASI context builder that grants exactly this policy, for an embedder to add
    /// to (a clock, say) before building; with `inherit_stdio`, the guest's stdio goes
    /// through `stdio`.
    ///
    /// # Errors
    /// [`RuntimeError::Preopen`] when a host directory cannot be opened.
    pub fn wasi_builder(&self, stdio: &StdioTap) -> Result<WasiCtxBuilder, RuntimeError> {
        let mut b = WasiCtxBuilder::new();
        // Tern runs WASI calls synchronously on the guest's thread: let file I/O block
        // that thread instead of bouncing through a Tokio blocking pool.
        b.allow_blocking_current_thread(true);
        b.args(&self.args);
        for (k, v) in &self.env {
            b.env(k, v);
        }
        if self.inherit_stdio {
            b.stdin(stdio.stdin());
            b.stdout(stdio.stdout());
            b.stderr(stdio.stderr());
        }
        for p in &self.preopens {
            check_dir(&p.host)?;
            let perms = match p.access {
                DirAccess::ReadOnly => FsPerms::ReadOnly,
                DirAccess::ReadWrite => FsPerms::ReadWrite,
            };
            b.preopened_dir(&p.host, &p.guest, perms)
                .map_err(|e| RuntimeError::Preopen {
                    path: p.host.clone(),
                    reason: format!("{e:#}"),
                })?;
        }
        Ok(b)
    }
}

fn check_dir(path: &Path) -> Result<(), RuntimeError> {
    let err = |reason: String| RuntimeError::Preopen {
        path: path.to_owned(),
        reason,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(err("not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(err("it does not exist".into())),
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preopen_specs_parse() {
        let p = Preopen::parse("./data::/data", DirAccess::ReadWrite).expect("valid");
        assert_eq!(p.host, PathBuf::from("./data"));
        assert_eq!(p.guest, "/data");
        let same = Preopen::parse("/tmp/x", DirAccess::ReadOnly).expect("valid");
        assert_eq!(same.guest, "/tmp/x");
        for bad in ["", "::/data", "./data::"] {
            assert!(Preopen::parse(bad, DirAccess::ReadOnly).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_specs_parse() {
        assert_eq!(
            Policy::parse_env("URL=a=b").ok(),
            Some(("URL".into(), "a=b".into()))
        );
        assert_eq!(
            Policy::parse_env("EMPTY=").ok(),
            Some(("EMPTY".into(), "".into()))
        );
        assert!(Policy::parse_env("NOVALUE").is_err());
        assert!(Policy::parse_env("=x").is_err());
    }

    #[test]
    fn missing_preopen_is_named() {
        let policy = Policy {
            preopens: vec![Preopen::parse("/no/such/dir::/d", DirAccess::ReadOnly).expect("ok")],
            ..Policy::default()
        };
        let Err(err) = policy.wasi_context(&StdioTap::new()) else {
            panic!("a missing directory must not be preopened");
        };
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }
}
