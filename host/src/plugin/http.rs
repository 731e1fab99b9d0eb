//! Outbound HTTP (`wasi:http/outgoing-handler`), granted only to extract
//! plugins and only towards an allowlist of hosts.
//!
//! Every request a plugin sends goes through [`HttpHooks::send_request`],
//! which, in order:
//!
//! 1. refuses a host that is not in `allow_hosts` (`HTTP-request-denied`,
//!    nothing is sent);
//! 2. refuses a host whose circuit breaker is open (`internal-error` naming
//!    the host and the rest left), so a dead API costs nothing per request;
//! 3. sends the request with `timeout_ms` for the connection and the
//!    response headers (and between body chunks), never past the plugin
//!    call's own deadline;
//! 4. retries a connection failure, a timeout or a `408/429/500/502/503/504`
//!    answer up to `retries` times, for idempotent methods only (GET, HEAD,
//!    PUT, DELETE, OPTIONS, TRACE), after an exponential backoff with equal
//!    jitter: before retry *k* (from 0) it waits a random time in
//!    `[d/2, d]`, `d = min(backoff_ms × 2^k, max_backoff_ms)` ("Exponential
//!    Backoff And Jitter", AWS Architecture Blog, 2015), or the answer's
//!    `Retry-After` seconds when longer (still capped);
//! 5. records the outcome in the host's breaker ([`CircuitBreaker`]): a
//!    request whose last attempt failed as above counts a failure, any other
//!    answer (4xx included: the host is up) a success.
//!
//! The request body is buffered (at most [`MAX_REQUEST_BODY_BYTES`]) so that
//! it can be sent again; the response streams to the plugin.
//!
//! ```toml
//! [source.extract.capabilities.http]
//! allow_hosts = ["api.example.com", "127.0.0.1:8080"]
//! timeout_ms = 10000
//! retries = 3
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::breaker::{Admission, BreakerConfig, CircuitBreaker};

/// Largest request body a plugin may send, in bytes (16 MiB): bodies are
/// buffered so that a retry can resend them.
pub const MAX_REQUEST_BODY_BYTES: usize = 16 * 1024 * 1024;

/// `capabilities.http` of an extract source: where its plugin may send
/// requests and how failures are retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpGrant {
    /// Hosts the plugin may reach: `host` (any port) or `host:port`, matched
    /// without case against the request's authority; `*.example.com`
    /// matches every subdomain of example.com (not example.com itself).
    /// Required and non-empty.
    pub allow_hosts: Vec<String>,
    /// Time for one attempt's connection and response headers, and for the
    /// wait between two chunks of the response body, in milliseconds.
    /// Default 10,000. A request never outlives the plugin call's
    /// `timeout_ms`.
    pub timeout_ms: u64,
    /// Attempts after the first for a retryable failure. Default 3.
    pub retries: u32,
    /// Backoff before the first retry, in milliseconds; it doubles at each
    /// retry. Default 100.
    pub backoff_ms: u64,
    /// Longest backoff, in milliseconds. Default 5,000.
    pub max_backoff_ms: u64,
    /// The per-host circuit breaker: `failures` requests in a row whose
    /// retries all failed open it for `backoff_ms` (doubling up to
    /// `max_backoff_ms`). Default 5 failures, 1,000 ms, 60,000 ms.
    pub breaker: BreakerConfig,
    /// Headers the host adds to every request to a host, by `allow_hosts`
    /// entry: `headers."api.example.com" = { Authorization = "Bearer
    /// ${secret:token}" }`. Values may refer to the pipeline's secrets
    /// ([`crate::secrets`]), filled in by the host: the plugin never holds
    /// them. A header the plugin set under the same name is replaced. They
    /// are sent only over HTTPS (or plain HTTP to a loopback address);
    /// a plain-HTTP request to another host that would carry them is
    /// refused. Default: none.
    pub headers: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for HttpGrant {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            timeout_ms: 10_000,
            retries: 3,
            backoff_ms: 100,
            max_backoff_ms: 5_000,
            breaker: BreakerConfig::default(),
            headers: BTreeMap::new(),
        }
    }
}

