//! How a call to Airlock can fail, as kinds a command can act on (retry, say "log in
//! again", pick an exit code), and the text a person reads for each.

use std::fmt;

use reqwest::StatusCode;

use crate::wire::ErrorBody;

/// Why a call to Airlock did not give what was asked.
#[derive(Debug)]
pub enum ClientError {
    /// No answer: connection refused or reset, DNS, TLS, timeout. Worth retrying.
    Unreachable {
        /// The server's base URL.
        server: String,
        /// The transport's reason.
        reason: String,
    },
    /// A `/v1` resource answered with an error.
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The stable code (`unauthenticated`, `totp_invalid`, `conflict`, ...); empty
        /// when the body was not Airlock's.
        code: String,
        /// The server's message for the person.
        message: String,
    },
    /// A token endpoint refused (RFC 6749 section 5.2).
    OAuth {
        /// HTTP status.
        status: StatusCode,
        /// The OAuth error code.
        error: String,
        /// Its description.
        description: String,
    },
    /// The stored session could not be refreshed (the server refused its refresh token):
    /// the person must log in again.
    SessionEnded {
        /// HTTP status of the refusal.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The answer made no sense (not Airlock's JSON).
    Protocol(String),
    /// Something on this side: no session, a session file refused, the lock, a prompt.
    Local(anyhow::Error),
}

impl ClientError {
    /// Whether trying again later may succeed: no answer, a 5xx or a 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } | ClientError::OAuth { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// Process exit code: 69 (EX_UNAVAILABLE) when Airlock was unreachable or
    /// unavailable, 77 (EX_NOPERM) when it refused, 76 (EX_PROTOCOL) when its answer made
    /// no sense, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            e if e.is_transient() => 69,
            ClientError::Api { .. } | ClientError::OAuth { .. } => 77,
            ClientError::Protocol(_) => 76,
            ClientError::SessionEnded { .. } | ClientError::Local(_) | ClientError::Unreachable { .. } => 1,
        }
    }

    /// The server's code for a refusal (`error.code`, or the OAuth `error`).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::OAuth { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The server's words for a refusal: the message, or the OAuth description.
    pub fn server_message(&self) -> Option<&str> {
        match self {
            ClientError::Api { message, .. } | ClientError::SessionEnded { message, .. } => Some(message),
            ClientError::OAuth {
                error, description, ..
            } => Some(if description.is_empty() {
                error
            } else {
                description
            }),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { server, reason } => {
                write!(f, "cannot reach Airlock at {server}: {reason}")
            }
            ClientError::Api { status, code, .. }
                if *status == StatusCode::UNAUTHORIZED && code == "unauthenticated" =>
            {
                f.write_str("your session is no longer valid: run `airlock login`, then try again")
            }
            ClientError::Api { status, message, .. } => write!(f, "Airlock answered {status}: {message}"),
            ClientError::OAuth {
                status,
                error,
                description,
            } => write!(
                f,
                "Airlock refused the request ({}): {error}: {description}",
                status.as_u16()
            ),
            ClientError::SessionEnded { status, message } => write!(
                f,
                "the session could not be refreshed; run `airlock login` again: Airlock answered {status}: {message}"
            ),
            ClientError::Protocol(m) => write!(f, "unexpected answer from Airlock: {m}"),
            ClientError::Local(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<anyhow::Error> for ClientError {
    fn from(e: anyhow::Error) -> Self {
        ClientError::Local(e)
    }
}

/// A request error as text for a person: reqwest's message without the URL, then each
/// underlying cause ("error sending request: client error (Connect): tcp connect error:
/// Connection refused (os error 111)"), so a refused connection, a DNS failure and a TLS
/// mismatch read differently. Causes are transport errors: no header, body or secret.
pub fn network_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let part = c.to_string();
        // Some layers repeat their cause in their own message; say each thing once.
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// A `/v1` refusal (any error body reads as one; anything else is "unexpected answer").
pub(super) fn api_refusal(status: StatusCode, bytes: &[u8]) -> ClientError {
    match ErrorBody::parse(bytes) {
        Some(body) => ClientError::Api {
            status,
            code: body.code().to_string(),
            message: body.message().to_string(),
        },
        None => ClientError::Api {
            status,
            code: String::new(),
            message: "unexpected answer".into(),
        },
    }
}

/// A refusal in whichever shape it came (the OAuth endpoints people use).
pub(super) fn any_refusal(status: StatusCode, bytes: &[u8]) -> ClientError {
    match ErrorBody::parse(bytes) {
        Some(ErrorBody::OAuth(b)) => ClientError::OAuth {
            status,
            error: b.error.into_owned(),
            description: b.error_description,
        },
        _ => api_refusal(status, bytes),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_session_says_to_log_in_but_a_refused_code_does_not() {
        let session = api_refusal(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"code":"unauthenticated","message":"sign in first"}}"#,
        );
        assert!(session.to_string().contains("airlock login"));
        let code = api_refusal(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"code":"totp_invalid","message":"that code is wrong or was already used; wait for the next one"}}"#,
        );
        assert!(!code.to_string().contains("airlock login"));
        assert!(code.to_string().contains("that code is wrong"));
        assert!(!code.is_transient());
        assert_eq!(code.exit_code(), 77);
    }

    #[test]
    fn failures_sort_into_kinds_with_their_exit_codes() {
        let unavailable = api_refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":"unavailable","message":"retry"}}"#,
        );
        assert!(unavailable.is_transient());
        assert_eq!(unavailable.exit_code(), 69);
        let limited = api_refusal(StatusCode::TOO_MANY_REQUESTS, b"");
        assert!(limited.is_transient());
        assert_eq!(
            limited.to_string(),
            "Airlock answered 429 Too Many Requests: unexpected answer"
        );
        let oauth = any_refusal(
            StatusCode::BAD_REQUEST,
            br#"{"error":"authorization_pending","error_description":"not yet"}"#,
        );
        assert_eq!(oauth.code(), Some("authorization_pending"));
        assert_eq!(oauth.server_message(), Some("not yet"));
        assert_eq!(oauth.exit_code(), 77);
        let gone = ClientError::Unreachable {
            server: "http://x".into(),
            reason: "refused".into(),
        };
        assert_eq!(
            (gone.exit_code(), gone.to_string().as_str()),
            (69, "cannot reach Airlock at http://x: refused")
        );
        assert_eq!(ClientError::Protocol("x".into()).exit_code(), 76);
        assert_eq!(ClientError::Local(anyhow::anyhow!("no session")).exit_code(), 1);
    }
}
