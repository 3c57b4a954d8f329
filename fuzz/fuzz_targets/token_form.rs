//! The token endpoint's form body and `Authorization: Basic` header, through the very
//! functions the handlers call (`/envs/{env}/token`, `/envs/{env}/introspect`,
//! `/oauth/token`, `/oauth/device_authorization`).
#![no_main]

use airlock::oauth::{MAX_CREDENTIAL_LEN, parse_client_credentials, parse_params};
use axum::http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::{arbitrary, fuzz_target};

#[derive(Debug, arbitrary::Arbitrary)]
struct Input<'a> {
    /// Raw `Authorization` value; hyper hands over any visible-ASCII/obs-text bytes.
    authorization: Option<&'a [u8]>,
    /// Build a well-formed `Basic` value from these bytes instead.
    basic: Option<&'a [u8]>,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let Ok(params) = parse_params(input.body) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let value = match (input.basic, input.authorization) {
        (Some(raw), _) => {
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
            HeaderValue::from_str(&format!("Basic {encoded}")).ok()
        }
        (None, Some(raw)) => HeaderValue::from_bytes(raw).ok(),
        (None, None) => None,
    };
    if let Some(v) = value {
        headers.insert(header::AUTHORIZATION, v);
    }
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if let Ok(Some(creds)) = parse_client_credentials(authorization, params.client_id, params.client_secret) {
        // Whatever came in, what comes out is bounded and names a client.
        assert!(creds.client_id.len() <= MAX_CREDENTIAL_LEN);
    }
});
