//! The wire, recorded: a fixed script of HTTP requests that reaches every route of the
//! router, each with its success and its main refusals, run against the real server,
//! and every answer compared with `tests/it/wire_snapshot/golden.txt`.
//!
//! This is the check that a restructuring changes nothing a client sees (issue 9): status
//! codes, headers, JSON fields and values, error codes and descriptions, and what the
//! web pages show. It is deliberately blind to what a client cannot see or must not rely
//! on:
//! - values that differ on every run (identifiers, tokens, secrets, key ids, times, the
//!   port) are replaced by typed placeholders, numbered by first appearance so the record
//!   still shows which answers name the same thing (see `normalise.rs`);
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
//! file from the run; review its diff like code.
//!
//! Settings differ from the defaults in a few bounds only, so that nothing depends on how
//! fast the script runs: failed sign-ins allowed before delays start (16 instead of 3, so
//! the throttle trips where the script trips it, not earlier), anonymous refusals audited
//! per window (unbounded, so a device authorization is never answered `slow_down` because
//! of the refusals that came before it in the same 10 s window), and the lifetimes of
//! session access tokens and web sessions (1 h instead of 5 and 15 minutes, so a slow run
//! does not outlive the sessions it started).
//!
//! Not covered, because they need the wall clock to pass a bound or the store to fail:
//! `expired_token` for a device code, a session past its idle or absolute limit, an
//! expired escalation (409) and an ended grant, the deadline 503, and every
//! `temporarily_unavailable`/`unavailable` 503 (tests/it/failclosed.rs covers those), the
//! 20-pending-requests cap (the creation rate allows 10 a minute), and a TOTP enrolment
//! past its lifetime.

mod html;
mod normalise;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, SET_COOKIE};
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::escalation_support::{self as support, ACCESS_TOKEN_TYPE, EXCHANGE, PASSWORD, PROCESS_TYPE};
use crate::harness::{Backend, TestAgent, TestApp, spawn_app_with};
use normalise::{Namer, quote};

/// The golden record, relative to the package root.
const GOLDEN: &str = "tests/it/wire_snapshot/golden.txt";

/// The device-code grant (RFC 8628).
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The `User-Agent` of the terminal in the device flow.
const TERMINAL: &str = "wire-test/1.0";

/// An escalation that does not exist.
const UNKNOWN_ESCALATION: &str = "/v1/escalations/00000000-0000-4000-8000-000000000000";

/// Headers that describe the connection or the moment, not the answer.
const TRANSPORT_HEADERS: &[&str] = &["date", "content-length", "transfer-encoding", "connection", "keep-alive"];

/// HTTP methods of an OpenAPI path item.
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

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

// --- recording ------------------------------------------------------------------------

/// How a body is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// By its content type.
    Auto,
    /// An OpenAPI document: the operations it lists.
    OpenApi,
    /// By content type, with the wait in `Retry-After` (and the same number in the
    /// message) depending on the clock: a rate limit's window.
    VolatileWait,
}

/// One exchange as it went over the wire.
struct Raw {
    label: String,
    method: String,
    target: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    record: Record,
}

/// An answer, for the script to read.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A string field of the JSON body.
    fn s(&self, key: &str) -> String {
        self.json()[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key} in {}", self.text))
            .to_string()
    }

    /// Stop the script when a step it builds on did not go as it must.
    fn expect(self, status: u16, step: &str) -> Reply {
        assert_eq!(
            self.status.as_u16(),
            status,
            "wire script step '{step}' went otherwise: {}",
            self.text
        );
        self
    }

    /// The value of the first form field called `name` in an HTML page.
    fn field(&self, name: &str) -> String {
        let page = html::parse(&self.text);
        html::find_all(&page, &|e| e.name == "input" && e.attr("name") == Some(name))
            .first()
            .and_then(|e| e.attr("value"))
            .unwrap_or_else(|| panic!("no field {name} in:\n{}", self.text))
            .to_string()
    }

    /// The text of the element with id `id` in an HTML page.
    fn text_of(&self, id: &str) -> String {
        let page = html::parse(&self.text);
        html::find_all(&page, &|e| e.attr("id") == Some(id))
            .first()
            .map(|e| e.text())
            .unwrap_or_else(|| panic!("no #{id} in:\n{}", self.text))
    }
}

/// A browser's cookies.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn keep(&mut self, r: &Reply) {
        for v in r.headers.get_all(SET_COOKIE) {
            let v = v.to_str().unwrap_or_default();
            let pair = v.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if value.is_empty() || v.contains("Max-Age=0") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
    }

    fn send(&self, rb: RequestBuilder) -> RequestBuilder {
        if self.0.is_empty() {
            return rb;
        }
        let header = self
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        rb.header(COOKIE, header)
    }
}

/// The recorder.
struct Wire<'a> {
    app: &'a TestApp,
    raws: Vec<Raw>,
    labels: HashSet<String>,
    named: Vec<(String, String)>,
}

impl<'a> Wire<'a> {
    fn new(app: &'a TestApp) -> Wire<'a> {
        Wire {
            app,
            raws: Vec::new(),
            labels: HashSet::new(),
            named: Vec::new(),
        }
    }

    /// Send, record, and hand the answer to the script.
    async fn send(&mut self, label: &str, rb: RequestBuilder) -> Reply {
        self.send_as(label, rb, Record::Auto).await
    }

    async fn send_as(&mut self, label: &str, rb: RequestBuilder, record: Record) -> Reply {
        assert!(self.labels.insert(label.to_string()), "label used twice: {label}");
        let req = rb.build().expect("request builds");
        let method = req.method().to_string();
        let target = match req.url().query() {
            Some(q) => format!("{}?{q}", req.url().path()),
            None => req.url().path().to_string(),
        };
        let (reply, body) = self.execute(req).await;
        self.raws.push(Raw {
            label: label.to_string(),
            method,
            target,
            status: reply.status.as_u16(),
            headers: reply
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body,
            record,
        });
        reply
    }

    /// Send without recording (setup the record does not need twice).
    async fn quiet(&self, rb: RequestBuilder) -> Reply {
        self.execute(rb.build().expect("request builds")).await.0
    }

    /// As [`Wire::send`], as a browser with `jar`.
    async fn browse(&mut self, label: &str, jar: &mut Jar, rb: RequestBuilder) -> Reply {
        let r = self.send(label, jar.send(rb)).await;
        jar.keep(&r);
        r
    }

    async fn execute(&self, req: reqwest::Request) -> (Reply, Vec<u8>) {
        let resp = self.app.client.execute(req).await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body read").to_vec();
        let text = String::from_utf8_lossy(&body).into_owned();
        (Reply { status, headers, text }, body)
    }

    /// Show `value` as `placeholder` wherever it appears in the record.
    fn name(&mut self, value: &str, placeholder: &str) {
        self.named.push((value.to_string(), placeholder.to_string()));
    }

    /// The whole record.
    fn render(&self) -> String {
        let mut namer = Namer::new(&self.app.base);
        for (value, placeholder) in &self.named {
            namer.fix(value, placeholder);
        }
        for raw in self.raws.iter().filter(|r| r.record != Record::OpenApi) {
            if let Ok(v) = serde_json::from_slice::<Value>(&raw.body) {
                namer.learn(&v);
            }
        }
        let mut out = String::from(
            "# Airlock's wire, as recorded by tests/it/wire_snapshot.rs (one block per exchange).\n\
             # Placeholders stand for values that differ on every run: <kind:name> names one of the script's\n\
             # cast everywhere; <kind:N> is the N-th distinct value of that kind within one exchange.\n\
             # Regenerate with AIRLOCK_WIRE_UPDATE=1 after an intended change, and review the diff.\n\n",
        );
        for raw in &self.raws {
            namer.next_exchange();
            out.push_str(&block(raw, &mut namer));
        }
        out
    }
}

fn block(raw: &Raw, namer: &mut Namer) -> String {
    let mut out = format!(
        "=== {}\n{} {}\nstatus {}\n",
        raw.label,
        raw.method,
        namer.text(&raw.target),
        raw.status
    );
    let mut text = String::from_utf8_lossy(&raw.body).into_owned();
    let mut headers: Vec<&(String, String)> = raw
        .headers
        .iter()
        .filter(|(k, _)| !TRANSPORT_HEADERS.contains(&k.as_str()))
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in headers {
        let shown = match name.as_str() {
            "set-cookie" => cookie(value, namer),
            "x-request-id" if uuid::Uuid::parse_str(value).is_ok() => "<request-id>".to_string(),
            "retry-after" if raw.record == Record::VolatileWait => {
                text = text.replace(&format!(" in {value} second"), " in <wait> second");
                "<wait>".to_string()
            }
            _ => namer.text(value),
        };
        out.push_str(&format!("{name}: {shown}\n"));
    }
    let content_type = raw
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default();
    let indent = |s: &str| s.lines().map(|l| format!("  {l}\n")).collect::<String>();
    if raw.body.is_empty() {
        out.push_str("body: empty\n");
    } else if raw.record == Record::OpenApi {
        out.push_str("body: OpenAPI operations\n");
        out.push_str(&indent(&openapi_operations(&raw.body).join("\n")));
    } else if content_type.starts_with("application/json")
        && let Ok(v) = serde_json::from_str::<Value>(&text)
    {
        out.push_str("body: json\n");
        out.push_str(&indent(&namer.json(None, &v, None).print()));
    } else if content_type.starts_with("text/html") {
        out.push_str("body: html\n");
        out.push_str(&indent(&html::render(&text, namer).join("\n")));
    } else if content_type.starts_with("text/css") {
        out.push_str(&format!(
            "body: css, {} bytes, sha256 {}\n",
            raw.body.len(),
            hex::encode(Sha256::digest(&raw.body))
        ));
    } else {
        out.push_str("body: text\n");
        for line in text.lines() {
            out.push_str(&format!("  {}\n", quote(&namer.text(line))));
        }
    }
    out.push('\n');
    out
}

/// A `Set-Cookie` value with its value hidden and its attributes kept, in a fixed order
/// (their order carries no meaning, RFC 6265 section 5.2).
fn cookie(v: &str, namer: &mut Namer) -> String {
    let mut parts = v.split(';').map(str::trim);
    let pair = parts.next().unwrap_or_default();
    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
    let mut attrs: Vec<String> = parts.filter(|a| !a.is_empty()).map(|a| namer.text(a)).collect();
    attrs.sort_by_key(|a| a.to_ascii_lowercase());
    let mut out = format!("{name}={}", if value.is_empty() { "" } else { "<cookie>" });
    for a in attrs {
        out.push_str("; ");
        out.push_str(&a);
    }
    out
}

/// `METHOD /path` of every operation an OpenAPI document lists, sorted.
fn openapi_operations(body: &[u8]) -> Vec<String> {
    let doc: Value = serde_json::from_slice(body).expect("the OpenAPI document is JSON");
    let mut ops: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|m| m.keys())
                .filter(|k| METHODS.contains(&k.as_str()))
                .map(move |m| format!("{} {path}", m.to_ascii_uppercase()))
        })
        .collect();
    ops.sort();
    ops
}

