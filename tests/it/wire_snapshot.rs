//! The wire, recorded: a fixed script of HTTP requests that reaches every route of the
//! router, each with its success and its main refusals, run against the real server,
//! and every answer compared with `tests/it/wire_snapshot/golden.txt`.
//!
//! This is the check that a restructuring changes nothing a client sees (issue 9): status
//! codes, headers, JSON fields and values, error codes and descriptions, and what the
//! web pages show. It is deliberately blind to what a client cannot see or must not rely
//! on:
//! - values that differ on every run (identifiers, tokens, secrets, key ids, times, the
//!   port) are replaced by placeholders: the cast's identifiers by name
//!   (`<escalation:E1>`, `<user-id:dana>`, `<kid:prod>`), so the record still shows which
//!   answers name the same thing, and anything else by kind, numbered within its exchange
//!   (see `normalise.rs`);
//! - JSON members are compared in sorted order (member order carries no meaning), and the
//!   lists whose order the server does not guarantee (requests and grants made within the
//!   same second) are sorted;
//! - JWTs are compared by their header and claims, not their bytes;
//! - HTML pages are compared as the element tree, visible text and form fields a person
//!   and a browser get, not as bytes (see `html.rs`), so another template engine that
//!   renders the same page compares equal;
//! - the OpenAPI document is compared as the set of operations it lists.
//!
//! Both backends must produce the same record. `AIRLOCK_WIRE_UPDATE=1` rewrites the golden
//! file from the run; review its diff like code. On a mismatch the test prints the first
//! differing exchanges as line diffs and saves the whole record of the run under
//! `CARGO_TARGET_TMPDIR`.
//!
//! The script is in the child modules by surface (`oauth`, `people`, `escalations`, `web`);
//! `record` renders and compares, `requests` builds requests and answers TOTP prompts.
//! Its cast: admin `root`, approvers `avery` and `blake` (TOTP), developers `dana` and
//! `casey` (who set up TOTP during the script), `rookie` (admin without TOTP), `drew`
//! (developer and approver without TOTP), `erin` (created over the API), and the agents
//! `ci` (one per environment), `rs` (a resource server), `flood` and `deployer` (owned by
//! dana).
//!
//! Settings differ from the defaults in a few bounds only, so that nothing depends on how
//! fast the script runs: failed sign-ins allowed before delays start (16 instead of 3, so
//! the throttle trips where the script trips it, not earlier), anonymous refusals audited
//! per window (unbounded, so a device authorization is never answered `slow_down` because
//! of the refusals that came before it in the same 10 s window), and the lifetimes of
//! session access tokens and web sessions (1 h instead of 5 and 15 minutes, so a slow run
//! does not outlive the sessions it started).
//!
//! Not covered, because each needs the clock to pass a bound of minutes or hours, or the
//! store to fail (the other tests check the behaviour, not the bytes):
//! - a device code past its lifetime (`expired_token`), a session past its idle or absolute
//!   limit, an escalation past its pending timeout (409 "is expired"), a grant that ended,
//!   a TOTP enrolment past its lifetime;
//! - every 503: the request deadline, `/readyz` with the store down or migrations pending,
//!   `temporarily_unavailable`, `unavailable` and `busy`;
//! - the cap of 20 pending requests per holder (the creation rate allows 10 a minute);
//! - `slow_down` at device authorization once an address's refusal budget for the 10 s
//!   window is spent (the budget is lifted here, see above).

mod escalations;
mod html;
mod normalise;
mod oauth;
mod people;
mod record;
mod requests;
mod web;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{self, PASSWORD};
use crate::support::{Backend, TestAgent, TestApp, spawn_app_with};
use record::{Jar, Wire, compare_with_golden};
use requests::{Totp, bearer_get, secret, sid};

/// The golden record, relative to the package root.
const GOLDEN: &str = "tests/it/wire_snapshot/golden.txt";

/// The device-code grant (RFC 8628).
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The `User-Agent` of the terminal in the device flow.
const TERMINAL: &str = "wire-test/1.0";

/// An escalation that does not exist.
const UNKNOWN_ESCALATION: &str = "/v1/escalations/00000000-0000-4000-8000-000000000000";

/// Headers that describe the connection or the moment, not the answer.
const TRANSPORT_HEADERS: &[&str] = &[
    "date",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// HTTP methods of an OpenAPI path item.
const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn every_route_answers_as_recorded(backend: Backend) {
    // Arrange
    let Some(app) = spawn_app_with(backend, |s| {
        s.auth.throttle_free_failures = 16;
        s.auth.session_access_ttl = Duration::from_secs(3600);
        s.auth.web_session_lifetime = Duration::from_secs(3600);
        s.limits.refusals.per_address = u32::MAX;
        s.limits.refusals.all_addresses = u32::MAX;
    })
    .await
    else {
        return;
    };

    // Act
    let mut script = Script::cast(&app).await;
    script.run().await;
    let actual = script.w.render();

    // Assert
    compare_with_golden(&actual, backend);
    app.stop().await;
}

crate::both_backends!(every_route_answers_as_recorded);

/// Who takes part, and what the script keeps between steps.
struct Script<'a> {
    app: &'a TestApp,
    w: Wire<'a>,
    /// Agents registered before any person exists (no owner): `ci` in every environment,
    /// a resource server `rs` in dev, and `flood` in dev for the creation rate limit.
    ci_dev: TestAgent,
    ci_staging: TestAgent,
    ci_prod: TestAgent,
    rs_dev: TestAgent,
    flood: TestAgent,
    /// `root`: admin, TOTP enrolled, signed in with a code.
    root: String,
    root_totp: Totp,
    /// `avery`: approver, TOTP enrolled, signed in with a code.
    avery: String,
    avery_totp: Totp,
    /// `blake`: approver, TOTP enrolled, signs in on the web.
    blake_totp: Totp,
    /// Tokens, ids and secrets the later steps use.
    kept: BTreeMap<&'static str, String>,
    /// dana's authenticator, set up during the script.
    dana_totp: Option<Totp>,
    /// Browsers.
    casey_web: Jar,
    dana_web: Jar,
    drew_web: Jar,
    blake_web: Jar,
}

