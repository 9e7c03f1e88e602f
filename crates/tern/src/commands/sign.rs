//! `tern keygen`, `tern sign` and `tern verify`: signed modules.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tern_trust::{PublicKey, Signatures, SigningKey};

/// Where a signing key is kept unless `--key` or `TERN_SIGNING_KEY` says otherwise:
/// `$XDG_CONFIG_HOME/tern/signing.key`, else `~/.config/tern/signing.key`.
fn default_key() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config")
        });
    config.join("tern").join("signing.key")
}

/// The signature file of `module`: `app.wasm.sig` beside `app.wasm`.
pub fn signature_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Reads `module`'s signature file, if it has one.
pub fn read_signatures(path: &Path) -> anyhow::Result<Option<Signatures>> {
    match std::fs::read(path) {
        Ok(bytes) => Signatures::parse(&bytes)
            .map(Some)
            .with_context(|| path.display().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Make a signing key: an ed25519 key pair in a file that only you can read. Its public
/// half, printed, is what a manifest's `signed_by` names.
#[derive(Debug, Args)]
pub struct KeygenCommand {
    /// Where to write the key (never over an existing file) [default:
    /// ~/.config/tern/signing.key].
    #[arg(long, value_name = "FILE", env = "TERN_SIGNING_KEY")]
    out: Option<PathBuf>,
}

impl KeygenCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let path = self.out.unwrap_or_else(default_key);
        if path.exists() {
            anyhow::bail!(
                "{} exists already; a key is never overwritten: give another path with --out",
                path.display()
            );
        }
        let key = SigningKey::generate()?;
        key.save(&path)?;
        println!("{}", key.public());
        eprintln!(
            "key written to {} (keep it secret); name the public key above in a manifest's signed_by",
            path.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Sign a module: adds your key's signature to `MODULE.sig`, beside the module, over
/// its SHA-256. `tern deploy` sends it with the module.
#[derive(Debug, Args)]
pub struct SignCommand {
    /// The module (.wasm) to sign.
    #[arg(value_name = "MODULE")]
    module: PathBuf,
    /// The signing key [default: ~/.config/tern/signing.key].
    #[arg(long, value_name = "FILE", env = "TERN_SIGNING_KEY")]
    key: Option<PathBuf>,
}

impl SignCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let key_path = self.key.unwrap_or_else(default_key);
        let key = SigningKey::load(&key_path).with_context(|| {
            format!(
                "no signing key: make one with `tern keygen --out {}`",
                key_path.display()
            )
        })?;
        let wasm = crate::common::read_wasm(&self.module)?;
        let digest = tern_trust::sign::digest(&wasm);
        let path = signature_path(&self.module);
        let mut sigs = match read_signatures(&path)? {
            Some(s) if s.digest() == digest => s,
            Some(_) => {
                eprintln!(
                    "{} changed since its earlier signatures: they are dropped",
                    self.module.display()
                );
                Signatures::for_digest(&digest)
            }
            None => Signatures::for_digest(&digest),
        };
        sigs.add(&key);
        std::fs::write(&path, sigs.to_json())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "signed sha256:{digest} with {}; signatures in {}",
            key.public(),
            path.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Verify a module's signatures: every one in `MODULE.sig` must verify against the
/// module as it is now, and each `--key` must have signed. Exits 0 only then.
#[derive(Debug, Args)]
pub struct VerifyCommand {
    /// The module (.wasm) to check.
    #[arg(value_name = "MODULE")]
    module: PathBuf,
    /// Its signature file [default: MODULE.sig].
    #[arg(long, value_name = "FILE")]
    sig: Option<PathBuf>,
    /// A public key (ed25519:…) that must have signed it; may be given more than once.
    #[arg(long = "key", value_name = "PUBLIC_KEY")]
    keys: Vec<PublicKey>,
}

impl VerifyCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let wasm = crate::common::read_wasm(&self.module)?;
        let path = self.sig.unwrap_or_else(|| signature_path(&self.module));
        let sigs = read_signatures(&path)?.with_context(|| {
            format!(
                "{} is not signed: {} does not exist (`tern sign` makes it)",
                self.module.display(),
                path.display()
            )
        })?;
        let valid = sigs
            .verify(&wasm, &self.keys)
            .with_context(|| format!("{} refused", self.module.display()))?;
        for key in valid {
            println!("{}: signed by {key}: valid", sigs.module);
        }
        Ok(ExitCode::SUCCESS)
    }
}