// --- comparing ------------------------------------------------------------------------

fn compare_with_golden(actual: &str, backend: Backend) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var("AIRLOCK_WIRE_UPDATE").is_ok_and(|v| v == "1") {
        std::fs::write(&golden, actual).expect("golden file written");
        eprintln!("wire: wrote {} from {backend:?}", golden.display());
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    if expected == actual {
        return;
    }
    let saved = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("wire-{backend:?}.txt").to_lowercase());
    std::fs::write(&saved, actual).expect("actual record written");
    panic!(
        "the wire differs from {GOLDEN} on {backend:?}.\n{}\nThe whole record of this run is in {}.\n\
         If the change is intended, rerun with AIRLOCK_WIRE_UPDATE=1 and commit the golden file.",
        report(&expected, actual),
        saved.display()
    );
}

/// The record split into exchanges (the preamble is the first).
fn blocks(record: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = vec![Vec::new()];
    for line in record.lines() {
        if line.starts_with("=== ") {
            out.push(Vec::new());
        }
        out.last_mut().expect("a block").push(line);
    }
    out
}

enum Edit {
    Same(usize),
    Gone(usize),
    New(usize),
}

/// A shortest edit script between `a` and `b` (longest common subsequence).
fn edits<T: PartialEq>(a: &[T], b: &[T]) -> Vec<Edit> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Edit::Same(i));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(Edit::New(j));
            j += 1;
        } else {
            out.push(Edit::Gone(i));
            i += 1;
        }
    }
    out
}

/// The first differing exchanges, each as a line diff (`-` golden, `+` this run).
fn report(expected: &str, actual: &str) -> String {
    const SHOWN: usize = 4;
    let (e, a) = (blocks(expected), blocks(actual));
    let title = |b: &[&str]| b.first().copied().unwrap_or("(preamble)").to_string();
    let mut out = String::new();
    let (mut changed, mut shown) = (0, 0);
    let script = edits(&e, &a);
    let mut k = 0;
    while k < script.len() {
        // A removed block followed by an added one with the same title is a change.
        let pair = match (&script[k], script.get(k + 1)) {
            (Edit::Gone(i), Some(Edit::New(j))) if title(&e[*i]) == title(&a[*j]) => Some((*i, *j)),
            _ => None,
        };
        let piece = match (pair, &script[k]) {
            (Some((i, j)), _) => {
                k += 2;
                Some(format!("changed: {}\n{}", title(&a[j]), line_diff(&e[i], &a[j])))
            }
            (None, Edit::Gone(i)) => {
                k += 1;
                Some(format!("missing from this run: {}\n", title(&e[*i])))
            }
            (None, Edit::New(j)) => {
                k += 1;
                Some(format!("new in this run: {}\n", title(&a[*j])))
            }
            (None, Edit::Same(_)) => {
                k += 1;
                None
            }
        };
        if let Some(p) = piece {
            changed += 1;
            if shown < SHOWN {
                out.push_str(&p);
                out.push('\n');
                shown += 1;
            }
        }
    }
    out.push_str(&format!("{changed} exchange(s) differ"));
    if changed > shown {
        out.push_str(&format!(" ({shown} shown)"));
    }
    out
}

fn line_diff(e: &[&str], a: &[&str]) -> String {
    const CONTEXT: usize = 3;
    let script = edits(e, a);
    let near = |k: usize| {
        let lo = k.saturating_sub(CONTEXT);
        let hi = (k + CONTEXT + 1).min(script.len());
        script[lo..hi].iter().any(|s| !matches!(s, Edit::Same(_)))
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, s) in script.iter().enumerate() {
        match s {
            Edit::Same(i) if near(k) => out.push_str(&format!("    {}\n", e[*i])),
            Edit::Same(_) => {
                if !skipped {
                    out.push_str("    ...\n");
                }
                skipped = true;
                continue;
            }
            Edit::Gone(i) => out.push_str(&format!("  - {}\n", e[*i])),
            Edit::New(j) => out.push_str(&format!("  + {}\n", a[*j])),
        }
        skipped = false;
    }
    out
}

// --- TOTP codes -----------------------------------------------------------------------

/// A person's authenticator. Each code is for a time step after the last one used (the
/// server accepts a step once), and never for the previous step, which could pass out of
/// the accepted window before the server checks it. At most the current and next steps
/// are used; beyond them it waits for the clock.
struct Totp {
    secret: Vec<u8>,
    next: i64,
}

fn step_now() -> i64 {
    airlock::totp::step_at(time::OffsetDateTime::now_utc().unix_timestamp())
}

