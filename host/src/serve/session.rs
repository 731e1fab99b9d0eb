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

use super::auth::{AuthError, Caller, TokenStore, random_hex};
use crate::plugin::sha256_hex;

/// The session cookie's name over plain HTTP.
pub const SESSION_COOKIE: &str = "weir_session";

/// The session cookie's name behind HTTPS: the `__Host-` prefix makes the
/// browser refuse it unless it is `Secure`, has `Path=/` and no `Domain`,
/// so a sibling subdomain cannot plant one (RFC 6265bis, section 4.1.3.2).
pub const SECURE_SESSION_COOKIE: &str = "__Host-weir_session";

/// The request header carrying the CSRF token of a cookie session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A session ends after this long without a request: 2 hours.
pub const SESSION_IDLE: Duration = Duration::from_secs(2 * 3600);

/// A session ends this long after its login whatever happens: 12 hours
/// (one shift).
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; a login past it is refused (`503`) until some
/// end. Bounds the memory of the sessions.
pub const MAX_SESSIONS: usize = 10_000;

/// Sessions one token may hold; a login past it ends that token's oldest
/// session (never another token's), so a holder of a valid token logging
/// in in a loop cannot fill [`MAX_SESSIONS`] and lock the others out.
pub const MAX_SESSIONS_PER_TOKEN: usize = 20;

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The token.
    #[error(transparent)]
    Token(#[from] AuthError),
    /// [`MAX_SESSIONS`] are open.
    #[error("too many open sessions ({MAX_SESSIONS}); try again later")]
    Full,
    /// The OS gave no randomness for the cookie.
    #[error("{0}")]
    Randomness(String),
}

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

impl Sessions {
    /// Opens a session for the holder of `token`.
    ///
    /// # Errors
    /// [`LoginError`]: a malformed, unknown or revoked token, or
    /// [`MAX_SESSIONS`] open.
    pub fn login(&self, tokens: &TokenStore, token: &str) -> Result<Login, LoginError> {
        let caller = tokens.authenticate_token(token)?;
        let random = || random_hex().map_err(|e| LoginError::Randomness(format!("{e:#}")));
        let cookie = random()?;
        let csrf_token = random()?;
        let token_sha256 = sha256_hex(token.as_bytes());
        let now = Instant::now();
        let mut open = self.open.lock().expect("session lock");
        open.retain(|_, s| live(s, now));
        let mut own: Vec<(Instant, String)> = open
            .iter()
            .filter(|(_, s)| s.token_sha256 == token_sha256)
            .map(|(k, s)| (s.created, k.clone()))
            .collect();
        if own.len() >= MAX_SESSIONS_PER_TOKEN {
            own.sort();
            for (_, key) in &own[..=own.len() - MAX_SESSIONS_PER_TOKEN] {
                open.remove(key);
            }
        }
        if open.len() >= MAX_SESSIONS {
            return Err(LoginError::Full);
        }
        open.insert(
            sha256_hex(cookie.as_bytes()),
            Session {
                token_sha256,
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
        let (token_sha256, csrf_token) = {
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

/// Every value of a session cookie (either name) in `Cookie` headers
/// (RFC 6265 section 5.4: `name=value` pairs separated by `; `).
pub fn session_cookies<'a>(headers: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    headers
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == SESSION_COOKIE || key == SECURE_SESSION_COOKIE)
                .then_some(value.trim_matches('"'))
        })
        .collect()
}

fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The `Set-Cookie` value opening a session (`secure`: the request came
/// through HTTPS).
pub fn set_cookie(cookie: &str, secure: bool) -> String {
    format!(
        "{}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        cookie_name(secure),
        SESSION_MAX_AGE.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value ending a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        cookie_name(secure),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let header = "theme=dark; weir_session=abc123; other=\"x\"";
        assert_eq!(session_cookies([header].into_iter()), vec!["abc123"]);
        assert!(session_cookies(["weir_session_x=1"].into_iter()).is_empty());
        assert_eq!(
            session_cookies(["weir_session=a", "__Host-weir_session=b"].into_iter()),
            vec!["a", "b"]
        );
        assert!(
            set_cookie("abc", true)
                .starts_with("__Host-weir_session=abc; Path=/; HttpOnly; SameSite=Strict")
        );
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
    }

    #[test]
    fn a_token_logging_in_in_a_loop_ends_only_its_own_oldest_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let (a, a_hash) = super::super::auth::new_token().unwrap();
        let (b, b_hash) = super::super::auth::new_token().unwrap();
        let config: super::super::config::ServiceConfig = toml::from_str(&format!(
            "[service]\noperator_token_sha256 = \"{a_hash}\"\n\n[[tenants]]\nname = \"t\"\ndir = \"t\"\ntokens = [{{ id = \"t-ui\", sha256 = \"{b_hash}\" }}]\n"
        ))
        .unwrap();
        let tokens = TokenStore::load(&config, dir.path()).unwrap();
        let sessions = Sessions::default();
        let first = sessions.login(&tokens, &a).unwrap();
        let logins: Vec<Login> = (0..MAX_SESSIONS_PER_TOKEN + 5)
            .map(|_| sessions.login(&tokens, &b).unwrap())
            .collect();
        assert!(
            sessions.caller(&tokens, &first.cookie, None, false).is_ok(),
            "another token's session stays"
        );
        assert_eq!(
            sessions.caller(&tokens, &logins[0].cookie, None, false),
            Err(SessionError::Ended),
            "the oldest of its own ended"
        );
        let newest = logins.last().unwrap();
        assert!(
            sessions
                .caller(&tokens, &newest.cookie, None, false)
                .is_ok()
        );
        assert_eq!(
            sessions.caller(&tokens, &newest.cookie, Some("wrong"), true),
            Err(SessionError::Csrf)
        );
        assert!(
            sessions
                .caller(&tokens, &newest.cookie, Some(&newest.csrf_token), true)
                .is_ok()
        );
        assert!(sessions.logout(&newest.cookie));
        assert_eq!(
            sessions.caller(&tokens, &newest.cookie, None, false),
            Err(SessionError::Ended)
        );
    }
}
