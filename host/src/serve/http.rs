//! The HTTP/1.1 server loop: accepts connections under a cap and serves
//! each with hyper under read timeouts.
//!
//! `axum::serve` has no connection cap and no header-read timeout, so a
//! client could hold any number of half-sent requests or idle keep-alive
//! connections open without a token. Here:
//!
//! - at most `[service] max_connections` connections are open at once
//!   (default 1,024); further ones wait in the kernel's listen backlog
//!   until one closes;
//! - a request's headers must arrive within `header_read_timeout_ms`
//!   (default 10 s), and since hyper starts that clock whenever it waits
//!   for the next request's head, the same bound closes idle keep-alive
//!   connections;
//! - a request's body must arrive within `body_read_timeout_ms`
//!   ([`super::body`], `408`).
//!
//! On shutdown the loop stops accepting, asks every connection to finish
//! its request in flight and close, and waits for them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use axum::extract::Request;
use hyper::body::Incoming;
use tower::ServiceExt;

use super::config::ServiceSettings;
use super::connections::Connections;

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves `router` on `listener` until `stop` turns true, then drains the
/// open connections.
///
/// # Errors
/// None today: accept errors (such as running out of file descriptors)
/// are logged and retried after a pause.
/// `counts` follows the open connections and the requests being served
/// ([`super::connections`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &ServiceSettings,
    counts: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(settings.header_read_timeout_ms))
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stopped(&mut stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = counts.opened();
        let service = TowerToHyperService::new(tower::service_fn({
            let router = router.clone();
            let counts = counts.clone();
            move |request: Request<Incoming>| {
                let serving = counts.serving();
                let response = router.clone().oneshot(request);
                async move {
                    let response = response.await;
                    drop(serving);
                    response
                }
            }
        }));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
