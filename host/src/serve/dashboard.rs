//! The operator dashboard: static files (`host/dashboard/`) compiled into
//! the binary with rust-embed and served under `/ui/`. The page talks only
//! to the public API (`/v1/…`), logged in by a browser session
//! ([`super::session`]); these files hold no data and need no login.
//!
//! Every answer carries a Content-Security-Policy that allows scripts,
//! styles and requests from this origin only (no inline script, no other
//! site, no framing), so a quarantined record shown on the page cannot run
//! as code even if the page had a bug that inserted it as HTML.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The dashboard's files, from `host/dashboard/` at build time.
#[derive(rust_embed::RustEmbed)]
#[folder = "dashboard/"]
struct Assets;

/// The Content-Security-Policy of every dashboard answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /` and `GET /ui`: to the dashboard.
pub async fn to_dashboard() -> Redirect {
    Redirect::to("/ui/")
}

/// `GET /ui/`: the page.
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /ui/{file}`: a script, style sheet or picture.
pub async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(file: &str) -> Response {
    let Some(content) = Assets::get(file) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": format!("no dashboard file `{file}`") }).to_string(),
        )
            .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type(file)),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // The files change with the binary: revalidate each load.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        // Borrowed from the binary in release builds: no copy.
        match content.data {
            std::borrow::Cow::Borrowed(bytes) => axum::body::Body::from(bytes),
            std::borrow::Cow::Owned(bytes) => axum::body::Body::from(bytes),
        },
    )
        .into_response()
}

/// The media type of a dashboard file, by its extension.
fn content_type(file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}
