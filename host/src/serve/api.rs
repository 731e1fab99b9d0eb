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
//! | `GET /v1/schedules`, `GET /v1/schedules/{schedule}` | scheduled pipelines: next and last instants, outcomes, latest backfill |
//! | `GET /v1/schedules/{schedule}/runs` | the run history of a schedule's pipeline, newest first |
//! | `POST /v1/schedules/{schedule}/backfill` | start a backfill of a schedule's partitioned pipeline |
//! | `GET /v1/pipelines/{name}/runs/{run}`, `GET /v1/schedules/{schedule}/runs/{run}` | one run with its report |
//! | `POST /v1/session`, `GET /v1/session`, `DELETE /v1/session` | the dashboard's browser login ([`super::session`]) |
//! | `GET /ui/` | the dashboard ([`super::dashboard`]) |
//!
//! A browser session authenticates by cookie; its changing requests also
//! need the `X-CSRF-Token` header. Any changing request whose `Origin`
//! header names another site than the one it was sent to is refused.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Service;
use super::auth::Caller;
use super::config::DEFAULT_TENANT;
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

/// Longest message an error answer carries, in bytes: an error quoting
/// the caller's input (a bad record, a bad header) is cut here, so a bad
/// request cannot make its answer large.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 2048;

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: crate::plugin::head(&message.into(), MAX_ERROR_MESSAGE_BYTES),
        }
    }
}

impl From<super::body::BodyError> for ApiError {
    fn from(error: super::body::BodyError) -> ApiError {
        ApiError::new(error.status, error.message)
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
            SubmitError::Stream(_) => StatusCode::CONFLICT,
            SubmitError::Key(super::delivery::KeyError::InFlight(_)) => StatusCode::CONFLICT,
            SubmitError::Key(super::delivery::KeyError::Disabled(_)) => StatusCode::BAD_REQUEST,
            SubmitError::Key(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, error.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Largest body of the routes that take a small JSON document (token
/// issue, deploy, quarantine filters), in bytes: 1 MiB.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;

/// The router for `service`. Tenant routes exist twice: under
/// `/v1/tenants/{tenant}/…` (any tenant, for the operator; its own, for a
/// tenant) and under `/v1/…` (the caller's own tenant; for the operator,
/// tenant `default`).
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/", get(super::dashboard::to_dashboard))
        .route("/ui", get(super::dashboard::to_dashboard))
        .route("/ui/", get(super::dashboard::index))
        .route("/ui/{*file}", get(super::dashboard::asset))
        .route("/v1/session", get(get_session).post(login).delete(logout))
        .route("/v1/tenants", get(list_tenants))
        .route(
            "/v1/tenants/{tenant}/tokens",
            get(list_tokens).post(issue_token),
        )
        .route(
            "/v1/tenants/{tenant}/tokens/{id}",
            axum::routing::delete(revoke_token),
        )
        .nest("/v1/tenants/{tenant}", tenant_routes())
        .nest("/v1", tenant_routes())
        // Ingest and upload bodies are read by `read_body` under the
        // caller's own limits; this bounds the small JSON bodies of the
        // other routes.
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            refuse_rebound_hosts,
        ))
        .layer(axum::middleware::map_response(redact_secrets))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(service)
}

/// The routes acting on one tenant's objects.
fn tenant_routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/pipelines", get(list_pipelines))
        .route("/pipelines/{name}", get(get_pipeline))
        .route("/pipelines/{name}/records", post(ingest))
        .route("/pipelines/{name}/pause", post(pause))
        .route("/pipelines/{name}/resume", post(resume))
        .route("/pipelines/{name}/report", get(report))
        .route("/pipelines/{name}/runs", get(pipeline_runs))
        .route("/pipelines/{name}/runs/{run}", get(pipeline_run))
        .route("/plugins", get(list_plugins).post(upload_plugin))
        .route(
            "/pipelines/{name}/stages/{stage}/reload",
            post(reload_plugin),
        )
        .route(
            "/pipelines/{name}/stages/{stage}/rollback",
            post(rollback_plugin),
        )
        .route(
            "/pipelines/{name}/stages/{stage}/deploy",
            post(deploy_plugin),
        )
        .route("/pipelines/{name}/quarantine", get(list_quarantine))
        .route(
            "/pipelines/{name}/quarantine/replay",
            post(replay_quarantine),
        )
        .route("/schedules", get(list_schedules))
        .route("/schedules/{schedule}", get(get_schedule))
        .route("/schedules/{schedule}/runs", get(schedule_runs))
        .route("/schedules/{schedule}/runs/{run}", get(schedule_run))
        .route("/schedules/{schedule}/backfill", post(start_backfill))
}

