//! The no-storage ceiling of the token benchmark (issue 9).
//!
//! It answers `POST /envs/staging/token` the way Airlock answers a client-credentials
//! request for an agent with scope `db:read`: the same form parsing, the same
//! `Authorization: Basic` decoding, the same RFC 9068 claims signed as an EdDSA JWT with
//! the same header, and the same JSON body and no-store headers. It does nothing else:
//! no store, no audit event, no secret check, no policy. The Basic credentials are
//! decoded and the client id becomes `sub` and `client_id`, but the secret is not checked.
//! The signing key is made once at start-up, as Airlock's is loaded once.
//!
//! It exists only to say how fast the token endpoint could be on this machine if storage,
//! auditing and policy cost nothing. Never run it anywhere but a benchmark.
//!
//!     airlock-bench-ceiling 127.0.0.1:18081 http://127.0.0.1:18081

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer as _, SigningKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The one environment served, with the values of Airlock's default `staging`.
const ENV: &str = "staging";
const AUDIENCE: &str = "airlock:staging";
const DEFAULT_TTL_SECS: u64 = 600;
const DEFAULT_SCOPE: &str = "db:read";
/// As Airlock's `limits.max_body_bytes` default.
const MAX_BODY_BYTES: usize = 8192;
/// As Airlock's `MAX_CREDENTIAL_LEN`.
const MAX_CREDENTIAL_LEN: usize = 256;

/// Parsed once at start-up: the key and the encoded JWS header.
struct Signer {
    key: SigningKey,
    header_b64: String,
    issuer: String,
}

/// Claims in the order and shape of Airlock's `AccessClaims` for an agent's token (the
/// optional `username`, `act`, `grant` and `sid` are absent there too).
#[derive(Serialize)]
struct AccessClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    client_id: &'a str,
    scope: &'a str,
    env: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
}

/// RFC 6749 section 5.1, as Airlock serialises it for client credentials.
#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    let public_url = args.next().unwrap_or_else(|| format!("http://{listen}"));
    let signer = Arc::new(make_signer(&public_url));
    let app = Router::new()
        .route("/envs/{env}/token", post(issue_token))
        .with_state(signer);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .unwrap_or_else(|e| panic!("cannot bind {listen}: {e}"));
        eprintln!("ceiling listening on http://{listen}");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .expect("serve");
    });
}

/// A fresh Ed25519 key, its RFC 7638 `kid`, and the header `{"alg","kid","typ"}` as Airlock
/// builds it.
fn make_signer(public_url: &str) -> Signer {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).expect("random bytes");
    let key = SigningKey::from_bytes(&seed);
    let x = URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    let header = serde_json::json!({ "alg": "EdDSA", "kid": kid, "typ": "at+jwt" });
    Signer {
        key,
        header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        issuer: format!("{public_url}/envs/{ENV}"),
    }
}

/// An RFC 6749 section 5.2 error body.
fn error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": code, "error_description": description });
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn issue_token(
    State(signer): State<Arc<Signer>>,
    Path(env): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if env != ENV {
        return error(StatusCode::NOT_FOUND, "invalid_request", "unknown environment");
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            "form body required",
        );
    }
    let Ok(bytes) = to_bytes(body, MAX_BODY_BYTES).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", "body too large");
    };
    // The same rules as Airlock's parser: no repeated parameter, at most 32 of them.
    let (mut grant_type, mut scope) = (None, None);
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(&bytes) {
        if seen.iter().any(|s| *s == k) || seen.len() >= 32 {
            return error(StatusCode::BAD_REQUEST, "invalid_request", "bad parameters");
        }
        seen.push(k.to_string());
        match k.as_ref() {
            "grant_type" => grant_type = Some(v.into_owned()),
            "scope" => scope = Some(v.into_owned()),
            _ => {}
        }
    }
    if grant_type.as_deref() != Some("client_credentials") {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "client_credentials only",
        );
    }
    // Decoded as Airlock decodes it; the secret is read and then ignored.
    let Some((client_id, _secret)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, rest)| decode_basic(rest.trim()))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let scope = scope.unwrap_or_else(|| DEFAULT_SCOPE.into());

    let iat = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = AccessClaims {
        iss: &signer.issuer,
        sub: &client_id,
        aud: AUDIENCE,
        client_id: &client_id,
        scope: &scope,
        env: ENV,
        iat,
        nbf: iat,
        exp: iat + DEFAULT_TTL_SECS as i64,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let access_token = sign(&signer, &claims);
    let mut r = Json(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: DEFAULT_TTL_SECS,
        scope,
    })
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

/// A compact JWS, built as Airlock's `token::sign` builds it.
fn sign(signer: &Signer, claims: &AccessClaims<'_>) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialise");
    let mut out = String::with_capacity(signer.header_b64.len() + payload.len() * 4 / 3 + 90);
    out.push_str(&signer.header_b64);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
    let signature = signer.key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut out);
    out
}

/// `base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 section 2.3.1).
fn decode_basic(encoded: &str) -> Option<(String, String)> {
    if encoded.len() > 4 * MAX_CREDENTIAL_LEN {
        return None;
    }
    let raw = STANDARD.decode(encoded).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    let (id, secret) = text.split_once(':')?;
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
    let (id, secret) = (decode(id)?, decode(secret)?);
    if id.is_empty() || id.len() > MAX_CREDENTIAL_LEN || secret.len() > MAX_CREDENTIAL_LEN {
        return None;
    }
    Some((id, secret))
}