impl Totp {
    async fn code(&mut self) -> String {
        loop {
            let now = step_now();
            let step = self.next.max(now);
            if step <= now + 1 {
                self.next = step + 1;
                return airlock::totp::code_at(&self.secret, step);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A code no step near now has.
    fn wrong(&self) -> String {
        let now = step_now();
        (0u32..)
            .map(|k| format!("{:06}", (k * 271_829 + 314_159) % 1_000_000))
            .find(|c| (now - 3..=now + 3).all(|s| airlock::totp::code_at(&self.secret, s) != *c))
            .expect("a wrong code")
    }
}

impl From<&support::Person> for Totp {
    fn from(p: &support::Person) -> Totp {
        Totp {
            secret: p.secret.clone(),
            next: p.next_step,
        }
    }
}

// --- requests -------------------------------------------------------------------------

fn get(app: &TestApp, path: &str) -> RequestBuilder {
    app.client.get(app.url(path))
}

fn post(app: &TestApp, path: &str) -> RequestBuilder {
    app.client.post(app.url(path))
}

fn request(app: &TestApp, method: Method, path: &str) -> RequestBuilder {
    app.client.request(method, app.url(path))
}

/// A form POST.
fn form(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> RequestBuilder {
    post(app, path).form(fields)
}

/// A raw form-encoded body.
fn raw_form(app: &TestApp, path: &str, body: String) -> RequestBuilder {
    post(app, path)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
}

fn secret(agent: &TestAgent) -> &str {
    agent.secret.expose_secret()
}

/// A client-credentials request with Basic authentication.
fn client_credentials(app: &TestApp, env: &str, agent: &TestAgent, scope: Option<&str>) -> RequestBuilder {
    let mut fields = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        fields.push(("scope", s));
    }
    form(app, &format!("/envs/{env}/token"), &fields).basic_auth(&agent.client_id, Some(secret(agent)))
}

/// An RFC 8693 exchange of a session token.
fn exchange(app: &TestApp, env: &str, subject: &str, scope: Option<&str>, actor: Option<&str>) -> RequestBuilder {
    let mut fields = vec![
        ("grant_type", EXCHANGE),
        ("subject_token", subject),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ];
    if let Some(s) = scope {
        fields.push(("scope", s));
    }
    if let Some(a) = actor {
        fields.push(("actor_token", a));
        fields.push(("actor_token_type", PROCESS_TYPE));
    }
    form(app, &format!("/envs/{env}/token"), &fields)
}

/// An introspection request authenticated as `agent`.
fn introspect(app: &TestApp, env: &str, agent: &TestAgent, token: &str) -> RequestBuilder {
    form(app, &format!("/envs/{env}/introspect"), &[("token", token)])
        .basic_auth(&agent.client_id, Some(secret(agent)))
}

fn sign_in(app: &TestApp, username: &str, password: &str, code: Option<&str>) -> RequestBuilder {
    let mut body = json!({ "username": username, "password": password });
    if let Some(c) = code {
        body["totp_code"] = json!(c);
    }
    post(app, "/v1/sessions").json(&body)
}

/// The sign-in form as a browser posts it.
fn login_form(app: &TestApp, csrf: Option<&str>, next: &str, username: &str, password: &str, code: &str) -> RequestBuilder {
    let mut fields: Vec<(&str, &str)> = Vec::new();
    if let Some(c) = csrf {
        fields.push(("csrf", c));
    }
    fields.extend([("next", next), ("username", username), ("password", password), ("code", code)]);
    form(app, "/login", &fields)
}

fn bearer_get(app: &TestApp, path: &str, token: &str) -> RequestBuilder {
    get(app, path).bearer_auth(token)
}

fn bearer_post(app: &TestApp, path: &str, token: &str, body: Value) -> RequestBuilder {
    post(app, path).bearer_auth(token).json(&body)
}

fn escalation(env: &str, scopes: &[&str], duration: &str, reason: &str) -> Value {
    json!({ "environment": env, "scopes": scopes, "duration": duration, "reason": reason })
}

/// The session id in a session access token.
fn sid(token: &str) -> String {
    support::claims(token)["sid"].as_str().expect("a session token").to_string()
}

/// A body larger than any limit.
fn oversized(n: usize) -> String {
    "a".repeat(n)
}

// --- the script -----------------------------------------------------------------------

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
    /// Authenticators set up during the script.
    dana_totp: Option<Totp>,
    casey_totp: Option<Totp>,
    /// Browsers.
    casey_web: Jar,
    dana_web: Jar,
    drew_web: Jar,
    blake_web: Jar,
}

impl<'a> Script<'a> {
    /// Agents and people, through the library as an operator would set them up.
    async fn cast(app: &'a TestApp) -> Script<'a> {
        let ci_dev = app.create_agent("dev", "ci", &["db:read", "db:write", "db:drop"]).await;
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
            casey_totp: None,
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
        for username in ["root", "avery", "blake", "dana", "casey", "rookie", "drew", "erin"] {
            let user = airlock::people::find_user(&app.state, username)
                .await
                .expect("a person of the cast");
            self.w.name(&user.id.to_string(), &format!("<user-id:{username}>"));
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
            self.w.name(e["id"].as_str().expect("an id"), &format!("<escalation:{name}>"));
            if let Some(grant) = e["grant"]["id"].as_str() {
                self.w.name(grant, &format!("<grant:{name}>"));
            }
        }
    }

    /// Health, discovery, key sets, the OpenAPI document and the stylesheet.
    async fn discovery(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        w.send("health: process", get(app, "/healthz")).await;
        w.send("health: store", get(app, "/readyz")).await;
        w.send("health: HEAD", request(app, Method::HEAD, "/healthz")).await;
        w.send("discovery: broker metadata", get(app, "/.well-known/oauth-authorization-server"))
            .await;
        for env in ["dev", "staging", "prod"] {
            let path = format!("/.well-known/oauth-authorization-server/envs/{env}");
            w.send(&format!("discovery: {env} metadata"), get(app, &path)).await;
        }
        w.send(
            "discovery: metadata of an unknown environment",
            get(app, "/.well-known/oauth-authorization-server/envs/nope"),
        )
        .await;
        let name_keys = |w: &mut Wire<'_>, set: &str, jwks: Value| {
            for key in jwks["keys"].as_array().expect("keys") {
                w.name(key["kid"].as_str().expect("kid"), &format!("<kid:{set}>"));
                w.name(key["x"].as_str().expect("x"), &format!("<public-key:{set}>"));
            }
        };
        for env in ["dev", "staging", "prod"] {
            let path = format!("/envs/{env}/jwks.json");
            let r = w.send(&format!("keys: {env} JWKS"), get(app, &path)).await;
            name_keys(w, env, r.json());
        }
        w.send("keys: JWKS of an unknown environment", get(app, "/envs/nope/jwks.json"))
            .await;
        let r = w.send("keys: session JWKS", get(app, "/oauth/jwks.json")).await;
        name_keys(w, "session", r.json());
        w.send_as("openapi: the served document", get(app, "/v1/openapi.json"), Record::OpenApi)
            .await;
        w.send("web: stylesheet", get(app, "/static/airlock.css")).await;
    }

    /// The 404 and 405 fallbacks in both shapes, and the control-character filter.
    async fn fallbacks(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        for (label, path) in [
            ("404: unknown path", "/nope"),
            ("404: unknown /v1 path", "/v1/nope"),
            ("404: trailing slash", "/v1/me/"),
            ("404: unknown path under an environment", "/envs/dev/nope"),
            ("404: unknown path under /oauth", "/oauth/nope"),
            ("404: unknown well-known document", "/.well-known/nope"),
        ] {
            w.send(label, get(app, path)).await;
        }
        for (label, method, path) in [
            ("405: GET the token endpoint", Method::GET, "/envs/dev/token"),
            ("405: GET introspection", Method::GET, "/envs/dev/introspect"),
            ("405: GET the session token endpoint", Method::GET, "/oauth/token"),
            ("405: GET device authorization", Method::GET, "/oauth/device_authorization"),
            ("405: POST a JWKS", Method::POST, "/envs/dev/jwks.json"),
            ("405: POST broker metadata", Method::POST, "/.well-known/oauth-authorization-server"),
            ("405: POST health", Method::POST, "/healthz"),
            ("405: DELETE /v1/me", Method::DELETE, "/v1/me"),
            ("405: GET sessions", Method::GET, "/v1/sessions"),
            ("405: PUT escalations", Method::PUT, "/v1/escalations"),
            ("405: PATCH users", Method::PATCH, "/v1/users"),
            ("405: GET logout", Method::GET, "/logout"),
            ("405: PUT approvals", Method::PUT, "/approvals"),
            ("405: DELETE device", Method::DELETE, "/device"),
            ("405: POST the stylesheet", Method::POST, "/static/airlock.css"),
        ] {
            w.send(label, request(app, method, path)).await;
        }
        w.send("control character: in a /v1 path", get(app, "/v1/users/%00"))
            .await;
        w.send(
            "control character: in an environment name",
            form(app, "/envs/%01/token", &[("grant_type", "client_credentials")]),
        )
        .await;
        w.send(
            "control character: in a query",
            get(app, "/v1/escalations?environment=%00"),
        )
        .await;
        w.send("control character: in a page query", get(app, "/device?user_code=%07"))
            .await;
        // Every route that needs a caller, asked without one (and with an empty JSON body
        // where it takes one): which check answers first is part of the wire.
        for (method, path) in [
            (Method::GET, "/v1/me"),
            (Method::POST, "/v1/me/step-up"),
            (Method::POST, "/v1/me/totp"),
            (Method::POST, "/v1/me/totp/activate"),
            (Method::DELETE, "/v1/sessions/current"),
            (Method::GET, "/v1/users"),
            (Method::POST, "/v1/users"),
            (Method::GET, "/v1/users/erin"),
            (Method::POST, "/v1/users/erin/disable"),
            (Method::POST, "/v1/users/erin/enable"),
            (Method::POST, "/v1/users/erin/reset"),
            (Method::GET, "/v1/agents"),
            (Method::POST, "/v1/agents"),
            (Method::GET, "/v1/agents/dev%2Fci"),
            (Method::POST, "/v1/agents/dev%2Fci/disable"),
            (Method::POST, "/v1/agents/dev%2Fci/enable"),
            (Method::POST, "/v1/agents/dev%2Fci/reset"),
            (Method::GET, "/v1/escalations"),
            (Method::POST, "/v1/escalations"),
            (Method::GET, UNKNOWN_ESCALATION),
            (Method::POST, "/v1/escalations/00000000-0000-4000-8000-000000000000/approve"),
            (Method::POST, "/v1/escalations/00000000-0000-4000-8000-000000000000/deny"),
            (Method::POST, "/v1/escalations/00000000-0000-4000-8000-000000000000/cancel"),
            (Method::GET, "/v1/grants"),
            (Method::POST, "/v1/grants/00000000-0000-4000-8000-000000000000/revoke"),
        ] {
            let label = format!("no caller: {method} {path}");
            let rb = request(app, method.clone(), path);
            let rb = if method == Method::POST { rb.json(&json!({})) } else { rb };
            w.send(&label, rb).await;
        }
    }

    /// `client_credentials` at `/envs/{env}/token`.
    async fn client_credentials(&mut self) {
        let app = self.app;
        let (ci_dev, ci_staging, ci_prod) = (&self.ci_dev, &self.ci_staging, &self.ci_prod);
        let w = &mut self.w;
        let id = ci_dev.client_id.as_str();
        w.send("cc: Basic, default scopes", client_credentials(app, "dev", ci_dev, None))
            .await
            .expect(200, "a dev token");
        let r = w
            .send("cc: Basic, one scope", client_credentials(app, "dev", ci_dev, Some("db:read")))
            .await
            .expect(200, "a dev token for db:read");
        self.kept.insert("ci-dev db:read", r.s("access_token"));
        w.send(
            "cc: client_secret_post, two scopes",
            form(
                app,
                "/envs/dev/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", id),
                    ("client_secret", secret(ci_dev)),
                    ("scope", "db:read db:write"),
                ],
            ),
        )
        .await;
        w.send(
            "cc: Basic with the same client_id in the body",
            form(
                app,
                "/envs/dev/token",
                &[("grant_type", "client_credentials"), ("client_id", id)],
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: Basic with another client_id in the body",
            form(
                app,
                "/envs/dev/token",
                &[("grant_type", "client_credentials"), ("client_id", "agt_other")],
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: both authentication methods",
            form(
                app,
                "/envs/dev/token",
                &[("grant_type", "client_credentials"), ("client_secret", secret(ci_dev))],
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: no credentials",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")]),
        )
        .await;
        w.send(
            "cc: wrong secret",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")])
                .basic_auth(id, Some("airlock_secret_not-the-right-one-at-all")),
        )
        .await;
        w.send(
            "cc: unknown client",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")])
                .basic_auth("agt_00000000000000000000000000000000", Some("whatever-secret")),
        )
        .await;
        w.send(
            "cc: client_secret_post with a malformed client id",
            form(
                app,
                "/envs/dev/token",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "not an id"),
                    ("client_secret", "whatever-secret"),
                ],
            ),
        )
        .await;
        w.send(
            "cc: Basic that is not base64",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")])
                .header("authorization", "Basic !!!"),
        )
        .await;
        w.send(
            "cc: a Bearer header instead of credentials",
            form(app, "/envs/dev/token", &[("grant_type", "client_credentials")])
                .bearer_auth("some-token"),
        )
        .await;
        w.send(
            "cc: a dev agent at staging",
            client_credentials(app, "staging", ci_dev, Some("db:read")),
        )
        .await;
        w.send("cc: unknown scope", client_credentials(app, "dev", ci_dev, Some("db:nope")))
            .await;
        w.send(
            "cc: a scope the agent does not hold",
            client_credentials(app, "staging", ci_staging, Some("db:write")),
        )
        .await;
        w.send(
            "cc: a destructive scope without a grant",
            client_credentials(app, "dev", ci_dev, Some("db:drop")),
        )
        .await;
        w.send("cc: prod agent", client_credentials(app, "prod", ci_prod, None))
            .await;
        w.send(
            "cc: no grant_type",
            form(app, "/envs/dev/token", &[("scope", "db:read")]).basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        for (label, grant) in [
            ("cc: grant_type password", "password"),
            ("cc: device-code grant at an environment", DEVICE_GRANT),
            ("cc: refresh grant at an environment", "refresh_token"),
        ] {
            w.send(
                label,
                form(app, "/envs/dev/token", &[("grant_type", grant)]).basic_auth(id, Some(secret(ci_dev))),
            )
            .await;
        }
        w.send(
            "cc: a repeated parameter",
            raw_form(
                app,
                "/envs/dev/token",
                "grant_type=client_credentials&scope=db:read&scope=db:write".into(),
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        let many = (0..33).map(|i| format!("p{i}=x")).collect::<Vec<_>>().join("&");
        w.send(
            "cc: too many parameters",
            raw_form(app, "/envs/dev/token", format!("grant_type=client_credentials&{many}"))
                .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: JSON body",
            post(app, "/envs/dev/token")
                .json(&json!({ "grant_type": "client_credentials" }))
                .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: no content type",
            post(app, "/envs/dev/token")
                .body("grant_type=client_credentials")
                .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: oversized body",
            raw_form(
                app,
                "/envs/dev/token",
                format!("grant_type=client_credentials&pad={}", oversized(9000)),
            )
            .basic_auth(id, Some(secret(ci_dev))),
        )
        .await;
        w.send(
            "cc: unknown environment",
            client_credentials(app, "nope", ci_dev, Some("db:read")),
        )
        .await;
    }

    /// `/v1/sessions`, `/v1/me` and logout.
    async fn sessions(&mut self) {
        let app = self.app;
        let wrong_root_code = self.root_totp.wrong();
        let w = &mut self.w;
        let r = w
            .send("sessions: password sign-in", sign_in(app, "dana", PASSWORD, None))
            .await
            .expect(200, "dana signs in");
        let dana = r.s("access_token");
        w.name(&r.s("session_id"), "<session:dana>");
        // Two more sessions of dana's: one to sign out of, one to show a prod grant is
        // bound to the session that first used it.
        let dana_other = w
            .quiet(sign_in(app, "dana", PASSWORD, None))
            .await
            .expect(200, "dana's second session")
            .s("access_token");
        let dana_leaving = w
            .quiet(sign_in(app, "dana", PASSWORD, None))
            .await
            .expect(200, "dana's third session")
            .s("access_token");
        w.name(&sid(&dana_other), "<session:dana 2>");
        w.name(&sid(&dana_leaving), "<session:dana 3>");
        w.send("sessions: wrong password", sign_in(app, "dana", "not the password at all", None))
            .await;
        w.send("sessions: unknown person", sign_in(app, "nobody", PASSWORD, None))
            .await;
        w.send("sessions: TOTP needed", sign_in(app, "root", PASSWORD, None))
            .await;
        w.send(
            "sessions: wrong TOTP code",
            sign_in(app, "root", PASSWORD, Some(&wrong_root_code)),
        )
        .await;
        w.send(
            "sessions: password over the length limit",
            sign_in(app, "dana", &oversized(2000), None),
        )
        .await;
        w.send(
            "sessions: JSON syntax error",
            post(app, "/v1/sessions")
                .header(CONTENT_TYPE, "application/json")
                .body("{\"username\":"),
        )
        .await;
        w.send(
            "sessions: unknown field",
            post(app, "/v1/sessions").json(&json!({ "username": "dana", "password": PASSWORD, "remember": true })),
        )
        .await;
        w.send(
            "sessions: missing password",
            post(app, "/v1/sessions").json(&json!({ "username": "dana" })),
        )
        .await;
        let r = w
            .send(
                "sessions: JSON without a JSON content type",
                post(app, "/v1/sessions")
                    .header(CONTENT_TYPE, "text/plain")
                    .body(json!({ "username": "drew", "password": PASSWORD }).to_string()),
            )
            .await
            .expect(200, "drew signs in");
        w.name(&r.s("session_id"), "<session:drew 2>");
        w.send(
            "sessions: oversized body",
            post(app, "/v1/sessions")
                .header(CONTENT_TYPE, "application/json")
                .body(format!("{{\"username\":\"{}\"}}", oversized(70_000))),
        )
        .await;
        let rookie = w
            .send("sessions: admin role without TOTP", sign_in(app, "rookie", PASSWORD, None))
            .await
            .expect(200, "rookie signs in")
            .s("access_token");
        let drew = w
            .quiet(sign_in(app, "drew", PASSWORD, None))
            .await
            .expect(200, "drew signs in")
            .s("access_token");
        w.name(&sid(&rookie), "<session:rookie>");
        w.name(&sid(&drew), "<session:drew>");

        w.send("me: a developer", bearer_get(app, "/v1/me", &dana)).await;
        w.send("me: an admin signed in with TOTP", bearer_get(app, "/v1/me", &self.root))
            .await;
        w.send(
            "me: lowercase bearer",
            get(app, "/v1/me").header("authorization", format!("bearer {dana}")),
        )
        .await;
        w.send("me: no credentials", get(app, "/v1/me")).await;
        w.send("me: a token that is not a session", bearer_get(app, "/v1/me", "not-a-token"))
            .await;
        let env_token = self.kept["ci-dev db:read"].clone();
        w.send(
            "me: an environment token",
            bearer_get(app, "/v1/me", &env_token),
        )
        .await;

        w.send(
            "sessions: sign out",
            request(app, Method::DELETE, "/v1/sessions/current").bearer_auth(&dana_leaving),
        )
        .await;
        w.send(
            "sessions: sign out again",
            request(app, Method::DELETE, "/v1/sessions/current").bearer_auth(&dana_leaving),
        )
        .await;
        w.send(
            "sessions: sign out without a session",
            request(app, Method::DELETE, "/v1/sessions/current"),
        )
        .await;
        w.send(
            "me: a signed-out session",
            bearer_get(app, "/v1/me", &dana_leaving),
        )
        .await;

        // dana in a browser, before she sets up TOTP (a session without a code stays valid).
        let page = w.quiet(get(app, "/approvals")).await;
        self.dana_web.keep(&page);
        let signed = w
            .quiet(self.dana_web.send(login_form(
                app,
                Some(&page.field("csrf")),
                "approvals",
                "dana",
                PASSWORD,
                "",
            )))
            .await
            .expect(303, "dana signs in on the web");
        self.dana_web.keep(&signed);

        self.keep("dana", dana);
        self.keep("dana other", dana_other);
        self.keep("rookie", rookie);
        self.keep("drew", drew);
    }

    /// TOTP enrolment and step-up over the API.
    async fn totp_self_service(&mut self) {
        let app = self.app;
        let dana = self.kept("dana");
        let w = &mut self.w;
        w.send(
            "totp: step-up without TOTP",
            bearer_post(app, "/v1/me/step-up", &dana, json!({ "code": "123456" })),
        )
        .await;
        w.send(
            "totp: enrol with a wrong password",
            bearer_post(app, "/v1/me/totp", &dana, json!({ "password": "not the password at all" })),
        )
        .await;
        w.send(
            "totp: enrol without a body",
            post(app, "/v1/me/totp").bearer_auth(&dana),
        )
        .await;
        w.send(
            "totp: enrol without a session",
            post(app, "/v1/me/totp").json(&json!({ "password": PASSWORD })),
        )
        .await;
        let r = w
            .send(
                "totp: enrol",
                bearer_post(app, "/v1/me/totp", &dana, json!({ "password": PASSWORD })),
            )
            .await
            .expect(200, "dana starts enrolment");
        let shown = r.s("secret");
        w.name(&shown, "<totp-secret:dana>");
        w.name(&normalise::grouped(&shown, 4), "<totp-secret:dana>");
        let secret = data_encoding::BASE32_NOPAD
            .decode(shown.as_bytes())
            .expect("base32 secret");
        let mut totp = Totp { secret, next: 0 };
        w.send(
            "totp: activate with a wrong code",
            bearer_post(app, "/v1/me/totp/activate", &dana, json!({ "code": totp.wrong() })),
        )
        .await;
        let code = totp.code().await;
        w.send(
            "totp: activate",
            bearer_post(app, "/v1/me/totp/activate", &dana, json!({ "code": code })),
        )
        .await
        .expect(204, "dana activates TOTP");
        w.send(
            "totp: activate again",
            bearer_post(app, "/v1/me/totp/activate", &dana, json!({ "code": code })),
        )
        .await;
        w.send(
            "totp: enrol again",
            bearer_post(app, "/v1/me/totp", &dana, json!({ "password": PASSWORD })),
        )
        .await;
        w.send("me: just enrolled", bearer_get(app, "/v1/me", &dana)).await;
        self.dana_totp = Some(totp);
    }

    /// The admin API: people and agents.
    async fn admin(&mut self) {
        let app = self.app;
        let (root, dana, rookie) = (self.root.clone(), self.kept("dana"), self.kept("rookie"));
        let wrong = self.root_totp.wrong();
        let w = &mut self.w;
        let erin = json!({ "username": "erin", "password": PASSWORD, "roles": ["developer"] });
        w.send("users: list", bearer_get(app, "/v1/users", &root)).await;
        w.send("users: list as a developer", bearer_get(app, "/v1/users", &dana))
            .await;
        w.send(
            "users: list as an admin without TOTP",
            bearer_get(app, "/v1/users", &rookie),
        )
        .await;
        w.send("users: list without a session", get(app, "/v1/users")).await;
        w.send(
            "users: create before stepping up",
            bearer_post(app, "/v1/users", &root, erin.clone()),
        )
        .await;
        w.send(
            "step-up: wrong code",
            bearer_post(app, "/v1/me/step-up", &root, json!({ "code": wrong })),
        )
        .await;
        w.send(
            "step-up: unknown field",
            bearer_post(app, "/v1/me/step-up", &root, json!({ "code": "123456", "totp": "1" })),
        )
        .await;
        let code = self.root_totp.code().await;
        w.send(
            "step-up: fresh code",
            bearer_post(app, "/v1/me/step-up", &root, json!({ "code": code })),
        )
        .await
        .expect(204, "root steps up");
        w.send("me: an admin stepped up", bearer_get(app, "/v1/me", &root))
            .await;
        w.send("users: create", bearer_post(app, "/v1/users", &root, erin.clone()))
            .await
            .expect(201, "root creates erin");
        w.send("users: create a taken username", bearer_post(app, "/v1/users", &root, erin))
            .await;
        for (label, body) in [
            (
                "users: create with a bad username",
                json!({ "username": "Bad Name!", "password": PASSWORD }),
            ),
            (
                "users: create with a short password",
                json!({ "username": "frank", "password": "short" }),
            ),
            (
                "users: create with an unknown role",
                json!({ "username": "frank", "password": PASSWORD, "roles": ["wizard"] }),
            ),
            ("users: create without a password", json!({ "username": "frank" })),
        ] {
            w.send(label, bearer_post(app, "/v1/users", &root, body)).await;
        }
        w.send(
            "users: create as an admin without TOTP",
            bearer_post(app, "/v1/users", &rookie, json!({ "username": "frank", "password": PASSWORD })),
        )
        .await;
        w.send("users: show", bearer_get(app, "/v1/users/erin", &root)).await;
        w.send("users: show, name in capitals", bearer_get(app, "/v1/users/ERIN", &root))
            .await;
        w.send("users: show unknown", bearer_get(app, "/v1/users/nobody", &root))
            .await;
        w.send(
            "users: disable",
            bearer_post(app, "/v1/users/erin/disable", &root, json!({})),
        )
        .await;
        w.send(
            "sessions: a disabled person",
            sign_in(app, "erin", PASSWORD, None),
        )
        .await;
        w.send(
            "users: enable",
            bearer_post(app, "/v1/users/erin/enable", &root, json!({})),
        )
        .await;
        w.send(
            "users: disable oneself",
            bearer_post(app, "/v1/users/root/disable", &root, json!({})),
        )
        .await;
        w.send(
            "users: disable unknown",
            bearer_post(app, "/v1/users/nobody/disable", &root, json!({})),
        )
        .await;
        for (label, body) in [
            ("users: reset nothing", json!({})),
            ("users: reset the password", json!({ "password": "a brand new long password" })),
            ("users: reset to an unknown role", json!({ "roles": ["wizard"] })),
            ("users: reset roles", json!({ "roles": ["developer", "approver"] })),
            ("users: reset TOTP", json!({ "reset_totp": true })),
            ("users: reset with an unknown field", json!({ "totp": true })),
        ] {
            w.send(label, bearer_post(app, "/v1/users/erin/reset", &root, body))
                .await;
        }
        w.send(
            "users: reset unknown",
            bearer_post(app, "/v1/users/nobody/reset", &root, json!({ "reset_totp": true })),
        )
        .await;
        w.send(
            "users: disable as a developer",
            bearer_post(app, "/v1/users/erin/disable", &dana, json!({})),
        )
        .await;

        w.send("agents: list", bearer_get(app, "/v1/agents", &root)).await;
        w.send("agents: list one environment", bearer_get(app, "/v1/agents?env=dev", &root))
            .await;
        w.send(
            "agents: list with a repeated filter",
            bearer_get(app, "/v1/agents?env=dev&env=staging", &root),
        )
        .await;
        w.send("agents: list as a developer", bearer_get(app, "/v1/agents", &dana))
            .await;
        let deployer = json!({
            "name": "deployer", "environment": "dev", "scopes": ["db:read", "db:drop"], "owner": "dana"
        });
        let r = w
            .send("agents: create", bearer_post(app, "/v1/agents", &root, deployer.clone()))
            .await
            .expect(201, "root registers deployer");
        let deployer_agent = TestAgent {
            client_id: r.s("client_id"),
            secret: secrecy::SecretString::from(r.s("client_secret")),
        };
        w.name(&r.s("client_secret"), "<agent-secret:dev/deployer>");
        w.send("agents: create a taken name", bearer_post(app, "/v1/agents", &root, deployer))
            .await;
        for (label, body) in [
            (
                "agents: create without an owner",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"] }),
            ),
            (
                "agents: create with an unknown owner",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"], "owner": "nobody" }),
            ),
            (
                "agents: create in an unknown environment",
                json!({ "name": "x1", "environment": "nope", "scopes": ["db:read"], "owner": "dana" }),
            ),
            (
                "agents: create with a bad name",
                json!({ "name": "bad name", "environment": "dev", "scopes": ["db:read"], "owner": "dana" }),
            ),
            (
                "agents: create with an unknown scope",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:nope"], "owner": "dana" }),
            ),
            (
                "agents: create without scopes",
                json!({ "name": "x1", "environment": "dev", "scopes": [], "owner": "dana" }),
            ),
            (
                "agents: create with an unknown field",
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"], "owner": "dana", "ttl": 5 }),
            ),
        ] {
            w.send(label, bearer_post(app, "/v1/agents", &root, body)).await;
        }
        w.send(
            "agents: create as an admin without TOTP",
            bearer_post(
                app,
                "/v1/agents",
                &rookie,
                json!({ "name": "x1", "environment": "dev", "scopes": ["db:read"], "owner": "dana" }),
            ),
        )
        .await;
        let prod_id = self.ci_prod.client_id.clone();
        w.send(
            "agents: show by client id",
            bearer_get(app, &format!("/v1/agents/{}", deployer_agent.client_id), &root),
        )
        .await;
        w.send("agents: show by ENV/NAME", bearer_get(app, "/v1/agents/dev%2Fci", &root))
            .await;
        w.send("agents: show by an ambiguous name", bearer_get(app, "/v1/agents/ci", &root))
            .await;
        w.send(
            "agents: show unknown client id",
            bearer_get(app, "/v1/agents/agt_00000000000000000000000000000000", &root),
        )
        .await;
        w.send("agents: show unknown name", bearer_get(app, "/v1/agents/nothing", &root))
            .await;
        w.send(
            "agents: disable",
            bearer_post(app, &format!("/v1/agents/{prod_id}/disable"), &root, json!({})),
        )
        .await;
        w.send(
            "cc: a disabled agent",
            client_credentials(app, "prod", &self.ci_prod, None),
        )
        .await;
        w.send(
            "agents: enable",
            bearer_post(app, &format!("/v1/agents/{prod_id}/enable"), &root, json!({})),
        )
        .await;
        let r = w
            .send(
                "agents: reset the secret",
                bearer_post(app, &format!("/v1/agents/{prod_id}/reset"), &root, json!({})),
            )
            .await
            .expect(200, "root resets ci-prod's secret");
        w.send(
            "cc: the secret before the reset",
            client_credentials(app, "prod", &self.ci_prod, None),
        )
        .await;
        let rotated = TestAgent {
            client_id: prod_id.clone(),
            secret: secrecy::SecretString::from(r.s("client_secret")),
        };
        w.name(&r.s("client_secret"), "<agent-secret:prod/ci, reset>");
        w.send(
            "cc: the new secret",
            client_credentials(app, "prod", &rotated, None),
        )
        .await;
        w.send(
            "agents: disable as an admin without TOTP",
            bearer_post(app, &format!("/v1/agents/{prod_id}/disable"), &rookie, json!({})),
        )
        .await;
        w.send(
            "agents: disable unknown",
            bearer_post(app, "/v1/agents/nothing/disable", &root, json!({})),
        )
        .await;
        self.keep("deployer id", deployer_agent.client_id);
        self.keep("deployer secret", deployer_agent.secret.expose_secret().to_string());
    }

    /// Every route that reads a JSON body, given a broken one by a caller it accepts.
    async fn json_bodies(&mut self) {
        let app = self.app;
        let root = self.root.clone();
        let w = &mut self.w;
        for path in [
            "/v1/me/step-up",
            "/v1/me/totp",
            "/v1/me/totp/activate",
            "/v1/users",
            "/v1/users/erin/reset",
            "/v1/agents",
            "/v1/escalations",
            "/v1/escalations/00000000-0000-4000-8000-000000000000/approve",
            "/v1/escalations/00000000-0000-4000-8000-000000000000/deny",
            "/v1/grants/00000000-0000-4000-8000-000000000000/revoke",
        ] {
            w.send(
                &format!("broken JSON: POST {path}"),
                post(app, path)
                    .bearer_auth(&root)
                    .header(CONTENT_TYPE, "application/json")
                    .body("{\"a\":"),
            )
            .await;
            w.send(
                &format!("JSON of the wrong shape: POST {path}"),
                bearer_post(app, path, &root, json!(["not", "an", "object"])),
            )
            .await;
        }
    }

    /// RFC 8693 token exchange at `/envs/{env}/token`.
    async fn token_exchange(&mut self) {
        let app = self.app;
        let (dana, rookie) = (self.kept("dana"), self.kept("rookie"));
        let w = &mut self.w;
        w.send(
            "exchange: staging db:read",
            exchange(app, "staging", &dana, Some("db:read"), None),
        )
        .await
        .expect(200, "dana gets a staging token");
        let r = w
            .send(
                "exchange: for a named process",
                exchange(app, "staging", &dana, Some("db:read"), Some("deploy-bot")),
            )
            .await
            .expect(200, "dana gets a staging token for deploy-bot");
        let delegated = r.s("access_token");
        w.send("exchange: dev, default scopes", exchange(app, "dev", &dana, None, None))
            .await;
        w.send(
            "exchange: a destructive scope without a grant",
            exchange(app, "dev", &dana, Some("db:drop"), None),
        )
        .await;
        w.send(
            "exchange: prod without a grant",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await;
        w.send(
            "exchange: a scope the role does not give",
            exchange(app, "staging", &dana, Some("db:migrate"), None),
        )
        .await;
        w.send(
            "exchange: unknown scope",
            exchange(app, "staging", &dana, Some("db:nope"), None),
        )
        .await;
        w.send(
            "exchange: an environment no role gives",
            exchange(app, "staging", &rookie, Some("db:read"), None),
        )
        .await;
        w.send(
            "exchange: not a session token",
            exchange(app, "staging", "not-a-token", Some("db:read"), None),
        )
        .await;
        w.send(
            "exchange: no subject_token",
            form(app, "/envs/staging/token", &[("grant_type", EXCHANGE)]),
        )
        .await;
        w.send(
            "exchange: wrong subject_token_type",
            form(
                app,
                "/envs/staging/token",
                &[
                    ("grant_type", EXCHANGE),
                    ("subject_token", dana.as_str()),
                    ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                ],
            ),
        )
        .await;
        w.send(
            "exchange: actor_token without its type",
            form(
                app,
                "/envs/staging/token",
                &[
                    ("grant_type", EXCHANGE),
                    ("subject_token", dana.as_str()),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ("actor_token", "deploy-bot"),
                ],
            ),
        )
        .await;
        w.send(
            "exchange: an actor with no usable name",
            exchange(app, "staging", &dana, Some("db:read"), Some("!!!")),
        )
        .await;
        w.send(
            "exchange: unknown environment",
            exchange(app, "nope", &dana, Some("db:read"), None),
        )
        .await;
        self.keep("delegated", delegated);
    }

    /// RFC 8628 device authorization, the device page, and `/oauth/token`.
    async fn device_flow(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        let start = || {
            form(app, "/oauth/device_authorization", &[("client_id", "airlock-cli")]).header("user-agent", TERMINAL)
        };
        let d1 = w
            .send("device: authorize", start())
            .await
            .expect(200, "a device code");
        let (device1, user1) = (d1.s("device_code"), d1.s("user_code"));
        w.name(&device1, "<device-code:D1>");
        w.name(&user1, "<user-code:D1>");
        w.name(&user1.to_lowercase(), "<user-code:D1, lowercase>");
        w.send(
            "device: authorize another client",
            form(app, "/oauth/device_authorization", &[("client_id", "someone-else")]),
        )
        .await;
        w.send(
            "device: authorize without client_id",
            form(app, "/oauth/device_authorization", &[("scope", "x")]),
        )
        .await;
        w.send(
            "device: authorize with JSON",
            post(app, "/oauth/device_authorization").json(&json!({ "client_id": "airlock-cli" })),
        )
        .await;
        w.send(
            "device: authorize, oversized body",
            raw_form(
                app,
                "/oauth/device_authorization",
                format!("client_id=airlock-cli&pad={}", oversized(9000)),
            ),
        )
        .await;
        w.send(
            "device: authorize, repeated client_id",
            raw_form(
                app,
                "/oauth/device_authorization",
                "client_id=airlock-cli&client_id=airlock-cli".into(),
            ),
        )
        .await;
        let poll = |code: &str| {
            form(
                app,
                "/oauth/token",
                &[("grant_type", DEVICE_GRANT), ("device_code", code), ("client_id", "airlock-cli")],
            )
        };
        w.send("device: poll, pending", poll(&device1)).await;
        w.send("device: poll too soon", poll(&device1)).await;
        w.send("device: poll an unknown code", poll("airlock_device_unknown"))
            .await;
        w.send(
            "oauth token: another client",
            form(
                app,
                "/oauth/token",
                &[("grant_type", DEVICE_GRANT), ("device_code", device1.as_str()), ("client_id", "someone-else")],
            ),
        )
        .await;
        w.send(
            "oauth token: no client_id",
            form(app, "/oauth/token", &[("grant_type", DEVICE_GRANT), ("device_code", device1.as_str())]),
        )
        .await;
        w.send(
            "oauth token: no device_code",
            form(app, "/oauth/token", &[("grant_type", DEVICE_GRANT), ("client_id", "airlock-cli")]),
        )
        .await;
        w.send(
            "oauth token: no grant_type",
            form(app, "/oauth/token", &[("client_id", "airlock-cli")]),
        )
        .await;
        w.send(
            "oauth token: client_credentials",
            form(app, "/oauth/token", &[("grant_type", "client_credentials"), ("client_id", "airlock-cli")]),
        )
        .await;
        w.send(
            "oauth token: JSON body",
            post(app, "/oauth/token").json(&json!({ "grant_type": "refresh_token" })),
        )
        .await;
        w.send(
            "oauth token: oversized body",
            raw_form(app, "/oauth/token", format!("client_id=airlock-cli&pad={}", oversized(9000))),
        )
        .await;
        w.send(
            "oauth token: repeated parameter",
            raw_form(
                app,
                "/oauth/token",
                "client_id=airlock-cli&client_id=airlock-cli&grant_type=refresh_token".into(),
            ),
        )
        .await;

        // casey approves in a browser.
        let jar = &mut self.casey_web;
        let page = w
            .browse(
                "device page: signed out, with the code",
                jar,
                get(app, &format!("/device?user_code={}", user1.to_lowercase())),
            )
            .await;
        w.browse(
            "login: sign in for the device page",
            jar,
            form(
                app,
                "/login",
                &[
                    ("csrf", page.field("csrf").as_str()),
                    ("next", "device"),
                    ("user_code", user1.as_str()),
                    ("username", "casey"),
                    ("password", PASSWORD),
                    ("code", ""),
                ],
            ),
        )
        .await
        .expect(303, "casey signs in on the web");
        w.browse("device page: enter a code", jar, get(app, "/device"))
            .await;
        w.browse(
            "device page: an unknown code",
            jar,
            get(app, "/device?user_code=BBBB-BBBB"),
        )
        .await;
        let confirm = w
            .browse(
                "device page: confirm",
                jar,
                get(app, &format!("/device?user_code={user1}")),
            )
            .await
            .expect(200, "the confirm page");
        let csrf = confirm.field("csrf");
        w.browse(
            "device page: decide without CSRF",
            jar,
            form(app, "/device", &[("user_code", user1.as_str()), ("decision", "approve")]),
        )
        .await;
        w.browse(
            "device page: decide without a decision",
            jar,
            form(app, "/device", &[("csrf", csrf.as_str()), ("user_code", user1.as_str())]),
        )
        .await;
        w.browse(
            "device page: approve",
            jar,
            form(
                app,
                "/device",
                &[("csrf", csrf.as_str()), ("user_code", user1.as_str()), ("decision", "approve")],
            ),
        )
        .await
        .expect(200, "casey approves");
        w.browse(
            "device page: approve a decided code",
            jar,
            form(
                app,
                "/device",
                &[("csrf", csrf.as_str()), ("user_code", user1.as_str()), ("decision", "approve")],
            ),
        )
        .await;
        w.browse(
            "device page: approve without a code",
            jar,
            form(app, "/device", &[("csrf", csrf.as_str()), ("decision", "approve")]),
        )
        .await;
        let tokens = w
            .send("device: poll, approved", poll(&device1))
            .await
            .expect(200, "the terminal gets casey's session");
        w.name(&tokens.s("session_id"), "<session:casey, device>");
        w.send("device: poll a redeemed code", poll(&device1)).await;

        // A second code, denied.
        let d2 = w.quiet(start()).await.expect(200, "a second device code");
        w.name(&d2.s("device_code"), "<device-code:D2>");
        w.name(&d2.s("user_code"), "<user-code:D2>");
        w.browse(
            "device page: deny",
            jar,
            form(
                app,
                "/device",
                &[("csrf", csrf.as_str()), ("user_code", d2.s("user_code").as_str()), ("decision", "deny")],
            ),
        )
        .await
        .expect(200, "casey denies");
        w.send("device: poll, denied", poll(&d2.s("device_code"))).await;

        // The session's refresh token rotates; a reused one ends the session.
        let refresh = |t: &str| {
            form(
                app,
                "/oauth/token",
                &[("grant_type", "refresh_token"), ("refresh_token", t), ("client_id", "airlock-cli")],
            )
        };
        let first = tokens.s("refresh_token");
        w.send("me: a device-flow session", bearer_get(app, "/v1/me", &tokens.s("access_token")))
            .await;
        let rotated = w
            .send("refresh: rotate", refresh(&first))
            .await
            .expect(200, "the refresh token rotates");
        w.send("refresh: reuse", refresh(&first)).await;
        w.send("refresh: after reuse", refresh(&rotated.s("refresh_token")))
            .await;
        w.send("refresh: unknown token", refresh("airlock_refresh_unknown"))
            .await;
        w.send(
            "refresh: no refresh_token",
            form(app, "/oauth/token", &[("grant_type", "refresh_token"), ("client_id", "airlock-cli")]),
        )
        .await;
        w.send(
            "refresh: no client_id",
            form(app, "/oauth/token", &[("grant_type", "refresh_token"), ("refresh_token", first.as_str())]),
        )
        .await;
    }

    /// Sign-in, sign-out and TOTP enrolment pages, and their refusals.
    async fn web_pages(&mut self) {
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
        w.name(&shown, "<totp-secret:casey>");
        let plain: String = shown.split_whitespace().collect();
        w.name(&plain, "<totp-secret:casey>");
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
            form(app, "/totp", &[("csrf", csrf.as_str()), ("code", totp.wrong().as_str())]),
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
        w.browse("totp page: already set up", jar, get(app, "/totp")).await;
        w.browse(
            "totp page: activate when set up",
            jar,
            form(app, "/totp", &[("csrf", csrf.as_str()), ("code", "123456")]),
        )
        .await;
        w.browse("logout: without CSRF", jar, form(app, "/logout", &[])).await;
        w.browse("logout: sign out", jar, form(app, "/logout", &[("csrf", csrf.as_str())]))
            .await
            .expect(200, "casey signs out");
        w.browse("logout: signed out already", jar, form(app, "/logout", &[("csrf", csrf.as_str())]))
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
        self.casey_totp = Some(totp);

        // A browser nobody signed in with.
        let mut anon = Jar::default();
        w.browse("totp page: signed out", &mut anon, get(app, "/totp")).await;
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
            raw_form(app, "/login", format!("csrf={token}&username=casey&username=casey")),
        )
        .await;
        w.browse("login: wrong password", &mut anon, casey(Some(&token), wrong_password, ""))
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
            form(app, "/device", &[("csrf", token), ("user_code", "BBBB-BBBB"), ("decision", "approve")]),
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

    /// `/v1/escalations`: requests, decisions and refusals.
    async fn escalations(&mut self) {
        let app = self.app;
        let (dana, drew, rookie, avery, root) = (
            self.kept("dana"),
            self.kept("drew"),
            self.kept("rookie"),
            self.avery.clone(),
            self.root.clone(),
        );
        let agent = self.kept("ci-dev db:read");
        let delegated = self.kept("delegated");
        let dana_other = self.kept("dana other");
        let deployer = TestAgent {
            client_id: self.kept("deployer id"),
            secret: secrecy::SecretString::from(self.kept("deployer secret")),
        };
        let w = &mut self.w;
        let owned = w
            .quiet(client_credentials(app, "dev", &deployer, Some("db:read")))
            .await
            .expect(200, "deployer's token")
            .s("access_token");
        let create = |token: &str, body: Value| bearer_post(app, "/v1/escalations", token, body);
        let e1 = w
            .send(
                "escalations: a person asks for prod",
                create(&dana, escalation("prod", &["db:read"], "30m", "E1 read the prod orders (TICKET-1)")),
            )
            .await
            .expect(201, "E1")
            .s("id");
        let e2 = w
            .send(
                "escalations: a person asks for a scope beyond the role",
                create(&dana, escalation("staging", &["db:migrate"], "1h", "E2 migrate staging (TICKET-2)")),
            )
            .await
            .expect(201, "E2")
            .s("id");
        let e3 = w
            .send(
                "escalations: a duration over the maximum is capped",
                create(&dana, escalation("dev", &["db:drop"], "12h", "E3 drop dev scratch tables (TICKET-3)")),
            )
            .await
            .expect(201, "E3")
            .s("id");
        w.send(
            "escalations: an agent asks",
            create(&agent, escalation("dev", &["db:drop"], "2h", "E4 reset the dev database (TICKET-4)")),
        )
        .await
        .expect(201, "E4");
        w.send(
            "escalations: an owned agent asks",
            create(&owned, escalation("dev", &["db:drop"], "10m", "E5 drop the deploy cache (TICKET-5)")),
        )
        .await
        .expect(201, "E5");
        w.send(
            "escalations: a person with the approver role asks",
            create(&drew, escalation("prod", &["db:write"], "45m", "E6 fix a prod row (TICKET-6)")),
        )
        .await
        .expect(201, "E6");
        let e7 = w
            .send(
                "escalations: a process acting for a person asks",
                create(&delegated, escalation("staging", &["db:migrate"], "15m", "E7 migrate for deploy-bot (TICKET-7)")),
            )
            .await
            .expect(201, "E7")
            .s("id");
        w.send(
            "escalations: seconds as a number",
            create(&agent, json!({ "environment": "dev", "scopes": ["db:drop"], "duration": 600, "reason": "E8 a number of seconds (TICKET-8)" })),
        )
        .await
        .expect(201, "E8");

        for (label, token, body) in [
            (
                "escalations: another environment than the agent's",
                &agent,
                escalation("staging", &["db:read"], "10m", "cross"),
            ),
            ("escalations: unknown environment", &dana, escalation("nope", &["db:read"], "10m", "x")),
            ("escalations: unknown scope", &dana, escalation("dev", &["db:nope"], "10m", "x")),
            ("escalations: no scopes", &dana, escalation("dev", &[], "10m", "x")),
            ("escalations: no reason", &dana, escalation("dev", &["db:drop"], "10m", "  ")),
            ("escalations: a bad duration", &dana, escalation("dev", &["db:drop"], "forever", "x")),
            (
                "escalations: a long duration text",
                &dana,
                escalation("dev", &["db:drop"], &"1".repeat(40), "x"),
            ),
            ("escalations: a field too long", &dana, escalation(&"e".repeat(65), &["db:drop"], "10m", "x")),
            (
                "escalations: what the role gives anyway",
                &dana,
                escalation("dev", &["db:read"], "10m", "x"),
            ),
            (
                "escalations: a person no role lets escalate",
                &rookie,
                escalation("prod", &["db:read"], "10m", "x"),
            ),
            (
                "escalations: unknown field",
                &dana,
                json!({ "environment": "dev", "scopes": ["db:drop"], "duration": "10m", "reason": "x", "urgent": true }),
            ),
        ] {
            w.send(label, create(token, body)).await;
        }
        w.send(
            "escalations: no credentials",
            post(app, "/v1/escalations").json(&escalation("dev", &["db:drop"], "10m", "x")),
        )
        .await;
        w.send(
            "escalations: JSON syntax error",
            post(app, "/v1/escalations")
                .bearer_auth(&dana)
                .header(CONTENT_TYPE, "application/json")
                .body("{"),
        )
        .await;
        w.send(
            "escalations: no content type",
            post(app, "/v1/escalations")
                .bearer_auth(&dana)
                .body(escalation("dev", &["db:drop"], "10m", "x").to_string()),
        )
        .await;
        w.send(
            "escalations: oversized body",
            post(app, "/v1/escalations")
                .bearer_auth(&dana)
                .header(CONTENT_TYPE, "application/json")
                .body(format!("{{\"reason\":\"{}\"}}", oversized(70_000))),
        )
        .await;

        w.send("escalations: list, a requester", bearer_get(app, "/v1/escalations", &dana))
            .await;
        w.send(
            "escalations: list pending, an approver",
            bearer_get(app, "/v1/escalations?pending=true", &avery),
        )
        .await;
        w.send(
            "escalations: list one environment, an admin",
            bearer_get(app, "/v1/escalations?environment=prod&limit=5", &root),
        )
        .await;
        w.send("escalations: list, an agent", bearer_get(app, "/v1/escalations", &agent))
            .await;
        w.send(
            "escalations: list, an unknown parameter",
            bearer_get(app, "/v1/escalations?state=pending", &dana),
        )
        .await;
        w.send(
            "escalations: list, a bad limit",
            bearer_get(app, "/v1/escalations?limit=many", &dana),
        )
        .await;
        w.send("escalations: list without credentials", get(app, "/v1/escalations"))
            .await;
        let one = |id: &str| format!("/v1/escalations/{id}");
        w.send("escalations: show, the requester", bearer_get(app, &one(&e1), &dana))
            .await;
        w.send("escalations: show, someone who may not see it", bearer_get(app, &one(&e1), &rookie))
            .await;
        w.send("escalations: show, not an id", bearer_get(app, &one("E1"), &dana))
            .await;
        w.send(
            "escalations: show, unknown id",
            bearer_get(app, &one("00000000-0000-4000-8000-000000000000"), &dana),
        )
        .await;
        w.send(
            "escalations: show, waiting a second",
            bearer_get(app, &format!("{}?wait=1", one(&e3)), &dana),
        )
        .await;
        w.send(
            "escalations: show, a bad wait",
            bearer_get(app, &format!("{}?wait=soon", one(&e3)), &dana),
        )
        .await;

        let approve = |id: &str, token: &str, body: Value| bearer_post(app, &format!("{}/approve", one(id)), token, body);
        w.send(
            "approve: an agent's token",
            approve(&e1, &agent, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: one's own request",
            approve(&e1, &dana, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: an approver without TOTP",
            approve(&e1, &drew, json!({ "totp": "123456" })),
        )
        .await;
        w.send("approve: no code", approve(&e1, &avery, json!({}))).await;
        w.send(
            "approve: a code too long",
            approve(&e1, &avery, json!({ "totp": "12345678901234567" })),
        )
        .await;
        let wrong = self.avery_totp.wrong();
        w.send("approve: a wrong code", approve(&e1, &avery, json!({ "totp": wrong })))
            .await;
        let code = self.avery_totp.code().await;
        let granted = w
            .send("approve: fresh code", approve(&e1, &avery, json!({ "totp": code })))
            .await
            .expect(200, "avery approves E1");
        w.send("approve: a used code", approve(&e2, &avery, json!({ "totp": code })))
            .await;
        w.send(
            "approve: a decided request",
            approve(&e1, &avery, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: not an id",
            approve("E1", &avery, json!({ "totp": "123456" })),
        )
        .await;
        w.send(
            "approve: unknown id",
            approve("00000000-0000-4000-8000-000000000000", &avery, json!({ "totp": "123456" })),
        )
        .await;

        let deny = |id: &str, token: &str, body: Value| bearer_post(app, &format!("{}/deny", one(id)), token, body);
        w.send("deny: no reason", deny(&e2, &avery, json!({ "reason": " " })))
            .await;
        w.send(
            "deny: someone who may not see it",
            deny(&e2, &rookie, json!({ "reason": "no" })),
        )
        .await;
        w.send(
            "deny: an agent's token",
            deny(&e2, &agent, json!({ "reason": "no" })),
        )
        .await;
        w.send(
            "deny: with a reason",
            deny(&e2, &avery, json!({ "reason": "use the migration window on Thursday" })),
        )
        .await
        .expect(200, "avery denies E2");
        w.send("deny: a decided request", deny(&e2, &avery, json!({ "reason": "again" })))
            .await;

        let cancel = |id: &str, token: &str| post(app, &format!("{}/cancel", one(id))).bearer_auth(token);
        w.send("cancel: someone else's request", cancel(&e3, &avery)).await;
        w.send("cancel: own request", cancel(&e3, &dana))
            .await
            .expect(200, "dana cancels E3");
        w.send("cancel: a decided request", cancel(&e3, &dana)).await;
        w.send("cancel: not an id", cancel("E3", &dana)).await;
        w.send("cancel: a process's own request", cancel(&e7, &delegated))
            .await
            .expect(200, "deploy-bot cancels E7");

        // dana's prod grant needs a fresh code in the session that first uses it.
        w.send(
            "exchange: prod under a grant, before stepping up",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await;
        let code = self.dana_totp.as_mut().expect("dana's authenticator").code().await;
        w.send(
            "step-up: before using a prod grant",
            bearer_post(app, "/v1/me/step-up", &dana, json!({ "code": code })),
        )
        .await
        .expect(204, "dana steps up");
        w.send(
            "exchange: prod under a grant",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await
        .expect(200, "dana's prod token");
        w.send(
            "exchange: prod under a grant bound to another session",
            exchange(app, "prod", &dana_other, Some("db:read"), None),
        )
        .await;

        w.send("grants: list, an admin", bearer_get(app, "/v1/grants", &root))
            .await;
        w.send(
            "grants: list active, the holder",
            bearer_get(app, "/v1/grants?active=true", &dana),
        )
        .await;
        w.send(
            "grants: list one environment, an approver",
            bearer_get(app, "/v1/grants?environment=prod", &avery),
        )
        .await;
        w.send("grants: list, an agent", bearer_get(app, "/v1/grants", &agent))
            .await;
        w.send(
            "grants: list, an unknown parameter",
            bearer_get(app, "/v1/grants?holder=dana", &root),
        )
        .await;
        w.send("grants: list without credentials", get(app, "/v1/grants"))
            .await;
        self.keep("e1 grant", granted.json()["grant"]["id"].as_str().expect("E1's grant").to_string());
        self.keep("owned", owned);
    }

    /// The approvals page: views by role, and every kind of decision posted from it.
    async fn web_approvals(&mut self) {
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
            login_form(app, Some(&page.field("csrf")), "approvals", "blake", PASSWORD, &code),
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
            form(app, "/approvals", &[("id", e4.as_str()), ("decision", "approve"), ("code", "123456")]),
        )
        .await;
        let unknown = "00000000-0000-4000-8000-000000000000";
        let code = self.blake_totp.code().await;
        let reason = "the cache is <shared> & \"needed\"";
        for (label, fields) in [
            ("no request named", vec![("decision", "approve")]),
            ("no decision", vec![("id", e4.as_str())]),
            ("approve without a code", vec![("id", e4.as_str()), ("decision", "approve"), ("code", " ")]),
            ("approve with a wrong code", vec![("id", e4.as_str()), ("decision", "approve"), ("code", wrong.as_str())]),
            ("approve an unknown request", vec![("id", unknown), ("decision", "approve"), ("code", "123456")]),
            ("approve", vec![("id", e4.as_str()), ("decision", "approve"), ("code", code.as_str())]),
            ("deny without a reason", vec![("id", e5.as_str()), ("decision", "deny"), ("reason", "")]),
            ("deny", vec![("id", e5.as_str()), ("decision", "deny"), ("reason", reason)]),
            ("deny a decided request", vec![("id", e5.as_str()), ("decision", "deny"), ("reason", "again")]),
        ] {
            let mut fields = fields;
            fields.insert(0, ("csrf", csrf.as_str()));
            w.browse(&format!("approvals page: {label}"), jar, form(app, "/approvals", &fields))
                .await;
            w.browse(&format!("approvals page: after {label}"), jar, get(app, "/approvals"))
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

    /// Grants at the token endpoint, revocation, and introspection.
    async fn grants_and_introspection(&mut self) {
        let app = self.app;
        let (root, dana) = (self.root.clone(), self.kept("dana"));
        let (ci_dev, ci_staging, rs) = (&self.ci_dev, &self.ci_staging, &self.rs_dev);
        let e4 = self.kept("e4");
        let e1_grant = self.kept("e1 grant");
        let (plain, delegated) = (self.kept("ci-dev db:read"), self.kept("delegated"));
        let w = &mut self.w;
        let drop = w
            .send(
                "cc: a destructive scope under a grant",
                client_credentials(app, "dev", ci_dev, Some("db:drop")),
            )
            .await
            .expect(200, "ci-dev's db:drop token")
            .s("access_token");
        w.send("introspect: active, under a grant", introspect(app, "dev", rs, &drop))
            .await;
        w.send("introspect: active", introspect(app, "dev", rs, &plain)).await;
        w.send(
            "introspect: a person's token for a process",
            introspect(app, "staging", ci_staging, &delegated),
        )
        .await;
        w.send(
            "introspect: another environment's token",
            introspect(app, "dev", rs, &delegated),
        )
        .await;
        w.send("introspect: not a token", introspect(app, "dev", rs, "not-a-token"))
            .await;
        w.send(
            "introspect: a session token",
            introspect(app, "dev", rs, &dana),
        )
        .await;
        w.send(
            "introspect: no credentials",
            form(app, "/envs/dev/introspect", &[("token", plain.as_str())]),
        )
        .await;
        w.send(
            "introspect: client_secret_post",
            form(
                app,
                "/envs/dev/introspect",
                &[("token", plain.as_str()), ("client_id", rs.client_id.as_str()), ("client_secret", secret(rs))],
            ),
        )
        .await;
        w.send(
            "introspect: wrong secret",
            form(app, "/envs/dev/introspect", &[("token", plain.as_str())])
                .basic_auth(&rs.client_id, Some("airlock_secret_not-the-right-one-at-all")),
        )
        .await;
        w.send(
            "introspect: another environment's agent",
            introspect(app, "dev", ci_staging, &plain),
        )
        .await;
        w.send(
            "introspect: no token",
            form(app, "/envs/dev/introspect", &[]).basic_auth(&rs.client_id, Some(secret(rs))),
        )
        .await;
        w.send(
            "introspect: JSON body",
            post(app, "/envs/dev/introspect")
                .json(&json!({ "token": plain }))
                .basic_auth(&rs.client_id, Some(secret(rs))),
        )
        .await;
        w.send(
            "introspect: oversized body",
            raw_form(app, "/envs/dev/introspect", format!("token={}", oversized(9000)))
                .basic_auth(&rs.client_id, Some(secret(rs))),
        )
        .await;
        w.send(
            "introspect: unknown environment",
            introspect(app, "nope", rs, &plain),
        )
        .await;

        let e4_view = w
            .send("escalations: show, an approved agent request", bearer_get(app, &format!("/v1/escalations/{e4}"), &root))
            .await
            .expect(200, "E4");
        let e4_grant = e4_view.json()["grant"]["id"].as_str().expect("E4's grant").to_string();
        let revoke = |id: &str, token: &str, body: Value| bearer_post(app, &format!("/v1/grants/{id}/revoke"), token, body);
        w.send(
            "revoke: no reason",
            revoke(&e4_grant, &root, json!({ "reason": "" })),
        )
        .await;
        w.send(
            "revoke: someone who may not see it",
            revoke(&e4_grant, &dana, json!({ "reason": "done" })),
        )
        .await;
        w.send(
            "revoke: an admin",
            revoke(&e4_grant, &root, json!({ "reason": "reset is done" })),
        )
        .await
        .expect(200, "root revokes E4's grant");
        w.send(
            "revoke: a revoked grant",
            revoke(&e4_grant, &root, json!({ "reason": "again" })),
        )
        .await;
        w.send("revoke: not an id", revoke("G1", &root, json!({ "reason": "x" })))
            .await;
        w.send(
            "revoke: unknown id",
            revoke("00000000-0000-4000-8000-000000000000", &root, json!({ "reason": "x" })),
        )
        .await;
        w.send(
            "introspect: a token under a revoked grant",
            introspect(app, "dev", rs, &drop),
        )
        .await;
        w.send(
            "cc: a destructive scope after the grant was revoked",
            client_credentials(app, "dev", ci_dev, Some("db:drop")),
        )
        .await;
        w.send(
            "revoke: the holder",
            revoke(&e1_grant, &dana, json!({ "reason": "finished early" })),
        )
        .await
        .expect(200, "dana revokes her prod grant");
        w.send(
            "exchange: prod after the grant was revoked",
            exchange(app, "prod", &dana, Some("db:read"), None),
        )
        .await;
        w.send("grants: list after revocations", bearer_get(app, "/v1/grants", &root))
            .await;
    }

    /// The escalation creation rate: an agent that asks too often is told when to retry.
    async fn creation_rate(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        let token = w
            .quiet(client_credentials(app, "dev", &self.flood, Some("db:read")))
            .await
            .expect(200, "flood's token")
            .s("access_token");
        let ask = |n: usize| {
            bearer_post(
                app,
                "/v1/escalations",
                &token,
                escalation("dev", &["db:drop"], "10m", &format!("flood request {n} (TICKET-9)")),
            )
        };
        // The default rate: 10 a minute, counted per agent.
        for n in 1..=10 {
            w.quiet(ask(n)).await.expect(201, "a request within the rate");
        }
        w.send_as("escalations: over the creation rate", ask(11), Record::VolatileWait)
            .await;
    }

    /// Failed sign-ins from one address are delayed once past the free allowance.
    async fn sign_in_throttle(&mut self) {
        let app = self.app;
        let w = &mut self.w;
        let mut browser = Jar::default();
        let page = w.quiet(get(app, "/approvals")).await;
        browser.keep(&page);
        let token = page.field("csrf");
        // Failures cost no password hashing when the password is over the length limit,
        // so the one that starts a 1 s delay and the refused ones below follow each other
        // within milliseconds.
        let long = oversized(2000);
        let mut refused = false;
        for _ in 0..40 {
            let r = w.quiet(sign_in(app, "ghost", &long, None)).await;
            if r.status == StatusCode::TOO_MANY_REQUESTS {
                refused = true;
                break;
            }
        }
        assert!(refused, "the sign-in throttle never started");
        w.send("sessions: throttled", sign_in(app, "ghost", &long, None))
            .await;
        w.browse(
            "login: throttled",
            &mut browser,
            form(
                app,
                "/login",
                &[("csrf", token.as_str()), ("username", "ghost"), ("password", long.as_str())],
            ),
        )
        .await;
    }
}
