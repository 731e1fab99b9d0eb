//! API tokens: who is calling.
//!
//! A token is `weir_` followed by 64 hex characters (32 random bytes from
//! the OS). Only its SHA-256 is stored: in the service file (tenant tokens
//! and the operator token) or, for tokens issued through the API, in
//! `STATE_DIR/tokens.json`. A presented token is hashed and compared with
//! every stored hash in constant time (`subtle`), so the comparison leaks
//! neither which hash matched nor how many leading bytes did. Revoked ids
//! are kept in the same state file and refused from then on.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::config::{OPERATOR_TOKEN_ID, ServiceConfig};
use crate::plugin::sha256_hex;

/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "weir_";

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The operator: every tenant, every route.
    Operator,
    /// One tenant, through token `token_id`.
    Tenant {
        /// The tenant's name.
        tenant: String,
        /// The token's id.
        token_id: String,
    },
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing token: send `Authorization: Bearer weir_…`")]
    Missing,
    /// Not `Bearer weir_` + 64 hex characters.
    #[error(
        "malformed token: expected `Authorization: Bearer weir_` followed by 64 hex characters"
    )]
    Malformed,
    /// Well-formed but unknown or revoked.
    #[error("invalid token: unknown or revoked")]
    Invalid,
}

/// A fresh random token and its SHA-256 (what the service file stores).
///
/// # Errors
/// When the OS has no randomness to give.
pub fn new_token() -> Result<(String, String)> {
    let token = format!("{TOKEN_PREFIX}{}", random_hex()?);
    let hash = sha256_hex(token.as_bytes());
    Ok((token, hash))
}

/// 32 random bytes from the OS as 64 lowercase hex characters: the secret
/// part of a token, a session cookie or a CSRF token.
///
/// # Errors
/// When the OS has no randomness to give.
pub fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(bytes))
}

fn well_formed(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A stored token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredToken {
    /// Its id.
    pub id: String,
    /// Its tenant; `None` for the operator.
    pub tenant: Option<String>,
    /// SHA-256 of its text, lowercase hex.
    pub sha256: String,
    /// Where it comes from: `config` or `api`.
    pub origin: String,
}

/// What `tokens.json` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    issued: Vec<StoredToken>,
    /// Token ids revoked by weir before 2026-12 (which revoked every token
    /// of that id); read once and turned into `revoked_sha256`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    revoked: Vec<String>,
    /// SHA-256 of each revoked token: a revocation names one token.
    #[serde(default)]
    revoked_sha256: Vec<String>,
}

/// Every token the service accepts, and the revoked ids.
#[derive(Debug)]
pub struct TokenStore {
    enabled: bool,
    configured: Vec<StoredToken>,
    state: Mutex<StateFile>,
    state_file: PathBuf,
}

impl TokenStore {
    /// The tokens of `config`, plus those issued and revoked through the
    /// API, kept in `state_dir/tokens.json`.
    ///
    /// # Errors
    /// An unreadable or malformed `tokens.json`.
    pub fn load(config: &ServiceConfig, state_dir: &Path) -> Result<TokenStore> {
        let mut configured = Vec::new();
        if let Some(hash) = &config.service.operator_token_sha256 {
            configured.push(StoredToken {
                id: OPERATOR_TOKEN_ID.into(),
                tenant: None,
                sha256: hash.clone(),
                origin: "config".into(),
            });
        }
        for tenant in &config.tenants {
            for token in &tenant.tokens {
                configured.push(StoredToken {
                    id: token.id.clone(),
                    tenant: Some(tenant.name.clone()),
                    sha256: token.sha256.clone(),
                    origin: "config".into(),
                });
            }
        }
        let state_file = state_dir.join("tokens.json");
        let state = match std::fs::read_to_string(&state_file) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a token file", state_file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", state_file.display())),
        };
        let mut state: StateFile = state;
        // An old revocation by id: it meant the tenant tokens of that id,
        // never the operator token.
        for id in std::mem::take(&mut state.revoked) {
            for token in configured.iter().chain(&state.issued) {
                if token.id == id && token.tenant.is_some() {
                    state.revoked_sha256.push(token.sha256.clone());
                }
            }
        }
        Ok(TokenStore {
            enabled: config.auth_enabled(),
            configured,
            state: Mutex::new(state),
            state_file,
        })
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who sent `authorization` (the header's value, if any). Without
    /// tokens configured, everyone is the operator.
    ///
    /// # Errors
    /// [`AuthError`]: missing, malformed, unknown or revoked.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        if !self.enabled {
            return Ok(Caller::Operator);
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header)?;
        self.caller_of(&sha256_hex(token.as_bytes()))
    }

    /// Who holds `token` (a token's text, as a browser logs in with it).
    ///
    /// # Errors
    /// [`AuthError`]: malformed, unknown or revoked.
    pub fn authenticate_token(&self, token: &str) -> Result<Caller, AuthError> {
        if !well_formed(token) {
            return Err(AuthError::Malformed);
        }
        self.caller_of(&sha256_hex(token.as_bytes()))
    }
}

