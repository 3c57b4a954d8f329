//! Turning recorded answers into stable, readable text.
//!
//! What varies from run to run (random identifiers, tokens, secrets, times, the port) is
//! replaced by a placeholder; everything else is kept exactly. The identifiers of the
//! script's cast get names (`<escalation:E1>`, `<user-id:dana>`, `<kid:prod>`), so the
//! record shows which answers name the same thing across exchanges; any other volatile
//! value gets its kind and a number counted within its exchange (`<uuid:2>`), so an
//! exchange added or removed never renumbers the others.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Arrays (under these keys) whose order the server does not guarantee: items created
/// within the same second may come back in either order. They are sorted here.
const UNORDERED_ARRAYS: &[&str] = &["escalations", "grants"];

/// Numeric claims that are Unix times.
const TIME_CLAIMS: &[&str] = &["exp", "iat", "nbf", "auth_time"];

/// Opaque secrets recognised by their prefix, and their placeholder kind.
const PREFIXED: &[(&str, &str)] = &[
    ("airlock_secret_", "agent-secret"),
    ("airlock_refresh_", "refresh-token"),
    ("airlock_device_", "device-code"),
];

/// Names volatile values with placeholders.
pub struct Namer {
    base: String,
    /// Values known to be volatile (from the pre-pass or the script), longest first.
    registered: Vec<(String, &'static str)>,
    /// Placeholders given by the script, for the whole record.
    named: HashMap<String, String>,
    /// Numbered placeholders of the current exchange.
    assigned: HashMap<String, String>,
    counters: HashMap<&'static str, usize>,
    /// While sorting: unnamed values get placeholders without numbers, and nothing is
    /// assigned.
    sorting: bool,
}

impl Namer {
    /// A namer for a server whose public URL is `base`.
    pub fn new(base: &str) -> Namer {
        Namer {
            base: base.trim_end_matches('/').to_string(),
            registered: Vec::new(),
            named: HashMap::new(),
            assigned: HashMap::new(),
            counters: HashMap::new(),
            sorting: false,
        }
    }

    /// Treat every occurrence of `value` as volatile, named `kind`.
    pub fn register(&mut self, kind: &'static str, value: &str) {
        // Short values would match inside ordinary words.
        if value.len() < 6 || self.registered.iter().any(|(v, _)| v == value) {
            return;
        }
        self.registered.push((value.to_string(), kind));
        self.registered
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    }

    /// Show `value` as `placeholder` everywhere in the record.
    /// A value with a shape of its own (an id, a client id, a prefixed secret) is named
    /// only where that shape is recognised, so a change of its format still shows.
    pub fn fix(&mut self, value: &str, placeholder: &str) {
        if !has_shape(value) {
            self.register("named", value);
        }
        self.named.insert(value.to_string(), placeholder.to_string());
    }

    /// Start numbering afresh (a new exchange).
    pub fn next_exchange(&mut self) {
        self.assigned.clear();
        self.counters.clear();
    }

    /// The placeholder of `value`: its name if the script gave one, else `<kind:N>`, N in
    /// order of first appearance within the exchange.
    pub fn name(&mut self, kind: &'static str, value: &str) -> String {
        if let Some(p) = self.named.get(value) {
            return p.clone();
        }
        if self.sorting {
            return format!("<{kind}>");
        }
        if let Some(p) = self.assigned.get(value) {
            return p.clone();
        }
        let n = self.counters.entry(kind).or_insert(0);
        *n += 1;
        let p = format!("<{kind}:{n}>");
        self.assigned.insert(value.to_string(), p.clone());
        p
    }

    /// Run `f` with unnumbered placeholders (to compute sort keys that do not depend on
    /// the order being decided).
    pub fn sorting<T>(&mut self, f: impl FnOnce(&mut Namer) -> T) -> T {
        let was = self.sorting;
        self.sorting = true;
        let out = f(self);
        self.sorting = was;
        out
    }

