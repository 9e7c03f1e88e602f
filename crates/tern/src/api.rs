//! The HTTP API of the control plane, as the continuum's verbs call it: the `--api`
//! flag, and requests whose failures are one line that says what to do.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::de::DeserializeOwned;

/// Where the control plane's API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The control plane's API (`tern up` or `tern controller` serve it).
    #[arg(
        long,
        value_name = "URL",
        env = "TERN_API",
        default_value = "http://127.0.0.1:7680"
    )]
    pub api: String,
    /// The continuum's token, which requests that act or read an app's output need
    /// [default: the one in ~/.local/state/tern/api/token, where `tern up` keeps it].
    #[arg(long, value_name = "TOKEN", env = "TERN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The continuum's CA certificate: an https:// API must show a certificate it
    /// issued, and no other is trusted [default: ~/.local/state/tern/nats/tls/ca.pem,
    /// where `tern up` keeps it].
    #[arg(long, value_name = "FILE", env = "TERN_CA")]
    pub ca: Option<std::path::PathBuf>,
}

impl ApiArgs {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.trim_end_matches('/'))
    }

    fn bearer(&self) -> Option<String> {
        let token = self.token.clone().or_else(|| {
            let file = tern_cluster::up::default_state().join(tern_cluster::up::API_TOKEN_FILE);
            std::fs::read_to_string(file)
                .ok()
                .map(|t| t.trim().to_owned())
        })?;
        Some(format!("Bearer {token}"))
    }

    /// GETs `path` and decodes its JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let text = self.get_bytes(path)?;
        self.decode(&text)
    }

    /// GETs `path` and returns the answer's bytes.
    pub fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let mut request = self.agent()?.get(self.url(path));
        if let Some(b) = self.bearer() {
            request = request.header("Authorization", b);
        }
        self.answer(request.call())
    }

    /// POSTs `body` (of `content_type`) to `path` and decodes the JSON answer.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<T> {
        let mut request = self
            .agent()?
            .post(self.url(path))
            .content_type(content_type);
        if let Some(b) = self.bearer() {
            request = request.header("Authorization", b);
        }
        let text = self.answer(request.send(body))?;
        self.decode(&text)
    }

    /// POSTs the JSON `body` to `path` without any token (enrolment carries its own in
    /// the body) and decodes the JSON answer.
    pub fn post_without_token<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<T> {
        let request = self
            .agent()?
            .post(self.url(path))
            .content_type("application/json");
        let text = self.answer(request.send(body))?;
        self.decode(&text)
    }

    /// PUTs `body` to `path` and decodes the JSON answer.
    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> anyhow::Result<T> {
        let mut request = self
            .agent()?
            .put(self.url(path))
            .content_type("application/octet-stream");
        if let Some(b) = self.bearer() {
            request = request.header("Authorization", b);
        }
        let text = self.answer(request.send(body))?;
        self.decode(&text)
    }

    /// DELETEs `path` and decodes the JSON answer.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let mut request = self.agent()?.delete(self.url(path));
        if let Some(b) = self.bearer() {
            request = request.header("Authorization", b);
        }
        let text = self.answer(request.call())?;
        self.decode(&text)
    }

    fn decode<T: DeserializeOwned>(&self, text: &[u8]) -> anyhow::Result<T> {
        serde_json::from_slice(text).with_context(|| {
            format!(
                "the API at {} answered something else than Tern's JSON",
                self.api
            )
        })
    }

    fn answer(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut response = match response {
            Ok(r) => r,
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
                "cannot reach the Tern API at {}: nothing listens there; start one with `tern up` (or `tern controller`), or point --api / TERN_API at it",
                self.api
            ),
            // ureq reports a refused certificate as its own error, or as I/O around
            // rustls's.
            Err(e)
                if matches!(&e, ureq::Error::Rustls(_))
                    || matches!(&e, ureq::Error::Io(io)
                        if io.get_ref().is_some_and(|i| i.is::<rustls::Error>())) =>
            {
                bail!(
                    "cannot reach the Tern API at {}: TLS refused ({e}); the API must show a certificate the continuum's CA (--ca, TERN_CA) issued for the URL's host",
                    self.api
                )
            }
            Err(e) => bail!("cannot reach the Tern API at {}: {e}", self.api),
        };
        let status = response.status();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .with_context(|| format!("reading the answer of {}", self.api))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            if status == ureq::http::StatusCode::SERVICE_UNAVAILABLE {
                return Err(Unavailable(message).into());
            }
            bail!("{message}");
        }
        Ok(bytes)
    }
}

/// The API answered 503: the backbone behind it did not answer in time, which may
/// pass.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// How long `--wait` follows a move.
pub const MOVE_WAIT: Duration = Duration::from_secs(600);

