//! The document around every page, and the pieces several pages share: the signed-in
//! header, message pages, the error paragraph, redirects.
//!
//! Templates are `maud`'s `html!`: the engine escapes every spliced value (`&`, `<`, `>`,
//! `"`), so a value cannot become markup however it is spliced. Text that can carry an
//! apostrophe (prose, and anything a person or client typed) is spliced as [`text`],
//! which also writes `'` as `&#39;`, as these pages always have.

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{Escaper, Markup, PreEscaped, Render, html};

use super::CSRF_FIELD;
use super::session::session_csrf;
use crate::auth::Authenticated;
use crate::state::AppState;

/// Text for a page, escaped by the template engine, with apostrophes as `&#39;`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Text<'a>(&'a str);

/// `s` as page text (see [`Text`]).
pub(super) fn text(s: &str) -> Text<'_> {
    Text(s)
}

impl Render for Text<'_> {
    fn render_to(&self, buffer: &mut String) {
        for (i, part) in self.0.split('\'').enumerate() {
            if i > 0 {
                PreEscaped("&#39;").render_to(buffer);
            }
            // maud's own escaper; writing to a String cannot fail.
            let _ = Escaper::new(buffer).write_str(part);
        }
    }
}

/// The signed-in person, as the header shows them (with the sign-out form's token).
pub(super) struct Nav {
    pub(super) username: String,
    pub(super) csrf: String,
}

impl Nav {
    pub(super) fn of(state: &AppState, auth: &Authenticated) -> Nav {
        Nav {
            username: auth.user.username.clone(),
            csrf: session_csrf(state, auth),
        }
    }
}

/// A whole HTML document with a single narrow form or message. Links are relative, so
/// the pages also work behind a proxy that serves Airlock under a path prefix.
pub(super) fn page(status: StatusCode, title: &str, nav: Option<&Nav>, body: Markup) -> Response {
    document(status, title, nav, body, false)
}

/// [`page`], with room for a list (`wide`) or a single narrow form.
pub(super) fn document(
    status: StatusCode,
    title: &str,
    nav: Option<&Nav>,
    body: Markup,
    wide: bool,
) -> Response {
    (status, markup(title, nav, body, wide)).into_response()
}

/// The markup of [`document`].
fn markup(title: &str, nav: Option<&Nav>, body: Markup, wide: bool) -> Markup {
    html! {
        (PreEscaped("<!doctype html>"))
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (text(title)) " · Airlock" }
                link rel="stylesheet" href="static/airlock.css";
            }
            body {
                header {
                    span class="brand" { "Airlock" }
                    @if let Some(n) = nav {
                        form method="post" action="logout" id="sign-out" {
                            input type="hidden" name=(CSRF_FIELD) value=(text(&n.csrf));
                            span class="who" id="who" { (text(&n.username)) }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main class=[wide.then_some("wide")] {
                    h1 { (text(title)) }
                    (body)
                }
            }
        }
    }
}

/// The error paragraph above a form.
pub(super) fn error_message(message: &str) -> Markup {
    html! {
        p class="error" id="message" role="alert" { (text(message)) }
    }
}

pub(super) fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[derive(Clone, Copy)]
pub(super) enum Tone {
    Notice,
    Error,
}

/// A page that only says something.
pub(super) fn message_page(
    status: StatusCode,
    title: &str,
    nav: Option<&Nav>,
    tone: Tone,
    message: &str,
) -> Response {
    let class = match tone {
        Tone::Notice => "notice",
        Tone::Error => "error",
    };
    let body = html! {
        p class=(class) id="result" role="status" { (text(message)) }
    };
    page(status, title, nav, body)
}

pub(super) fn forbidden_page(nav: Option<&Nav>) -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        "Form expired",
        nav,
        Tone::Error,
        "This form has expired or did not come from Airlock, so nothing was done. \
         Go back, reload the page and try again.",
    )
}

/// The answer to a form posted from another site or origin.
pub(super) fn cross_site_page() -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        "Refused: form from another site",
        None,
        Tone::Error,
        "This form was sent from a page that is not Airlock's own, so nothing was done. \
         If you meant to do this, open Airlock's page yourself and use the form there.",
    )
}

pub(super) fn unavailable_page(nav: Option<&Nav>) -> Response {
    let mut r = message_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again shortly",
        nav,
        Tone::Error,
        "Airlock cannot record this right now, so nothing was done. Try again in a few seconds.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_markup_and_both_quotes() {
        assert_eq!(
            html! { (text(r#"<script>alert("x")</script> & 'y'"#)) }.into_string(),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(html! { (text("BCDF-GHJK")) }.into_string(), "BCDF-GHJK");
        assert_eq!(html! { (text("'")) }.into_string(), "&#39;");
    }

    #[test]
    fn the_document_escapes_the_title_and_the_signed_in_name() {
        let nav = Nav {
            username: "<b>\"eve\"</b>".into(),
            csrf: "a\"b".into(),
        };
        let doc = markup("<i>T</i>", Some(&nav), html! { p { "body" } }, true).into_string();
        assert!(doc.starts_with("<!doctype html><html lang=\"en\">"), "{doc}");
        assert!(
            doc.contains("<title>&lt;i&gt;T&lt;/i&gt; · Airlock</title>"),
            "{doc}"
        );
        assert!(doc.contains("<h1>&lt;i&gt;T&lt;/i&gt;</h1>"), "{doc}");
        assert!(
            doc.contains("<span class=\"who\" id=\"who\">&lt;b&gt;&quot;eve&quot;&lt;/b&gt;</span>"),
            "{doc}"
        );
        assert!(doc.contains("name=\"csrf\" value=\"a&quot;b\""), "{doc}");
        assert!(doc.contains("<main class=\"wide\"><h1>"), "{doc}");
        let narrow = markup("T", None, html! {}, false).into_string();
        assert!(narrow.contains("<main><h1>T</h1></main>"), "{narrow}");
        assert!(!narrow.contains("sign-out"), "{narrow}");
    }
}