    /// Learn the volatile values a JSON answer names by field (user codes, TOTP
    /// secrets, key ids, public keys, opaque tokens), so they are recognised wherever
    /// they appear later (a URL, an HTML page, a header).
    pub fn learn(&mut self, v: &Value) {
        match v {
            Value::Object(map) => {
                for (k, item) in map {
                    if let Value::String(s) = item {
                        match k.as_str() {
                            "user_code" => self.register("user-code", s),
                            "secret" => {
                                self.register("totp-secret", s);
                                self.register("totp-secret", &grouped(s, 4));
                            }
                            "kid" => self.register("kid", s),
                            "x" if map.contains_key("kty") => self.register("jwk-x", s),
                            _ => {}
                        }
                        if let Some((header, _)) = jwt_parts(s)
                            && let Some(kid) = header.get("kid").and_then(Value::as_str)
                        {
                            self.register("kid", kid);
                        }
                    }
                    self.learn(item);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| self.learn(i)),
            _ => {}
        }
    }

    /// `s` with every volatile part replaced.
    pub fn text(&mut self, s: &str) -> String {
        let b = s.as_bytes();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            let rest = &s[i..];
            let prev = if i == 0 { None } else { Some(b[i - 1]) };
            if !self.base.is_empty() && rest.starts_with(&self.base) {
                out.push_str("<base>");
                i += self.base.len();
                continue;
            }
            if let Some((value, kind)) = self
                .registered
                .iter()
                .find(|(v, _)| rest.starts_with(v.as_str()))
                .cloned()
            {
                out.push_str(&self.name(kind, &value));
                i += value.len();
                continue;
            }
            let boundary = prev.is_none_or(|p| !p.is_ascii_alphanumeric());
            if boundary && let Some(n) = uuid_len(&b[i..]) {
                out.push_str(&self.name("uuid", &s[i..i + n]));
                i += n;
                continue;
            }
            if boundary && let Some(n) = client_id_len(&b[i..]) {
                out.push_str(&self.name("client-id", &s[i..i + n]));
                i += n;
                continue;
            }
            if let Some((kind, n)) = prefixed_len(rest) {
                out.push_str(&self.name(kind, &s[i..i + n]));
                i += n;
                continue;
            }
            if boundary && let Some(n) = rfc3339_len(&b[i..]) {
                // The offset's form stays: `Z` and `+00:00` are different texts.
                match s[i..i + n].ends_with(['Z', 'z']) {
                    true => out.push_str("<time>"),
                    false => out.push_str(&format!("<time{}>", &s[i + n - 6..i + n])),
                }
                i += n;
                continue;
            }
            if boundary && let Some(n) = utc_stamp_len(&b[i..]) {
                out.push_str("<utc-time>");
                i += n;
                continue;
            }
            if boundary && let Some(n) = hex64_len(&b[i..]) {
                out.push_str(&self.name("hex64", &s[i..i + n]));
                i += n;
                continue;
            }
            let ch = rest.chars().next().expect("not at the end");
            out.push(ch);
            i += ch.len_utf8();
        }
        out
    }

    /// A JSON value with its volatile parts replaced; `key` is the field it sits in.
    pub fn json(
        &mut self,
        key: Option<&str>,
        v: &Value,
        siblings: Option<&serde_json::Map<String, Value>>,
    ) -> Norm {
        match v {
            Value::Null | Value::Bool(_) => Norm::Scalar(v.to_string()),
            Value::Number(n) => match key {
                Some(k) if TIME_CLAIMS.contains(&k) => {
                    let iat = siblings.and_then(|m| m.get("iat")).and_then(Value::as_i64);
                    // Seconds since the epoch (ten digits), or it shows as it is.
                    let seconds = |t: i64| (1_000_000_000..10_000_000_000).contains(&t);
                    match (k, n.as_i64(), iat) {
                        (_, Some(t), _) if !seconds(t) => Norm::Scalar(n.to_string()),
                        ("iat", _, _) | (_, _, None) => Norm::Scalar("<unix-time>".into()),
                        (_, Some(t), Some(iat)) => Norm::Scalar(format!("<iat{:+}>", t - iat)),
                        (_, None, _) => Norm::Scalar(n.to_string()),
                    }
                }
                _ => Norm::Scalar(n.to_string()),
            },
            Value::String(s) => match jwt_parts(s) {
                Some((header, claims)) => Norm::Jwt(
                    Box::new(self.json(None, &Value::Object(header), None)),
                    Box::new(self.json(None, &Value::Object(claims), None)),
                ),
                None => Norm::Scalar(quote(&self.text(s))),
            },
            Value::Array(items) => {
                let mut order: Vec<usize> = (0..items.len()).collect();
                if key.is_some_and(|k| UNORDERED_ARRAYS.contains(&k)) {
                    let keys: Vec<String> = self.sorting(|n| {
                        items
                            .iter()
                            .map(|item| n.json(None, item, None).print())
                            .collect()
                    });
                    order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
                }
                Norm::Arr(
                    order
                        .into_iter()
                        .map(|i| self.json(None, &items[i], None))
                        .collect(),
                )
            }
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Norm::Obj(
                    keys.into_iter()
                        .map(|k| (k.clone(), self.json(Some(k), &map[k], Some(map))))
                        .collect(),
                )
            }
        }
    }
}