/// Refuses, on a service without tokens, a request addressed to a host
/// name other than `localhost` or an IP address: such a service answers
/// everyone as the operator and listens on loopback only, and a page of
/// another site can reach it only through DNS rebinding (its own name made
/// to resolve to 127.0.0.1), which sends that name as `Host`. `/health`
/// and `/ready` (no data) answer anyway, for probes; a request without
/// `Host` (not a browser) passes.
async fn refuse_rebound_hosts(
    State(service): State<Arc<Service>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let probe = matches!(request.uri().path(), "/health" | "/ready");
    if !service.tokens().enabled()
        && !probe
        && let Some(host) = request.headers().get(header::HOST)
    {
        let host = host.to_str().unwrap_or_default();
        if !loopback_name(host) {
            ::metrics::counter!("weir_api_auth_failures_total").increment(1);
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this service has no tokens, so it answers only requests addressed to localhost or an IP address, not `{}`: configure tokens to reach it by name",
                    crate::plugin::head(host, 128)
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Whether `host` (a `Host` header: a name or address, maybe with a port)
/// is `localhost` or an IP address.
fn loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or("", |(name, _)| name),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Authenticates the request: its bearer token or, without one, its
/// dashboard session cookie (with the CSRF token for a change). A
/// changing request from a page of another site is refused first.
fn authenticate(service: &Service, parts: &Parts) -> ApiResult<Caller> {
    let changes = !matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if changes && cross_origin(&parts.headers) {
        return Err(cross_origin_refused());
    }
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if header.is_none()
        && service.tokens().enabled()
        && let Some(cookie) = session_cookie(parts)?
    {
        let csrf = parts
            .headers
            .get(super::session::CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        return service
            .sessions()
            .caller(service.tokens(), cookie, csrf, changes)
            .map(|(caller, _)| caller)
            .map_err(|error| {
                ::metrics::counter!("weir_api_auth_failures_total").increment(1);
                let status = match error {
                    super::session::SessionError::Csrf => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNAUTHORIZED,
                };
                ApiError::new(status, error.to_string())
            });
    }
    service.tokens().authenticate(header).map_err(|error| {
        ::metrics::counter!("weir_api_auth_failures_total").increment(1);
        ApiError::new(StatusCode::UNAUTHORIZED, error.to_string())
    })
}

/// The request's dashboard session cookie, if any.
///
/// # Errors
/// More than one: a cookie planted by a sibling site beside the real one
/// must not choose the session.
fn session_cookie(parts: &Parts) -> ApiResult<Option<&str>> {
    let cookies = super::session::session_cookies(
        parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    match cookies.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "more than one weir session cookie: log out, clear this site's cookies and log in again",
        )),
    }
}

/// Whether the request's `Origin` header (sent by browsers with every
/// cross-origin and every changing request) names another host than the
/// one the request was sent to: its `Host` header or, behind a reverse
/// proxy that rewrites `Host`, the proxy's `X-Forwarded-Host` (a page of
/// another site cannot set that header without a CORS preflight, which
/// this API never grants). A request without `Origin` (curl, the SDKs,
/// servers) is not cross-origin; `Origin: null` is.
fn cross_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("\u{0}");
    let named = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|host| origin_host.eq_ignore_ascii_case(host.trim()))
    };
    !(named(header::HOST.as_str()) || named("x-forwarded-host"))
}

/// The refusal of a changing request from a page of another site.
fn cross_origin_refused() -> ApiError {
    ::metrics::counter!("weir_api_auth_failures_total").increment(1);
    ApiError::new(
        StatusCode::FORBIDDEN,
        "cross-origin request refused: the Origin header names another site than this service",
    )
}

