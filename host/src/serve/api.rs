//! The HTTP API of `weir serve` (axum). JSON in and out; errors are
//! `{"error": "..."}` with a 4xx/5xx status. The OpenAPI 3.1 description
//! is served at `GET /openapi.json` (source: `host/src/serve/openapi.json`).
//!
//! | route | what |
//! |---|---|
//! | `GET /health`, `GET /ready` | liveness; readiness (503 while starting or draining) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/pipelines`, `GET /v1/pipelines/{name}` | state, counts, rates |
//! | `POST /v1/pipelines/{name}/records` | ingest a body (CSV, JSON Lines, JSON array, Parquet) |
//! | `POST /v1/pipelines/{name}/pause`, `…/resume` | stop / restart taking records |
//! | `GET /v1/pipelines/{name}/report` | per-stage counts and recent micro-batches |
//! | `GET /v1/plugins` | every stage's plugin: current hash, history, last rejection |
//! | `POST /v1/pipelines/{name}/stages/{stage}/reload`, `…/rollback` | swap a plugin now |
//! | `GET /v1/pipelines/{name}/quarantine` | quarantined rows, filtered |
//! | `POST /v1/pipelines/{name}/quarantine/replay` | re-submit quarantined rows |

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Service;
use super::ingest::{ACCEPTED_CONTENT_TYPES, BodyFormat};
use super::live::{Ack, LivePipeline, SubmitError};
use super::quarantine_log::{self, QuarantineEntry, QuarantineFilter};
use crate::plugin::SlotStatus;

/// The OpenAPI description of this API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// An error response: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> ApiError {
        let status = match error {
            SubmitError::Paused(_) | SubmitError::ShuttingDown(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            SubmitError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router for `service`, with the body limit from its config.
pub fn router(service: Arc<Service>) -> Router {
    let max_body = service.config.service.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/pipelines", get(list_pipelines))
        .route("/v1/pipelines/{name}", get(get_pipeline))
        .route("/v1/pipelines/{name}/records", post(ingest))
        .route("/v1/pipelines/{name}/pause", post(pause))
        .route("/v1/pipelines/{name}/resume", post(resume))
        .route("/v1/pipelines/{name}/report", get(report))
        .route("/v1/plugins", get(list_plugins))
        .route(
            "/v1/pipelines/{name}/stages/{stage}/reload",
            post(reload_plugin),
        )
        .route(
            "/v1/pipelines/{name}/stages/{stage}/rollback",
            post(rollback_plugin),
        )
        .route("/v1/pipelines/{name}/quarantine", get(list_quarantine))
        .route(
            "/v1/pipelines/{name}/quarantine/replay",
            post(replay_quarantine),
        )
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(service)
}

fn find(service: &Service, name: &str) -> ApiResult<Arc<LivePipeline>> {
    service.pipeline(name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no pipeline `{name}`; serving: {}",
                service
                    .pipelines()
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

async fn health(State(service): State<Arc<Service>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "uptime_s": service.uptime().as_secs() }))
}

async fn ready(State(service): State<Arc<Service>>) -> ApiResult<Json<serde_json::Value>> {
    if service.is_ready() {
        Ok(Json(json!({ "status": "ready" })))
    } else if service.is_draining() {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down",
        ))
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting"))
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> ApiResult<Response> {
    let handle = super::metrics::handle()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "metrics are disabled"))?;
    // Reload counters and health live in the slots; copy them in at scrape time.
    for live in service.pipelines().values() {
        for stage in live.pipeline().stages() {
            let status = stage.slot.status();
            for (outcome, count) in [("ok", status.reloads), ("rejected", status.rejections)] {
                ::metrics::counter!("weir_plugin_reloads_total", "pipeline" => live.name.clone(), "stage" => stage.name.to_string(), "outcome" => outcome).absolute(count);
            }
            ::metrics::gauge!("weir_plugin_healthy", "pipeline" => live.name.clone(), "stage" => stage.name.to_string()).set(if status.health.healthy { 1.0 } else { 0.0 });
        }
    }
    handle.run_upkeep();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

