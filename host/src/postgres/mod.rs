//! What the PostgreSQL sink ([`crate::sink::postgres`]) and source
//! ([`crate::source::postgres`]) share: where the server is and how to
//! reach it ([`Target`], from a connection string and the standard `PG*`
//! environment variables, never printed with its password), which errors
//! are worth retrying ([`is_transient`], [`Retry`]), how names are quoted,
//! and the binary `COPY` format ([`binary`]).
//!
//! Connections use the `postgres` crate (the synchronous client over
//! `tokio-postgres`) without TLS; put weir and the server on a trusted
//! network or a Unix socket (`host=/run/postgresql`).

pub mod binary;

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Longest wait between two connection attempts (the backoff doubles from
/// [`FIRST_BACKOFF`] up to this).
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// First wait after a failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Default retry budget, in seconds: how long a sink or source keeps
/// retrying a lost connection (a restarting server, a network blip)
/// before the run fails (`retry_budget_s`).
pub const DEFAULT_RETRY_BUDGET_S: u64 = 60;

/// Where a PostgreSQL server is and who weir is there.
#[derive(Clone)]
pub struct Target {
    config: postgres::Config,
    described: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(&self.described)
    }
}

impl Target {
    /// The server described by the `PG*` environment variables (`PGHOST`,
    /// `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`,
    /// `PGCONNECT_TIMEOUT`, as libpq reads them), overridden by what
    /// `connection` sets (a libpq key/value string, `host=… port=… user=…
    /// dbname=…`, or a `postgresql://` URL). The user defaults to `USER`,
    /// the host to `localhost` and the port to 5432.
    ///
    /// # Errors
    /// A connection string that does not parse; the message never repeats
    /// the string, which may hold a password.
    pub fn new(connection: Option<&str>) -> Result<Target> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut config = match connection {
            // The parser's message may quote part of the string (a
            // password with a space in it), so it is not repeated.
            Some(text) if !text.trim().is_empty() => postgres::Config::from_str(text).map_err(|_| {
                anyhow::anyhow!("the connection string does not parse: expected `key=value` pairs (host, port, user, dbname, …; quote values with spaces in single quotes) or a postgresql:// URL; it is not shown because it may hold a password")
            })?,
            _ => postgres::Config::new(),
        };
        if config.get_hosts().is_empty() {
            config.host(&env("PGHOST").unwrap_or_else(|| "localhost".into()));
        }
        if config.get_ports().is_empty()
            && let Some(port) = env("PGPORT")
        {
            config.port(
                port.parse()
                    .with_context(|| format!("PGPORT `{port}` is not a port number"))?,
            );
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".into());
            config.user(&user);
        }
        if config.get_password().is_none()
            && let Some(password) = env("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_dbname().is_none()
            && let Some(dbname) = env("PGDATABASE")
        {
            config.dbname(&dbname);
        }
        if config.get_application_name().is_none() {
            config.application_name(&env("PGAPPNAME").unwrap_or_else(|| "weir".into()));
        }
        // A connection that goes silent (a dropped network, a server
        // host that died) is noticed within about 30 s, not the 2 h of
        // the system's keepalive default, so the retry budget applies.
        config
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        if config.get_connect_timeout().is_none() {
            let seconds = env("PGCONNECT_TIMEOUT")
                .and_then(|s| s.parse().ok())
                .unwrap_or(10);
            config.connect_timeout(Duration::from_secs(seconds));
        }
        let described = describe(&config);
        Ok(Target { config, described })
    }

    /// `postgresql://USER@HOST:PORT/DBNAME`, without the password: what
    /// logs, errors and reports show.
    pub fn describe(&self) -> &str {
        &self.described
    }

    /// Opens one connection.
    ///
    /// # Errors
    /// The server cannot be reached or refuses the login.
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        self.config.connect(postgres::NoTls)
    }
}

fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let dbname = config.get_dbname().unwrap_or(user);
    format!("postgresql://{user}@{host}:{port}/{dbname}")
}

/// Whether `error` is a lost or refused connection, or a conflict, that a
/// new attempt may get past: the socket closed, an I/O error (refused,
/// reset, timed out), the server shutting down or starting up (SQLSTATE
/// class 08, 57P01–57P03), too many connections (53300), a deadlock or
/// serialization failure (40P01, 40001: the transaction is retried whole).
/// A refused password (28P01), a missing password or a bad query is not.
pub fn is_transient(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "53300" | "40P01" | "40001"
                )
        }
        None => {
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                if cause.downcast_ref::<std::io::Error>().is_some() {
                    return true;
                }
                source = cause.source();
            }
            false
        }
    }
}