/// Whether the request came through HTTPS (a TLS-terminating proxy in
/// front of `weir serve` says so in `X-Forwarded-Proto`): the session
/// cookie is then `Secure`.
fn via_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The answer of `POST` and `GET /v1/session`: who, the CSRF token
/// (none without tokens) and whether the service has tokens. Never cached.
fn session_answer(caller: &Caller, csrf_token: Option<&str>, auth: bool) -> Response {
    let caller = match caller {
        Caller::Operator => json!({ "role": "operator" }),
        Caller::Tenant { tenant, token_id } => {
            json!({ "role": "tenant", "tenant": tenant, "token_id": token_id })
        }
    };
    let mut response =
        Json(json!({ "caller": caller, "csrf_token": csrf_token, "auth": auth })).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Body of `POST /v1/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    token: String,
}

async fn login(
    State(service): State<Arc<Service>>,
    parts_headers: HeaderMap,
    Json(body): Json<LoginRequest>,
) -> ApiResult<Response> {
    // Login CSRF (a page of another site logging its visitor into the
    // attacker's session) is also stopped by the preflight a JSON body
    // needs; this does not rely on it.
    if cross_origin(&parts_headers) {
        return Err(cross_origin_refused());
    }
    if !service.tokens().enabled() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this service has no tokens: every request is the operator's, no login needed",
        ));
    }
    let login = service
        .sessions()
        .login(service.tokens(), body.token.trim())
        .map_err(|error| {
            ::metrics::counter!("weir_api_auth_failures_total").increment(1);
            let status = match error {
                super::session::LoginError::Full => StatusCode::SERVICE_UNAVAILABLE,
                super::session::LoginError::Token(_) => StatusCode::UNAUTHORIZED,
                super::session::LoginError::Randomness(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError::new(status, error.to_string())
        })?;
    tracing::info!(caller = ?login.caller, "dashboard login");
    let cookie = super::session::set_cookie(&login.cookie, via_https(&parts_headers));
    let mut response = session_answer(&login.caller, Some(&login.csrf_token), true);
    response.headers_mut().insert(
        header::SET_COOKIE,
        header::HeaderValue::from_str(&cookie).expect("hex cookie"),
    );
    Ok(response)
}

async fn get_session(State(service): State<Arc<Service>>, parts: Parts) -> ApiResult<Response> {
    if !service.tokens().enabled() {
        return Ok(session_answer(&Caller::Operator, None, false));
    }
    let cookie = session_cookie(&parts)?.ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "no session: log in with a token")
    })?;
    let (caller, csrf_token) = service
        .sessions()
        .caller(service.tokens(), cookie, None, false)
        .map_err(|error| ApiError::new(StatusCode::UNAUTHORIZED, error.to_string()))?;
    Ok(session_answer(&caller, Some(&csrf_token), true))
}

async fn logout(State(service): State<Arc<Service>>, parts: Parts) -> ApiResult<Response> {
    // The same checks as any change: a page of another site cannot log
    // its visitor out.
    authenticate(&service, &parts)?;
    if let Some(cookie) = session_cookie(&parts)? {
        service.sessions().logout(cookie);
    }
    let mut response = Json(json!({ "logged_out": true })).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        header::HeaderValue::from_str(&super::session::clear_cookie(via_https(&parts.headers)))
            .expect("ascii cookie"),
    );
    Ok(response)
}

fn no_tenant(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no tenant `{name}`"))
}

/// A request on one tenant's objects, authenticated and authorized: the
/// caller is the operator or that tenant. Another tenant's objects answer
/// 404, exactly as objects that do not exist.
pub struct Scoped {
    service: Arc<Service>,
    tenant: Arc<super::tenant::Tenant>,
    params: Vec<(String, String)>,
}

impl Scoped {
    /// A path parameter ("" when absent).
    fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }

    /// The pipeline named by the `name` path parameter, in this tenant.
    fn pipeline(&self) -> ApiResult<Arc<LivePipeline>> {
        let name = self.param("name");
        self.tenant.pipeline(name).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no pipeline `{name}`; tenant `{}` has: {}",
                    self.tenant.name,
                    self.tenant
                        .pipelines()
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }
}

impl Scoped {
    /// The schedule named by the `schedule` path parameter, in this tenant.
    fn schedule(&self) -> ApiResult<Arc<super::schedules::Scheduled>> {
        let name = self.param("schedule");
        self.tenant.schedules().get(name).cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no schedule `{name}`; tenant `{}` has: {}",
                    self.tenant.name,
                    self.tenant
                        .schedules()
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }
}

impl FromRequestParts<Arc<Service>> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(service, parts)?;
        let params: Vec<(String, String)> =
            match RawPathParams::from_request_parts(parts, service).await {
                Ok(raw) => raw
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                Err(_) => Vec::new(),
            };
        let named = params
            .iter()
            .find(|(k, _)| k == "tenant")
            .map(|(_, v)| v.clone());
        let tenant_name = match (&caller, named) {
            (Caller::Operator, Some(name)) => name,
            (Caller::Tenant { tenant, .. }, Some(name)) if *tenant == name => name,
            (Caller::Tenant { .. }, Some(name)) => return Err(no_tenant(&name)),
            (Caller::Tenant { tenant, .. }, None) => tenant.clone(),
            (Caller::Operator, None) => DEFAULT_TENANT.to_string(),
        };
        let tenant = service.tenant(&tenant_name).cloned().ok_or_else(|| {
            if caller == Caller::Operator && tenant_name == DEFAULT_TENANT {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "no tenant `default`: address one as /v1/tenants/{tenant}/…",
                )
            } else {
                no_tenant(&tenant_name)
            }
        })?;
        Ok(Scoped {
            service: service.clone(),
            tenant,
            params,
        })
    }
}

/// A request only the operator may make (`403` for a tenant token).
pub struct Operator(Arc<Service>);

impl FromRequestParts<Arc<Service>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Self::Rejection> {
        match authenticate(service, parts)? {
            Caller::Operator => Ok(Operator(service.clone())),
            Caller::Tenant { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only the operator token may use this route",
            )),
        }
    }
}

async fn list_tenants(Operator(service): Operator) -> Json<serde_json::Value> {
    let tenants: Vec<_> = service.tenants().values().map(|t| t.status()).collect();
    Json(json!({ "tenants": tenants }))
}

/// Body of `POST /v1/tenants/{tenant}/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    id: String,
}