async fn list_pipelines(State(service): State<Arc<Service>>) -> Json<serde_json::Value> {
    let pipelines: Vec<_> = service.pipelines().values().map(|l| l.status()).collect();
    Json(json!({ "pipelines": pipelines }))
}

async fn get_pipeline(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> ApiResult<Json<super::live::PipelineStatus>> {
    Ok(Json(find(&service, &name)?.status()))
}

/// Query of `POST …/records`.
#[derive(Debug, Deserialize)]
struct IngestQuery {
    /// A name for the request in the quarantine's `source_file` column.
    source: Option<String>,
}

async fn ingest(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    Query(query): Query<IngestQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Ack>> {
    let live = find(&service, &name)?;
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the body is larger than max_body_bytes = {} bytes; split it into several requests",
                service.config.service.max_body_bytes
            )
        } else {
            rejection.body_text()
        };
        ApiError::new(status, message)
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let format = BodyFormat::from_content_type(content_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type `{content_type}` is not supported; use one of {ACCEPTED_CONTENT_TYPES}"
            ),
        )
    })?;
    let label: Arc<str> = Arc::from(
        query
            .source
            .map(|s| format!("http:{s}"))
            .unwrap_or_else(|| format!("http:{}", uuid::Uuid::new_v4().simple())),
    );
    let decoder = live.clone();
    let items = tokio::task::spawn_blocking(move || format.decode(decoder.source(), label, body))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    Ok(Json(live.submit(items).await?))
}

async fn pause(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> ApiResult<Json<super::live::PipelineStatus>> {
    set_paused(&service, &name, true)
}

async fn resume(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> ApiResult<Json<super::live::PipelineStatus>> {
    set_paused(&service, &name, false)
}

/// Pauses or resumes pipeline `name`; 409 once it is shutting down.
fn set_paused(
    service: &Service,
    name: &str,
    paused: bool,
) -> ApiResult<Json<super::live::PipelineStatus>> {
    let live = find(service, name)?;
    let changed = if paused { live.pause() } else { live.resume() };
    if !changed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the pipeline is shutting down",
        ));
    }
    Ok(Json(live.status()))
}

async fn report(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = find(&service, &name)?;
    Ok(Json(json!({
        "status": live.status(),
        "stages": live.stage_reports(),
        "batches": live.batch_reports(),
    })))
}

/// One stage's plugin, for `GET /v1/plugins`.
#[derive(Debug, Serialize)]
struct PluginInfo {
    pipeline: String,
    stage: String,
    kind: crate::plugin::PluginKind,
    /// The reference in the pipeline file.
    plugin: String,
    /// The watched file; null for built-ins.
    file: Option<std::path::PathBuf>,
    #[serde(flatten)]
    status: SlotStatus,
}

async fn list_plugins(State(service): State<Arc<Service>>) -> Json<serde_json::Value> {
    let mut plugins = Vec::new();
    for live in service.pipelines().values() {
        for stage in live.pipeline().stages() {
            plugins.push(PluginInfo {
                pipeline: live.name.clone(),
                stage: stage.name.to_string(),
                kind: stage.kind,
                plugin: stage.reference.clone(),
                file: service.plugin_file(live, stage),
                status: stage.slot.status(),
            });
        }
    }
    Json(json!({ "plugins": plugins }))
}

fn find_stage(live: &LivePipeline, stage: &str) -> ApiResult<Arc<crate::pipeline::Stage>> {
    live.pipeline()
        .stages()
        .iter()
        .find(|s| &*s.name == stage)
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("pipeline `{}` has no stage `{stage}`", live.name),
            )
        })
}

