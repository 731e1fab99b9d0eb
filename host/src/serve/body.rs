//! Reading a request body under the caller's own limits.
//!
//! A body is read only after the caller is authenticated, frame by frame,
//! and stops at the caller's `max_body_bytes` (`413`) without buffering
//! more. Every buffered byte also holds a permit of two budgets until the
//! request is done with it: the service's `max_buffered_bytes` (all
//! requests together; `503` when spent) and the tenant's
//! `quotas.max_buffered_bytes` (`429`). So eight parallel 60 MiB posts
//! from a tenant limited to 1 MiB buffer at most 8 MiB, and no flood of
//! bodies can hold more memory than the service's budget.
//!
//! `Content-Encoding: gzip` (or `x-gzip`) is decoded, the decoded size held
//! to the same limits, so a small compressed "bomb" stops at
//! `max_body_bytes` of output (`413`); any other encoding but `identity` is
//! `415`. A body that is not complete within `body_read_timeout_ms` is
//! `408`.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A budget of bytes that buffered bodies hold while they are in use.
#[derive(Debug, Clone)]
pub struct BufferBudget {
    bytes: Arc<Semaphore>,
    limit_bytes: usize,
}

impl BufferBudget {
    /// A budget of `limit_bytes` bytes.
    pub fn new(limit_bytes: usize) -> BufferBudget {
        let limit_bytes = limit_bytes.min(Semaphore::MAX_PERMITS);
        BufferBudget {
            bytes: Arc::new(Semaphore::new(limit_bytes)),
            limit_bytes,
        }
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> usize {
        self.limit_bytes - self.bytes.available_permits()
    }
}

/// Which limits a body is read under.
#[derive(Debug, Clone)]
pub struct BodyLimits<'a> {
    /// The caller's largest body, in bytes (decoded size, for gzip).
    pub max_body_bytes: usize,
    /// The service's budget of buffered bytes.
    pub service: &'a BufferBudget,
    /// The caller's tenant's budget of buffered bytes.
    pub tenant: &'a BufferBudget,
    /// The tenant's name, for messages.
    pub tenant_name: &'a str,
    /// Longest time to receive the whole body.
    pub read_timeout: Duration,
}

/// A body read into memory; its bytes stay counted against the budgets
/// until it is dropped.
#[derive(Debug)]
pub struct Buffered {
    /// The (decoded) body.
    pub bytes: Bytes,
    _held: Vec<OwnedSemaphorePermit>,
}

/// Why a body was not read: an HTTP status and a message for the caller.
#[derive(Debug)]
pub struct BodyError {
    /// `413`, `415`, `408`, `429`, `503` or `400`.
    pub status: StatusCode,
    /// What to do about it.
    pub message: String,
}

impl BodyError {
    fn new(status: StatusCode, message: impl Into<String>) -> BodyError {
        BodyError {
            status,
            message: message.into(),
        }
    }
}

/// Content codings [`read`] decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
}

fn coding(headers: &HeaderMap) -> Result<Coding, BodyError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Coding::Identity);
    };
    let value = value.to_str().unwrap_or("?").trim().to_ascii_lowercase();
    match value.as_str() {
        "" | "identity" => Ok(Coding::Identity),
        "gzip" | "x-gzip" => Ok(Coding::Gzip),
        other => Err(BodyError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Encoding `{}` is not supported; send the body as is or gzip-compressed",
                crate::plugin::head(other, 64)
            ),
        )),
    }
}

/// Holds `bytes` more of both budgets in `held`.
fn hold(
    limits: &BodyLimits<'_>,
    held: &mut Vec<OwnedSemaphorePermit>,
    bytes: usize,
) -> Result<(), BodyError> {
    if bytes == 0 {
        return Ok(());
    }
    let Ok(count) = u32::try_from(bytes) else {
        return Err(too_large(limits.max_body_bytes));
    };
    let tenant = limits
        .tenant
        .bytes
        .clone()
        .try_acquire_many_owned(count)
        .map_err(|_| {
            BodyError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "tenant `{}` already has {} bytes of request bodies in memory (quotas.max_buffered_bytes = {}); retry when earlier requests are done",
                    limits.tenant_name,
                    limits.tenant.used_bytes(),
                    limits.tenant.limit_bytes
                ),
            )
        })?;
    let service = limits
        .service
        .bytes
        .clone()
        .try_acquire_many_owned(count)
        .map_err(|_| {
            BodyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the service already holds {} bytes of request bodies (service.max_buffered_bytes = {}); retry shortly",
                    limits.service.used_bytes(),
                    limits.service.limit_bytes
                ),
            )
        })?;
    held.push(tenant);
    held.push(service);
    Ok(())
}

fn too_large(max_body_bytes: usize) -> BodyError {
    BodyError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the body is larger than max_body_bytes = {max_body_bytes} bytes; split it into several requests"
        ),
    )
}

/// Reads `body` (with `headers`) under `limits`.
///
/// # Errors
/// A [`BodyError`] naming the limit that stopped it (see the module
/// documentation), or `400` for a body that broke off or a gzip stream
/// that is corrupt.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits<'_>,
) -> Result<Buffered, BodyError> {
    let coding = coding(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if coding == Coding::Identity
        && declared.is_some_and(|length| length > limits.max_body_bytes as u64)
    {
        return Err(too_large(limits.max_body_bytes));
    }
    let mut held = Vec::new();
    let collect = async {
        let mut body = body;
        let mut buffer = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                BodyError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buffer.len() + data.len() > limits.max_body_bytes {
                return Err(too_large(limits.max_body_bytes));
            }
            hold(&limits, &mut held, data.len())?;
            buffer.extend_from_slice(&data);
        }
        Ok(buffer)
    };
    let raw = match tokio::time::timeout(limits.read_timeout, collect).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(BodyError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} ms",
                    limits.read_timeout.as_millis()
                ),
            ));
        }
    };
    let bytes = match coding {
        Coding::Identity => Bytes::from(raw),
        Coding::Gzip => {
            let decoded = gunzip(&raw, limits.max_body_bytes)?;
            hold(&limits, &mut held, decoded.len())?;
            Bytes::from(decoded)
        }
    };
    Ok(Buffered { bytes, _held: held })
}

/// Decodes gzip `raw`, refusing more than `max_bytes` of output.
fn gunzip(raw: &[u8], max_bytes: usize) -> Result<Vec<u8>, BodyError> {
    let mut decoded = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(raw).take(max_bytes as u64 + 1);
    decoder.read_to_end(&mut decoded).map_err(|e| {
        BodyError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid gzip: {e}"),
        )
    })?;
    if decoded.len() > max_bytes {
        return Err(BodyError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the gzip body decodes to more than max_body_bytes = {max_bytes} bytes; split it into several requests"
            ),
        ));
    }
    Ok(decoded)
}
