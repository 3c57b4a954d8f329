//! Text that people and programs choose reaches the pages only as text: a request's
//! reason, a denial's note and a device request's program name, each carrying markup,
//! both quotes and an ampersand, come out escaped on the approvals and device pages.
//! (Usernames and scopes cannot carry markup at all: both are checked against a fixed
//! alphabet before they are stored.)

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    self, Backend, Person, TestApp, cookie_pair, hidden, person_with_totp, set_cookie, spawn_app,
};

crate::both_backends!(
    a_reason_and_a_denial_note_with_markup_are_escaped_on_the_approvals_page,
    a_device_request_from_a_program_with_markup_in_its_name_is_shown_escaped,
);

/// Signs in on the web through `start` (a page that shows the sign-in form), with a
/// fresh code; returns the session cookie and where the sign-in sent the browser.
async fn web_sign_in(app: &TestApp, start: &str, next: &str, p: &mut Person) -> (String, String) {
    let r = app.client.get(app.url(start)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let pre_session = cookie_pair(&set_cookie(r.headers(), "airlock_csrf").expect("a pre-session cookie"));
    let form = r.text().await.unwrap();
    let mut fields = vec![
        ("csrf".to_string(), hidden(&form, "csrf")),
        ("next".to_string(), next.to_string()),
        ("username".to_string(), p.name().to_string()),
        ("password".to_string(), support::PASSWORD.to_string()),
        ("code".to_string(), p.code().await),
    ];
    if form.contains("name=\"user_code\"") {
        fields.push(("user_code".to_string(), hidden(&form, "user_code")));
    }
    let r = app
        .client
        .post(app.url("/login"))
        .header("cookie", pre_session)
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let session = cookie_pair(&set_cookie(r.headers(), "airlock_web").expect("a session cookie"));
    (session, location)
}

async fn page(app: &TestApp, path: &str, cookies: &str) -> String {
    let r = app
        .client
        .get(app.url(path))
        .header("cookie", cookies)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.text().await.unwrap()
}

async fn a_reason_and_a_denial_note_with_markup_are_escaped_on_the_approvals_page(backend: Backend) {
    // Arrange: bob asks for prod with a reason full of markup; carol approves prod.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let reason = r#"<script>alert("x")</script> it's <b>bold</b> & done"#;
    let (status, body) = support::request(&app, &bob.token, "prod", &["db:write"], "30m", reason).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (session, location) = web_sign_in(&app, "/approvals", "approvals", &mut carol).await;
    assert_eq!(location, "approvals");

    // Act: carol reads the page, then denies with a note full of markup.
    let pending = page(&app, "/approvals", &session).await;
    let note = r#""><img src=x onerror="alert(1)"> 'no' & <i>never</i>"#;
    let r = app
        .client
        .post(app.url("/approvals"))
        .header("cookie", &session)
        .form(&[
            ("csrf", hidden(&pending, "csrf").as_str()),
            ("id", id.as_str()),
            ("decision", "deny"),
            ("reason", note),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let flash = cookie_pair(&set_cookie(r.headers(), "airlock_flash").expect("a flash cookie"));
    let decided = page(&app, "/approvals", &format!("{session}; {flash}")).await;

    // Assert: the reason and the note are text, on the pending and the decided request.
    let escaped_reason =
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; it&#39;s &lt;b&gt;bold&lt;/b&gt; &amp; done";
    assert!(
        pending.contains(&format!("<dd class=\"reason\">{escaped_reason}</dd>")),
        "{pending}"
    );
    assert!(
        decided.contains(&format!("<dd class=\"reason\">{escaped_reason}</dd>")),
        "{decided}"
    );
    let escaped_note = "&quot;&gt;&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &#39;no&#39; &amp; \
                        &lt;i&gt;never&lt;/i&gt;";
    let shown_note = format!("<span class=\"note\">{escaped_note}</span>");
    assert_eq!(
        decided.matches(&shown_note).count(),
        2,
        "the note in the outcome and in the history:\n{decided}"
    );
    assert!(decided.contains(&format!(
        "id=\"outcome-{id}\">Denied by <strong>carol</strong>: {shown_note}"
    )));
    assert!(decided.contains("id=\"flash\""), "{decided}");
    for page in [&pending, &decided] {
        for raw in ["<script", "<b>bold", "<img", "<i>never"] {
            assert!(!page.contains(raw), "{raw} in:\n{page}");
        }
    }
}

async fn a_device_request_from_a_program_with_markup_in_its_name_is_shown_escaped(backend: Backend) {
    // Arrange: a program whose User-Agent is markup starts a device login.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut alice = person_with_totp(&app, "alice", &["developer"]).await;
    let r = app
        .client
        .post(app.url("/oauth/device_authorization"))
        .header("user-agent", r#"<script>alert("ua")</script> it's & more"#)
        .form(&[("client_id", airlock::domain::CLI_CLIENT_ID)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let device: Value = r.json().await.unwrap();
    let user_code = device["user_code"].as_str().unwrap().to_string();
    let path = format!("/device?user_code={user_code}");

    // Act: alice signs in from the link and sees the request.
    let (session, location) = web_sign_in(&app, &path, "device", &mut alice).await;
    assert_eq!(location, format!("device?user_code={user_code}"));
    let confirm = page(&app, &path, &session).await;

    // Assert
    assert!(
        confirm.contains(
            "<strong id=\"user-agent\">&lt;script&gt;alert(&quot;ua&quot;)&lt;/script&gt; it&#39;s &amp; \
             more</strong>"
        ),
        "{confirm}"
    );
    assert!(!confirm.contains("<script"), "{confirm}");
}