fn operator_tenant(service: &Service, name: &str) -> ApiResult<Arc<super::tenant::Tenant>> {
    service.tenant(name).cloned().ok_or_else(|| no_tenant(name))
}

async fn list_tokens(
    Operator(service): Operator,
    Path(tenant): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = operator_tenant(&service, &tenant)?;
    Ok(Json(
        json!({ "tokens": service.tokens().list(&tenant.name) }),
    ))
}

async fn issue_token(
    Operator(service): Operator,
    Path(tenant): Path<String>,
    Json(body): Json<NewToken>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = operator_tenant(&service, &tenant)?;
    if !super::config::valid_name(&body.id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "id: 1-64 characters of a-z, 0-9, _ and -",
        ));
    }
    let token = service
        .tokens()
        .issue(&tenant.name, &body.id)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))?;
    tracing::info!(tenant = %tenant.name, id = %body.id, "issued an API token");
    Ok(Json(
        json!({ "tenant": &*tenant.name, "id": body.id, "token": token }),
    ))
}

async fn revoke_token(
    Operator(service): Operator,
    Path((tenant, id)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let tenant = operator_tenant(&service, &tenant)?;
    let revoked = service
        .tokens()
        .revoke(&tenant.name, &id)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    if !revoked {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("tenant `{}` has no token `{id}`", tenant.name),
        ));
    }
    tracing::info!(tenant = %tenant.name, %id, "revoked an API token");
    Ok(Json(
        json!({ "tenant": &*tenant.name, "id": id, "revoked": true }),
    ))
}

/// Longest a plugin upload may take to compile before it is refused.
pub const UPLOAD_COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Where a tenant's uploaded plugin with `sha256` is stored. `sha256` must
/// be 64 lowercase hex characters, so the path never leaves the directory.
fn stored_plugin(tenant: &super::tenant::Tenant, sha256: &str) -> ApiResult<std::path::PathBuf> {
    if !crate::plugin::is_sha256_hex(sha256) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "sha256: 64 lowercase hex characters",
        ));
    }
    Ok(tenant
        .dir
        .join("plugins")
        .join("sha256")
        .join(format!("{sha256}.wasm")))
}

async fn upload_plugin(
    scoped: Scoped,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<serde_json::Value>> {
    let quota = scoped.tenant.quota();
    if let Err(wait) = quota.admit_upload() {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "tenant `{}` is over its quota of {} plugin uploads per minute; retry later",
                scoped.tenant.name, quota.quotas.plugin_uploads_per_minute
            ),
        );
        response
            .message
            .push_str(&format!(" (in {} s)", wait.as_secs_f64().ceil()));
        return Err(response);
    }
    let max = quota.quotas.max_plugin_bytes;
    let buffered = read_body(&scoped, &headers, body, max).await.map_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the plugin is larger than max_plugin_bytes = {max} bytes"),
            )
        } else {
            e.into()
        }
    })?;
    let body = buffered.bytes.clone();
    let sha256 = crate::plugin::sha256_hex(&body);
    let path = stored_plugin(&scoped.tenant, &sha256)?;
    // Compile and check on a blocking thread, within the time limit; only
    // a valid component is stored.
    let bytes = body.clone();
    let name = format!("upload:{}", &sha256[..12]);
    let tenant = scoped.tenant.name.to_string();
    // Compiling is the tenant's work: it holds one of its
    // `max_concurrent_batches` permits until the compile really ends (a
    // compile cannot be interrupted, so one past the time limit still
    // holds it), so parallel uploads cannot take more cores than the
    // tenant's batches may.
    let permit = quota.work_permit().await;
    let compile = tokio::task::spawn_blocking(move || {
        let compiled = crate::plugin::Plugin::from_bytes_scoped(&name, &bytes, None, Some(&tenant))
            .map(|p| (p.kind(), p.imports().to_vec()));
        drop(permit);
        compiled
    });
    let (kind, imports) = match tokio::time::timeout(UPLOAD_COMPILE_TIMEOUT, compile).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the plugin did not compile within {} s; nothing was stored",
                    UPLOAD_COMPILE_TIMEOUT.as_secs()
                ),
            ));
        }
        Ok(joined) => joined
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("rejected, nothing was stored: {e:#}"),
                )
            })?,
    };
    let referenced = referenced_plugins(&scoped.tenant);
    let limit = quota.quotas.max_stored_plugin_bytes;
    let tenant = scoped.tenant.name.to_string();
    let write = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let dir = path.parent().expect("stored under a directory");
            make_room(dir, &path, body.len() as u64, limit, &referenced, &tenant)?;
            super::files::create_private_dir_all(dir)?;
            let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
            super::files::write_private(&tmp, &body)?;
            Ok(std::fs::rename(&tmp, &path)?)
        })
    };
    write
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e.downcast_ref::<StorageFull>() {
            Some(full) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, full.to_string()),
            None => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("storing the plugin: {e:#}"),
            ),
        })?;
    tracing::info!(tenant = %scoped.tenant.name, %sha256, %kind, "stored an uploaded plugin");
    Ok(Json(
        json!({ "sha256": sha256, "kind": kind, "imports": imports, "size_bytes": path.metadata().map(|m| m.len()).unwrap_or(0) }),
    ))
}

