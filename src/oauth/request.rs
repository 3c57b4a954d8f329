//! A token request as it arrives: the form body's parameters (each at most once, RFC
//! 6749 section 3.2) and the client's credentials, by either method, and the request
//! each grant type makes of them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretString;

use super::{ClientCredentials, MAX_CREDENTIAL_LEN, OAuthError};

/// Parameters we read; others are ignored as RFC 6749 section 3.2 requires.
#[derive(Default)]
pub struct TokenParams {
    /// `grant_type`.
    pub grant_type: Option<String>,
    /// `scope`: space-separated.
    pub scope: Option<String>,
    /// `client_id` (client_secret_post, or beside Basic).
    pub client_id: Option<String>,
    /// `client_secret` (client_secret_post).
    pub client_secret: Option<SecretString>,
    /// `subject_token` (RFC 8693).
    pub subject_token: Option<SecretString>,
    /// `subject_token_type` (RFC 8693).
    pub subject_token_type: Option<String>,
    /// `actor_token` (RFC 8693).
    pub actor_token: Option<String>,
    /// `actor_token_type` (RFC 8693).
    pub actor_token_type: Option<String>,
    /// `device_code` (RFC 8628).
    pub device_code: Option<SecretString>,
    /// `refresh_token`.
    pub refresh_token: Option<SecretString>,
    /// `token` (RFC 7662 introspection).
    pub token: Option<SecretString>,
}

/// A token request by grant type. Each grant checks its own required parameters, so
/// an endpoint that does not offer a grant answers `unsupported_grant_type` before it
/// looks at that grant's parameters.
pub enum TokenRequest {
    /// `client_credentials` (RFC 6749 section 4.4): the client's credentials as parsed
    /// (a malformed `Authorization` header is this grant's error to report).
    ClientCredentials {
        /// The credentials, none, or why they cannot be read.
        client: Result<Option<ClientCredentials>, OAuthError>,
        /// `scope`.
        scope: Option<String>,
    },
    /// RFC 8693 token exchange.
    TokenExchange {
        /// `subject_token`.
        subject_token: Option<SecretString>,
        /// `subject_token_type`.
        subject_token_type: Option<String>,
        /// `actor_token`.
        actor_token: Option<String>,
        /// `actor_token_type`.
        actor_token_type: Option<String>,
        /// `scope`.
        scope: Option<String>,
    },
    /// `refresh_token`.
    RefreshToken {
        /// `refresh_token`.
        refresh_token: Option<SecretString>,
    },
    /// RFC 8628 device code.
    DeviceCode {
        /// `device_code`.
        device_code: Option<SecretString>,
    },
    /// A grant type Airlock does not know (at most 64 characters of it).
    Unsupported(String),
    /// No `grant_type`.
    Missing,
}

impl TokenRequest {
    /// Sort `params` by grant type; `authorization` is the raw `Authorization` header.
    pub fn new(params: TokenParams, authorization: Option<&[u8]>) -> TokenRequest {
        let Some(grant_type) = params.grant_type else {
            return TokenRequest::Missing;
        };
        match grant_type.as_str() {
            "client_credentials" => TokenRequest::ClientCredentials {
                client: client_credentials(authorization, params.client_id, params.client_secret),
                scope: params.scope,
            },
            super::TOKEN_EXCHANGE_GRANT => TokenRequest::TokenExchange {
                subject_token: params.subject_token,
                subject_token_type: params.subject_token_type,
                actor_token: params.actor_token,
                actor_token_type: params.actor_token_type,
                scope: params.scope,
            },
            "refresh_token" => TokenRequest::RefreshToken {
                refresh_token: params.refresh_token,
            },
            super::DEVICE_CODE_GRANT => TokenRequest::DeviceCode {
                device_code: params.device_code,
            },
            other => TokenRequest::Unsupported(other.chars().take(64).collect()),
        }
    }

    /// The `unsupported_grant_type` answer for an endpoint that does not offer this
    /// grant; `None` when no grant type was given.
    pub fn unsupported(&self) -> Option<OAuthError> {
        let name = match self {
            TokenRequest::ClientCredentials { .. } => "client_credentials",
            TokenRequest::TokenExchange { .. } => super::TOKEN_EXCHANGE_GRANT,
            TokenRequest::RefreshToken { .. } => "refresh_token",
            TokenRequest::DeviceCode { .. } => super::DEVICE_CODE_GRANT,
            TokenRequest::Unsupported(name) => name,
            TokenRequest::Missing => return None,
        };
        Some(OAuthError::UnsupportedGrantType(name.to_string()))
    }
}

