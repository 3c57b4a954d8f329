//! The recorder: every exchange as it went over the wire, rendered as stable text, and the
//! comparison with the golden record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use reqwest::header::{COOKIE, HeaderMap, SET_COOKIE};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::normalise::{Namer, quote};
use super::{GOLDEN, METHODS, TRANSPORT_HEADERS, html};
use crate::support::{Backend, TestApp};

/// How a body is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Record {
    /// By its content type.
    Auto,
    /// An OpenAPI document: the operations it lists.
    OpenApi,
    /// By content type, with the wait in `Retry-After` (and the same number in the
    /// message) depending on the clock: what is left of a rate limit's window or of a
    /// throttle's delay.
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
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) text: String,
}

impl Reply {
    pub(super) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A string field of the JSON body.
    pub(super) fn s(&self, key: &str) -> String {
        self.json()[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key} in {}", self.text))
            .to_string()
    }

    /// Stop the script when a step it builds on did not go as it must.
    pub(super) fn expect(self, status: u16, step: &str) -> Reply {
        assert_eq!(
            self.status.as_u16(),
            status,
            "wire script step '{step}' went otherwise: {}",
            self.text
        );
        self
    }

    /// The value of the first form field called `name` in an HTML page.
    pub(super) fn field(&self, name: &str) -> String {
        let page = html::parse(&self.text);
        html::find_all(&page, &|e| e.name == "input" && e.attr("name") == Some(name))
            .first()
            .and_then(|e| e.attr("value"))
            .unwrap_or_else(|| panic!("no field {name} in:\n{}", self.text))
            .to_string()
    }

    /// The text of the element with id `id` in an HTML page.
    pub(super) fn text_of(&self, id: &str) -> String {
        let page = html::parse(&self.text);
        html::find_all(&page, &|e| e.attr("id") == Some(id))
            .first()
            .map(|e| e.text())
            .unwrap_or_else(|| panic!("no #{id} in:\n{}", self.text))
    }
}

/// A browser's cookies.
#[derive(Default)]
pub(super) struct Jar(BTreeMap<String, String>);

impl Jar {
    pub(super) fn keep(&mut self, r: &Reply) {
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

    pub(super) fn send(&self, rb: RequestBuilder) -> RequestBuilder {
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
pub(super) struct Wire<'a> {
    app: &'a TestApp,
    raws: Vec<Raw>,
    labels: HashSet<String>,
    named: Vec<(String, String)>,
}

impl<'a> Wire<'a> {
    pub(super) fn new(app: &'a TestApp) -> Wire<'a> {
        Wire {
            app,
            raws: Vec::new(),
            labels: HashSet::new(),
            named: Vec::new(),
        }
    }

    /// Send, record, and hand the answer to the script.
    pub(super) async fn send(&mut self, label: &str, rb: RequestBuilder) -> Reply {
        self.send_as(label, rb, Record::Auto).await
    }

    pub(super) async fn send_as(&mut self, label: &str, rb: RequestBuilder, record: Record) -> Reply {
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
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            record,
        });
        reply
    }

    /// Take back the last `n` exchanges (a step the clock spoiled, to be done again).
    pub(super) fn retract(&mut self, n: usize) {
        for raw in self.raws.split_off(self.raws.len().saturating_sub(n)) {
            self.labels.remove(&raw.label);
        }
    }

    /// Send without recording (setup the record does not need twice).
    pub(super) async fn quiet(&self, rb: RequestBuilder) -> Reply {
        self.execute(rb.build().expect("request builds")).await.0
    }

    /// As [`Wire::send`], as a browser with `jar`.
    pub(super) async fn browse(&mut self, label: &str, jar: &mut Jar, rb: RequestBuilder) -> Reply {
        let r = self.send(label, jar.send(rb)).await;
        jar.keep(&r);
        r
    }

    pub(super) async fn execute(&self, req: reqwest::Request) -> (Reply, Vec<u8>) {
        let resp = self.app.client.execute(req).await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body read").to_vec();
        let text = String::from_utf8_lossy(&body).into_owned();
        (
            Reply {
                status,
                headers,
                text,
            },
            body,
        )
    }

    /// Show `value` as `placeholder` wherever it appears in the record.
    pub(super) fn name(&mut self, value: &str, placeholder: &str) {
        self.named.push((value.to_string(), placeholder.to_string()));
    }

    /// The whole record.
    pub(super) fn render(&self) -> String {
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
    let content_type = raw
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default();
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
                // In a page, the placeholder is text, not a tag.
                let wait = if content_type.starts_with("text/html") {
                    " in &lt;wait&gt; second(s)"
                } else {
                    " in <wait> second(s)"
                };
                for unit in ["seconds", "second"] {
                    text = text.replace(&format!(" in {value} {unit}"), wait);
                }
                "<wait>".to_string()
            }
            _ => namer.text(value),
        };
        out.push_str(&format!("{name}: {shown}\n"));
    }
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

pub(super) fn compare_with_golden(actual: &str, backend: Backend) {
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
    let saved =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("wire-{backend:?}.txt").to_lowercase());
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
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(Edit::Gone(i));
            i += 1;
        } else {
            out.push(Edit::New(j));
            j += 1;
        }
    }
    out
}

/// The differing exchanges (matched by label, which is unique), the first few as a line
/// diff (`-` golden, `+` this run).
fn report(expected: &str, actual: &str) -> String {
    const SHOWN: usize = 4;
    let (e, a) = (blocks(expected), blocks(actual));
    let title = |b: &[&str]| b.first().copied().unwrap_or_default().to_string();
    let golden: HashMap<String, &Vec<&str>> = e.iter().map(|b| (title(b), b)).collect();
    let mut pieces = Vec::new();
    for b in &a {
        match golden.get(&title(b)) {
            Some(old) if *old == b => {}
            Some(old) => pieces.push(format!("changed: {}\n{}", title(b), line_diff(old, b))),
            None => pieces.push(format!("new in this run: {}\n", title(b))),
        }
    }
    let run: HashSet<String> = a.iter().map(|b| title(b)).collect();
    for b in e.iter().filter(|b| !run.contains(&title(b))) {
        pieces.push(format!("missing from this run: {}\n", title(b)));
    }
    if pieces.is_empty() {
        pieces.push("the same exchanges, in another order\n".to_string());
    }
    let mut out = String::new();
    for p in pieces.iter().take(SHOWN) {
        out.push_str(p);
        out.push('\n');
    }
    out.push_str(&format!("{} exchange(s) differ", pieces.len()));
    if pieces.len() > SHOWN {
        out.push_str(&format!(" ({SHOWN} shown)"));
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
