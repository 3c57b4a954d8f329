//! RFC 7662 introspection for the resource servers of an environment.

use std::net::IpAddr;

use super::client_credentials::authenticate_client;
use super::{ClientCredentials, OAuthError};
use crate::auth::token_is_live;
use crate::config::EnvironmentSettings;
use crate::state::AppState;
use crate::token;

/// RFC 7662 introspection at environment `env_name`, for a resource server that
/// authenticates as an agent of that environment. A token is active only if it verifies
/// for this environment (key, issuer, audience, time), its agent or person is still
/// enabled, and the grant it was minted under (if any) is neither revoked nor ended.
pub async fn introspect(
    state: &AppState,
    peer: Option<IpAddr>,
    env: &EnvironmentSettings,
    creds: ClientCredentials,
    token: &str,
) -> Result<serde_json::Value, OAuthError> {
    let env_name = env.name.as_str();
    authenticate_client(state, peer, env_name, &creds).await?;
    let inactive = serde_json::json!({ "active": false });
    let Some(jwks) = state.keys.jwks(&env.key_set()) else {
        return Err(OAuthError::Unavailable);
    };
    let Ok(claims) = token::verify(
        token,
        &jwks,
        &env.issuer(&state.settings.public_url),
        &env.audience,
        state.now().unix_timestamp(),
        0,
    ) else {
        return Ok(inactive);
    };
    if claims.env != env_name {
        return Ok(inactive);
    }
    match token_is_live(state, env_name, &claims).await {
        Ok(true) => {}
        Ok(false) => return Ok(inactive),
        Err(_) => return Err(OAuthError::Unavailable),
    }
    let mut out = serde_json::json!({
        "active": true,
        "scope": claims.scope,
        "client_id": claims.client_id,
        "sub": claims.sub,
        "aud": claims.aud,
        "iss": claims.iss,
        "exp": claims.exp,
        "iat": claims.iat,
        "nbf": claims.nbf,
        "jti": claims.jti,
        "token_type": "Bearer",
        "env": claims.env,
    });
    if let Some(username) = claims.username {
        out["username"] = serde_json::json!(username);
    }
    if let Some(act) = claims.act {
        out["act"] = serde_json::json!({ "sub": act.sub });
    }
    if let Some(grant) = claims.grant {
        out["grant"] = serde_json::json!(grant);
    }
    Ok(out)
}
