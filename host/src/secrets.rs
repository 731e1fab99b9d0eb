//! Secrets: credentials a pipeline uses without its file, or its plugin's,
//! holding them.
//!
//! A pipeline names its secrets and where their values live, then refers
//! to them as `${secret:NAME}` in a plugin's `config` strings or in the
//! headers the host adds to an extract plugin's outbound requests:
//!
//! ```toml
//! [secrets]
//! partner_token = "env:PARTNER_TOKEN"          # an environment variable
//! salt = "file:/etc/weir/secrets/salt"          # a file only weir's user can read
//!
//! [source.extract.capabilities.http]
//! allow_hosts = ["api.partner.example"]
//! headers."api.partner.example" = { Authorization = "Bearer ${secret:partner_token}" }
//! ```
//!
//! A `file:` secret is the file's content without its trailing newline;
//! its path is relative to the pipeline file; on Unix the file must not be
//! readable or writable by its group or others (mode `0600` or `0400`), as
//! for an SSH key. In `weir serve`, a tenant's secrets are declared by the
//! operator in the tenant's `[[tenants]]` table of the service file
//! (`secrets = { partner_token = "env:ACME_PARTNER_TOKEN" }`); a tenant's
//! own pipeline files may not declare any, so a tenant can reach only the
//! values the operator gave it.
//!
//! **Redaction.** Every value resolved in the process is remembered, and
//! [`redact`] replaces it with `[secret:NAME]` wherever weir writes text a
//! person or another system reads: the log, error messages and run
//! reports, the run history, the quarantine (messages and records), a
//! plugin's stderr, OpenLineage events and the API's answers. Values
//! shorter than [`MIN_SECRET_BYTES`] are refused: redacting them would
//! blank out ordinary text.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Shortest secret value accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 8;

/// The values of a pipeline's secrets, by name; `Debug` shows the names
/// only.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, Arc<str>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

/// One secret that could not be resolved: its name and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretError {
    /// The secret's name.
    pub name: String,
    /// What is wrong, never the value.
    pub message: String,
}