impl HttpGrant {
    /// Checks the grant is usable.
    ///
    /// # Errors
    /// An empty `allow_hosts`, an entry with a scheme, path or blank, or a
    /// zero `timeout_ms`.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.allow_hosts.is_empty() {
            anyhow::bail!("`allow_hosts` is empty: name the hosts the plugin may reach");
        }
        for host in &self.allow_hosts {
            if host.trim().is_empty() || host.contains("://") || host.contains('/') {
                anyhow::bail!(
                    "`allow_hosts` entry {host:?} must be a host or host:port, like \"api.example.com\" or \"127.0.0.1:8080\""
                );
            }
        }
        if self.timeout_ms == 0 {
            anyhow::bail!("`timeout_ms` must be at least 1");
        }
        for (host, headers) in &self.headers {
            if !self.allow_hosts.contains(host) {
                anyhow::bail!(
                    "`headers` names {host:?}, which is not an `allow_hosts` entry (written the same way)"
                );
            }
            for name in headers.keys() {
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    anyhow::anyhow!("`headers.{host:?}`: {name:?} is not a header name")
                })?;
            }
        }
        Ok(())
    }

    /// Whether `host` at `port` matches the `allow_hosts` entry `entry`.
    fn entry_allows(entry: &str, host: &str, port: u16) -> bool {
        let (pattern, entry_port) = split_port(entry);
        let host_matches = match pattern.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == pattern,
        };
        host_matches && entry_port.is_none_or(|p| p == port)
    }

    /// Whether `host` (lowercase, an IPv6 literal in brackets) at `port`
    /// is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        !host.is_empty()
            && self
                .allow_hosts
                .iter()
                .any(|entry| Self::entry_allows(entry, host, port))
    }

    fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let max = Duration::from_millis(self.max_backoff_ms);
        let full = Duration::from_millis(self.backoff_ms)
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(max);
        let half = full / 2;
        let jitter = getrandom::u64().unwrap_or(0) % (half.as_micros() as u64 + 1);
        let delay = half + Duration::from_micros(jitter);
        retry_after.map_or(delay, |after| after.min(max).max(delay))
    }
}

/// Whether `host` (lowercase, an IPv6 literal in brackets) is a loopback
/// name or address.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host` (lowercased) and the port of an `allow_hosts` entry
/// `host[:port]`; an IPv6 literal carries a port only in brackets
/// (`[::1]:8080`).
fn split_port(entry: &str) -> (String, Option<u16>) {
    let entry = entry.trim().to_ascii_lowercase();
    if let Some((host, port)) = entry.rsplit_once(':')
        && !host.is_empty()
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
        && let Ok(port) = port.parse()
    {
        return (host.to_string(), Some(port));
    }
    (entry, None)
}

/// Counts of one extract source's outbound requests since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HttpCounts {
    /// Requests the plugin made.
    pub requests: u64,
    /// Attempts sent on the wire (first tries plus retries).
    pub attempts: u64,
    /// Retries among them.
    pub retries: u64,
    /// Requests refused because the host is not allowed.
    pub denied: u64,
    /// Requests refused because the host's breaker was open.
    pub rested: u64,
}

/// One extract source's outbound HTTP: its grant, a circuit breaker per
/// host and counters, shared by every instance of the plugin.
#[derive(Debug)]
pub struct HttpAccess {
    grant: HttpGrant,
    plugin: Arc<str>,
    /// `grant.headers` with their secrets filled in, by `allow_hosts`
    /// entry.
    headers: Vec<(String, http::HeaderName, http::HeaderValue)>,
    breakers: Mutex<HashMap<String, Arc<CircuitBreaker>>>,
    counts: Mutex<HttpCounts>,
}

impl HttpAccess {
    /// Access under `grant` for the plugin named `plugin` (named in the
    /// logs).
    pub fn new(grant: HttpGrant, plugin: &str) -> Arc<Self> {
        Self::with_secrets(grant, plugin, &crate::secrets::Secrets::default())
            .expect("no secret to fill")
    }

    /// [`HttpAccess::new`], the grant's `headers` filled with `secrets`.
    ///
    /// # Errors
    /// A header value naming an undeclared secret, or not a valid header
    /// value once filled (the message never holds the value).
    pub fn with_secrets(
        grant: HttpGrant,
        plugin: &str,
        secrets: &crate::secrets::Secrets,
    ) -> anyhow::Result<Arc<Self>> {
        let mut headers = Vec::new();
        for (entry, values) in &grant.headers {
            for (name, template) in values {
                let header = http::HeaderName::from_bytes(name.as_bytes())?;
                let filled = secrets.fill(template).map_err(anyhow::Error::msg)?;
                let mut value = http::HeaderValue::from_str(&filled).map_err(|_| {
                    anyhow::anyhow!(
                        "the header {name} for {entry:?} is not a valid header value once its secrets are filled in"
                    )
                })?;
                value.set_sensitive(true);
                headers.push((entry.clone(), header, value));
            }
        }
        Ok(Arc::new(Self {
            grant,
            plugin: Arc::from(plugin),
            headers,
            breakers: Mutex::new(HashMap::new()),
            counts: Mutex::new(HttpCounts::default()),
        }))
    }

    /// What has been sent so far.
    pub fn counts(&self) -> HttpCounts {
        *self.counts.lock().expect("http counts lock")
    }