/// The database's own words for `error`: its message, detail and hint for
/// a server error, else the client's description. Holds no password.
pub fn message(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!("; hint: {hint}"));
            }
            text
        }
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                let cause = cause.to_string();
                if !text.contains(&cause) {
                    text.push_str(&format!(": {cause}"));
                }
                source = cause_of(source);
            }
            text
        }
    }
}

fn cause_of<'a>(
    error: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    error.and_then(std::error::Error::source)
}

/// Whether `error` is about the data of some rows (SQLSTATE class 22, a
/// data exception such as a value out of range or an invalid byte
/// sequence, or class 23, an integrity constraint violation): those rows
/// go to the quarantine and the rest load.
pub fn is_row_error(error: &postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| code.code().starts_with("22") || code.code().starts_with("23"))
}

/// Retrying within a time budget, with exponential backoff from
/// [`FIRST_BACKOFF`] to [`MAX_BACKOFF`].
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// How long to keep trying after the first failure.
    pub budget: Duration,
}

impl Retry {
    /// Runs `attempt` until it succeeds, fails with an error that is not
    /// [`is_transient`], or the budget is spent; `what` names the work in
    /// the log and the final error (with `target`, never a password).
    ///
    /// # Errors
    /// The last error, saying how long weir retried.
    pub fn run<T>(
        &self,
        target: &Target,
        what: &str,
        mut attempt: impl FnMut() -> std::result::Result<T, AttemptError>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt() {
                Ok(value) => return Ok(value),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Transient(e)) => {
                    if started.elapsed() + backoff > self.budget {
                        bail!(
                            "{what} on {}: {e:#}; gave up after {attempts} attempts over {:.1} s (retry_budget_s = {})",
                            target.describe(),
                            started.elapsed().as_secs_f64(),
                            self.budget.as_secs()
                        );
                    }
                    tracing::warn!(
                        "{what} on {}: {e:#}; retrying in {} ms",
                        target.describe(),
                        backoff.as_millis()
                    );
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// How one attempt of a [`Retry`] failed.
#[derive(Debug)]
pub enum AttemptError {
    /// Worth another attempt (a lost connection).
    Transient(anyhow::Error),
    /// Not worth another attempt.
    Fatal(anyhow::Error),
}

impl AttemptError {
    /// Classifies a client error with [`is_transient`], wrapping it with
    /// `context` and the database's [`message`].
    pub fn from_pg(error: postgres::Error, context: &str) -> AttemptError {
        let wrapped = anyhow::anyhow!("{context}: {}", message(&error));
        if is_transient(&error) {
            AttemptError::Transient(wrapped)
        } else {
            AttemptError::Fatal(wrapped)
        }
    }
}

/// `name` as a quoted SQL identifier (`"Name"`, inner quotes doubled):
/// names are matched exactly as written, case included.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table name as written in a pipeline file, `table` or `schema.table`,
/// quoted ([`quote_ident`]) part by part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema, when given.
    pub schema: Option<String>,
    /// The table.
    pub name: String,
}

impl TableName {
    /// Splits `schema.table` at its first dot.
    ///
    /// # Errors
    /// An empty name or part.
    pub fn parse(text: &str) -> Result<TableName> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (Some(schema.to_string()), name.to_string()),
            None => (None, text.to_string()),
        };
        if name.is_empty() || schema.as_deref() == Some("") {
            bail!("`{text}` is not a table name (expected `table` or `schema.table`)");
        }
        Ok(TableName { schema, name })
    }

    /// The quoted, qualified name for SQL.
    pub fn sql(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// A table beside this one (same schema) named `name`.
    pub fn sibling(&self, name: &str) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_never_described() {
        let target = Target::new(Some(
            "host=db.example port=6543 user=loader password=s3cret dbname=dw",
        ))
        .unwrap();
        assert_eq!(target.describe(), "postgresql://loader@db.example:6543/dw");
        assert!(!format!("{target:?}").contains("s3cret"));
        let url = Target::new(Some("postgresql://loader:s3cret@db.example/dw")).unwrap();
        assert!(!url.describe().contains("s3cret"));
        let bad = Target::new(Some("host=x password=s3cret port=notaport"))
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("s3cret"), "{bad}");
    }

    #[test]
    fn names_are_quoted_exactly() {
        assert_eq!(
            TableName::parse("Sales.my\"t").unwrap().sql(),
            "\"Sales\".\"my\"\"t\""
        );
        assert!(TableName::parse(".x").is_err());
    }
}
