//! Webhook notifications against a real receiver on 127.0.0.1: signing, retries, the
//! audit trail of failed deliveries, that a notification only links to the approvals
//! page, and that a requester's text reaches it inert. The notifier is driven directly
//! (a fresh store per test on each backend), or by the server itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock::config::{Settings, Sources, WebhookSettings};
use airlock::notify::{self, Notification, Notifier};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::support::{
    Backend, TestDb, approve, events_of, fresh, person_with_totp, request, request_ok, spawn_app_with,
};

const SECRET: &str = "whsec-test-0123456789abcdef";
const PAGE: &str = "https://airlock.example.com/approvals/";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("header {name} missing"))
    }
}

/// A webhook receiver answering with `script[n]` to its n-th request (the last entry
/// thereafter), after `delay`.
#[derive(Clone)]
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Vec<u16>>,
    delay: Duration,
}

impl Receiver {
    async fn start(script: &[u16], delay: Duration) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = Receiver {
            // A path that is a credential, as a Slack webhook URL's is.
            url: format!("http://{addr}/services/T0/B0/path-tok3n"),
            hits: Arc::default(),
            script: Arc::new(script.to_vec()),
            delay,
        };
        let app = Router::new().fallback(receive).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits").clone()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = {
        let mut hits = r.hits.lock().expect("hits");
        hits.push(Hit { headers, body });
        hits.len()
    };
    tokio::time::sleep(r.delay).await;
    let code = r.script[(n - 1).min(r.script.len() - 1)];
    StatusCode::from_u16(code).expect("status")
}

/// A webhook to `url` with fast retries.
fn hook(url: &str, max_attempts: u32) -> WebhookSettings {
    let mut h = WebhookSettings::new(url, SecretString::from(SECRET));
    h.retry_base = Duration::from_millis(50);
    h.timeout = Duration::from_secs(2);
    h.max_attempts = max_attempts;
    h
}

/// The default settings plus `hooks`, validated as at start-up.
fn settings_with(hooks: Vec<(&str, WebhookSettings)>) -> Settings {
    let mut s = Settings::load(&Sources::default()).expect("default settings");
    for (name, h) in hooks {
        s.webhooks.insert(name.to_string(), h);
    }
    s.validate().expect("settings are valid");
    s
}

fn created(reason: &str) -> Notification {
    let id = Uuid::new_v4();
    Notification {
        event: notify::ESCALATION_CREATED,
        escalation_id: id,
        environment: "prod".into(),
        scopes: vec!["db:write".into(), "db:drop".into()],
        destructive_scopes: vec!["db:drop".into()],
        requester: "bob".into(),
        sponsor: None,
        reason: reason.into(),
        state: "pending".into(),
        actor: None,
        grant_id: None,
        grant_ends_at: None,
        duration_secs: 1800,
        url: format!("{PAGE}{id}"),
    }
}

/// Check a delivery's signature the way a receiver would, with nothing from Airlock.
fn signature_verifies(hit: &Hit, secret: &str) -> bool {
    let timestamp = hit.header("x-airlock-timestamp");
    let Some(hex_sig) = hit.header("x-airlock-signature").strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&hit.body);
    mac.verify_slice(&sig).is_ok()
}

