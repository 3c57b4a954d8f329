//! RFC 7662 introspection for the resource servers of an environment.

use std::net::IpAddr;

use super::client_credentials::authenticate_client;
use super::{ClientCredentials, OAuthError};
use crate::auth::token_is_live;
use crate::config::EnvironmentSettings;
use crate::state::AppState;
use crate::token;
use crate::wire::oauth::Introspection;

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
) -> Result<Introspection, OAuthError> {
    let env_name = env.name.as_str();
    authenticate_client(state, peer, env_name, &creds).await?;
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
        return Ok(Introspection::inactive());
    };
    if claims.env != env_name {
        return Ok(Introspection::inactive());
    }
    match token_is_live(state, env_name, &claims).await {
        Ok(true) => {}
        Ok(false) => return Ok(Introspection::inactive()),
        Err(_) => return Err(OAuthError::Unavailable),
    }
    Ok(Introspection::active(claims))
}