impl Secrets {
    /// Reads each of `sources` (name → `env:VAR` or `file:PATH`, a
    /// relative path taken from `base_dir`) and remembers the values for
    /// [`redact`].
    ///
    /// # Errors
    /// Every secret that is unset, unreadable, too short, or whose file
    /// others may read, with its name.
    pub fn resolve(
        sources: &BTreeMap<String, String>,
        base_dir: &Path,
    ) -> Result<Secrets, Vec<SecretError>> {
        let mut values = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, source) in sources {
            match read(source, base_dir) {
                Ok(value) if value.len() < MIN_SECRET_BYTES => errors.push(SecretError {
                    name: name.clone(),
                    message: format!(
                        "its value is shorter than {MIN_SECRET_BYTES} bytes: too short to be a credential, and to redact from logs without blanking ordinary text"
                    ),
                }),
                Ok(value) => {
                    remember(name, &value);
                    values.insert(name.clone(), Arc::from(value));
                }
                Err(message) => errors.push(SecretError {
                    name: name.clone(),
                    message,
                }),
            }
        }
        match errors.is_empty() {
            true => Ok(Secrets { values }),
            false => Err(errors),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every `${secret:NAME}` replaced by its value.
    ///
    /// # Errors
    /// A reference to a secret that is not declared, or a `${secret:`
    /// without its `}`.
    pub fn fill(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(SECRET_OPEN) {
            out.push_str(&rest[..at]);
            let body = &rest[at + SECRET_OPEN.len()..];
            let close = body
                .find('}')
                .ok_or_else(|| format!("`{SECRET_OPEN}` is not closed by `}}`"))?;
            let name = &body[..close];
            let value = self.values.get(name).ok_or_else(|| undeclared(name))?;
            out.push_str(value);
            rest = &body[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `value` with [`Secrets::fill`] applied to every string in it.
    ///
    /// # Errors
    /// As [`Secrets::fill`].
    pub fn fill_json(&self, value: &mut serde_json::Value) -> Result<(), String> {
        match value {
            serde_json::Value::String(text) if text.contains(SECRET_OPEN) => {
                *text = self.fill(text)?;
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.fill_json(item)?;
                }
            }
            serde_json::Value::Object(map) => {
                for item in map.values_mut() {
                    self.fill_json(item)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// How a reference to a secret opens.
pub const SECRET_OPEN: &str = "${secret:";

fn undeclared(name: &str) -> String {
    format!(
        "`${{secret:{name}}}` names no secret of this pipeline: declare it in [secrets] (e.g. {name} = \"env:VARIABLE\"), or in weir serve in the tenant's `secrets` of the service file"
    )
}

/// The names of the secrets `text` refers to; an unclosed reference is
/// named as written.
pub fn references(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(SECRET_OPEN) {
        let body = &rest[at + SECRET_OPEN.len()..];
        let close = body.find('}').unwrap_or(body.len());
        names.push(body[..close].to_string());
        rest = &body[close.min(body.len())..];
    }
    names
}

/// Checks a secret's source without reading it: `env:VAR` or
/// `file:PATH`.
///
/// # Errors
/// Any other form, or an empty variable or path.
pub fn check_source(source: &str) -> Result<(), String> {
    match source.split_once(':') {
        Some(("env" | "file", rest)) if !rest.trim().is_empty() => Ok(()),
        _ => Err(format!(
            "`{source}` is not a secret's source: write \"env:VARIABLE\" or \"file:PATH\" (a file only weir's user can read)"
        )),
    }
}

fn read(source: &str, base_dir: &Path) -> Result<String, String> {
    check_source(source)?;
    let (kind, rest) = source.split_once(':').expect("checked");
    if kind == "env" {
        return std::env::var(rest).map_err(|e| match e {
            std::env::VarError::NotPresent => {
                format!("the environment variable {rest} is not set")
            }
            std::env::VarError::NotUnicode(_) => {
                format!("the environment variable {rest} is not UTF-8")
            }
        });
    }
    let path = base_dir.join(rest);
    let metadata = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} has mode {mode:04o}: others may read or change it; make it readable by weir's user only (chmod 600)",
                path.display()
            ));
        }
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Every secret value resolved in this process, longest first, with the
/// name it is redacted as.
static KNOWN: RwLock<Vec<(String, String)>> = RwLock::new(Vec::new());

fn remember(name: &str, value: &str) {
    let mut known = KNOWN.write().unwrap_or_else(|p| p.into_inner());
    // The value as written, and as JSON writes it inside a string (a `"`,
    // `\` or control character escaped), so that JSON text is redacted too.
    let quoted = serde_json::to_string(value).unwrap_or_default();
    let escaped = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(value)
        .to_string();
    for form in [value.to_string(), escaped] {
        if !known.iter().any(|(v, _)| *v == form) {
            known.push((form, format!("[secret:{name}]")));
        }
    }
    // Longest first, so a value containing another is replaced whole.
    known.sort_by_key(|(value, _)| std::cmp::Reverse(value.len()));
}

/// `text` with every secret value resolved in this process replaced by
/// `[secret:NAME]`; borrowed when it holds none (the common case costs one
/// substring search per secret).
pub fn redact(text: &str) -> Cow<'_, str> {
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    if known.is_empty() || !known.iter().any(|(value, _)| text.contains(value.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for (value, mask) in known.iter() {
        if out.contains(value.as_str()) {
            out = out.replace(value.as_str(), mask);
        }
    }
    Cow::Owned(out)
}

/// [`redact`] for the tail of a longer text (a plugin's stderr, kept from
/// its last bytes): a start that is the end of a secret (at least 4 bytes
/// of it), cut by the tail, is redacted too.
pub fn redact_tail(text: &str) -> Cow<'_, str> {
    let redacted = redact(text);
    let known = KNOWN.read().unwrap_or_else(|p| p.into_inner());
    let cut = known.iter().find_map(|(value, mask)| {
        (4..value.len())
            .rev()
            .filter(|&n| value.is_char_boundary(value.len() - n))
            .find(|&n| redacted.starts_with(&value[value.len() - n..]))
            .map(|n| (n, mask))
    });
    match cut {
        Some((n, mask)) => Cow::Owned(format!("{mask}{}", &redacted[n..])),
        None => redacted,
    }
}

/// Whether any secret has been resolved in this process (when none has,
/// [`redact`] is the identity and callers may skip copying).
pub fn any_known() -> bool {
    !KNOWN.read().unwrap_or_else(|p| p.into_inner()).is_empty()
}

/// A `tracing` writer to stderr that redacts each event
/// ([`redact`]) before it is written: an error logged with a secret in it
/// reaches the log without it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingStderr;

/// One event's text, written (redacted) to stderr when dropped.
#[derive(Debug, Default)]
pub struct RedactedEvent(Vec<u8>);

impl std::io::Write for RedactedEvent {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedEvent {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), redact(&text).as_bytes());
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactedEvent;

    fn make_writer(&'a self) -> Self::Writer {
        RedactedEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_fill_and_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("salt");
        std::fs::write(&file, "pepper-and-salt-0001\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let sources = BTreeMap::from([("salt".to_string(), "file:salt".to_string())]);
            let errors = Secrets::resolve(&sources, dir.path()).unwrap_err();
            assert!(errors[0].message.contains("mode 0644"), "{errors:?}");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // SAFETY: no other test reads this variable.
        unsafe { std::env::set_var("WEIR_TEST_SECRET_TOKEN", "tok-123456789") };
        let sources = BTreeMap::from([
            ("salt".to_string(), "file:salt".to_string()),
            (
                "token".to_string(),
                "env:WEIR_TEST_SECRET_TOKEN".to_string(),
            ),
        ]);
        let secrets = Secrets::resolve(&sources, dir.path()).unwrap();
        assert_eq!(format!("{secrets:?}"), r#"{"salt", "token"}"#);
        assert_eq!(
            secrets.fill("Bearer ${secret:token}").unwrap(),
            "Bearer tok-123456789"
        );
        assert!(secrets.fill("${secret:nope}").unwrap_err().contains("nope"));
        let mut json = serde_json::json!({ "a": ["x ${secret:salt}"], "b": 1 });
        secrets.fill_json(&mut json).unwrap();
        assert_eq!(json["a"][0], "x pepper-and-salt-0001");
        assert_eq!(
            redact("sent tok-123456789 and pepper-and-salt-0001"),
            "sent [secret:token] and [secret:salt]"
        );
        assert!(matches!(redact("nothing here"), Cow::Borrowed(_)));
        // A tail that starts inside a secret.
        assert_eq!(redact_tail("3456789 was sent"), "[secret:token] was sent");
        assert_eq!(redact_tail("789 was sent"), "789 was sent");

        let short = BTreeMap::from([("pin".to_string(), "env:WEIR_TEST_SHORT".to_string())]);
        unsafe { std::env::set_var("WEIR_TEST_SHORT", "1234") };
        assert!(
            Secrets::resolve(&short, dir.path()).unwrap_err()[0]
                .message
                .contains("shorter")
        );
        let unset = BTreeMap::from([("x".to_string(), "env:WEIR_TEST_UNSET_X".to_string())]);
        assert!(
            Secrets::resolve(&unset, dir.path()).unwrap_err()[0]
                .message
                .contains("not set")
        );
        assert!(check_source("vault:x").is_err());
        assert_eq!(references("a ${secret:x} b ${secret:y}"), ["x", "y"]);
    }
}
