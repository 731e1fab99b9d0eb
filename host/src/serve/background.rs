//! A service running on its own tokio runtime, for embedding `weir serve`
//! in a program (tests, benchmarks) that is not async itself.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Service;

/// A [`Service`] serving on a loopback port from a runtime of its own;
/// [`Background::shutdown`] drains it.
pub struct Background {
    service: Arc<Service>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    runtime: tokio::runtime::Runtime,
}

impl Background {
    /// Loads `service_file` and serves it on `127.0.0.1` with a free port,
    /// returning once it is ready (at most 10 s).
    ///
    /// # Errors
    /// As [`Service::load`], or when the service does not get ready.
    pub fn start(service_file: &Path) -> Result<Background> {
        let service = Arc::new(Service::load(service_file)?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(service.clone().run(listener, async {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !service.is_ready() {
            anyhow::ensure!(Instant::now() < deadline, "the service did not get ready");
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Background {
            service,
            url,
            stop: Some(stop),
            task: Some(task),
            runtime,
        })
    }

    /// The service.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The runtime it runs on (to drive a router or client from outside).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Shuts the service down and waits for the drain.
    ///
    /// # Errors
    /// As [`Service::run`].
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("taken only here");
        self.runtime
            .block_on(task)
            .context("the service panicked")?
    }
}