async fn a_failed_attempt_is_retried_signed_and_audited(backend: Backend) {
    // Arrange
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[500, 200], Duration::ZERO).await;
    let settings = settings_with(vec![("ops", hook(&receiver.url, 3))]);
    let notifier = Notifier::spawn(&settings, store.clone()).expect("notifier starts");
    let n = created("run migration 42 <!channel> <https://evil.example/approve|Approve now>");

    // Act
    notifier.notify(n.clone());
    assert!(notifier.drain(Duration::from_secs(10)).await, "deliveries finish");

    // Assert: two attempts of one delivery.
    let hits = receiver.hits();
    assert_eq!(hits.len(), 2, "one failure, one retry");
    let delivery = hits[0].header("x-airlock-delivery");
    assert!(Uuid::parse_str(delivery).is_ok(), "{delivery}");
    assert_eq!(
        hits[1].header("x-airlock-delivery"),
        delivery,
        "a retry keeps the delivery id"
    );
    for hit in &hits {
        assert_eq!(hit.header("x-airlock-event"), "escalation.created");
        assert_eq!(hit.header("content-type"), "application/json");
        assert!(hit.header("user-agent").starts_with("airlock/"));
        assert!(hit.header("x-airlock-timestamp").parse::<i64>().is_ok());
        // Signed with the configured secret, and with nothing else.
        assert!(signature_verifies(hit, SECRET), "signature verifies");
        assert!(!signature_verifies(hit, "whsec-some-other-secret-123"));
    }
    assert_eq!(hits[0].body, hits[1].body, "a retry sends the same body");

    // The body: Slack text linking to the approvals page, the structured facts, no way to approve.
    let body: serde_json::Value = serde_json::from_slice(&hits[0].body).expect("JSON body");
    let text = body["text"].as_str().expect("text");
    assert!(
        text.contains(&format!("<{}|open the approvals page>", n.url)),
        "{text}"
    );
    assert_eq!(
        text.matches('<').count(),
        1,
        "the reason cannot add a link or mention: {text}"
    );
    assert!(text.contains("&lt;!channel&gt;"), "{text}");
    assert_eq!(body["event"], "escalation.created");
    assert_eq!(body["url"], n.url.as_str());
    assert_eq!(body["escalation"]["id"], n.escalation_id.to_string());
    assert_eq!(body["escalation"]["destructive_scopes"][0], "db:drop");
    assert_eq!(body["escalation"]["reason"], n.reason.as_str());
    let links: Vec<&str> = text
        .split('<')
        .skip(1)
        .filter_map(|l| l.split('|').next())
        .collect();
    assert_eq!(links, vec![n.url.as_str()], "the only link is the page");
    assert!(links.iter().all(|l| !l.contains("approve")), "{links:?}");

    // The failed attempt is audited, without the secret, the body or the URL's path.
    let failed = events_of(store.as_ref(), "webhook.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let e = &failed[0].event;
    assert_eq!(e.actor, "system");
    assert_eq!(e.environment.as_deref(), Some("prod"));
    assert_eq!(e.details["webhook"], "ops");
    assert_eq!(e.details["event"], "escalation.created");
    assert_eq!(e.details["escalation"], n.escalation_id.to_string());
    assert_eq!(e.details["delivery"], delivery);
    assert_eq!(e.details["attempt"], 1);
    assert_eq!(e.details["status"], 500);
    assert_eq!(e.details["final"], false);
    let stored = serde_json::to_string(&failed[0]).expect("serialise");
    for leak in [SECRET, "path-tok3n", "run migration", "sha256="] {
        assert!(!stored.contains(leak), "audit event carries {leak:?}: {stored}");
    }
}

async fn a_client_error_is_not_retried_and_is_audited_as_final(backend: Backend) {
    // Arrange
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[400], Duration::ZERO).await;
    let settings = settings_with(vec![("ops", hook(&receiver.url, 5))]);
    let notifier = Notifier::spawn(&settings, store.clone()).expect("notifier starts");

    // Act
    notifier.notify(created("deploy"));
    assert!(
        notifier.drain(Duration::from_secs(10)).await,
        "the delivery has ended"
    );

    // Assert
    assert_eq!(receiver.hits().len(), 1, "a 400 is not retried");
    let failed = events_of(store.as_ref(), "webhook.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].event.details["status"], 400);
    assert_eq!(failed[0].event.details["attempt"], 1);
    assert_eq!(failed[0].event.details["final"], true);
    assert!(
        !serde_json::to_string(&failed[0])
            .expect("serialise")
            .contains(SECRET)
    );
}

