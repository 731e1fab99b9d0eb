//! Alerts: the data-check results of a run that are not `ok`
//! ([`crate::checks`]), written to the log and POSTed as one JSON document
//! to the pipeline's webhook (`[checks] webhook`).
//!
//! The body (`Content-Type: application/json`):
//!
//! ```json
//! {"pipeline": "flights", "run_id": "…", "partition": "2013-01-05",
//!  "status": "fail", "run_failed": false, "at": "2026-12-05T17:00:00Z",
//!  "checks": [{"check": "volume", "status": "fail", "fails_run": false,
//!              "message": "512 rows read; the last 14 runs read 1003 ± 9 …",
//!              "observed": 512.0, "expected": [976.0, 1030.0]}]}
//! ```
//!
//! A POST that fails (no connection, timeout, an answer that is not 2xx) is
//! retried `webhook_retries` times, 200 ms · 2ⁿ apart; each attempt waits
//! at most `webhook_timeout_ms`. The sending happens on its own thread, so
//! it also works from a service's async workers; the run waits for it, at
//! most (retries + 1) · timeout + the backoff (≈ 9.4 s with the defaults).

use std::time::Duration;

use anyhow::{Result, anyhow};
use serde::Serialize;

use crate::checks::{CheckResult, ChecksSettings, Status};

/// One alert: the results of one run that are not `ok`.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// The pipeline's name.
    pub pipeline: String,
    /// The run's id.
    pub run_id: String,
    /// The partition, for a partitioned pipeline.
    pub partition: Option<String>,
    /// The worst status among `checks`: `warn` or `fail`.
    pub status: Status,
    /// Whether a check failed the run (nothing was published).
    pub run_failed: bool,
    /// When the alert was made, RFC 3339 UTC.
    pub at: String,
    /// The results that are not `ok`.
    pub checks: Vec<CheckResult>,
}

impl Alert {
    /// The alert for `results`, or none when every one is `ok`.
    pub fn from_results(
        pipeline: &str,
        run_id: &str,
        partition: Option<&str>,
        results: &[CheckResult],
    ) -> Option<Alert> {
        let checks: Vec<CheckResult> = results
            .iter()
            .filter(|r| r.status != Status::Ok)
            .cloned()
            .collect();
        let status = checks.iter().map(|r| r.status).max()?;
        Some(Alert {
            pipeline: pipeline.to_string(),
            run_id: run_id.to_string(),
            partition: partition.map(str::to_string),
            status,
            run_failed: checks.iter().any(|r| r.fails_run),
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            checks,
        })
    }
}

/// Logs `alert` and POSTs it to the webhook of `settings`, if any.
///
/// # Errors
/// When every attempt to POST failed (the alert is in the log anyway).
pub fn raise(settings: &ChecksSettings, alert: &Alert) -> Result<()> {
    for check in &alert.checks {
        tracing::warn!(
            pipeline = %alert.pipeline,
            run_id = %alert.run_id,
            check = %check.check,
            status = ?check.status,
            "data check: {}",
            check.message
        );
    }
    let Some(url) = settings.webhook.clone() else {
        return Ok(());
    };
    let body = serde_json::to_vec(alert)?;
    let timeout = Duration::from_millis(settings.webhook_timeout_ms);
    let retries = settings.webhook_retries;
    // reqwest's blocking client must not run on an async worker thread.
    std::thread::spawn(move || post_with_retries(&url, body, timeout, retries))
        .join()
        .map_err(|_| anyhow!("the alert sender panicked"))?
}

fn post_with_retries(url: &str, body: Vec<u8>, timeout: Duration, retries: u32) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()?;
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << (attempt - 1).min(6)));
        }
        match client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
        {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last = format!("{url} answered {}", response.status()),
            Err(e) => last = format!("posting to {url}: {e}"),
        }
    }
    Err(anyhow!(
        "alert not delivered after {} attempts: {last}",
        retries + 1
    ))
}