/// The SHA-256 of every plugin version a stage of `tenant` serves or
/// holds for rollback: stored uploads that must not be deleted.
fn referenced_plugins(tenant: &super::tenant::Tenant) -> std::collections::HashSet<String> {
    let mut referenced = std::collections::HashSet::new();
    for live in tenant.pipelines().values() {
        for stage in live.pipeline().stages() {
            let status = stage.slot.status();
            referenced.insert(status.current_sha256);
            referenced.extend(status.history);
        }
    }
    referenced
}

/// An upload refused because the tenant's stored plugins would pass
/// `max_stored_plugin_bytes` even after deleting unreferenced ones.
#[derive(Debug, thiserror::Error)]
#[error(
    "storing {new_bytes} more bytes would pass max_stored_plugin_bytes = {limit_bytes} ({stored_bytes} bytes are stored, all of them deployed or kept for rollback); nothing was stored"
)]
struct StorageFull {
    new_bytes: u64,
    stored_bytes: u64,
    limit_bytes: u64,
}

/// Makes room in `dir` (a tenant's stored uploads) for `new_bytes` more
/// under `limit`: deletes stored plugins not in `referenced` (oldest
/// first) while the total would pass the limit. Storing `path` again
/// (the same bytes) needs no room.
///
/// # Errors
/// [`StorageFull`] when even that is not enough; an I/O error.
fn make_room(
    dir: &std::path::Path,
    path: &std::path::Path,
    new_bytes: u64,
    limit: u64,
    referenced: &std::collections::HashSet<String>,
    tenant: &str,
) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut stored: Vec<(
        std::time::SystemTime,
        std::path::PathBuf,
        u64,
        Option<String>,
    )> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file = entry.path();
            let Some(sha256) = file
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".wasm"))
            else {
                continue;
            };
            let metadata = entry.metadata()?;
            stored.push((
                metadata.modified().unwrap_or(std::time::UNIX_EPOCH),
                file.clone(),
                metadata.len(),
                (!referenced.contains(sha256)).then(|| sha256.to_string()),
            ));
        }
    }
    let mut total: u64 = stored.iter().map(|(_, _, len, _)| len).sum();
    stored.sort();
    for (_, file, len, unreferenced) in &stored {
        if total + new_bytes <= limit {
            break;
        }
        if let Some(sha256) = unreferenced {
            std::fs::remove_file(file)?;
            crate::plugin::cache::remove(tenant, sha256);
            total -= len;
            tracing::info!(file = %file.display(), "deleted an unreferenced uploaded plugin (and its compiled artifact) to make room");
        }
    }
    if total + new_bytes > limit {
        return Err(StorageFull {
            new_bytes,
            stored_bytes: total,
            limit_bytes: limit,
        }
        .into());
    }
    Ok(())
}

/// Body of `POST …/stages/{stage}/deploy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deploy {
    sha256: String,
}