    /// The breaker of `host` (lowercase `host:port`), created closed.
    pub fn breaker(&self, host: &str) -> Arc<CircuitBreaker> {
        self.breakers
            .lock()
            .expect("http breakers lock")
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(CircuitBreaker::new(self.grant.breaker)))
            .clone()
    }

    fn count(&self, update: impl FnOnce(&mut HttpCounts)) {
        update(&mut self.counts.lock().expect("http counts lock"));
    }
}

/// The `wasi:http` hooks of one plugin instance: the source's access, if
/// granted, and the running call's deadline.
#[derive(Default)]
pub struct HttpHooks {
    /// `None`: every request is denied.
    pub access: Option<Arc<HttpAccess>>,
    /// When the running plugin call must end.
    pub deadline: Option<Instant>,
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let access = self.access.clone();
        let deadline = self.deadline;
        Box::new(async move {
            let Some(access) = access else {
                return Err(HttpError::HttpRequestDenied);
            };
            send(&access, request, options, deadline).await
        })
    }
}

/// Whether a retry may resend `method` (RFC 9110 §9.2.2, idempotent methods).
fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(method)
}

/// Whether an answer with `status` is worth retrying (the server is busy
/// or failing, not refusing the request).
fn retryable_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// Fails the breaker's admitted request if it is dropped unrecorded (the
/// plugin gave up on the response), so a half-open breaker is not stuck.
struct Outcome {
    breaker: Arc<CircuitBreaker>,
    recorded: bool,
}

impl Outcome {
    fn record(&mut self, succeeded: bool) -> bool {
        self.recorded = true;
        self.breaker.record(succeeded)
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(false);
        }
    }
}

