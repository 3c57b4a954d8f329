//! JWT header and claims parsing and verification, through `token::verify` (environment
//! access tokens) and `token::verify_session` (Airlock's session tokens), against real
//! key sets: the key ring is loaded once, as `serve` does, from a throwaway SQLite store.
//!
//! Arbitrary bytes never carry a valid signature, so three of the four shapes of input
//! are signed by a key in the published set: that is what reaches claims parsing and
//! validation. Oracles: nothing panics; a token verifies in at most one place (its own
//! environment, never another, never as a session); what verifies has our issuer,
//! audience and a live time window.
#![no_main]

use std::sync::OnceLock;

use airlock::domain::KeySet;
use airlock::keyring::KeyRing;
use airlock::secrets::MasterKey;
use airlock::store::{self, ConnectOptions};
use airlock::token::{self, Jwk, Signer};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::{arbitrary, fuzz_target};

const ISSUER: &str = "https://airlock.example";
/// The clock at start: jsonwebtoken checks `exp`/`nbf` against the real clock, and
/// Airlock's own check against the `now` it is given, as in production.
fn now() -> i64 {
    static NOW: OnceLock<i64> = OnceLock::new();
    *NOW.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    })
}

struct Keys {
    dev_signer: std::sync::Arc<Signer>,
    session_signer: std::sync::Arc<Signer>,
    dev: Vec<Jwk>,
    prod: Vec<Jwk>,
    session: Vec<Jwk>,
    /// A key published in `dev` whose private half we hold, to sign arbitrary headers.
    raw: SigningKey,
    _dir: tempfile::TempDir,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/fuzz.db", dir.path().display());
        let sets = [
            KeySet::Environment("dev".into()),
            KeySet::Environment("prod".into()),
            KeySet::Session,
        ];
        let ring = rt.block_on(async {
            let store = store::connect(&url, &ConnectOptions::default()).await.unwrap();
            let master = MasterKey::generate().unwrap();
            KeyRing::load(store.as_ref(), &master, &sets).await.unwrap()
        });
        let raw = SigningKey::from_bytes(&[7u8; 32]);
        let mut dev = ring.jwks(&sets[0]).unwrap();
        dev.push(Jwk {
            kty: "OKP",
            crv: "Ed25519",
            x: URL_SAFE_NO_PAD.encode(raw.verifying_key().as_bytes()),
            kid: "fuzz-raw".into(),
            alg: "EdDSA",
            use_: "sig",
        });
        Keys {
            dev_signer: ring.signer(&sets[0]).unwrap(),
            session_signer: ring.signer(&sets[2]).unwrap(),
            prod: ring.jwks(&sets[1]).unwrap(),
            session: ring.jwks(&sets[2]).unwrap(),
            dev,
            raw,
            _dir: dir,
        }
    })
}

/// A claims field: right, wrong, missing, or of another JSON type.
#[derive(Debug, arbitrary::Arbitrary)]
enum Field<'a> {
    Right,
    Missing,
    Text(&'a str),
    Number(i64),
    Float(f64),
    Null,
    List(Vec<&'a str>),
}

impl Field<'_> {
    fn put(
        &self,
        claims: &mut serde_json::Map<String, serde_json::Value>,
        name: &str,
        right: serde_json::Value,
    ) {
        let v = match self {
            Field::Right => right,
            Field::Missing => return,
            Field::Text(t) => serde_json::json!(t),
            Field::Number(n) => serde_json::json!(n),
            Field::Float(f) => serde_json::json!(f),
            Field::Null => serde_json::Value::Null,
            Field::List(l) => serde_json::json!(l),
        };
        claims.insert(name.into(), v);
    }
}

#[derive(Debug, arbitrary::Arbitrary)]
struct Shaped<'a> {
    iss: Field<'a>,
    aud: Field<'a>,
    sub: Field<'a>,
    jti: Field<'a>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    others: Vec<(Field<'a>, Field<'a>)>,
    extra: Vec<(&'a str, &'a str)>,
    /// Sign with the session key instead of dev's.
    as_session: bool,
}

