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
}

impl ApiArgs {
    /// GETs `path` and decodes its JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.api.trim_end_matches('/'));
        let response = agent().get(&url).call();
        self.answer(response)
    }

    /// POSTs `body` (of `content_type`) to `path` and decodes the JSON answer.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.api.trim_end_matches('/'));
        let response = agent().post(&url).content_type(content_type).send(body);
        self.answer(response)
    }

    fn answer<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        let mut response = match response {
            Ok(r) => r,
            Err(ureq::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
                "cannot reach the Tern API at {}: nothing listens there; start one with `tern up` (or `tern controller`), or point --api / TERN_API at it",
                self.api
            ),
            Err(e) => bail!("cannot reach the Tern API at {}: {e}", self.api),
        };
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .with_context(|| format!("reading the answer of {}", self.api))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| text.trim().to_owned());
            bail!("{message}");
        }
        serde_json::from_str(&text).with_context(|| {
            format!(
                "the API at {} answered something else than Tern's JSON",
                self.api
            )
        })
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
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