/// The token of an `Authorization: Bearer …` header value.
fn bearer_token(header: &str) -> Result<&str, AuthError> {
    // The scheme is case-insensitive (RFC 9110, section 11.1).
    let token = match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(AuthError::Malformed),
    };
    if !well_formed(token) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

impl TokenStore {
    /// Who holds the token whose SHA-256 is `presented` (lowercase hex),
    /// checked again on every request of a browser session, so that
    /// revoking the token ends the sessions it opened. Without tokens
    /// configured, everyone is the operator.
    ///
    /// # Errors
    /// [`AuthError::Invalid`]: unknown or revoked.
    pub fn caller_of(&self, presented: &str) -> Result<Caller, AuthError> {
        if !self.enabled {
            return Ok(Caller::Operator);
        }
        let state = self.state.lock().expect("token lock");
        // Compare with every hash, without stopping at a match.
        let mut found: Option<&StoredToken> = None;
        for stored in self.configured.iter().chain(&state.issued) {
            let equal: bool = presented.as_bytes().ct_eq(stored.sha256.as_bytes()).into();
            if equal {
                found = Some(stored);
            }
        }
        let stored = found.ok_or(AuthError::Invalid)?;
        if state.revoked_sha256.contains(&stored.sha256) {
            return Err(AuthError::Invalid);
        }
        Ok(match &stored.tenant {
            None => Caller::Operator,
            Some(tenant) => Caller::Tenant {
                tenant: tenant.clone(),
                token_id: stored.id.clone(),
            },
        })
    }

    /// Issues a new token for `tenant` named `id`; returns its text (shown
    /// once, never stored).
    ///
    /// The id of a revoked token issued through the API may be reused;
    /// the revoked token stays revoked.
    ///
    /// # Errors
    /// An id in use (by a live token, a token of the service file, or the
    /// operator's), or a state file that cannot be written.
    pub fn issue(&self, tenant: &str, id: &str) -> Result<String> {
        let mut state = self.state.lock().expect("token lock");
        if id == OPERATOR_TOKEN_ID || self.configured.iter().any(|t| t.id == id) {
            anyhow::bail!("a token named `{id}` exists; choose another id");
        }
        let revoked = &state.revoked_sha256;
        if state
            .issued
            .iter()
            .any(|t| t.id == id && !revoked.contains(&t.sha256))
        {
            anyhow::bail!("a token named `{id}` exists; choose another id");
        }
        let revoked = state.revoked_sha256.clone();
        state
            .issued
            .retain(|t| t.id != id || !revoked.contains(&t.sha256));
        let (token, sha256) = new_token()?;
        state.issued.push(StoredToken {
            id: id.to_string(),
            tenant: Some(tenant.to_string()),
            sha256,
            origin: "api".into(),
        });
        self.save(&state)?;
        Ok(token)
    }

    /// Revokes token `id` of `tenant`; returns false when it has no such
    /// token.
    ///
    /// # Errors
    /// A state file that cannot be written.
    pub fn revoke(&self, tenant: &str, id: &str) -> Result<bool> {
        let mut state = self.state.lock().expect("token lock");
        // Ids are unique, so this is one token; the operator's has no
        // tenant and can never match.
        let Some(sha256) = self
            .configured
            .iter()
            .chain(&state.issued)
            .find(|t| t.id == id && t.tenant.as_deref() == Some(tenant))
            .map(|t| t.sha256.clone())
        else {
            return Ok(false);
        };
        if !state.revoked_sha256.contains(&sha256) {
            state.revoked_sha256.push(sha256);
            self.save(&state)?;
        }
        Ok(true)
    }

    /// The tokens of `tenant` (ids and origins, never hashes) with whether
    /// each is revoked.
    pub fn list(&self, tenant: &str) -> Vec<serde_json::Value> {
        let state = self.state.lock().expect("token lock");
        self.configured
            .iter()
            .chain(&state.issued)
            .filter(|t| t.tenant.as_deref() == Some(tenant))
            .map(|t| {
                serde_json::json!({
                    "id": t.id,
                    "origin": t.origin,
                    "revoked": state.revoked_sha256.contains(&t.sha256),
                })
            })
            .collect()
    }

    fn save(&self, state: &StateFile) -> Result<()> {
        let text = serde_json::to_string_pretty(state)?;
        let tmp = self.state_file.with_extension("json.tmp");
        super::files::write_private(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &self.state_file)
            .with_context(|| format!("writing {}", self.state_file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_hashed() {
        let (a, hash_a) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert!(well_formed(&a));
        assert_eq!(hash_a, sha256_hex(a.as_bytes()));
        assert!(!well_formed("weir_abc"));
        assert!(!well_formed(&a.replace("weir_", "wier_")));
    }
}
