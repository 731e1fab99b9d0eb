//! Browser sessions for the dashboard: a token login that sets a cookie.
//!
//! `POST /v1/session` with `{"token": "weir_…"}` checks the token like a
//! bearer header and answers a session cookie (`weir_session`, 32 random
//! bytes, `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` when the
//! request came through HTTPS) plus a CSRF token. Sessions live in memory
//! (a restart logs everyone out), each under the SHA-256 of its cookie;
//! `GET /v1/session` gives a page its CSRF token again (only same-origin
//! pages can read that answer: the API sends no CORS headers). A request that
//! authenticates by cookie and changes anything (any method but `GET`,
//! `HEAD` and `OPTIONS`) must also send the CSRF token in the
//! `X-CSRF-Token` header (the synchronizer-token pattern of the OWASP CSRF
//! cheat sheet); the cookie alone is refused, so a page on another site
//! that makes the browser send the cookie still cannot act.
//!
//! A session remembers the SHA-256 of the token it was opened with and
//! asks the token store on every request, so revoking the token ends its
//! sessions at once. Sessions end after [`SESSION_IDLE`] without a request
//! and [`SESSION_MAX_AGE`] after login, whichever comes first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::auth::{AuthError, Caller, TokenStore};
use crate::plugin::sha256_hex;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "weir_session";

/// The request header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session ends after this long without a request: 2 hours.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);

/// A session ends this long after its login whatever happens: 12 hours
/// (one shift).
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; a login past it ends the oldest session. Bounds
/// the memory a holder of a valid token can make the service keep by
/// logging in in a loop.
pub const MAX_SESSIONS: usize = 10_000;

/// Why a cookie request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No such session, or it ended.
    #[error("the session has ended; log in again")]
    Ended,
    /// The token the session was opened with is no longer valid.
    #[error("the session's token was revoked; log in again")]
    Revoked,
    /// A changing request without the session's CSRF token.
    #[error(
        "missing or wrong X-CSRF-Token header: a browser session must send the CSRF token it got at login with every change"
    )]
    Csrf,
}

struct Session {
    token_sha256: String,
    csrf_token: String,
    created: Instant,
    last_seen: Instant,
}

/// What a login gives the browser.
#[derive(Debug)]
pub struct Login {
    /// The cookie's value (shown once, kept only hashed).
    pub cookie: String,
    /// The CSRF token to send in [`CSRF_HEADER`].
    pub csrf_token: String,
    /// Who logged in.
    pub caller: Caller,
}

/// Every open session, by SHA-256 of its cookie.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| AuthError::Invalid)?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    /// Opens a session for the holder of `token`.
    ///
    /// # Errors
    /// [`AuthError`]: a malformed, unknown or revoked token.
    pub fn login(&self, tokens: &TokenStore, token: &str) -> Result<Login, AuthError> {
        let caller = tokens.authenticate_token(token)?;
        let cookie = random_hex()?;
        let csrf_token = random_hex()?;
        let now = Instant::now();
        let mut open = self.open.lock().expect("session lock");
        open.retain(|_, s| live(s, now));
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(
            sha256_hex(cookie.as_bytes()),
            Session {
                token_sha256: sha256_hex(token.as_bytes()),
                csrf_token: csrf_token.clone(),
                created: now,
                last_seen: now,
            },
        );
        Ok(Login {
            cookie,
            csrf_token,
            caller,
        })
    }

    /// Who holds session `cookie`, and the session's CSRF token; `csrf` is
    /// the request's [`CSRF_HEADER`], required when `changes` (the method
    /// is not `GET`, `HEAD` or `OPTIONS`).
    ///
    /// # Errors
    /// [`SessionError`]: no such session, ended, revoked token, or a
    /// missing or wrong CSRF token.
    pub fn caller(
        &self,
        tokens: &TokenStore,
        cookie: &str,
        csrf: Option<&str>,
        changes: bool,
    ) -> Result<(Caller, String), SessionError> {
        let now = Instant::now();
        let key = sha256_hex(cookie.as_bytes());
        let token_sha256 = {
            let mut open = self.open.lock().expect("session lock");
            let Some(session) = open.get_mut(&key) else {
                return Err(SessionError::Ended);
            };
            if !live(session, now) {
                open.remove(&key);
                return Err(SessionError::Ended);
            }
            if changes {
                let presented = csrf.unwrap_or_default().as_bytes();
                let equal: bool = presented.ct_eq(session.csrf_token.as_bytes()).into();
                if !equal {
                    return Err(SessionError::Csrf);
                }
            }
            session.last_seen = now;
            (session.token_sha256.clone(), session.csrf_token.clone())
        };
        let (token_sha256, csrf_token) = token_sha256;
        let caller = tokens
            .caller_of(&token_sha256)
            .map_err(|_| SessionError::Revoked)?;
        Ok((caller, csrf_token))
    }

    /// Ends session `cookie`; false when there was none.
    pub fn logout(&self, cookie: &str) -> bool {
        let key = sha256_hex(cookie.as_bytes());
        self.open
            .lock()
            .expect("session lock")
            .remove(&key)
            .is_some()
    }
}

fn live(session: &Session, now: Instant) -> bool {
    now.duration_since(session.last_seen) < SESSION_IDLE
        && now.duration_since(session.created) < SESSION_MAX_AGE
}

/// The value of cookie `name` in a `Cookie` header (RFC 6265 section 5.4:
/// `name=value` pairs separated by `; `).
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value.trim_matches('"'))
    })
}

/// The `Set-Cookie` value opening a session (`secure`: the request came
/// through HTTPS).
pub fn set_cookie(cookie: &str, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_MAX_AGE.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value ending a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let header = "theme=dark; weir_session=abc123; other=\"x\"";
        assert_eq!(cookie_value(header, SESSION_COOKIE), Some("abc123"));
        assert_eq!(cookie_value(header, "missing"), None);
        assert_eq!(cookie_value("weir_session_x=1", SESSION_COOKIE), None);
        assert!(set_cookie("abc", true).contains("HttpOnly; SameSite=Strict"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
    }
}
