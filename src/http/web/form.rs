//! Reading a posted HTML form: the right type, bounded in bytes and fields, each field
//! once, and wiped from memory afterwards (one of them is a password).

use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use zeroize::Zeroizing;

use super::layout::{Tone, message_page};
use crate::state::AppState;

/// Most fields a form may have (ours have at most six).
const MAX_FIELDS: usize = 16;

/// A parsed form body. Values are wiped from memory when it is dropped (one of them
/// is a password).
pub(super) struct Form {
    fields: Vec<(String, Zeroizing<String>)>,
}

impl Form {
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Read a bounded `application/x-www-form-urlencoded` body; `Err` is the page to answer.
pub(super) async fn read_form(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Form, Response> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(message_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unexpected form",
            None,
            Tone::Error,
            "This page takes an HTML form. Go back and submit the form again.",
        ));
    }
    let limit = state.settings.limits.max_body_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        message_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Form too large",
            None,
            Tone::Error,
            "The form was larger than Airlock accepts. Go back and try again.",
        )
    })?;
    let mut fields: Vec<(String, Zeroizing<String>)> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(&bytes) {
        if fields.len() >= MAX_FIELDS || fields.iter().any(|(k, _)| *k == key) {
            return Err(message_page(
                StatusCode::BAD_REQUEST,
                "Unexpected form",
                None,
                Tone::Error,
                "The form had repeated or unexpected fields. Go back, reload the page and try again.",
            ));
        }
        fields.push((key.into_owned(), Zeroizing::new(value.into_owned())));
    }
    Ok(Form { fields })
}
