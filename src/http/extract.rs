//! Extractors whose rejections are [`ApiError`]s: the authenticated caller and JSON
//! bodies.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::auth::{self, Authenticated, Principal};
use crate::config::{EnvironmentSettings, Settings};
use crate::oauth::OAuthError;
use crate::state::AppState;

/// The environment named by the path's `{env}`, resolved once here and handed on as
/// `&EnvironmentSettings` (which knows its own name). An unknown name is a 404 in the
/// OAuth error shape: the routes with `{env}` are OAuth and discovery endpoints.
pub struct EnvPath {
    settings: Arc<Settings>,
    name: String,
}

impl EnvPath {
    /// The environment.
    pub fn env(&self) -> &EnvironmentSettings {
        &self.settings.environments[&self.name]
    }
}

impl FromRequestParts<AppState> for EnvPath {
    type Rejection = OAuthError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Ok(Path(name)) = Path::<String>::from_request_parts(parts, state).await else {
            return Err(OAuthError::UnknownEnvironment("(not valid UTF-8)".into()));
        };
        if !state.settings.environments.contains_key(&name) {
            return Err(OAuthError::UnknownEnvironment(name));
        }
        Ok(EnvPath {
            settings: state.settings.clone(),
            name,
        })
    }
}

/// A person authenticated by `Authorization: Bearer <session access token>`.
/// Every request re-checks the session in the store, so logout, revocation and
/// disabling take effect at once.
pub struct Caller(pub Authenticated);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let auth = auth::authenticate_session(state, token).await.map_err(|e| {
            tracing::debug!(?e, "session authentication failed");
            ApiError::from(e)
        })?;
        Ok(Caller(auth))
    }
}

/// A person or an agent, from `Authorization: Bearer` (a session token or an
/// environment access token): the callers of the escalation endpoints.
pub struct AnyCaller(pub Principal);

impl FromRequestParts<AppState> for AnyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let principal = auth::authenticate(state, token)
            .await
            .map_err(crate::escalations::EscalationError::from)?;
        Ok(AnyCaller(principal))
    }
}

/// The token of `Authorization: Bearer <token>`, or 401.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or(ApiError::Unauthenticated)
}

impl Caller {
    /// The audit actor.
    pub fn actor(&self) -> String {
        format!("user:{}", self.0.user.username)
    }

    /// Refuse unless the caller holds an admin role in effect: TOTP enrolled and this
    /// session signed in (or stepped up) with a code.
    pub fn require_admin(&self, state: &AppState) -> Result<(), ApiError> {
        let roles = auth::effective_roles(state, &self.0);
        if state.settings.is_admin(&roles) {
            Ok(())
        } else if state.settings.is_admin(&self.0.user.roles) {
            Err(ApiError::Forbidden(
                "your admin role needs TOTP: enrol it (`airlock totp enroll`), then confirm a code \
                 for this session (`airlock step-up`)"
                    .into(),
            ))
        } else {
            Err(ApiError::Forbidden("this needs an admin role".into()))
        }
    }

    /// Admin changes: an admin role in effect and a fresh TOTP code confirmed recently
    /// (`auth.step_up_lifetime`), so a copied session alone cannot change who may do what.
    pub fn require_admin_change(&self, state: &AppState) -> Result<(), ApiError> {
        self.require_admin(state)?;
        if auth::is_stepped_up(state, &self.0) {
            Ok(())
        } else {
            Err(ApiError::StepUpRequired)
        }
    }
}

/// `Json<T>` whose rejection is our error shape, with unknown fields refused by `T`.
pub struct AppJson<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(AppJson(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

impl<T: serde::de::DeserializeOwned> AppJson<T> {
    /// Deserialize a body already read, as the extractor does after checking the
    /// content type (axum's `Json::from_bytes` is what `from_request` calls), with the
    /// same error answers.
    pub fn from_bytes(bytes: &[u8]) -> Result<T, ApiError> {
        axum::Json::<T>::from_bytes(bytes)
            .map(|axum::Json(v)| v)
            .map_err(json_problem)
    }
}

/// Our answer to a JSON body we cannot use.
fn json_problem(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    // SECURITY: serde's messages can quote values (a password of the wrong type);
    // say what kind of problem it is, never what was sent.
    ApiError::BadRequest(
        match rejection {
            axum::extract::rejection::JsonRejection::MissingJsonContentType(_) => {
                "send Content-Type: application/json"
            }
            axum::extract::rejection::JsonRejection::JsonSyntaxError(_) => "the body is not valid JSON",
            axum::extract::rejection::JsonRejection::JsonDataError(_) => {
                "the JSON fields do not match this endpoint (see /v1/openapi.json)"
            }
            _ => "the body could not be read",
        }
        .into(),
    )
}

/// `Query<T>` whose rejection is our error shape (never axum's plain-text 400).
pub struct AppQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send> FromRequestParts<AppState> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(AppQuery(v)),
            // SECURITY: say which kind of problem, never echo what was sent.
            Err(_) => Err(ApiError::BadRequest(
                "the query parameters do not match this endpoint (see /v1/openapi.json)".into(),
            )),
        }
    }
}
