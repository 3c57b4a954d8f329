//! The CLI's one HTTP client of Airlock: a base URL, the person's session when there is
//! one (the session file, its lock, refreshing its tokens), requests and answers typed
//! by [`crate::wire`], and failures sorted into kinds ([`ClientError`], in `error.rs`).
//!
//! Every client command goes through [`Client`]: the session commands (`/v1/...` with
//! the session token), the token exchange (`airlock token`, `airlock exec`), an agent's
//! client credentials (`airlock agent token|run`) and signing in (`airlock login`).
//!
//! SECURITY: secrets travel only in headers and bodies, never in URLs or errors. An
//! error names the server and the transport's reason, never a header, a body or a
//! secret; the types that hold a token are not `Debug`. A refused TOTP code is never
//! sent twice: a 401 is retried (once, after a refresh) only when the session itself was
//! refused (`unauthenticated`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use super::error::{ClientError, network_error};
use super::error::{any_refusal, api_refusal};
use super::session_file::{self, NO_SESSION, SessionFile, SessionLock};
use crate::domain::CLI_CLIENT_ID;
use crate::wire::oauth::{
    ACCESS_TOKEN_TYPE, DeviceAuthorization, DeviceAuthorizationForm, PROCESS_TOKEN_TYPE, SessionTokens,
    TokenForm, TokenResponse,
};
use crate::wire::people::SignIn;
use crate::wire::{ErrorBody, OAuthErrorBody};

/// A session access token this close to its expiry is refreshed before use.
const REFRESH_MARGIN_SECS: i64 = 30;

/// An environment token as received. Deliberately not `Debug`.
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

/// An agent's identity at one environment's token endpoint. Deliberately not `Debug`.
pub struct AgentCredentials {
    env: String,
    /// `Basic base64(form(id):form(secret))`.
    authorization: SecretString,
    scopes: Vec<String>,
}

/// Percent-encode for `application/x-www-form-urlencoded` (and one path segment).
pub fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl AgentCredentials {
    /// `client_id` with `secret` at environment `env`, asking for `scopes` (none: the
    /// agent's defaults).
    pub fn new(env: &str, client_id: &str, secret: &SecretString, scopes: Vec<String>) -> AgentCredentials {
        // RFC 6749 section 2.3.1: form-encode id and secret before base64.
        let pair = format!(
            "{}:{}",
            form_encode(client_id),
            form_encode(secret.expose_secret())
        );
        AgentCredentials {
            env: env.to_string(),
            authorization: SecretString::from(format!("Basic {}", STANDARD.encode(pair))),
            scopes,
        }
    }
}

/// Airlock at one base URL, with the person's session when there is one.
pub struct Client {
    http: reqwest::Client,
    server: String,
    session: Option<SessionFile>,
}

/// The warning for `AIRLOCK_SERVER` naming a server other than the session's: session
/// commands talk to the server the session belongs to, so the variable is not used.
fn server_mismatch(env_server: Option<&str>, session_server: &str) -> Option<String> {
    let wanted = env_server?.trim().trim_end_matches('/');
    let same = match (url::Url::parse(wanted), url::Url::parse(session_server)) {
        (Ok(a), Ok(b)) => a == b,
        _ => wanted == session_server.trim_end_matches('/'),
    };
    (!wanted.is_empty() && !same).then(|| {
        format!(
            "warning: AIRLOCK_SERVER is {wanted}, but you are signed in to {session_server}, \
             which this command uses. To use {wanted}, sign in there: airlock login --server {wanted}"
        )
    })
}

/// The HTTP client every command uses: bounded connect and request times, and a
/// `User-Agent` the device approval page shows to the person approving a sign-in.
fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(format!(
            "airlock-cli/{} ({}; {})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        ))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(40))
        .build()?)
}

