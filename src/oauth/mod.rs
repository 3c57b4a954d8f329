//! Every token request: the parsed request, one dispatch for both token endpoints, one
//! file per grant, the one place that signs access tokens (`issue`), refusals and
//! introspection. Independent of HTTP.
//!
//! Every decision made here, issuance or refusal, is written to the audit trail and
//! committed before the answer exists (invariant 7). If the audit write fails the
//! caller gets `temporarily_unavailable` and the token that was signed is dropped
//! unseen.

mod client_credentials;
mod device_code;
mod introspect;
mod issue;
mod refresh_token;
mod refusal;
mod request;
mod token_exchange;

pub use client_credentials::client_credentials;
pub use device_code::{DeviceAuthorization, device_authorize, device_poll, new_user_code};
pub use introspect::introspect;
pub use refresh_token::refresh;
pub use refusal::refuse_request;
pub use request::{TokenParams, TokenRequest, client_credentials as parse_client_credentials, parse_params};
pub use token_exchange::{ExchangeRequest, exchange};

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::config::EnvironmentSettings;
use crate::domain::CLI_CLIENT_ID;
use crate::state::AppState;
use crate::wire::SessionTokens;

/// Longest client id or secret read from a request.
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// An RFC 6749 section 5.2 error, plus the HTTP-level ones the endpoint can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthError {
    /// `invalid_request` (400).
    InvalidRequest(String),
    /// `invalid_client` (401). Never says why.
    InvalidClient,
    /// `invalid_scope` (400).
    InvalidScope(String),
    /// `unsupported_grant_type` (400).
    UnsupportedGrantType(String),
    /// `access_denied` (403).
    AccessDenied(String),
    /// Unknown environment (404, in the OAuth shape).
    UnknownEnvironment(String),
    /// `temporarily_unavailable` (503): the decision could not be recorded.
    Unavailable,
    /// `invalid_grant` (400): a bad, expired or reused grant (refresh token, device code, session).
    InvalidGrant(String),
    /// `authorization_pending` (400, RFC 8628).
    AuthorizationPending,
    /// `slow_down` (400, RFC 8628): poll less often.
    SlowDown,
    /// `expired_token` (400, RFC 8628).
    ExpiredToken,
    /// `insufficient_user_authentication` (403, the RFC 9470 error code): confirm a fresh
    /// TOTP code (step up) first, then ask again.
    StepUpRequired(String),
}

/// Client credentials as presented, by either method.
pub struct ClientCredentials {
    /// As presented; untrusted.
    pub client_id: String,
    /// As presented.
    pub client_secret: SecretString,
}

// The grant types and token types are part of the wire (the CLI posts them too).
pub use crate::wire::oauth::{
    ACCESS_TOKEN_TYPE, DEVICE_CODE_GRANT, PROCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, TokenResponse,
};

/// Which token endpoint a request came to; each offers exactly its own grants.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    /// `/envs/{env}/token`: client credentials (agents) and token exchange (people).
    /// Every refusal is audited.
    Environment(&'a EnvironmentSettings),
    /// `/oauth/token`: the CLI's device-code and refresh grants, for sessions.
    People,
}

/// What a token endpoint answers on success.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Issued {
    /// An environment access token.
    Access(TokenResponse),
    /// A CLI session's tokens.
    Session(SessionTokens),
}

/// Answer one token request at `endpoint`: parse the form body, sort it by grant type,
/// and hand it to that grant, or refuse it (audited at an environment's endpoint).
/// `authorization` is the raw `Authorization` header, if any.
pub async fn dispatch(
    state: &AppState,
    endpoint: Endpoint<'_>,
    peer: Option<IpAddr>,
    body: &[u8],
    authorization: Option<&[u8]>,
) -> Result<Issued, OAuthError> {
    match endpoint {
        Endpoint::Environment(environment) => {
            let env = environment.name.as_str();
            let params = match parse_params(body) {
                Ok(p) => p,
                Err(e) => return Err(refuse_request(state, peer, env, e).await),
            };
            match TokenRequest::new(params, authorization) {
                TokenRequest::ClientCredentials { client, scope } => {
                    let creds = match client {
                        Ok(Some(c)) => c,
                        // No credentials at all, or a non-Basic Authorization scheme:
                        // authentication failed.
                        Ok(None) => {
                            return Err(refuse_request(state, peer, env, OAuthError::InvalidClient).await);
                        }
                        Err(e) => return Err(refuse_request(state, peer, env, e).await),
                    };
                    client_credentials(state, peer, environment, creds, scope.as_deref())
                        .await
                        .map(Issued::Access)
                }
                TokenRequest::TokenExchange {
                    subject_token,
                    subject_token_type,
                    actor_token,
                    actor_token_type,
                    scope,
                } => {
                    let Some(subject) = subject_token else {
                        let e = OAuthError::InvalidRequest("subject_token is required".into());
                        return Err(refuse_request(state, peer, env, e).await);
                    };
                    let req = ExchangeRequest {
                        subject_token: subject.expose_secret(),
                        subject_token_type: subject_token_type.as_deref().unwrap_or_default(),
                        actor_token: actor_token.as_deref(),
                        actor_token_type: actor_token_type.as_deref(),
                        scope: scope.as_deref(),
                    };
                    exchange(state, peer, environment, req).await.map(Issued::Access)
                }
                other => {
                    let e = other
                        .unsupported()
                        .unwrap_or_else(|| OAuthError::InvalidRequest("grant_type is required".into()));
                    Err(refuse_request(state, peer, env, e).await)
                }
            }
        }
        Endpoint::People => {
            let params = parse_params(body)?;
            if params.client_id.as_deref() != Some(CLI_CLIENT_ID) {
                return Err(OAuthError::InvalidClient);
            }
            match TokenRequest::new(params, authorization) {
                TokenRequest::DeviceCode { device_code } => match device_code {
                    Some(code) => device_poll(state, code.expose_secret(), CLI_CLIENT_ID)
                        .await
                        .map(Issued::Session),
                    None => Err(OAuthError::InvalidRequest("device_code is required".into())),
                },
                TokenRequest::RefreshToken { refresh_token } => match refresh_token {
                    Some(t) => refresh(state, t.expose_secret()).await.map(Issued::Session),
                    None => Err(OAuthError::InvalidRequest("refresh_token is required".into())),
                },
                other => Err(other
                    .unsupported()
                    .unwrap_or_else(|| OAuthError::InvalidRequest("grant_type is required".into()))),
            }
        }
    }
}
