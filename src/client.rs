//! A small client of Airlock's token endpoint, used by `airlock agent token` and
//! `airlock agent run`.
//!
//! SECURITY: the secret travels only in the `Authorization: Basic` header; errors
//! never include it, and debug output of these types redacts it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Why no token was obtained.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect or the request timed out.
    #[error("cannot reach Airlock at {url}: {reason}")]
    Unreachable {
        /// Server base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with an OAuth error.
    #[error("Airlock refused the request ({status}): {error}: {description}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// RFC 6749 error code.
        error: String,
        /// Human-readable description.
        description: String,
    },
    /// The server's answer did not make sense.
    #[error("unexpected answer from Airlock: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Process exit code: 69 (EX_UNAVAILABLE) when unreachable or unavailable,
    /// 77 (EX_NOPERM) when refused, 76 (EX_PROTOCOL) otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => 69,
            ClientError::Refused { status: 503, .. } => 69,
            ClientError::Refused { .. } => 77,
            ClientError::Protocol(_) => 76,
        }
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

/// A token as received.
pub struct FetchedToken {
    /// The JWT.
    pub access_token: SecretString,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Granted scopes.
    pub scope: String,
    /// `token_type` as sent.
    pub token_type: String,
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    token_type: String,
    expires_in: u64,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Fetches client-credentials tokens for one agent.
pub struct TokenClient {
    http: reqwest::Client,
    server: String,
    endpoint: String,
    authorization: SecretString,
    scopes: Vec<String>,
}

/// Percent-encode for `application/x-www-form-urlencoded`.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl TokenClient {
    /// A client for `server` (base URL), environment `env`.
    pub fn new(
        server: &str,
        env: &str,
        client_id: &str,
        secret: &SecretString,
        scopes: Vec<String>,
    ) -> Result<TokenClient, ClientError> {
        let server = server.trim_end_matches('/').to_string();
        let base =
            url::Url::parse(&server).map_err(|e| ClientError::Protocol(format!("bad --server URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Protocol("--server must be an http(s) URL".into()));
        }
        let endpoint = format!("{server}/envs/{}/token", form_encode(env));
        // RFC 6749 section 2.3.1: form-encode id and secret before base64.
        let pair = format!(
            "{}:{}",
            form_encode(client_id),
            form_encode(secret.expose_secret())
        );
        let authorization = SecretString::from(format!("Basic {}", STANDARD.encode(pair)));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(TokenClient {
            http,
            server,
            endpoint,
            authorization,
            scopes,
        })
    }

    /// Ask for a token.
    pub async fn fetch(&self) -> Result<FetchedToken, ClientError> {
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if !self.scopes.is_empty() {
            form.push(("scope", self.scopes.join(" ")));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::AUTHORIZATION, {
                let mut value = reqwest::header::HeaderValue::from_str(self.authorization.expose_secret())
                    .map_err(|_| {
                        ClientError::Protocol("the client id or secret has invalid characters".into())
                    })?;
                value.set_sensitive(true);
                value
            })
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.server.clone(),
                // Without the URL (already shown) and never with headers.
                reason: network_error(e),
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.server.clone(),
            reason: network_error(e),
        })?;
        if status.is_success() {
            let body: TokenBody = serde_json::from_slice(&bytes)
                .map_err(|_| ClientError::Protocol("the token response is not RFC 6749 JSON".into()))?;
            if !body.token_type.eq_ignore_ascii_case("bearer") {
                return Err(ClientError::Protocol(format!(
                    "unexpected token_type {:?}",
                    body.token_type
                )));
            }
            Ok(FetchedToken {
                access_token: SecretString::from(body.access_token),
                expires_in: body.expires_in,
                scope: body.scope,
                token_type: body.token_type,
            })
        } else {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => Err(ClientError::Refused {
                    status: status.as_u16(),
                    error: e.error,
                    description: e.error_description,
                }),
                Err(_) => Err(ClientError::Protocol(format!(
                    "HTTP {status} without an OAuth error body; is {} an Airlock server?",
                    self.server
                ))),
            }
        }
    }
}