/// Parse a form-encoded token, device-authorization or introspection body: parameters
/// may not repeat (RFC 6749 section 3.2) and there are at most 32 of them. Public so the
/// fuzz targets run this very code.
pub fn parse_params(body: &[u8]) -> Result<TokenParams, OAuthError> {
    let mut p = TokenParams::default();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        if seen.iter().any(|k| *k == key) {
            return Err(OAuthError::InvalidRequest(format!(
                "parameter '{}' appears more than once",
                key.chars().take(32).collect::<String>()
            )));
        }
        if seen.len() >= 32 {
            return Err(OAuthError::InvalidRequest("too many parameters".into()));
        }
        seen.push(key.to_string());
        match key.as_ref() {
            "grant_type" => p.grant_type = Some(value.into_owned()),
            "scope" => p.scope = Some(value.into_owned()),
            "client_id" => p.client_id = Some(value.into_owned()),
            "client_secret" => p.client_secret = Some(SecretString::from(value.into_owned())),
            "subject_token" => p.subject_token = Some(SecretString::from(value.into_owned())),
            "subject_token_type" => p.subject_token_type = Some(value.into_owned()),
            "actor_token" => p.actor_token = Some(value.into_owned()),
            "actor_token_type" => p.actor_token_type = Some(value.into_owned()),
            "device_code" => p.device_code = Some(SecretString::from(value.into_owned())),
            "refresh_token" => p.refresh_token = Some(SecretString::from(value.into_owned())),
            "token" => p.token = Some(SecretString::from(value.into_owned())),
            _ => {}
        }
    }
    Ok(p)
}

/// Credentials from `Authorization: Basic` (client_secret_basic; `authorization` is the
/// header's raw value) or the body (client_secret_post), never both. `Ok(None)`: no
/// credentials, or another scheme. Public so the fuzz targets run this very code.
pub fn client_credentials(
    authorization: Option<&[u8]>,
    body_id: Option<String>,
    body_secret: Option<SecretString>,
) -> Result<Option<ClientCredentials>, OAuthError> {
    let basic = match authorization {
        None => None,
        Some(value) => {
            let value = header_text(value).ok_or(OAuthError::InvalidClient)?;
            let Some((scheme, rest)) = value.split_once(' ') else {
                return Ok(None);
            };
            if !scheme.eq_ignore_ascii_case("basic") {
                return Ok(None);
            }
            Some(decode_basic(rest.trim()).ok_or(OAuthError::InvalidClient)?)
        }
    };
    match (basic, body_id, body_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method: Authorization: Basic or client_secret in the body, not both"
                .into(),
        )),
        (Some((id, secret)), body_id, None) => {
            // RFC 6749 allows client_id in the body alongside Basic; it must then agree.
            if body_id.is_some_and(|b| b != id) {
                return Err(OAuthError::InvalidRequest("client_id disagrees with the Authorization header".into()));
            }
            Ok(Some(ClientCredentials { client_id: id, client_secret: secret }))
        }
        (None, Some(id), Some(secret)) => {
            if id.len() > MAX_CREDENTIAL_LEN {
                return Err(OAuthError::InvalidClient);
            }
            Ok(Some(ClientCredentials { client_id: id, client_secret: secret }))
        }
        (None, _, _) => Ok(None),
    }
}

/// Decode `base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 section 2.3.1).
fn decode_basic(encoded: &str) -> Option<(String, SecretString)> {
    if encoded.len() > 4 * MAX_CREDENTIAL_LEN {
        return None;
    }
    let raw = zeroize::Zeroizing::new(STANDARD.decode(encoded).ok()?);
    let text = std::str::from_utf8(&raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    // application/x-www-form-urlencoded of one value: '+' is a space, '%XX' a byte;
    // a raw '&' or '=' cannot occur in a correctly encoded value.
    let decode = |s: &str| -> Option<String> {
        if s.contains(['&', '=']) {
            return None;
        }
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    };
    let id = decode(id)?;
    let secret = decode(secret)?;
    if id.is_empty() || id.len() > MAX_CREDENTIAL_LEN || secret.len() > MAX_CREDENTIAL_LEN {
        return None;
    }
    Some((id, SecretString::from(secret)))
}

/// A header value as text: visible ASCII and tabs only (what `HeaderValue::to_str` accepts).
fn header_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let (id, secret) = decode_basic(&STANDARD.encode("agt_x:a%2Bb%3Ac")).unwrap();
        assert_eq!(id, "agt_x");
        assert_eq!(secret.expose_secret(), "a+b:c");
        assert!(decode_basic("!!!").is_none());
        assert!(decode_basic(&STANDARD.encode("no-colon")).is_none());
        assert!(decode_basic(&STANDARD.encode("agt_x:secret&junk")).is_none());
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(parse_params(b"grant_type=a&grant_type=b").is_err());
        assert!(parse_params(b"grant_type=a&scope=b").is_ok());
    }

    #[test]
    fn an_authorization_header_with_non_visible_bytes_is_an_invalid_client() {
        assert!(matches!(
            client_credentials(Some(b"Basic \x80abc"), None, None),
            Err(OAuthError::InvalidClient)
        ));
        assert!(matches!(
            client_credentials(Some(b"Bearer x"), None, None),
            Ok(None)
        ));
    }
}