impl Client {
    /// A client of the server at `server` without a session (signing in, agents).
    pub fn anonymous(server: &str) -> anyhow::Result<Client> {
        let server = server.trim_end_matches('/').to_string();
        let base = url::Url::parse(&server).map_err(|e| anyhow::anyhow!("bad --server URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            anyhow::bail!("--server must be an http(s) URL");
        }
        Ok(Client {
            http: http()?,
            server,
            session: None,
        })
    }

    /// A client of the stored session's server, with the session. Warns on standard
    /// error when `AIRLOCK_SERVER` names another server (see [`server_mismatch`]).
    pub fn from_session() -> anyhow::Result<Client> {
        let client = Self::stored()?;
        if let Some(warning) =
            server_mismatch(std::env::var("AIRLOCK_SERVER").ok().as_deref(), &client.server)
        {
            eprintln!("{warning}");
        }
        Ok(client)
    }

    /// From the stored session, silently (`airlock login` replacing it).
    fn stored() -> anyhow::Result<Client> {
        let session = session_file::load()?;
        Ok(Client {
            http: http()?,
            server: session.server.clone(),
            session: Some(session),
        })
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Who the session belongs to.
    pub fn username(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.username.as_str())
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            server: self.server.clone(),
            reason: network_error(e),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// Send and read the whole answer.
    async fn exchange_bytes(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok((status, bytes.to_vec()))
    }

    // --- the session ------------------------------------------------------------------

    /// Save `new` in place of the stored session (`airlock login`). Under the lock, a
    /// previous session that still loads is ended server-side first, best effort, so it
    /// does not stay live unseen; then the new one is saved.
    pub async fn replace_session(new: &SessionFile) -> anyhow::Result<()> {
        let (p, chosen) = session_file::location()?;
        if p == std::path::Path::new(NO_SESSION) {
            anyhow::bail!("this process was started by airlock exec; it cannot keep a session");
        }
        session_file::prepare_dir(&p, chosen)?;
        let held = session_file::lock().await?;
        if p.exists()
            && let Ok(mut old) = Client::stored()
            && let Err(e) = old.end_locked(&held).await
        {
            eprintln!("note: could not end the previous session on {}: {e}", old.server);
        }
        session_file::save(new)
    }

    /// Make the access token usable after the server refused it: under the lock, reload
    /// the session and use a token another process refreshed meanwhile, else refresh
    /// (rotating the refresh token) and save.
    pub async fn refresh(&mut self) -> Result<(), ClientError> {
        let held = session_file::lock().await?;
        let refused = self.session.as_ref().map(|s| s.access_token.clone());
        self.renew_locked(&held, refused.as_deref()).await
    }

    /// A usable session access token: under the lock, always reload the session (another
    /// process may have rotated the refresh token), and refresh it only if it is about to
    /// expire.
    pub async fn bearer(&mut self) -> Result<String, ClientError> {
        let held = session_file::lock().await?;
        self.renew_locked(&held, None).await?;
        Ok(self.session_ref()?.access_token.clone())
    }

    fn session_ref(&self) -> Result<&SessionFile, ClientError> {
        self.session.as_ref().ok_or_else(|| {
            ClientError::Local(anyhow::anyhow!("not logged in: run `airlock login --server URL`"))
        })
    }

    /// Reload; if the stored access token is good for more than a few seconds (and is not
    /// `refused`), keep it; otherwise refresh and save. Only with the lock held.
    async fn renew_locked(&mut self, _held: &SessionLock, refused: Option<&str>) -> Result<(), ClientError> {
        let session = session_file::load()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let fresh = session.access_expires_at - REFRESH_MARGIN_SECS > now;
        let refresh_token = session.refresh_token.clone();
        let usable = fresh && refused != Some(session.access_token.as_str());
        self.session = Some(session);
        if usable {
            return Ok(());
        }
        let form = TokenForm::RefreshToken {
            client_id: CLI_CLIENT_ID.into(),
            refresh_token,
        };
        let (status, bytes) = self
            .exchange_bytes(self.http.post(self.url("/oauth/token")).form(&form))
            .await?;
        if !status.is_success() {
            let message = ErrorBody::parse(&bytes)
                .map(|b| b.message().to_string())
                .unwrap_or_else(|| "unexpected answer".into());
            return Err(ClientError::SessionEnded { status, message });
        }
        let tokens: SessionTokens = serde_json::from_slice(&bytes).map_err(|_| {
            ClientError::Protocol("the refreshed session is not what this airlock expects".into())
        })?;
        let renewed = SessionFile::from_tokens(&self.server, tokens);
        session_file::save(&renewed)?;
        self.session = Some(renewed);
        Ok(())
    }

    /// End the stored session server-side, with the lock already held.
    async fn end_locked(&mut self, held: &SessionLock) -> Result<(), ClientError> {
        self.renew_locked(held, None).await?;
        let token = self.session_ref()?.access_token.clone();
        let request = self
            .http
            .delete(self.url("/v1/sessions/current"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10));
        let (status, bytes) = self.exchange_bytes(request).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(api_refusal(status, &bytes))
        }
    }

    // --- Airlock's own resources (/v1) ------------------------------------------------

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None, None).await
    }

    /// `GET path?query`.
    pub async fn get_with<Q: Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        query: &Q,
    ) -> Result<T, ClientError> {
        self.call(Method::GET, path, Some(query), None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Local(e.into()))?;
        self.call::<(), T>(Method::POST, path, None, Some(body)).await
    }

    /// `POST path` without a body.
    pub async fn post_empty<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::POST, path, None, None).await
    }

    /// `DELETE path`.
    pub async fn delete(&mut self, path: &str) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, path, None, None).await
    }

    /// Call `path` with the session; one refresh and retry when the session token was
    /// refused (401 `unauthenticated`). Any other 401, such as a wrong TOTP code, is
    /// answered as it is: sending a code twice would count twice against the throttle.
    /// An empty answer (204) reads as JSON `null`.
    async fn call<Q: Serialize, T: DeserializeOwned>(
        &mut self,
        method: Method,
        path: &str,
        query: Option<&Q>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut refreshed = false;
        loop {
            let token = self.bearer().await?;
            let mut request = self
                .http
                .request(method.clone(), self.url(path))
                .bearer_auth(token);
            if let Some(q) = query {
                request = request.query(q);
            }
            if let Some(b) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let (status, bytes) = self.exchange_bytes(request).await?;
            if status.is_success() {
                let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
                return serde_json::from_slice(bytes).map_err(|_| {
                    ClientError::Protocol(format!(
                        "the answer from {} is not what this airlock expects",
                        self.server
                    ))
                });
            }
            let refusal = api_refusal(status, &bytes);
            // Only a refused session is worth a refresh (see the module's SECURITY note).
            if status == StatusCode::UNAUTHORIZED && refusal.code() == Some("unauthenticated") && !refreshed {
                refreshed = true;
                self.refresh().await?;
                continue;
            }
            return Err(refusal);
        }
    }

    // --- tokens -----------------------------------------------------------------------

    fn token_endpoint(&self, env: &str) -> String {
        format!("{}/envs/{}/token", self.server, form_encode(env))
    }

    /// The client-credentials grant for an agent (`airlock agent token|run`).
    pub async fn client_credentials(&self, agent: &AgentCredentials) -> Result<FetchedToken, ClientError> {
        let form = TokenForm::ClientCredentials {
            scope: (!agent.scopes.is_empty()).then(|| agent.scopes.join(" ")),
        };
        let mut authorization = HeaderValue::from_str(agent.authorization.expose_secret())
            .map_err(|_| ClientError::Protocol("the client id or secret has invalid characters".into()))?;
        authorization.set_sensitive(true);
        let request = self
            .http
            .post(self.token_endpoint(&agent.env))
            .header(AUTHORIZATION, authorization)
            .form(&form)
            .timeout(Duration::from_secs(20));
        let (status, bytes) = self.exchange_bytes(request).await?;
        self.token_answer(status, &bytes)
    }

    /// RFC 8693: exchange the session for an environment token (`actor`: the process
    /// acting for the person). When the session token is refused, one refresh and retry.
    pub async fn exchange(
        &mut self,
        env: &str,
        scopes: &[String],
        actor: Option<&str>,
    ) -> Result<FetchedToken, ClientError> {
        let first = self.exchange_once(env, scopes, actor).await;
        if !matches!(&first, Err(ClientError::OAuth { error, .. }) if error == "invalid_grant") {
            return first;
        }
        // The session access token expired in flight (or the clocks disagree), or another
        // process ended it: refresh once (under the lock) and try again.
        if self.refresh().await.is_err() {
            return first;
        }
        self.exchange_once(env, scopes, actor).await
    }

    async fn exchange_once(
        &mut self,
        env: &str,
        scopes: &[String],
        actor: Option<&str>,
    ) -> Result<FetchedToken, ClientError> {
        let form = TokenForm::TokenExchange {
            client_id: CLI_CLIENT_ID.into(),
            subject_token: self.bearer().await?,
            subject_token_type: ACCESS_TOKEN_TYPE.into(),
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
            actor_token: actor.map(str::to_string),
            actor_token_type: actor.map(|_| PROCESS_TOKEN_TYPE.to_string()),
        };
        let request = self.http.post(self.token_endpoint(env)).form(&form);
        let (status, bytes) = self.exchange_bytes(request).await?;
        self.token_answer(status, &bytes)
    }

    /// A token endpoint's answer: a bearer token, or its OAuth refusal.
    fn token_answer(&self, status: StatusCode, bytes: &[u8]) -> Result<FetchedToken, ClientError> {
        if !status.is_success() {
            return Err(self.oauth_refusal(status, bytes));
        }
        let body: TokenResponse = serde_json::from_slice(bytes)
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
            token_type: body.token_type.into_owned(),
        })
    }

    fn oauth_refusal(&self, status: StatusCode, bytes: &[u8]) -> ClientError {
        match serde_json::from_slice::<OAuthErrorBody>(bytes) {
            Ok(b) => ClientError::OAuth {
                status,
                error: b.error.into_owned(),
                description: b.error_description,
            },
            Err(_) => ClientError::Protocol(format!(
                "HTTP {status} without an OAuth error body; is {} an Airlock server?",
                self.server
            )),
        }
    }

    // --- signing in -------------------------------------------------------------------

    /// `POST /v1/sessions`: sign in with a password (and a code).
    pub async fn sign_in(&self, body: &SignIn) -> Result<SessionTokens, ClientError> {
        let (status, bytes) = self
            .exchange_bytes(self.http.post(self.url("/v1/sessions")).json(body))
            .await?;
        if !status.is_success() {
            return Err(api_refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::Protocol("the sign-in answer is not a session".into()))
    }

    /// RFC 8628: start a device sign-in.
    pub async fn device_authorization(&self) -> Result<DeviceAuthorization, ClientError> {
        let form = DeviceAuthorizationForm {
            client_id: CLI_CLIENT_ID.into(),
        };
        let (status, bytes) = self
            .exchange_bytes(
                self.http
                    .post(self.url("/oauth/device_authorization"))
                    .form(&form),
            )
            .await?;
        if !status.is_success() {
            return Err(any_refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::Protocol("the device authorization is not RFC 8628 JSON".into()))
    }

    /// RFC 8628: ask whether the device sign-in was approved.
    pub async fn poll_device(&self, device_code: &str) -> Result<SessionTokens, ClientError> {
        let form = TokenForm::DeviceCode {
            client_id: CLI_CLIENT_ID.into(),
            device_code: device_code.to_string(),
        };
        let (status, bytes) = self
            .exchange_bytes(self.http.post(self.url("/oauth/token")).form(&form))
            .await?;
        if !status.is_success() {
            return Err(any_refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::Protocol("the token answer is not a session".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn airlock_server_naming_another_server_than_the_session_is_a_warning() {
        assert_eq!(server_mismatch(None, "https://a.example"), None);
        assert_eq!(server_mismatch(Some(""), "https://a.example"), None);
        assert_eq!(
            server_mismatch(Some("https://a.example/"), "https://a.example"),
            None
        );
        assert_eq!(
            server_mismatch(Some("https://A.example:443"), "https://a.example"),
            None
        );
        let w = server_mismatch(Some("https://b.example"), "https://a.example").expect("a warning");
        assert!(w.contains("signed in to https://a.example"), "{w}");
        assert!(w.contains("airlock login --server https://b.example"), "{w}");
    }

    #[test]
    fn agent_credentials_are_form_encoded_before_base64() {
        let c = AgentCredentials::new("dev", "agt_x", &SecretString::from("a+b:c"), vec![]);
        let header = c.authorization.expose_secret();
        let decoded = STANDARD.decode(header.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(decoded, b"agt_x:a%2Bb%3Ac");
    }
}
