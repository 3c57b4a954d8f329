use super::*;

fn created() -> Notification {
    Notification {
        event: ESCALATION_CREATED,
        escalation_id: Uuid::nil(),
        environment: "prod".into(),
        scopes: vec!["db:write".into()],
        destructive_scopes: vec![],
        requester: "bob".into(),
        sponsor: None,
        reason: "run migration 42".into(),
        state: "pending".into(),
        actor: None,
        grant_id: None,
        grant_ends_at: None,
        duration_secs: 1800,
        url: "https://airlock.example.com/approvals/00000000-0000-0000-0000-000000000000".into(),
    }
}

#[test]
fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
    // Computed independently: python3 hmac.new(key, b'1700000000.{"a":1}', 'sha256').
    assert_eq!(
        sign(b"whsec-0123456789abcdef", 1_700_000_000, r#"{"a":1}"#),
        "d77c78ac4da074c56908b55eac30358b2a7bfc573be4c76819af5102e8dcf939"
    );
    // RFC 4231 test case 2, to show the HMAC itself is standard.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(b"Jefe").expect("any key length");
    mac.update(b"what do ya want for nothing?");
    assert_eq!(
        hex::encode(mac.finalize().into_bytes()),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Any change to the timestamp or the body changes the signature.
    let base = sign(b"k", 1, "x");
    assert_ne!(base, sign(b"k", 2, "x"));
    assert_ne!(base, sign(b"k", 1, "y"));
    assert_ne!(base, sign(b"K", 1, "x"));
    assert!(base.len() == 64 && base.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
}

#[test]
fn slack_control_characters_in_user_text_are_escaped() {
    assert_eq!(
        slack_escape("<!channel> & <https://evil.example|click> <@U123>"),
        "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt; &lt;@U123&gt;"
    );
    assert_eq!(
        slack_escape("line one\nline two\r\u{2028}x\t"),
        "line one line two  x "
    );
    assert_eq!(slack_escape("&amp;"), "&amp;amp;");
}

#[test]
fn a_reason_cannot_inject_a_mention_a_link_or_a_line() {
    let mut n = created();
    n.reason =
        "<!channel> approve here: <https://evil.example/approve|Approve>\n:white_check_mark: approved".into();
    n.requester = "agent <!here> (cid)".into();
    n.sponsor = Some("mallory & co".into());
    let text = slack_text(&n);
    // The only control sequence is our link to the approvals page.
    assert_eq!(text.matches('<').count(), 1, "{text}");
    assert_eq!(text.matches('>').count(), 1, "{text}");
    assert!(
        text.contains(&format!("<{}|open the approvals page>", n.url)),
        "{text}"
    );
    assert!(
        text.contains("&lt;!channel&gt;") && text.contains("&lt;!here&gt;"),
        "{text}"
    );
    assert!(text.contains("mallory &amp; co"), "{text}");
    assert!(!text.contains('\n'), "{text}");
}

/// The parts of `text` inside code spans (odd pieces between backticks) and outside.
fn spans(text: &str) -> (Vec<&str>, Vec<&str>) {
    let pieces: Vec<&str> = text.split('`').collect();
    let inside = pieces.iter().skip(1).step_by(2).copied().collect();
    let outside = pieces.iter().step_by(2).copied().collect();
    (inside, outside)
}

#[test]
fn user_text_is_an_inert_code_span_without_links_or_formatting() {
    let mut n = created();
    n.reason =
        "*URGENT* approve at https://evil.example/approvals now _really_ ~not~ `x` www.evil.example".into();
    n.requester = "_mallory_".into();
    n.sponsor = Some("boss@evil.example".into());
    let text = slack_text(&n);
    // Assert: the reason is one span, its backticks gone; nothing user-written is outside a span.
    assert_eq!(text.matches('`').count() % 2, 0, "{text}");
    let (inside, outside) = spans(&text);
    assert!(
        inside.contains(
            &"*URGENT* approve at https://evil.example/approvals now _really_ ~not~ 'x' www.evil.example"
        ),
        "{text}"
    );
    assert!(
        inside.contains(&"_mallory_") && inside.contains(&"boss@evil.example"),
        "{text}"
    );
    let outside = outside.concat();
    for needle in ["evil", "URGENT", "_really_", "~not~", "mallory"] {
        assert!(!outside.contains(needle), "{needle} outside a code span: {text}");
    }
    // The one link is ours.
    assert!(
        outside.contains(&format!("<{}|open the approvals page>", n.url)),
        "{text}"
    );

    // An approver's name and a decision note cannot break out either.
    let mut d = created();
    d.event = ESCALATION_DECIDED;
    d.state = "denied".into();
    d.actor = Some("`*eve*` https://evil.example".into());
    let text = slack_text(&d);
    let (inside, outside) = spans(&text);
    assert!(inside.contains(&"'*eve*' https://evil.example"), "{text}");
    assert!(!outside.concat().contains("evil"), "{text}");
    assert_eq!(slack_code("  "), "`-`");
    assert_eq!(slack_code(" a & <b> "), "`a &amp; &lt;b&gt;`");
}

#[test]
fn the_slack_text_summarises_the_request() {
    let mut n = created();
    n.destructive_scopes = vec!["db:drop".into()];
    n.scopes.push("db:drop".into());
    let text = slack_text(&n);
    assert!(
        text.starts_with(":lock: `bob` asks for *db:write, db:drop* in *prod* for 30m: `run migration 42`"),
        "{text}"
    );
    assert!(text.contains("destructive: *db:drop*"), "{text}");
    assert!(text.ends_with("review: <https://airlock.example.com/approvals/00000000-0000-0000-0000-000000000000|open the approvals page>"), "{text}");

    let mut d = created();
    d.event = ESCALATION_DECIDED;
    d.state = "denied".into();
    d.actor = Some("alice".into());
    assert!(slack_text(&d).starts_with(":no_entry: `alice` denied `bob`'s request for *db:write* in *prod*"));
    d.state = "approved".into();
    d.grant_ends_at = Some(time::macros::datetime!(2030-01-01 12:00 UTC));
    assert!(
        slack_text(&d).contains("approved `bob`'s request")
            && slack_text(&d).contains("2030-01-01T12:00:00Z")
    );
    let mut e = created();
    e.event = ESCALATION_EXPIRED;
    e.state = "expired".into();
    assert!(slack_text(&e).contains("expired without a decision"));
    let mut r = created();
    r.event = GRANT_REVOKED;
    r.actor = Some("carol".into());
    assert!(slack_text(&r).starts_with(":no_entry_sign: `carol` revoked `bob`'s grant"));
}

#[test]
fn long_reasons_are_cut_to_500_characters_in_the_text() {
    let mut n = created();
    n.reason = "é".repeat(2000);
    let text = slack_text(&n);
    assert_eq!(text.matches('é').count(), REASON_MAX_CHARS - 1);
    assert!(text.contains("é…`"), "{text}");
    assert_eq!(truncate_chars("abc", 3), "abc");
    assert_eq!(truncate_chars("abcd", 3), "ab…");
    // The structured field keeps the reason as given.
    assert_eq!(
        render_body(&n)["escalation"]["reason"]
            .as_str()
            .map(|r| r.chars().count()),
        Some(2000)
    );
}

#[test]
fn the_body_carries_text_structure_and_only_the_page_link() {
    let body = render_body(&created());
    assert_eq!(body["event"], "escalation.created");
    assert_eq!(body["url"], created().url);
    assert_eq!(body["escalation"]["scopes"][0], "db:write");
    assert_eq!(body["escalation"]["duration_secs"], 1800);
    assert_eq!(body["escalation"]["grant_ends_at"], serde_json::Value::Null);
    let text = body["text"].as_str().unwrap_or_default();
    assert!(text.contains(&created().url));
    assert!(!body.to_string().to_lowercase().contains("/approve"));
}

#[test]
fn event_names_match_the_configuration() {
    assert_eq!(
        [
            ESCALATION_CREATED,
            ESCALATION_DECIDED,
            ESCALATION_EXPIRED,
            GRANT_REVOKED
        ],
        crate::config::WEBHOOK_EVENTS
    );
}

#[test]
fn retries_back_off_exponentially_up_to_five_minutes() {
    let base = Duration::from_secs(2);
    for (attempt, expected) in [(1, 2), (2, 4), (3, 8), (4, 16)] {
        let d = backoff(base, attempt);
        let low = Duration::from_secs(expected);
        assert!(d >= low && d <= low.mul_f64(1.1), "attempt {attempt}: {d:?}");
    }
    assert_eq!(backoff(base, 9), WEBHOOK_BACKOFF_CEILING);
    assert_eq!(backoff(base, 40), WEBHOOK_BACKOFF_CEILING);
}

#[test]
fn only_transient_failures_are_retried() {
    assert!(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR).retryable());
    assert!(Failure::Status(StatusCode::SERVICE_UNAVAILABLE).retryable());
    assert!(Failure::Status(StatusCode::TOO_MANY_REQUESTS).retryable());
    assert!(Failure::Timeout.retryable() && Failure::Connect.retryable() && Failure::Network.retryable());
    assert!(!Failure::Status(StatusCode::BAD_REQUEST).retryable());
    assert!(!Failure::Status(StatusCode::UNAUTHORIZED).retryable());
    assert!(!Failure::Status(StatusCode::FOUND).retryable());
    assert_eq!(Failure::Status(StatusCode::BAD_GATEWAY).detail(), 502);
    assert_eq!(Failure::Timeout.detail(), "timeout");
}

#[tokio::test]
async fn a_disabled_notifier_accepts_and_drains_immediately() {
    let n = Notifier::disabled();
    assert!(!n.is_enabled());
    n.notify(created());
    assert!(n.drain(Duration::from_millis(10)).await);
}