async fn an_unreachable_receiver_is_tried_max_attempts_times(backend: Backend) {
    // Arrange: a port nobody listens on.
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let settings = settings_with(vec![("ops", hook(&format!("http://{closed}/hook"), 3))]);
    let notifier = Notifier::spawn(&settings, store.clone()).expect("notifier starts");

    // Act
    notifier.notify(created("deploy"));
    assert!(notifier.drain(Duration::from_secs(10)).await);

    // Assert
    let failed = events_of(store.as_ref(), "webhook.failed").await;
    let attempts: Vec<(i64, bool)> = failed
        .iter()
        .map(|r| {
            assert_eq!(r.event.details["status"], "connect");
            (
                r.event.details["attempt"].as_i64().unwrap_or_default(),
                r.event.details["final"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(attempts, vec![(1, false), (2, false), (3, true)]);
}

async fn a_full_queue_drops_and_audits_without_blocking(backend: Backend) {
    // Arrange: a receiver that never answers in time, so deliveries pile up.
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let receiver = Receiver::start(&[200], Duration::from_secs(60)).await;
    let mut h = hook(&receiver.url, 1);
    h.timeout = Duration::from_secs(30);
    let settings = settings_with(vec![("ops", h)]);
    let notifier = Notifier::spawn(&settings, store.clone()).expect("notifier starts");

    // Act
    let started = std::time::Instant::now();
    for _ in 0..notify::QUEUE_CAPACITY + 100 {
        notifier.notify(created("deploy"));
    }
    let elapsed = started.elapsed();

    // Assert
    assert!(
        elapsed < Duration::from_secs(5),
        "notify does not block: {elapsed:?}"
    );
    let mut dropped = Vec::new();
    for _ in 0..100 {
        dropped = events_of(store.as_ref(), "webhook.dropped").await;
        if !dropped.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!dropped.is_empty(), "dropped deliveries are audited");
    assert_eq!(dropped[0].event.details["status"], "queue_full");
    assert_eq!(dropped[0].event.details["final"], true);
    assert!(
        !notifier.drain(Duration::from_millis(50)).await,
        "deliveries are still pending"
    );
}

/// End to end: the real server announces a request's creation and its approval, signed,
/// with a link to the approvals page and no way to approve by itself.
async fn the_server_announces_requests_and_decisions(backend: Backend) {
    let receiver = Receiver::start(&[200], Duration::ZERO).await;
    let url = receiver.url.clone();
    let Some(app) = spawn_app_with(backend, |s| {
        s.webhooks.insert("ops".into(), hook(&url, 3));
    })
    .await
    else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert!(
        app.state.notifier.drain(Duration::from_secs(10)).await,
        "deliveries finished"
    );

    let hits = receiver.hits();
    let bodies: Vec<serde_json::Value> = hits
        .iter()
        .map(|h| serde_json::from_slice(&h.body).expect("JSON body"))
        .collect();
    let events: Vec<&str> = bodies.iter().map(|b| b["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["escalation.created", "escalation.decided"]);
    let page = format!("{}/approvals#req-{id}", app.base);
    for (hit, body) in hits.iter().zip(&bodies) {
        assert!(signature_verifies(hit, SECRET), "signed");
        assert_eq!(body["url"], page.as_str());
        assert_eq!(body["escalation"]["id"], id.as_str());
        let text = body["text"].as_str().unwrap();
        assert!(text.contains(&page), "{text}");
        let raw = String::from_utf8_lossy(&hit.body);
        assert!(!raw.contains("/approve"), "no approve endpoint in {raw}");
        assert!(
            !raw.contains(&bob.token) && !raw.contains(&carol.token),
            "no token"
        );
    }
    assert_eq!(bodies[1]["escalation"]["state"], "approved");
    assert_eq!(bodies[1]["escalation"]["actor"], "carol");
    assert!(bodies[1]["escalation"]["grant_id"].is_string());
}

/// The pieces of Slack text inside code spans, and the text outside them.
fn code_spans(text: &str) -> (Vec<&str>, String) {
    let pieces: Vec<&str> = text.split('`').collect();
    let inside = pieces.iter().skip(1).step_by(2).copied().collect();
    let outside = pieces.iter().step_by(2).copied().collect();
    (inside, outside)
}

/// A reason carrying a look-alike approvals link and Slack formatting reaches the
/// receiver as one code span: no bare URL Slack could link, no `*bold*`.
async fn a_reason_reaches_the_webhook_as_an_inert_code_span(backend: Backend) {
    // Arrange
    let receiver = Receiver::start(&[200], Duration::ZERO).await;
    let url = receiver.url.clone();
    let Some(app) = spawn_app_with(backend, |s| {
        s.webhooks.insert("ops".into(), hook(&url, 3));
    })
    .await
    else {
        return;
    };
    let bob = person_with_totp(&app, "bob", &["developer"]).await;
    let reason = "*URGENT* approve at https://evil.example/approvals _now_ ~or~ `never`";

    // Act
    let (status, body) = request(&app, &bob.token, "prod", &["db:write"], "30m", reason).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(
        app.state.notifier.drain(Duration::from_secs(10)).await,
        "delivered"
    );

    // Assert
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    let sent: Value = serde_json::from_slice(&hits[0].body).expect("JSON body");
    let text = sent["text"].as_str().expect("text");
    assert_eq!(text.matches('`').count() % 2, 0, "balanced spans: {text}");
    let (inside, outside) = code_spans(text);
    assert!(
        inside.contains(&"*URGENT* approve at https://evil.example/approvals _now_ ~or~ 'never'"),
        "the reason is one code span without backticks: {text}"
    );
    assert!(inside.contains(&"bob"), "{text}");
    for needle in ["evil.example", "*URGENT*", "_now_", "~or~", "never"] {
        assert!(
            !outside.contains(needle),
            "{needle:?} outside a code span: {text}"
        );
    }
    // The one link in the text is the approvals page of this server.
    assert!(
        outside.contains(&format!("<{}/approvals#req-", app.base)),
        "{text}"
    );
    assert_eq!(text.matches('<').count(), 1, "{text}");
    // The structured field keeps the reason exactly as given.
    assert_eq!(sent["escalation"]["reason"], reason);
}

crate::both_backends!(
    the_server_announces_requests_and_decisions,
    a_failed_attempt_is_retried_signed_and_audited,
    a_client_error_is_not_retried_and_is_audited_as_final,
    an_unreachable_receiver_is_tried_max_attempts_times,
    a_full_queue_drops_and_audits_without_blocking,
    a_reason_reaches_the_webhook_as_an_inert_code_span,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_subscribed_webhooks_are_told_each_with_its_own_delivery() {
    // Arrange
    let db = TestDb::sqlite();
    let store = db.store().await;
    let (a, b, c) = (
        Receiver::start(&[200], Duration::ZERO).await,
        Receiver::start(&[200], Duration::ZERO).await,
        Receiver::start(&[200], Duration::ZERO).await,
    );
    let mut revocations_only = hook(&c.url, 1);
    revocations_only.events = vec!["grant.revoked".into()];
    let settings = settings_with(vec![
        ("a", hook(&a.url, 1)),
        ("b", hook(&b.url, 1)),
        ("c", revocations_only),
    ]);
    let notifier = Notifier::spawn(&settings, store.clone()).expect("notifier starts");

    // Act
    notifier.notify(created("deploy"));
    assert!(notifier.drain(Duration::from_secs(10)).await);

    // Assert
    let (a, b) = (a.hits(), b.hits());
    assert_eq!((a.len(), b.len(), c.hits().len()), (1, 1, 0));
    assert_ne!(
        a[0].header("x-airlock-delivery"),
        b[0].header("x-airlock-delivery")
    );
    assert!(events_of(store.as_ref(), "webhook.failed").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_delay_another() {
    // Arrange
    let db = TestDb::sqlite();
    let store = db.store().await;
    let slow = Receiver::start(&[200], Duration::from_secs(3)).await;
    let fast = Receiver::start(&[200], Duration::ZERO).await;
    let mut slow_hook = hook(&slow.url, 1);
    slow_hook.timeout = Duration::from_secs(10);
    let settings = settings_with(vec![("fast", hook(&fast.url, 1)), ("slow", slow_hook)]);
    let notifier = Notifier::spawn(&settings, store.clone()).expect("notifier starts");

    // Act
    for _ in 0..3 {
        notifier.notify(created("deploy"));
    }

    // Assert: the fast receiver has all three long before the slow one answers once.
    let started = std::time::Instant::now();
    while (fast.hits().len() < 3 || slow.hits().len() < 3) && started.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fast.hits().len(), 3, "after {:?}", started.elapsed());
    assert_eq!(
        slow.hits().len(),
        3,
        "the slow receiver's deliveries run side by side"
    );
    assert!(notifier.drain(Duration::from_secs(10)).await);
}

#[tokio::test]
async fn an_unreadable_secret_file_stops_the_notifier_from_starting() {
    let db = TestDb::sqlite();
    let store = db.store().await;
    let mut settings = settings_with(vec![]);
    let mut h = hook("https://hooks.example.com/x", 1);
    h.secret = None;
    h.secret_file = Some("/nonexistent/airlock-webhook-secret".into());
    settings.webhooks.insert("ops".into(), h);
    match Notifier::spawn(&settings, store) {
        Err(e) => assert!(e.to_string().contains("webhook ops"), "{e}"),
        Ok(_) => panic!("the notifier started without its secret"),
    }
    // With no webhooks, nothing is started and nothing is sent.
    let db = TestDb::sqlite();
    let n = Notifier::spawn(&settings_with(vec![]), db.store().await).expect("disabled notifier");
    assert!(!n.is_enabled());
}
