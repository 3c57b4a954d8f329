//! The contract between the server and its clients: every JSON body the HTTP API sends
//! or reads, as plain serde types that both `http/` (serializing answers, reading
//! requests) and the CLI's client (`cli/client/`) use. Pure: no I/O, no state.
//!
//! One file per area: [`oauth`] (token endpoints, device flow, discovery,
//! introspection), [`people`] (sign-in, `/v1/me`, `/v1/users`), [`agents`],
//! [`escalations`] (requests, decisions, grants), [`error`] (the two error bodies) and
//! [`health`].
//!
//! # Byte-for-byte
//!
//! The bodies are public API and must not change by a byte when code moves. serde_json
//! is built without `preserve_order`, so a body that is (or once was) built with `json!`
//! or passed through a `serde_json::Value` comes out with its keys sorted, while a struct
//! serializes its fields in declaration order. Each type here therefore declares its
//! fields in the order its body has always had, says which order that is, keeps `null`
//! where `null` is sent and `skip_serializing_if` exactly where a field is left out.
//! [`Sorted`] carries the bodies whose items always went through a `Value` (lists of
//! escalations and grants, an agent with its new secret). The unit tests beside each
//! type pin the order.

pub mod agents;
pub mod error;
pub mod escalations;
pub mod health;
pub mod oauth;
pub mod people;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use agents::{Agent, AgentCreated, AgentFilter, NewAgent};
pub use error::{ApiErrorBody, ApiErrorDetail, ErrorBody, OAuthErrorBody};
pub use escalations::{EscalationView, GrantView};
pub use oauth::{DeviceAuthorization, SessionTokens, TokenForm, TokenResponse};
pub use people::{Me, TotpEnrolment, User};

/// A value whose JSON object keys come out sorted alphabetically, at every depth: it is
/// serialized through a `serde_json::Value` (a sorted map in this build), as these
/// bodies always were. Reads like `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sorted<T>(pub T);

impl<T: Serialize> Serialize for Sorted<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::to_value(&self.0)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Sorted<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Sorted)
    }
}

/// Write a secret into a body (requests the CLI sends, the one answer that carries an
/// agent's new secret). `SecretString` will not serialize by itself, which keeps every
/// other secret out of bodies and logs.
pub(crate) fn expose<S: Serializer>(
    secret: &secrecy::SecretString,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secrecy::ExposeSecret::expose_secret(secret))
}

/// [`expose`] for an optional secret (serialized only when present).
pub(crate) fn expose_option<S: Serializer>(
    secret: &Option<secrecy::SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(s) => expose(s, serializer),
        None => serializer.serialize_none(),
    }
}

/// Serialize `value` compactly, as the server sends it (tests of the byte order).
#[cfg(test)]
pub(crate) fn compact(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("serializable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Out {
        zebra: u8,
        apple: Inner,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Inner {
        y: u8,
        b: u8,
    }

    #[test]
    fn sorted_sorts_keys_at_every_depth_and_reads_like_its_value() {
        let v = Out {
            zebra: 1,
            apple: Inner { y: 2, b: 3 },
        };
        assert_eq!(compact(&v), r#"{"zebra":1,"apple":{"y":2,"b":3}}"#);
        let sorted = Sorted(v);
        let text = compact(&sorted);
        assert_eq!(text, r#"{"apple":{"b":3,"y":2},"zebra":1}"#);
        let back: Sorted<Out> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sorted);
    }
}