async fn reload_plugin(
    State(service): State<Arc<Service>>,
    Path((name, stage)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = find(&service, &name)?;
    let stage = find_stage(&live, &stage)?;
    let file = service.plugin_file(&live, &stage).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "stage `{}` runs built-in {}, which cannot change",
                stage.name, stage.reference
            ),
        )
    })?;
    let outcome = tokio::task::spawn_blocking(move || {
        let bytes =
            std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        stage.slot.reload(&bytes).map_err(|r| r.error)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match outcome {
        Ok(swap) => Ok(Json(json!({
            "sha256": swap.version.plugin.sha256(),
            "unchanged": swap.unchanged,
            "latency_ms": swap.latency.as_secs_f64() * 1000.0,
        }))),
        Err(error) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("rejected; the current version keeps serving: {error}"),
        )),
    }
}

async fn rollback_plugin(
    State(service): State<Arc<Service>>,
    Path((name, stage)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = find(&service, &name)?;
    let stage = find_stage(&live, &stage)?;
    let version = stage
        .slot
        .rollback()
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok(Json(json!({ "sha256": version.plugin.sha256() })))
}

/// Rows listed by default.
const DEFAULT_LIST_LIMIT: usize = 100;

async fn list_quarantine(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    Query(filter): Query<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = find(&service, &name)?;
    let filter = filter.into_filter();
    let (entries, matched) = read_quarantine(&live, filter, DEFAULT_LIST_LIMIT).await?;
    Ok(Json(json!({ "matched": matched, "rows": entries })))
}

/// Query of `GET …/quarantine` (a flat version of [`QuarantineFilter`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    stage: Option<String>,
    error_kind: Option<String>,
    rule: Option<String>,
    plugin_sha256: Option<String>,
    source_file: Option<String>,
    /// Comma-separated ids.
    ids: Option<String>,
    #[serde(default)]
    include_replayed: bool,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

impl ListQuery {
    fn into_filter(self) -> QuarantineFilter {
        QuarantineFilter {
            stage: self.stage,
            error_kind: self.error_kind,
            rule: self.rule,
            plugin_sha256: self.plugin_sha256,
            source_file: self.source_file,
            ids: self
                .ids
                .map(|ids| ids.split(',').map(str::to_string).collect()),
            include_replayed: self.include_replayed,
            offset: self.offset,
            limit: self.limit,
        }
    }
}

async fn read_quarantine(
    live: &Arc<LivePipeline>,
    filter: QuarantineFilter,
    default_limit: usize,
) -> ApiResult<(Vec<QuarantineEntry>, usize)> {
    let live = live.clone();
    tokio::task::spawn_blocking(move || {
        quarantine_log::list(live.quarantine_dir(), &filter, default_limit, |id| {
            live.is_replayed(id)
        })
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))
}

/// Replays run one at a time per process, so that two overlapping calls
/// cannot replay the same row twice.
static REPLAY_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn replay_quarantine(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    body: Option<Json<QuarantineFilter>>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = find(&service, &name)?;
    let filter = body.map(|Json(f)| f).unwrap_or_default();
    let _guard = REPLAY_LOCK.lock().await;
    let (entries, _) = read_quarantine(&live, filter, usize::MAX).await?;
    let (replayable, skipped): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.replayable());
    let mut lines = Vec::new();
    for entry in &replayable {
        serde_json::to_writer(&mut lines, &entry.record)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        lines.push(b'\n');
    }
    let ids: Vec<String> = replayable.iter().map(|e| e.id.clone()).collect();
    let ack = if ids.is_empty() {
        Ack::default()
    } else {
        let decoder = live.clone();
        let label: Arc<str> = Arc::from(format!("replay:{}", uuid::Uuid::new_v4().simple()));
        let items = tokio::task::spawn_blocking(move || {
            BodyFormat::JsonLines.decode(decoder.source(), label, lines.into())
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        let ack = live.submit(items).await?;
        live.mark_replayed(&ids)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        ack
    };
    Ok(Json(json!({
        "replayed": ids.len(),
        "not_replayable": skipped.iter().map(|e| &e.id).collect::<Vec<_>>(),
        "result": ack,
    })))
}