async fn deploy_plugin(
    scoped: Scoped,
    Json(body): Json<Deploy>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = scoped.pipeline()?;
    let stage = find_stage(&live, scoped.param("stage"))?;
    if stage.reference.starts_with("builtin:") {
        // As for a reload: a built-in stage is part of the pipeline file.
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "stage `{}` runs built-in {}, which cannot be replaced; change the pipeline file",
                stage.name, stage.reference
            ),
        ));
    }
    let path = stored_plugin(&scoped.tenant, &body.sha256)?;
    if !path.is_file() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no uploaded plugin {}; POST it to …/plugins first",
                body.sha256
            ),
        ));
    }
    swap_in(stage, path).await
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {}; see /openapi.json", uri.path()),
    )
}

async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; see /openapi.json",
            uri.path()
        ),
    )
}

/// Gives every error answer the API's JSON shape, `{"error": "…"}`: the
/// framework's own rejections (a malformed JSON body, a bad query string)
/// come as plain text.
/// Largest answer [`redact_secrets`] reads whole to redact, in bytes
/// (8 MiB); larger ones (none of weir's JSON answers in practice) pass as
/// they are: what they hold from files was redacted when written.
const MAX_REDACTED_BYTES: usize = 8 * 1024 * 1024;

/// Replaces every secret value in a JSON or text answer
/// ([`crate::secrets::redact`]): an error message, a status or a report
/// may quote one.
async fn redact_secrets(response: Response) -> Response {
    if !crate::secrets::any_known() {
        return response;
    }
    let textual = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/"));
    let small = axum::body::HttpBody::size_hint(response.body())
        .upper()
        .is_some_and(|n| n <= MAX_REDACTED_BYTES as u64);
    if !textual || !small {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_REDACTED_BYTES).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be read",
        )
            .into_response();
    };
    let text = String::from_utf8_lossy(&bytes);
    let body = match crate::secrets::redact(&text) {
        std::borrow::Cow::Borrowed(_) => axum::body::Body::from(bytes),
        std::borrow::Cow::Owned(clean) => axum::body::Body::from(clean),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, body)
}

