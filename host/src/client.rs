//! A blocking client for the `weir serve` API, used by the operator
//! commands of the CLI (`weir status`, `weir post`, `weir plugin reload`,
//! `weir quarantine ls`...).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::serve::ingest::BodyFormat;

/// Default service address: the default `listen` of a service file.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7878";

/// A connection to one service.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client of the service at `base` (`http://host:port`), sending
    /// the API token in `$WEIR_TOKEN` when set.
    ///
    /// # Errors
    /// When the HTTP client cannot be built or `$WEIR_TOKEN` is not a
    /// valid header value.
    pub fn new(base: &str) -> Result<Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(token) = std::env::var("WEIR_TOKEN") {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .context("WEIR_TOKEN is not a valid token")?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            // Ingest waits for the commit; allow for slow plugins.
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(600))
                .default_headers(headers)
                .build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, request: reqwest::blocking::RequestBuilder, what: &str) -> Result<Value> {
        let response = request
            .send()
            .with_context(|| format!("{what}: cannot reach weir serve at {}", self.base))?;
        let status = response.status();
        let body: Value = response
            .json()
            .with_context(|| format!("{what}: the answer is not JSON"))?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no message");
            bail!("{what}: {status}: {message}");
        }
        Ok(body)
    }

    /// `GET path`.
    ///
    /// # Errors
    /// An unreachable service or an error status (its message included).
    pub fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(self.url(path)), &format!("GET {path}"))
    }

    /// `POST path` with an optional JSON body.
    ///
    /// # Errors
    /// As [`Client::get`].
    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut request = self.http.post(self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request, &format!("POST {path}"))
    }

    /// Posts the file at `file` to `pipeline`'s records endpoint, with the
    /// content type its extension implies.
    ///
    /// # Errors
    /// An unknown extension, an unreadable file, or an error answer.
    pub fn post_file(&self, pipeline: &str, file: &Path) -> Result<Value> {
        let key = uuid::Uuid::new_v4().to_string();
        self.post_file_once(pipeline, file, &key, Duration::from_secs(60))
    }

    /// Posts the file at `file` to `pipeline` exactly once under the
    /// idempotency key `key`: on a lost connection, a timeout or a
    /// retryable answer (408, 409 while the key is in flight, 429, 502,
    /// 503, 504) the same request is sent again with the same key, with
    /// backoff (0.1 s doubling to 2 s), for up to `retry_for`. The service
    /// writes the records once whatever the number of attempts, and
    /// answers a repeat of a committed request with its original result.
    ///
    /// # Errors
    /// As [`Client::post_file`], or the last failure once `retry_for` is
    /// spent.
    pub fn post_file_once(
        &self,
        pipeline: &str,
        file: &Path,
        key: &str,
        retry_for: Duration,
    ) -> Result<Value> {
        let deadline = std::time::Instant::now() + retry_for;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.post_file_attempt(pipeline, file, key) {
                Ok(Attempt::Done(value)) => return Ok(value),
                Ok(Attempt::Retry(why)) | Err(why) => {
                    if std::time::Instant::now() + backoff > deadline {
                        return Err(why);
                    }
                    tracing::info!(
                        error = format!("{why:#}"),
                        "retrying with the same idempotency key"
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn post_file_attempt(&self, pipeline: &str, file: &Path, key: &str) -> Result<Attempt> {
        let content_type = match BodyFormat::from_path(file) {
            Some(BodyFormat::Csv) => "text/csv",
            Some(BodyFormat::JsonLines) => "application/x-ndjson",
            Some(BodyFormat::JsonArray) => "application/json",
            Some(BodyFormat::Parquet) => "application/vnd.apache.parquet",
            None => bail!(
                "{}: unknown format; use .csv, .jsonl/.ndjson, .json or .parquet",
                file.display()
            ),
        };
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let request = self
            .http
            .post(self.url(&format!(
                "/v1/pipelines/{pipeline}/records?source={}",
                url_escape(&name)
            )))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header("idempotency-key", key)
            .body(bytes);
        let what = format!("posting {}", file.display());
        let response = match request.send() {
            Ok(response) => response,
            Err(error) => {
                return Ok(Attempt::Retry(anyhow::Error::new(error).context(format!(
                    "{what}: cannot reach weir serve at {}",
                    self.base
                ))));
            }
        };
        let status = response.status().as_u16();
        if matches!(status, 408 | 409 | 429 | 502 | 503 | 504) {
            return Ok(Attempt::Retry(anyhow::anyhow!("{what}: {status}")));
        }
        let body: Value = match response.json() {
            Ok(body) => body,
            // The connection broke mid-answer.
            Err(error) => return Ok(Attempt::Retry(anyhow::Error::new(error).context(what))),
        };
        if !(200..300).contains(&status) {
            let message = body["error"].as_str().unwrap_or("no message");
            bail!("{what}: {status}: {message}");
        }
        Ok(Attempt::Done(body))
    }
}

/// One attempt of an idempotent post.
enum Attempt {
    Done(Value),
    Retry(anyhow::Error),
}

impl Client {}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
