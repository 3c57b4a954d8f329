//! The web forms resist login CSRF on plain-http loopback (where cookies have no
//! `__Host-` prefix and another local port can plant them): the sign-in token is the
//! server's HMAC of the pre-session cookie, and every form posted from another site or
//! origin (`Sec-Fetch-Site`, `Origin`) is refused before it is read.

use airlock::people;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{
    self, Backend, approvals_page, device_authorization, person, person_with_totp, post_sign_in, set_cookie,
    sign_in_form, spawn_app, web_session,
};

async fn a_sign_in_token_the_server_did_not_mint_for_that_cookie_is_refused(backend: Backend) {
    // Arrange: erin, and a pre-session pair another local port could plant: any
    // well-formed cookie, with a token of the planter's choosing.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    person(&app, "erin", &[]).await;
    let planted = "A".repeat(43);
    let planted_cookie = format!("airlock_csrf={planted}");
    let (minted_cookie, minted_token) = sign_in_form(&app).await;
    let sign_in = |cookie: String, token: String| {
        let app = &app;
        async move { post_sign_in(app, &cookie, &token, "erin", support::PASSWORD, "", &[]).await }
    };

    // Act + Assert: the cookie's value as the token (the old double submit), another
    // token, and a real token minted for another pre-session: all 403, nobody signed in.
    for (cookie, token) in [
        (planted_cookie.clone(), planted.clone()),
        (planted_cookie.clone(), "0".repeat(64)),
        (planted_cookie.clone(), minted_token.clone()),
        (
            minted_cookie.clone(),
            minted_cookie["airlock_csrf=".len()..].to_string(),
        ),
    ] {
        let r = sign_in(cookie.clone(), token.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{cookie} / {token}");
        assert!(set_cookie(r.headers(), "airlock_web").is_none());
    }

    // The pair the server minted signs in.
    let r = sign_in(minted_cookie, minted_token).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(r.headers(), "airlock_web").is_some());
}

async fn forms_posted_from_another_site_or_origin_are_refused_before_anything_happens(backend: Backend) {
    // Arrange: erin signed in on the web, a device code waiting for her decision, and a
    // request waiting on the approvals page.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let id = support::request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let code = carol.code().await;
    let session = web_session(&app, "carol", support::PASSWORD, &code).await;
    let (_, csrf) = approvals_page(&app, &session).await;
    let (status, device) =
        support::status_json(device_authorization(&app, airlock::domain::CLI_CLIENT_ID).await).await;
    assert_eq!(status, StatusCode::OK, "{device}");
    let user_code = device["user_code"].as_str().unwrap().to_string();
    let own_origin = app.base.clone();
    let other_port = "http://127.0.0.1:1".to_string();
    let elsewhere: Vec<Vec<(&str, &str)>> = vec![
        vec![("sec-fetch-site", "cross-site")],
        // Another port of the same loopback host is "same-site": the cookie planter.
        vec![("sec-fetch-site", "same-site"), ("origin", other_port.as_str())],
        vec![("origin", other_port.as_str())],
        vec![("origin", "https://evil.example")],
        // `null` vouched for by nobody.
        vec![("origin", "null")],
    ];
    let post = |path: &str, form: Vec<(&str, String)>, headers: &[(&str, &str)]| {
        let mut req = app
            .client
            .post(app.url(path))
            .header("cookie", &session)
            .form(&form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let approve_code = carol.code().await;
    let forms: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "/device",
            vec![
                ("csrf", csrf.clone()),
                ("user_code", user_code.clone()),
                ("decision", "approve".into()),
            ],
        ),
        (
            "/approvals",
            vec![
                ("csrf", csrf.clone()),
                ("id", id.clone()),
                ("decision", "approve".into()),
                ("code", approve_code.clone()),
            ],
        ),
        ("/totp", vec![("csrf", csrf.clone()), ("code", "123456".into())]),
        ("/logout", vec![("csrf", csrf.clone())]),
    ];

    // Act + Assert: every form, with a valid session and token, from elsewhere: 403.
    for (path, form) in &forms {
        for headers in &elsewhere {
            let r = post(path, form.clone(), headers).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} {headers:?}");
            assert!(set_cookie(r.headers(), "airlock_flash").is_none());
            let page = r.text().await.unwrap();
            assert!(page.contains("not Airlock&#39;s own"), "{path}: {page}");
        }
    }
    // Nothing happened: the code is pending, the request too, the session lives.
    assert!(people::pending_device(&app.state, &user_code).await.is_ok());
    let (_, view) = support::show(&app, &carol.token, &id, None).await;
    assert_eq!(view["state"], "pending", "{view}");
    assert_eq!(view["approvals"], json!([]), "{view}");
    let (page, _) = approvals_page(&app, &session).await;
    assert!(page.contains(&format!("id=\"approve-{id}\"")), "still signed in");

    // Sign-in too, even with a server-minted pair.
    let (cookie, token) = sign_in_form(&app).await;
    let code = carol.code().await;
    for headers in &elsewhere {
        let r = post_sign_in(&app, &cookie, &token, "carol", support::PASSWORD, &code, headers).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{headers:?}");
        assert!(set_cookie(r.headers(), "airlock_web").is_none());
    }

    // What a browser sends from Airlock's own page passes: `same-origin`, with `Origin`
    // ours or `null` (our pages send `Referrer-Policy: no-referrer`).
    let r = post_sign_in(
        &app,
        &cookie,
        &token,
        "carol",
        support::PASSWORD,
        &code,
        &[("sec-fetch-site", "same-origin"), ("origin", "null")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = post(
        "/device",
        forms[0].1.clone(),
        &[("sec-fetch-site", "same-origin"), ("origin", own_origin.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Approved: return to your terminal.")
    );
}

crate::both_backends!(
    a_sign_in_token_the_server_did_not_mint_for_that_cookie_is_refused,
    forms_posted_from_another_site_or_origin_are_refused_before_anything_happens,
);