/// A normalised JSON value, printed one member per line.
pub enum Norm {
    /// A JSON literal or a placeholder, printed as is.
    Scalar(String),
    /// An array.
    Arr(Vec<Norm>),
    /// An object, keys sorted (JSON member order carries no meaning, RFC 8259).
    Obj(Vec<(String, Norm)>),
    /// A JWT: its header and claims (the signature is not compared).
    Jwt(Box<Norm>, Box<Norm>),
}

impl Norm {
    /// The value as indented lines, without trailing newline.
    pub fn print(&self) -> String {
        let mut out = String::new();
        self.write(0, &mut out);
        out
    }

    fn write(&self, depth: usize, out: &mut String) {
        let pad = |d: usize| "  ".repeat(d);
        match self {
            Norm::Scalar(s) => out.push_str(s),
            Norm::Arr(items) if items.is_empty() => out.push_str("[]"),
            Norm::Obj(members) if members.is_empty() => out.push_str("{}"),
            Norm::Arr(items) => {
                out.push_str("[\n");
                for item in items {
                    out.push_str(&pad(depth + 1));
                    item.write(depth + 1, out);
                    out.push('\n');
                }
                out.push_str(&pad(depth));
                out.push(']');
            }
            Norm::Obj(members) => {
                out.push_str("{\n");
                for (k, v) in members {
                    out.push_str(&pad(depth + 1));
                    out.push_str(&quote(k));
                    out.push_str(": ");
                    v.write(depth + 1, out);
                    out.push('\n');
                }
                out.push_str(&pad(depth));
                out.push('}');
            }
            Norm::Jwt(header, claims) => {
                out.push_str("jwt {\n");
                for (k, v) in [("header", header), ("claims", claims)] {
                    out.push_str(&pad(depth + 1));
                    out.push_str(k);
                    out.push_str(": ");
                    v.write(depth + 1, out);
                    out.push('\n');
                }
                out.push_str(&pad(depth));
                out.push('}');
            }
        }
    }
}

/// A string as a JSON string literal.
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Header and claims of a compact JWS, if `s` is one.
fn jwt_parts(s: &str) -> Option<(serde_json::Map<String, Value>, serde_json::Map<String, Value>)> {
    if !s.starts_with("eyJ") || s.len() > 8192 {
        return None;
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let decode = |p: &str| -> Option<serde_json::Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(p).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(m) => Some(m),
            _ => None,
        }
    };
    Some((decode(parts[0])?, decode(parts[1])?))
}

/// `ABCDEFGH` as `ABCD EFGH`.
pub fn grouped(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars
        .chunks(n)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

fn all(b: &[u8], f: impl Fn(u8) -> bool) -> bool {
    b.iter().all(|c| f(*c))
}

fn ends_word(b: &[u8], n: usize) -> bool {
    b.get(n).is_none_or(|c| !c.is_ascii_alphanumeric())
}

/// Whether all of `value` has a shape `text` recognises by itself.
fn has_shape(value: &str) -> bool {
    let (b, n) = (value.as_bytes(), value.len());
    uuid_len(b) == Some(n)
        || client_id_len(b) == Some(n)
        || prefixed_len(value).is_some_and(|(_, len)| len == n)
        || hex64_len(b) == Some(n)
}

/// `8-4-4-4-12` hex digits.
fn uuid_len(b: &[u8]) -> Option<usize> {
    let b36 = b.get(..36)?;
    let ok = b36.iter().enumerate().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => *c == b'-',
        _ => c.is_ascii_hexdigit(),
    });
    (ok && ends_word(b, 36)).then_some(36)
}

/// `agt_` and 32 hex digits.
fn client_id_len(b: &[u8]) -> Option<usize> {
    let ok = b.starts_with(b"agt_") && b.len() >= 36 && all(&b[4..36], |c| c.is_ascii_hexdigit());
    (ok && ends_word(b, 36)).then_some(36)
}

/// A known secret prefix followed by at least 20 base64url characters.
fn prefixed_len(s: &str) -> Option<(&'static str, usize)> {
    let (prefix, kind) = PREFIXED.iter().find(|(p, _)| s.starts_with(p))?;
    let run = s[prefix.len()..]
        .bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
        .count();
    (run >= 20).then_some((kind, prefix.len() + run))
}