async fn send(
    access: &HttpAccess,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    deadline: Option<Instant>,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
> {
    let grant = &access.grant;
    let plugin = &*access.plugin;
    let uri = request.uri().clone();
    let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    // Host and port as the connection will use them; an authority with
    // user information (`user@host`) is refused outright.
    let (host, port) = match uri.authority() {
        Some(a) if !a.as_str().contains('@') => (
            a.host().to_ascii_lowercase(),
            a.port_u16().unwrap_or(default_port),
        ),
        _ => (String::new(), default_port),
    };
    access.count(|c| c.requests += 1);
    let allowed = grant.allows(&host, port);
    let host = format!("{host}:{port}");
    if !allowed {
        access.count(|c| c.denied += 1);
        let requested = uri.authority().map_or("", |a| a.as_str());
        tracing::warn!(
            plugin,
            host = requested,
            "outbound request refused: host not in allow_hosts"
        );
        return Err(HttpError::HttpRequestDenied);
    }
    // The body first: a body too large is the plugin's fault, not the host's.
    let (mut parts, body) = request.into_parts();
    let (bare_host, _) = split_port(&host);
    let injected: Vec<_> = access
        .headers
        .iter()
        .filter(|(entry, _, _)| HttpGrant::entry_allows(entry, &bare_host, port))
        .collect();
    if !injected.is_empty() {
        if parts.method == http::Method::TRACE {
            access.count(|c| c.denied += 1);
            return Err(HttpError::InternalError(Some(
                "weir: TRACE echoes the request, and requests to this host carry secret headers"
                    .into(),
            )));
        }
        let encrypted = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        if !encrypted && !is_loopback(&bare_host) {
            access.count(|c| c.denied += 1);
            tracing::warn!(
                plugin,
                host,
                "outbound request refused: it would carry secret headers over plain HTTP"
            );
            return Err(HttpError::InternalError(Some(format!(
                "weir: requests to {host} carry secret headers, so they must use https://"
            ))));
        }
        for (_, name, value) in injected {
            parts.headers.insert(name.clone(), value.clone());
        }
    }
    let body = collect_body(body).await?;
    let breaker = access.breaker(&host);
    if let Admission::Rest(rest) = breaker.admit() {
        access.count(|c| c.rested += 1);
        let when = if rest.is_zero() {
            "a probe request is under way".to_string()
        } else {
            format!("next attempt allowed in {} ms", rest.as_millis())
        };
        return Err(HttpError::InternalError(Some(format!(
            "weir: circuit open for {host} after repeated failures; {when}"
        ))));
    }
    let mut outcome = Outcome {
        breaker,
        recorded: false,
    };
    let retries = if idempotent(&parts.method) {
        grant.retries
    } else {
        0
    };
    let remaining = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let mut attempt = 0;
    loop {
        let timeout = remaining().map_or(Duration::from_millis(grant.timeout_ms), |left| {
            left.min(Duration::from_millis(grant.timeout_ms))
        });
        if timeout.is_zero() {
            outcome.record(false);
            return Err(HttpError::ConnectionTimeout);
        }
        let options = RequestOptions {
            connect_timeout: Some(clamp(options.and_then(|o| o.connect_timeout), timeout)),
            first_byte_timeout: Some(clamp(options.and_then(|o| o.first_byte_timeout), timeout)),
            between_bytes_timeout: Some(clamp(
                options.and_then(|o| o.between_bytes_timeout),
                timeout,
            )),
        };
        let again = http::Request::from_parts(parts.clone(), ()).map(|()| {
            Full::new(body.clone())
                .map_err(|never| match never {})
                .boxed_unsync()
        });
        access.count(|c| c.attempts += 1);
        let sent = tokio::time::timeout(
            timeout,
            wasmtime_wasi_http::default_send_request(again, Some(options)),
        )
        .await
        .unwrap_or(Err(HttpError::ConnectionTimeout));
        let failed = match &sent {
            Ok((response, _)) => retryable_status(response.status()),
            Err(_) => true,
        };
        let after = match &sent {
            Ok((response, _)) => retry_after_of(response),
            Err(_) => None,
        };
        let delay = grant.backoff(attempt, after);
        let time_left = remaining().is_none_or(|left| left > delay);
        if !failed || attempt >= retries || !time_left {
            let opened = outcome.record(!failed);
            if opened {
                tracing::warn!(
                    plugin,
                    host,
                    "circuit opened: too many failed requests in a row"
                );
            }
            return sent.map(|(response, io)| {
                (
                    response.map(BodyExt::boxed_unsync),
                    Box::new(io) as Box<dyn Future<Output = _> + Send>,
                )
            });
        }
        let why = match &sent {
            Ok((response, _)) => response.status().to_string(),
            Err(e) => e.to_string(),
        };
        drop(sent);
        tracing::info!(plugin, host, attempt, %why, delay_ms = delay.as_millis() as u64, "retrying outbound request");
        access.count(|c| c.retries += 1);
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured).
fn retry_after_of<B>(response: &http::Response<B>) -> Option<Duration> {
    let value = response.headers().get(http::header::RETRY_AFTER)?;
    let seconds: u64 = value.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The plugin's own timeout, if shorter than weir's.
fn clamp(requested: Option<Duration>, limit: Duration) -> Duration {
    requested.map_or(limit, |r| r.min(limit))
}

async fn collect_body(body: WasiBody) -> Result<Bytes, HttpError> {
    let limited = http_body_util::Limited::new(body, MAX_REQUEST_BODY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match e.downcast::<HttpError>() {
            Ok(e) => Err(*e),
            Err(_) => Err(HttpError::HttpRequestBodySize(None)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(hosts: &[&str]) -> HttpGrant {
        HttpGrant {
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..HttpGrant::default()
        }
    }

    #[test]
    fn allowlist_matches_host_port_and_subdomain_wildcards() {
        let g = grant(&[
            "api.example.com",
            "127.0.0.1:8080",
            "*.data.org",
            "API.Other.net",
        ]);
        assert!(g.allows("api.example.com", 443));
        assert!(g.allows("api.example.com", 8443), "any port");
        assert!(g.allows("api.other.net", 80), "entries without case");
        assert!(g.allows("127.0.0.1", 8080));
        assert!(!g.allows("127.0.0.1", 8081));
        assert!(!g.allows("127.0.0.1", 80), "port 80 is not 8080");
        assert!(g.allows("eu.data.org", 443));
        assert!(!g.allows("data.org", 443), "the wildcard needs a subdomain");
        assert!(!g.allows("evil-data.org", 443));
        assert!(!g.allows("api.example.com.evil.net", 443));
        assert!(!g.allows("", 80));
        assert!(grant(&["[::1]:9000"]).allows("[::1]", 9000));
        assert!(!grant(&["[::1]:9000"]).allows("[::1]", 9001));
    }

    #[test]
    fn check_names_the_problem() {
        assert!(
            grant(&[])
                .check()
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let error = grant(&["http://x.org"]).check().unwrap_err().to_string();
        assert!(error.contains("host or host:port"), "{error}");
        grant(&["x.org"]).check().unwrap();
    }

    #[test]
    fn backoff_doubles_within_equal_jitter_and_is_capped() {
        let g = HttpGrant {
            backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..grant(&["x"])
        };
        for _ in 0..50 {
            for (retry, full_ms) in [
                (0, 100),
                (1, 200),
                (2, 400),
                (3, 800),
                (4, 1_000),
                (40, 1_000),
            ] {
                let d = g.backoff(retry, None);
                let full = Duration::from_millis(full_ms);
                assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
            }
        }
        let longer = g.backoff(0, Some(Duration::from_secs(3)));
        assert_eq!(longer, Duration::from_millis(1_000), "Retry-After, capped");
    }
}
