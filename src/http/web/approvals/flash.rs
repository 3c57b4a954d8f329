//! The one-shot message the approvals page shows after a POST. It travels in a cookie
//! whose value is MAC'd with the web session, so nobody else can plant a message.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::{Markup, Render, html};

use crate::auth::Authenticated;
use crate::http::web::layout::text;
use crate::http::web::session::tokens_match;
use crate::state::AppState;

/// Longest flash text kept (the cookie stays far below browsers' 4 KiB).
const MAX_FLASH_CHARS: usize = 600;

/// A one-shot message for the page after a POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Flash {
    error: bool,
    text: String,
}

impl Flash {
    pub(super) fn notice(text: impl Into<String>) -> Flash {
        Flash {
            error: false,
            text: text.into(),
        }
    }

    pub(super) fn error(text: impl Into<String>) -> Flash {
        Flash {
            error: true,
            text: text.into(),
        }
    }

    /// The cookie value: the message, then a MAC binding it to this web session.
    pub(super) fn seal(&self, state: &AppState, auth: &Authenticated) -> String {
        let text: String = self.text.chars().take(MAX_FLASH_CHARS).collect();
        let payload = URL_SAFE_NO_PAD.encode(format!("{}{text}", if self.error { 'e' } else { 'n' }));
        format!("{payload}.{}", flash_mac(state, auth, &payload))
    }

    /// The message in a cookie value, if this session sealed it.
    pub(super) fn open(state: &AppState, auth: &Authenticated, value: &str) -> Option<Flash> {
        let (payload, mac) = value.split_once('.')?;
        // SECURITY: constant-time; a message planted by anyone else is ignored.
        if !tokens_match(&flash_mac(state, auth, payload), mac) {
            return None;
        }
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let mut chars = raw.chars();
        let error = match chars.next()? {
            'e' => true,
            'n' => false,
            _ => return None,
        };
        Some(Flash {
            error,
            text: chars.as_str().to_string(),
        })
    }
}

impl Render for Flash {
    fn render(&self) -> Markup {
        let (class, role) = if self.error {
            ("error", "alert")
        } else {
            ("notice", "status")
        };
        html! {
            p class=(class) id="flash" role=(role) { (text(&self.text)) }
        }
    }
}

fn flash_mac(state: &AppState, auth: &Authenticated, payload: &str) -> String {
    hex::encode(state.hasher.hash(&format!("flash:{}", auth.session.id), payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flash_is_a_paragraph_of_escaped_text() {
        let notice = Flash::notice("Denied <b>bob</b>'s \"request\" & more.");
        assert_eq!(
            notice.render().into_string(),
            "<p class=\"notice\" id=\"flash\" role=\"status\">Denied &lt;b&gt;bob&lt;/b&gt;&#39;s \
             &quot;request&quot; &amp; more.</p>"
        );
        let error = Flash::error("No.");
        assert_eq!(
            error.render().into_string(),
            "<p class=\"error\" id=\"flash\" role=\"alert\">No.</p>"
        );
    }
}
