//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into
//! a temporary directory, `pg_ctl start` on a free port of 127.0.0.1 with
//! password (SCRAM) authentication, `pg_ctl stop -m immediate` when
//! dropped. Run as root (PostgreSQL refuses to), the server runs as the
//! `postgres` user through `runuser`. The binaries come from
//! `WEIR_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` (Debian),
//! else `PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The superuser's name in the test clusters.
pub const USER: &str = "weir";

/// The superuser's password in the test clusters.
pub const PASSWORD: &str = "weir-test-secret";

/// A running throwaway server.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WEIR_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_default()
}

impl PgServer {
    /// Creates and starts a cluster (about 1–2 s).
    ///
    /// # Panics
    /// When PostgreSQL is not installed (`scripts/install-system-packages`
    /// installs it) or does not start, with its log.
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("weir-pg-")
            .tempdir()
            .unwrap();
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster directory failed");
        }
        let server = PgServer {
            dir,
            bin,
            port: crate::free_port(),
            as_postgres,
        };
        let pwfile = server.dir.path().join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if as_postgres {
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&pwfile)
                .status()
                .unwrap();
        }
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(server.data())
            .args(["-U", USER, "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run initdb from {} ({e}): install PostgreSQL (scripts/install-system-packages) or set WEIR_PG_BIN",
                    server.bin.display()
                )
            });
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        server.start_again();
        server
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The cluster's directory (its data, socket and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server (again, after [`PgServer::stop_immediately`]).
    ///
    /// # Panics
    /// When it does not start, with its log.
    pub fn start_again(&self) {
        let log = self.dir.path().join("server.log");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_wal_size=4GB",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate`: the server dies as in a crash; open
    /// transactions are lost, committed ones survive.
    pub fn stop_immediately(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// A libpq connection string for database `postgres` as [`USER`],
    /// with the password.
    pub fn connection(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=postgres",
            self.port
        )
    }

    /// The connection string without the password (give it as
    /// `PGPASSWORD`).
    pub fn connection_without_password(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname=postgres",
            self.port
        )
    }

    /// A connected client.
    ///
    /// # Panics
    /// When the server does not answer.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.connection(), postgres::NoTls).unwrap()
    }

    /// The `psql` of the same installation, with the connection set in
    /// its environment.
    pub fn psql(&self) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", USER)
            .env("PGPASSWORD", PASSWORD)
            .env("PGDATABASE", "postgres");
        command
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}
