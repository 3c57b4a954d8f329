//! The web pages: sign-in and sign-out, TOTP enrolment, and the approvals page.

use serde_json::json;

use super::record::{Jar, Reply};
use super::requests::*;
use super::{Script, html};
use crate::support::PASSWORD;

impl Script<'_> {
    /// Sign-in, sign-out and TOTP enrolment pages, and their refusals.
    pub(super) async fn web_pages(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        w.send("login page: GET", get(app, "/login")).await;

        // casey, signed in since the device flow, sets up an authenticator.
        let jar = &mut self.casey_web;
        let page = w
            .browse("totp page: start", jar, get(app, "/totp"))
            .await
            .expect(200, "the enrolment page");
        let shown = page.text_of("totp-secret");
        w.name(&shown, &format!("<totp-secret:casey {}>", key_shape(&shown)));
        let plain: String = shown.split_whitespace().collect();
        w.name(&plain, &format!("<totp-secret:casey {}>", key_shape(&plain)));
        let mut totp = Totp {
            secret: data_encoding::BASE32_NOPAD
                .decode(plain.as_bytes())
                .expect("base32 key"),
            next: 0,
        };
        let csrf = page.field("csrf");
        w.browse(
            "totp page: activate without CSRF",
            jar,
            form(app, "/totp", &[("code", "123456")]),
        )
        .await;
        w.browse(
            "totp page: a wrong code",
            jar,
            form(
                app,
                "/totp",
                &[("csrf", csrf.as_str()), ("code", totp.wrong().as_str())],
            ),
        )
        .await;
        let code = totp.code().await;
        w.browse(
            "totp page: activate",
            jar,
            form(app, "/totp", &[("csrf", csrf.as_str()), ("code", code.as_str())]),
        )
        .await
        .expect(200, "casey activates TOTP");
        w.browse("totp page: already set up", jar, get(app, "/totp"))
            .await;
        w.browse(
            "totp page: activate when set up",
            jar,
            form(app, "/totp", &[("csrf", csrf.as_str()), ("code", "123456")]),
        )
        .await;
        w.browse("logout: without CSRF", jar, form(app, "/logout", &[]))
            .await;
        w.browse(
            "logout: sign out",
            jar,
            form(app, "/logout", &[("csrf", csrf.as_str())]),
        )
        .await
        .expect(200, "casey signs out");
        w.browse(
            "logout: signed out already",
            jar,
            form(app, "/logout", &[("csrf", csrf.as_str())]),
        )
        .await;
        let code = totp.code().await;
        let r = w
            .send(
                "sessions: sign in with a TOTP code",
                sign_in(app, "casey", PASSWORD, Some(&code)),
            )
            .await
            .expect(200, "casey signs in with her code");
        w.name(&r.s("session_id"), "<session:casey>");
        let wrong_casey_code = totp.wrong();

        // A browser nobody signed in with.
        let mut anon = Jar::default();
        w.browse("totp page: signed out", &mut anon, get(app, "/totp"))
            .await;
        w.browse("device page: signed out", &mut anon, get(app, "/device"))
            .await;
        let page = w
            .browse("approvals page: signed out", &mut anon, get(app, "/approvals"))
            .await;
        let token = page.field("csrf");
        let casey = |csrf: Option<&str>, password: &str, code: &str| {
            login_form(app, csrf, "approvals", "casey", password, code)
        };
        let wrong_password = "not the password at all";
        w.browse("login: no CSRF field", &mut anon, casey(None, wrong_password, ""))
            .await;
        w.send("login: no CSRF cookie", casey(Some(&token), wrong_password, ""))
            .await;
        w.browse(
            "login: posted from another site",
            &mut anon,
            casey(Some(&token), PASSWORD, "").header("sec-fetch-site", "cross-site"),
        )
        .await;
        w.browse(
            "login: posted from another origin",
            &mut anon,
            casey(Some(&token), PASSWORD, "").header("origin", "http://evil.example"),
        )
        .await;
        w.browse(
            "login: JSON body",
            &mut anon,
            post(app, "/login").json(&json!({ "csrf": token })),
        )
        .await;
        w.browse(
            "login: oversized form",
            &mut anon,
            raw_form(app, "/login", format!("csrf={token}&pad={}", oversized(9000))),
        )
        .await;
        w.browse(
            "login: repeated field",
            &mut anon,
            raw_form(
                app,
                "/login",
                format!("csrf={token}&username=casey&username=casey"),
            ),
        )
        .await;
        w.browse(
            "login: wrong password",
            &mut anon,
            casey(Some(&token), wrong_password, ""),
        )
        .await;
        w.browse("login: TOTP needed", &mut anon, casey(Some(&token), PASSWORD, ""))
            .await;
        w.browse(
            "login: wrong TOTP code",
            &mut anon,
            casey(Some(&token), PASSWORD, &wrong_casey_code),
        )
        .await;
        let token = token.as_str();
        w.browse(
            "device page: decide signed out",
            &mut anon,
            form(
                app,
                "/device",
                &[
                    ("csrf", token),
                    ("user_code", "BBBB-BBBB"),
                    ("decision", "approve"),
                ],
            ),
        )
        .await;
        w.browse(
            "totp page: activate signed out",
            &mut anon,
            form(app, "/totp", &[("csrf", token), ("code", "123456")]),
        )
        .await;
        w.browse(
            "approvals page: decide signed out",
            &mut anon,
            form(app, "/approvals", &[("csrf", token), ("decision", "approve")]),
        )
        .await;

        // Every form POST refuses another site's form and a body that is not a form, before
        // anything else.
        for path in ["/device", "/logout", "/totp", "/approvals"] {
            w.browse(
                &format!("forms: POST {path} from another site"),
                &mut anon,
                form(app, path, &[("csrf", token)]).header("sec-fetch-site", "cross-site"),
            )
            .await;
            w.browse(
                &format!("forms: POST {path} as JSON"),
                &mut anon,
                post(app, path).json(&json!({ "csrf": token })),
            )
            .await;
        }

        // rookie goes to the enrolment page, drew to the approvals page.
        let mut rookie_web = Jar::default();
        let page = w.quiet(get(app, "/totp")).await;
        rookie_web.keep(&page);
        w.browse(
            "login: back to the enrolment page",
            &mut rookie_web,
            login_form(app, Some(&page.field("csrf")), "totp", "rookie", PASSWORD, ""),
        )
        .await
        .expect(303, "rookie signs in on the web");
        let page = w.quiet(get(app, "/approvals")).await;
        self.drew_web.keep(&page);
        w.browse(
            "login: back to the approvals page",
            &mut self.drew_web,
            login_form(app, Some(&page.field("csrf")), "approvals", "drew", PASSWORD, ""),
        )
        .await
        .expect(303, "drew signs in on the web");
        w.browse(
            "approvals page: an approver without TOTP, nothing to see",
            &mut self.drew_web,
            get(app, "/approvals"),
        )
        .await;
    }

    /// The approvals page: views by role, and every kind of decision posted from it.
    pub(super) async fn web_approvals(&mut self) {
        let app = self.app;
        let wrong = self.blake_totp.wrong();
        let w = &mut self.w;
        let jar = &mut self.blake_web;
        let page = w.quiet(get(app, "/approvals")).await;
        jar.keep(&page);
        let code = self.blake_totp.code().await;
        w.browse(
            "login: an approver with a TOTP code",
            jar,
            login_form(
                app,
                Some(&page.field("csrf")),
                "approvals",
                "blake",
                PASSWORD,
                &code,
            ),
        )
        .await
        .expect(303, "blake signs in on the web");
        let page = w
            .browse("approvals page: an approver", jar, get(app, "/approvals"))
            .await
            .expect(200, "blake's approvals page");
        let csrf = page.field("csrf");
        let request_id = |page: &Reply, reason: &str| -> String {
            let nodes = html::parse(&page.text);
            let article = html::find_all(&nodes, &|e| e.name == "article" && e.text().contains(reason))
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no request '{reason}' on the page"))
                .clone();
            article
                .attr("id")
                .and_then(|id| id.strip_prefix("req-"))
                .expect("request anchor")
                .to_string()
        };
        let e4 = request_id(&page, "E4 ");
        let e5 = request_id(&page, "E5 ");
        w.browse(
            "approvals page: decide without CSRF",
            jar,
            form(
                app,
                "/approvals",
                &[("id", e4.as_str()), ("decision", "approve"), ("code", "123456")],
            ),
        )
        .await;
        let unknown = "00000000-0000-4000-8000-000000000000";
        let code = self.blake_totp.code().await;
        let reason = "the cache is <shared> & \"needed\"";
        for (label, fields) in [
            ("no request named", vec![("decision", "approve")]),
            ("no decision", vec![("id", e4.as_str())]),
            (
                "approve without a code",
                vec![("id", e4.as_str()), ("decision", "approve"), ("code", " ")],
            ),
            (
                "approve with a wrong code",
                vec![
                    ("id", e4.as_str()),
                    ("decision", "approve"),
                    ("code", wrong.as_str()),
                ],
            ),
            (
                "approve an unknown request",
                vec![("id", unknown), ("decision", "approve"), ("code", "123456")],
            ),
            (
                "approve",
                vec![
                    ("id", e4.as_str()),
                    ("decision", "approve"),
                    ("code", code.as_str()),
                ],
            ),
            (
                "deny without a reason",
                vec![("id", e5.as_str()), ("decision", "deny"), ("reason", "")],
            ),
            (
                "deny",
                vec![("id", e5.as_str()), ("decision", "deny"), ("reason", reason)],
            ),
            (
                "deny a decided request",
                vec![("id", e5.as_str()), ("decision", "deny"), ("reason", "again")],
            ),
        ] {
            let mut fields = fields;
            fields.insert(0, ("csrf", csrf.as_str()));
            w.browse(
                &format!("approvals page: {label}"),
                jar,
                form(app, "/approvals", &fields),
            )
            .await;
            w.browse(
                &format!("approvals page: after {label}"),
                jar,
                get(app, "/approvals"),
            )
            .await;
        }
        w.browse(
            "approvals page: a requester and owner",
            &mut self.dana_web,
            get(app, "/approvals"),
        )
        .await;
        w.browse(
            "approvals page: an approver without TOTP, own request",
            &mut self.drew_web,
            get(app, "/approvals"),
        )
        .await;
        self.keep("e4", e4);
    }
}