#[derive(Debug, arbitrary::Arbitrary)]
enum Input<'a> {
    /// Arbitrary text as a compact JWT.
    Compact(&'a [u8]),
    /// Arbitrary bytes as the claims JSON, under our own header and signature.
    SignedPayload(&'a [u8]),
    /// Near-valid claims with fuzzed members, signed by dev's (or the session) key.
    Shaped(Shaped<'a>),
    /// Arbitrary header and payload, signed by a key dev publishes.
    RawSigned { header: &'a [u8], payload: &'a [u8] },
}

fn sign_raw(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let mut out = URL_SAFE_NO_PAD.encode(header);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut out);
    let sig = key.sign(out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut out);
    out
}

fn check(token: &str, leeway: u64) {
    let k = keys();
    let now = now();
    let dev_iss = format!("{ISSUER}/envs/dev");
    let prod_iss = format!("{ISSUER}/envs/prod");
    let dev = token::verify(token, &k.dev, &dev_iss, "airlock:dev", now, leeway);
    let prod = token::verify(token, &k.prod, &prod_iss, "airlock:prod", now, leeway);
    let session = token::verify_session(token, &k.session, ISSUER, now);
    // SECURITY: invariants 1 and 3: one token, one place.
    let accepted = [dev.is_ok(), prod.is_ok(), session.is_ok()];
    assert!(
        accepted.iter().filter(|a| **a).count() <= 1,
        "accepted in two places: {accepted:?}"
    );
    assert!(prod.is_err(), "prod accepted a token no prod key signed");
    if let Ok(c) = dev {
        assert_eq!(c.iss, dev_iss);
        assert_eq!(c.aud, "airlock:dev");
        let leeway = leeway as i64;
        assert!(c.exp.saturating_add(leeway) > now && c.nbf.saturating_sub(leeway) <= now);
    }
    if let Ok(c) = session {
        assert_eq!(c.iss, ISSUER);
        assert_eq!(c.aud, token::SESSION_AUDIENCE);
        assert!(c.exp > now && c.nbf <= now);
    }
}

fuzz_target!(|input: (Input<'_>, u8)| {
    let k = keys();
    let (input, leeway) = input;
    // Production passes 0; a resource server may allow a minute or two.
    let leeway = u64::from(leeway) * 2;
    match input {
        Input::Compact(bytes) => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                check(text, leeway);
            }
        }
        Input::SignedPayload(bytes) => {
            let Ok(claims) = serde_json::from_slice::<serde_json::Value>(bytes) else {
                return;
            };
            check(&token::sign(&k.dev_signer, &claims).unwrap(), leeway);
            check(&token::sign(&k.session_signer, &claims).unwrap(), leeway);
        }
        Input::Shaped(s) => {
            let mut c = serde_json::Map::new();
            let (iss, aud) = if s.as_session {
                (ISSUER.to_string(), token::SESSION_AUDIENCE.to_string())
            } else {
                (format!("{ISSUER}/envs/dev"), "airlock:dev".to_string())
            };
            s.iss.put(&mut c, "iss", iss.into());
            s.aud.put(&mut c, "aud", aud.into());
            s.sub.put(&mut c, "sub", "agt_fuzz".into());
            s.jti.put(&mut c, "jti", uuid::Uuid::nil().to_string().into());
            for (name, v) in [("exp", s.exp), ("nbf", s.nbf), ("iat", s.iat)] {
                if let Some(v) = v {
                    c.insert(name.into(), v.into());
                }
            }
            for (name, right) in [
                ("client_id", "agt_fuzz"),
                ("scope", "db:read"),
                ("env", "dev"),
                ("username", "bob"),
                ("sid", "00000000-0000-0000-0000-000000000000"),
            ] {
                c.insert(name.into(), right.into());
            }
            for (i, (a, b)) in s.others.iter().enumerate() {
                let name = ["act", "grant", "sid", "scope", "env", "client_id", "username"][i % 7];
                a.put(&mut c, name, serde_json::json!({ "sub": "process:x" }));
                b.put(&mut c, "act", serde_json::json!({ "sub": "process:x" }));
            }
            for (name, v) in s.extra {
                c.insert(name.into(), v.into());
            }
            let signer = if s.as_session {
                &k.session_signer
            } else {
                &k.dev_signer
            };
            check(
                &token::sign(signer, &serde_json::Value::Object(c)).unwrap(),
                leeway,
            );
        }
        Input::RawSigned { header, payload } => {
            check(&sign_raw(&k.raw, header, payload), leeway);
        }
    }
});