fn digits(b: &[u8], at: usize, n: usize) -> bool {
    b.get(at..at + n).is_some_and(|d| all(d, |c| c.is_ascii_digit()))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn rfc3339_len(b: &[u8]) -> Option<usize> {
    let shape = digits(b, 0, 4)
        && b.get(4) == Some(&b'-')
        && digits(b, 5, 2)
        && b.get(7) == Some(&b'-')
        && digits(b, 8, 2)
        && matches!(b.get(10), Some(b'T') | Some(b't'))
        && digits(b, 11, 2)
        && b.get(13) == Some(&b':')
        && digits(b, 14, 2)
        && b.get(16) == Some(&b':')
        && digits(b, 17, 2);
    if !shape {
        return None;
    }
    let mut n = 19;
    if b.get(n) == Some(&b'.') {
        let frac = b[n + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return None;
        }
        n += 1 + frac;
    }
    match b.get(n) {
        Some(b'Z') | Some(b'z') => Some(n + 1),
        Some(b'+') | Some(b'-')
            if digits(b, n + 1, 2) && b.get(n + 3) == Some(&b':') && digits(b, n + 4, 2) =>
        {
            Some(n + 6)
        }
        _ => None,
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` (how pages show times).
fn utc_stamp_len(b: &[u8]) -> Option<usize> {
    let ok = digits(b, 0, 4)
        && b.get(4) == Some(&b'-')
        && digits(b, 5, 2)
        && b.get(7) == Some(&b'-')
        && digits(b, 8, 2)
        && b.get(10) == Some(&b' ')
        && digits(b, 11, 2)
        && b.get(13) == Some(&b':')
        && digits(b, 14, 2)
        && b.get(16) == Some(&b':')
        && digits(b, 17, 2)
        && b.get(19..23) == Some(b" UTC".as_slice());
    ok.then_some(23)
}

/// 64 lowercase hex digits (CSRF tokens and MACs).
fn hex64_len(b: &[u8]) -> Option<usize> {
    let ok = b.len() >= 64 && all(&b[..64], |c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    (ok && ends_word(b, 64)).then_some(64)
}

/// Units of the lengths of time pages show in words.
const UNITS: &[&str] = &[
    "seconds", "second", "minutes", "minute", "hours", "hour", "days", "day",
];

/// Length of `N unit[ N unit]` at the start of `s`.
fn span_len(s: &str) -> Option<usize> {
    let one = |s: &str| -> Option<usize> {
        let d = s.bytes().take_while(u8::is_ascii_digit).count();
        if d == 0 || s.as_bytes().get(d) != Some(&b' ') {
            return None;
        }
        let unit = UNITS.iter().find(|u| s[d + 1..].starts_with(*u))?;
        let n = d + 1 + unit.len();
        ends_word(s.as_bytes(), n).then_some(n)
    };
    let first = one(s)?;
    match s[first..].strip_prefix(' ').and_then(one) {
        Some(second) => Some(first + 1 + second),
        None => Some(first),
    }
}

/// Text of a page with the ages and remaining times it shows in words replaced: they
/// depend on how long the script took (`3 minutes ago`, `just now`, `expires in 59
/// minutes`). Lengths of time that are facts (`For 30 minutes`) stay.
pub fn redact_ages(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with("just now") {
            out.push_str("<ago>");
            i += "just now".len();
            continue;
        }
        let boundary = i == 0 || !s.as_bytes()[i - 1].is_ascii_alphanumeric();
        if boundary && let Some(n) = span_len(rest) {
            if rest[n..].starts_with(" ago") {
                out.push_str("<ago>");
                i += n + " ago".len();
                continue;
            }
            if out.ends_with("expires in ") {
                out.push_str("<time-left>");
                i += n;
                continue;
            }
        }
        let ch = rest.chars().next().expect("not at the end");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_parts_are_named_and_the_rest_kept() {
        let mut n = Namer::new("http://127.0.0.1:4000");
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let other = "1f8fad5b-d9cb-469f-a165-70867728950e";
        n.fix(other, "<escalation:E1>");
        let text = format!(
            "request {id} at http://127.0.0.1:4000/approvals#req-{id}, 2025-03-01T14:03:09.123Z, \
             2025-03-01 14:03:09 UTC, agt_0123456789abcdef0123456789abcdef, airlock_refresh_abcdefghijklmnopqrstuvwxyz, {other}"
        );
        let shown = "request <uuid:1> at <base>/approvals#req-<uuid:1>, <time>, <utc-time>, <client-id:1>, \
                     <refresh-token:1>, <escalation:E1>";
        assert_eq!(n.text(&text), shown);
        n.next_exchange();
        assert_eq!(n.text(&format!("{other} {id}")), "<escalation:E1> <uuid:1>");
        assert_eq!(n.text("TICKET-118 db:read 2025"), "TICKET-118 db:read 2025");
    }

    #[test]
    fn ages_are_redacted_but_durations_stay() {
        assert_eq!(
            redact_ages("just now (x); expires in 59 minutes. For 30 minutes, 1 hour 2 minutes ago"),
            "<ago> (x); expires in <time-left>. For 30 minutes, <ago>"
        );
    }
}