impl ApiArgs {
    /// Follows the moves of `apps` until each is over, up to [`MOVE_WAIT`]; returns
    /// them as they ended.
    ///
    /// # Errors
    /// The API's, or the deadline, naming what was still under way.
    pub fn follow_moves(
        &self,
        apps: &[String],
    ) -> anyhow::Result<Vec<tern_cluster::moves::MoveRecord>> {
        let deadline = std::time::Instant::now() + MOVE_WAIT;
        let mut out = Vec::new();
        for app in apps {
            loop {
                // A backbone slow to answer delays the follow; it does not end it.
                let mv: tern_cluster::moves::MoveRecord =
                    match self.get(&format!("/v1/moves/{app}")) {
                        Ok(mv) => mv,
                        Err(e)
                            if e.downcast_ref::<Unavailable>().is_some()
                                && std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                if mv.state.is_over() {
                    out.push(mv);
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "{} is still {} after {} s; `tern ps` follows it",
                        mv.id,
                        mv.state.name(),
                        MOVE_WAIT.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(out)
    }
}

impl ApiArgs {
    /// A client of the API: for https://, one that trusts the continuum's CA alone.
    fn agent(&self) -> anyhow::Result<ureq::Agent> {
        let config = client_config();
        if !self.api.starts_with("https://") {
            return Ok(config.build().into());
        }
        let file = self.ca.clone().unwrap_or_else(|| {
            tern_cluster::up::default_state()
                .join("nats/tls")
                .join(tern_trust::tls::CA_CERT)
        });
        let pem = std::fs::read_to_string(&file).map_err(|e| {
            anyhow::anyhow!(
                "the API at {} is HTTPS, and Tern trusts no certificate but the continuum CA's: cannot read it in {} ({e}); pass --ca FILE or TERN_CA (`tern up` keeps it in STATE/nats/tls/ca.pem)",
                self.api,
                file.display()
            )
        })?;
        Ok(config.tls_config(trusting(&pem, &file)?).build().into())
    }
}

/// How every client of the API is made: an error status is an answer to read (its
/// JSON says why), and a request has 30 s in all.
fn client_config() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
}

/// The CA certificate the API at `api` (https://) shows at `GET /v1/ca`, if its
/// fingerprint is `pin`. It is read over a connection that checks nothing, so the pin
/// is the whole of the trust: a CA of another fingerprint is refused, and nothing
/// secret has been sent by then.
///
/// # Errors
/// The API unreachable, or a CA that is not the pinned one.
pub fn pinned_ca(api: &str, pin: &str) -> anyhow::Result<String> {
    let agent: ureq::Agent = client_config()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .disable_verification(true)
                .build(),
        )
        .build()
        .into();
    let url = format!("{}/v1/ca", api.trim_end_matches('/'));
    let mut response = agent
        .get(&url)
        .call()
        .map_err(|e| anyhow::anyhow!("cannot reach the Tern API at {api}: {e}"))?;
    let pem = response
        .body_mut()
        .with_config()
        .limit(64 << 10)
        .read_to_string()
        .with_context(|| format!("reading the CA certificate of {api}"))?;
    if !response.status().is_success() {
        bail!("the API at {api} gave no CA certificate: {}", pem.trim());
    }
    let got = tern_trust::tls::fingerprint_of_pem(&pem);
    if got.as_deref() != Some(pin) {
        bail!(
            "the API at {api} shows a CA of fingerprint {}, not {pin}: it is not the continuum's; nothing was sent",
            got.as_deref().unwrap_or("(none)")
        );
    }
    Ok(pem)
}

/// A TLS configuration that trusts the CA certificate `pem` (read from `file`) alone.
pub fn trusting(pem: &str, file: &std::path::Path) -> anyhow::Result<ureq::tls::TlsConfig> {
    let certs = tern_trust::tls::certificates_of_pem(pem)
        .map_err(|e| anyhow::anyhow!("the CA certificate {}: {e}", file.display()))?;
    let roots: Vec<ureq::tls::Certificate<'static>> = certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    Ok(ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
        .build())
}

/// Prints rows under a header, in columns as wide as their widest cell.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A row of `tern plan` and `tern explain`: a node, its verdict, its score and its
/// parts, or every filter that rejected it.
pub fn verdict_row(v: &serde_json::Value) -> Vec<String> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let node = s(&v["node"]);
    if v["verdict"] == "eligible" {
        let score = &v["score"];
        let parts: Vec<String> = [
            "latency", "compute", "capacity", "spread", "affinity", "moving",
        ]
        .iter()
        .filter_map(|p| score[*p].as_f64().map(|x| format!("{p} {x:.2}")))
        .collect();
        vec![
            node,
            "eligible".into(),
            format!("{:.3}", score["total"].as_f64().unwrap_or_default()),
            parts.join(", "),
        ]
    } else {
        let why: Vec<String> = v["rejections"]
            .as_array()
            .map(|a| a.iter().map(|r| s(&r["text"])).collect())
            .unwrap_or_default();
        vec![node, "rejected".into(), "—".into(), why.join("; ")]
    }
}