impl<'a> Script<'a> {
    /// Agents and people, through the library as an operator would set them up.
    async fn cast(app: &'a TestApp) -> Script<'a> {
        let ci_dev = app
            .create_agent("dev", "ci", &["db:read", "db:write", "db:drop"])
            .await;
        let ci_staging = app.create_agent("staging", "ci", &["db:read"]).await;
        let ci_prod = app.create_agent("prod", "ci", &["db:read"]).await;
        let rs_dev = app.create_agent("dev", "rs", &["db:read"]).await;
        let flood = app.create_agent("dev", "flood", &["db:read", "db:drop"]).await;
        let root = support::person_with_totp(app, "root", &["admin"]).await;
        let avery = support::person_with_totp(app, "avery", &["approver"]).await;
        for (name, roles) in [
            ("blake", vec!["approver"]),
            ("dana", vec!["developer"]),
            ("casey", vec!["developer"]),
            ("rookie", vec!["admin"]),
            ("drew", vec!["developer", "approver"]),
        ] {
            airlock::people::create_user(
                &app.state,
                "test",
                name,
                &secrecy::SecretString::from(PASSWORD.to_string()),
                roles.into_iter().map(String::from).collect(),
            )
            .await
            .expect("person created");
        }
        let (blake_secret, step) = app.enrol_totp("blake", PASSWORD).await;
        let mut w = Wire::new(app);
        for (agent, name) in [
            (&ci_dev, "dev/ci"),
            (&ci_staging, "staging/ci"),
            (&ci_prod, "prod/ci"),
            (&rs_dev, "dev/rs"),
            (&flood, "dev/flood"),
        ] {
            w.name(secret(agent), &format!("<agent-secret:{name}>"));
        }
        w.name(&sid(&root.token), "<session:root>");
        w.name(&sid(&avery.token), "<session:avery>");
        Script {
            app,
            w,
            ci_dev,
            ci_staging,
            ci_prod,
            rs_dev,
            flood,
            root_totp: Totp::from(&root),
            root: root.token,
            avery_totp: Totp::from(&avery),
            avery: avery.token,
            blake_totp: Totp {
                secret: blake_secret,
                next: step + 1,
            },
            kept: BTreeMap::new(),
            dana_totp: None,
            casey_web: Jar::default(),
            dana_web: Jar::default(),
            drew_web: Jar::default(),
            blake_web: Jar::default(),
        }
    }

    fn keep(&mut self, key: &'static str, value: String) {
        self.kept.insert(key, value);
    }

    fn kept(&self, key: &str) -> String {
        self.kept
            .get(key)
            .unwrap_or_else(|| panic!("the script kept no {key}"))
            .clone()
    }

    async fn run(&mut self) {
        self.discovery().await;
        self.fallbacks().await;
        self.client_credentials().await;
        self.sessions().await;
        self.totp_self_service().await;
        self.admin().await;
        self.json_bodies().await;
        self.token_exchange().await;
        self.device_flow().await;
        self.web_pages().await;
        self.escalations().await;
        self.web_approvals().await;
        self.grants_and_introspection().await;
        self.creation_rate().await;
        self.sign_in_throttle().await;
        self.name_the_cast().await;
    }

    /// Names for the identifiers of everyone and everything the script created.
    async fn name_the_cast(&mut self) {
        let app = self.app;
        for username in [
            "root", "avery", "blake", "dana", "casey", "rookie", "drew", "erin",
        ] {
            let user = airlock::people::find_user(&app.state, username)
                .await
                .expect("a person of the cast");
            self.w
                .name(&user.id.to_string(), &format!("<user-id:{username}>"));
        }
        for agent in app.store().agents(None).await.expect("agents") {
            let name = format!("{}/{}", agent.environment, agent.name);
            self.w.name(&agent.id.to_string(), &format!("<agent-id:{name}>"));
            self.w.name(&agent.client_id, &format!("<client-id:{name}>"));
        }
        let all = self
            .w
            .quiet(bearer_get(app, "/v1/escalations?limit=200", &self.root))
            .await
            .expect(200, "every request");
        for e in all.json()["escalations"].as_array().expect("requests") {
            let reason = e["reason"].as_str().expect("a reason");
            let name = match reason.split_once(" (TICKET") {
                Some((head, _)) if reason.starts_with('E') => head.split(' ').next().unwrap_or(head),
                Some((head, _)) => head,
                None => reason,
            };
            self.w
                .name(e["id"].as_str().expect("an id"), &format!("<escalation:{name}>"));
            if let Some(grant) = e["grant"]["id"].as_str() {
                self.w.name(grant, &format!("<grant:{name}>"));
            }
        }
    }
}