async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let status = response.status();
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_ERROR_MESSAGE_BYTES * 4).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let text = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut answer = ApiError::new(status, text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
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

async fn metrics(operator: Operator) -> ApiResult<Response> {
    let service = operator.0;
    let handle = super::metrics::handle()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "metrics are disabled"))?;
    // Reload counters and health live in the slots; copy them in at scrape time.
    for live in service.all_pipelines() {
        for stage in live.pipeline().stages() {
            let status = stage.slot.status();
            for (outcome, count) in [("ok", status.reloads), ("rejected", status.rejections)] {
                ::metrics::counter!("weir_plugin_reloads_total", "tenant" => live.tenant.to_string(), "pipeline" => live.name.clone(), "stage" => stage.name.to_string(), "outcome" => outcome).absolute(count);
            }
            ::metrics::gauge!("weir_plugin_healthy", "tenant" => live.tenant.to_string(), "pipeline" => live.name.clone(), "stage" => stage.name.to_string()).set(if status.health.healthy { 1.0 } else { 0.0 });
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

async fn list_pipelines(scoped: Scoped) -> Json<serde_json::Value> {
    let pipelines: Vec<_> = scoped
        .tenant
        .pipelines()
        .values()
        .map(|l| l.status())
        .collect();
    Json(json!({ "pipelines": pipelines }))
}

async fn get_pipeline(scoped: Scoped) -> ApiResult<Json<super::live::PipelineStatus>> {
    Ok(Json(scoped.pipeline()?.status()))
}

/// Query of `POST …/records`.
#[derive(Debug, Deserialize)]
struct IngestQuery {
    /// A name for the request in the quarantine's `source_file` column.
    source: Option<String>,
}

/// Longest an over-quota ingest request is held before its `429` answer.
const MAX_THROTTLE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads a request body of at most `max_body_bytes` under the service's
/// and the caller's tenant's buffer budgets ([`super::body`]).
async fn read_body(
    scoped: &Scoped,
    headers: &HeaderMap,
    body: Body,
    max_body_bytes: usize,
) -> Result<super::body::Buffered, super::body::BodyError> {
    let settings = &scoped.service.config.service;
    super::body::read(
        headers,
        body,
        super::body::BodyLimits {
            max_body_bytes,
            service: scoped.service.buffers(),
            tenant: scoped.tenant.quota().buffers(),
            tenant_name: &scoped.tenant.name,
            read_timeout: std::time::Duration::from_millis(settings.body_read_timeout_ms),
        },
    )
    .await
}

async fn ingest(
    scoped: Scoped,
    Query(query): Query<IngestQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let live = scoped.pipeline()?;
    // From here until its records are queued (or it fails), the batcher
    // knows this request is coming.
    let arrival = live.expect_arrival();
    let quota = scoped.tenant.quota();
    if let Err(wait) = quota.admit_request() {
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "tenant `{}` is over its ingest quota of {} requests per second; retry later",
                scoped.tenant.name, quota.quotas.ingest_requests_per_second
            ),
        )
        .into_response();
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        // Answer when the next request would be allowed, so that a client
        // retrying at once in a loop is slowed to the quota instead of
        // turning refusals into a flood of work for the other tenants.
        drop(arrival);
        tokio::time::sleep(wait.min(MAX_THROTTLE_DELAY)).await;
        return Ok(response);
    }
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
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let key = value.to_str().unwrap_or_default().to_string();
            super::delivery::check_key(&key)
                .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, message))?;
            Some(key)
        }
    };
    // The label is in quarantine rows: the same for every retry of a key.
    let label: Arc<str> = Arc::from(
        query
            .source
            .map(|s| format!("http:{s}"))
            .or_else(|| key.as_ref().map(|k| format!("http:key:{k}")))
            .unwrap_or_else(|| format!("http:{}", uuid::Uuid::new_v4().simple())),
    );
    let buffered = read_body(&scoped, &headers, body, quota.quotas.max_body_bytes).await?;
    let origin = key.map(|key| super::delivery::Origin {
        key: format!("http:{key}"),
        body_sha256: crate::plugin::sha256_hex(&buffered.bytes),
    });
    let decoder = live.clone();
    // Decoding is the tenant's work too: it holds one of the tenant's
    // `max_concurrent_batches` permits, so a flood of large bodies occupies
    // no more threads than the tenant's batches may.
    let permit = quota.work_permit().await;
    let items = tokio::task::spawn_blocking(move || {
        let decoded = format.decode(decoder.source(), label, buffered.bytes.clone());
        drop(permit);
        // The body's bytes stay counted until it is decoded.
        drop(buffered);
        decoded
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e:#}")))?;
    let submitted = live.submit_from(items.items, origin, Some(arrival)).await?;
    let mut ack = submitted.ack;
    if !submitted.replayed {
        ack.unknown_fields = items.unknown_fields;
    }
    let mut response = Json(ack).into_response();
    if submitted.replayed {
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED,
            header::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// The request header naming a submission for exactly-once ingest (IETF
/// httpapi draft "The Idempotency-Key HTTP Header Field").
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The answer header saying a repeated key was answered from the record,
/// writing nothing (Stripe's name for it).
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

async fn pause(scoped: Scoped) -> ApiResult<Json<super::live::PipelineStatus>> {
    set_paused(&scoped, true)
}

async fn resume(scoped: Scoped) -> ApiResult<Json<super::live::PipelineStatus>> {
    set_paused(&scoped, false)
}

/// Pauses or resumes pipeline `name`; 409 once it is shutting down.
fn set_paused(scoped: &Scoped, paused: bool) -> ApiResult<Json<super::live::PipelineStatus>> {
    let live = scoped.pipeline()?;
    let changed = if paused { live.pause() } else { live.resume() };
    if !changed {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the pipeline is shutting down",
        ));
    }
    Ok(Json(live.status()))
}

/// The served pipeline's history, one row per interval, newest first.
async fn pipeline_runs(
    scoped: Scoped,
    Query(query): Query<RunsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = scoped.pipeline()?.clone();
    let limit = query.limit.unwrap_or(50).min(1000);
    let runs = tokio::task::spawn_blocking(move || live.history().list(limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    Ok(Json(json!({ "runs": runs })))
}

/// One run (a serve interval) of the served pipeline, with its report.
async fn pipeline_run(scoped: Scoped) -> ApiResult<Json<crate::history::RunRecord>> {
    let live = scoped.pipeline()?.clone();
    let run = scoped.param("run").to_string();
    let found = tokio::task::spawn_blocking(move || live.history().show(&run))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    one_run(found, scoped.param("run"))
}

/// A run looked up by id (or a prefix of at least 4 characters): 404 when
/// none, 400 when the prefix names several.
fn one_run(
    found: anyhow::Result<Option<crate::history::RunRecord>>,
    run: &str,
) -> ApiResult<Json<crate::history::RunRecord>> {
    match found {
        Ok(Some(record)) => Ok(Json(record)),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run `{run}`"),
        )),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{e:#}"))),
    }
}

async fn report(scoped: Scoped) -> ApiResult<Json<serde_json::Value>> {
    let live = scoped.pipeline()?;
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

async fn list_plugins(scoped: Scoped) -> Json<serde_json::Value> {
    let service = &scoped.service;
    let mut plugins = Vec::new();
    for live in scoped.tenant.pipelines().values() {
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

async fn reload_plugin(scoped: Scoped) -> ApiResult<Json<serde_json::Value>> {
    let live = scoped.pipeline()?;
    let stage = find_stage(&live, scoped.param("stage"))?;
    let file = scoped.service.plugin_file(&live, &stage).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "stage `{}` runs built-in {}, which cannot change",
                stage.name, stage.reference
            ),
        )
    })?;
    swap_in(stage, file).await
}

/// Reads the component at `file` and swaps it into `stage` (off the async
/// threads); 422 with the reason when it is rejected.
async fn swap_in(
    stage: Arc<crate::pipeline::Stage>,
    file: std::path::PathBuf,
) -> ApiResult<Json<serde_json::Value>> {
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

async fn rollback_plugin(scoped: Scoped) -> ApiResult<Json<serde_json::Value>> {
    let live = scoped.pipeline()?;
    let stage = find_stage(&live, scoped.param("stage"))?;
    let version = stage
        .slot
        .rollback()
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    Ok(Json(json!({ "sha256": version.plugin.sha256() })))
}

/// Rows listed by default.
const DEFAULT_LIST_LIMIT: usize = 100;

async fn list_quarantine(
    scoped: Scoped,
    Query(filter): Query<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = scoped.pipeline()?;
    let filter = filter.into_filter();
    filter
        .window()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
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
    since: Option<String>,
    until: Option<String>,
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
            since: self.since,
            until: self.until,
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
    scoped: Scoped,
    body: Option<Json<QuarantineFilter>>,
) -> ApiResult<Json<serde_json::Value>> {
    let live = scoped.pipeline()?;
    let filter = body.map(|Json(f)| f).unwrap_or_default();
    filter
        .window()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
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
        let ack = live.submit(items.items).await?;
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

async fn list_schedules(scoped: Scoped) -> Json<serde_json::Value> {
    let schedules: Vec<_> = scoped
        .tenant
        .schedules()
        .values()
        .map(|s| s.status())
        .collect();
    Json(json!({ "schedules": schedules }))
}

async fn get_schedule(scoped: Scoped) -> ApiResult<Json<super::schedules::ScheduledStatus>> {
    Ok(Json(scoped.schedule()?.status()))
}

/// Query of `GET …/schedules/{schedule}/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    /// Newest runs returned. Default 50, at most 1000.
    limit: Option<usize>,
}

async fn schedule_runs(
    scoped: Scoped,
    Query(query): Query<RunsQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let scheduled = scoped.schedule()?;
    let limit = query.limit.unwrap_or(50).min(1000);
    let runs = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        match scheduled.history()? {
            Some(history) => history.list(limit),
            None => Ok(Vec::new()),
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    Ok(Json(json!({ "runs": runs })))
}

/// One run of a schedule's pipeline, with its report.
async fn schedule_run(scoped: Scoped) -> ApiResult<Json<crate::history::RunRecord>> {
    let scheduled = scoped.schedule()?;
    let run = scoped.param("run").to_string();
    let found = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        match scheduled.history()? {
            Some(history) => history.show(&run),
            None => Ok(None),
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    one_run(found, scoped.param("run"))
}

/// Body of `POST …/schedules/{schedule}/backfill`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackfill {
    /// The first partition.
    from: String,
    /// The last partition, included.
    to: String,
    /// Partitions run at once. Default 2, at most 16.
    parallel: Option<usize>,
    /// Only the partitions whose newest run did not succeed.
    #[serde(default)]
    only_failed: bool,
}

async fn start_backfill(scoped: Scoped, Json(request): Json<NewBackfill>) -> ApiResult<Response> {
    let scheduled = scoped.schedule()?;
    let options = crate::backfill::BackfillOptions {
        from: request.from,
        to: request.to,
        parallel: request.parallel.unwrap_or(2).clamp(1, 16),
        only_failed: request.only_failed,
        progress: false,
    };
    let job = tokio::task::spawn_blocking(move || scheduled.start_backfill(options))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| {
            let status = match e {
                super::schedules::StartError::Running => StatusCode::CONFLICT,
                super::schedules::StartError::Invalid(_) => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.to_string())
        })?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "backfill": job }))).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_names_are_localhost_and_addresses_with_or_without_a_port() {
        for host in [
            "localhost",
            "LOCALHOST:7878",
            "127.0.0.1",
            "127.0.0.1:7878",
            "[::1]:7878",
            "[::1]",
        ] {
            assert!(super::loopback_name(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:7878",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1",
        ] {
            assert!(!super::loopback_name(host), "{host}");
        }
    }
}
