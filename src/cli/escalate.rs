//! `airlock escalate | escalations | approve | deny | cancel | grants`: asking for
//! production or destructive access, and the human sign-off that grants it.
//!
//! Every command talks to `/v1/escalations` and `/v1/grants` with the stored CLI session
//! (refreshed as the other commands do). `--json` prints the server's JSON unchanged;
//! failures print the server's message on standard error and exit non-zero.
//!
//! SECURITY: an approval needs a fresh TOTP code, read from the terminal (or standard
//! input with `--code-stdin`), never from the command line. A refused code is never sent
//! twice: a 401 is retried with a refreshed session only when the session itself was
//! refused (`unauthenticated`), not when the code was (`totp_invalid`).

use std::fmt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::print_json;
use crate::session_file::{self, SessionClient};

/// `airlock escalate` exit code when the request was denied.
pub const EXIT_DENIED: u8 = 3;
/// `airlock escalate` exit code when nobody decided before the request expired.
pub const EXIT_EXPIRED: u8 = 4;
/// `airlock escalate` exit code when the request was cancelled.
pub const EXIT_CANCELLED: u8 = 5;
/// Exit code after Ctrl-C while waiting (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code when Airlock could not be reached for too long while waiting (EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// How long `--wait` asks the server to hold each poll.
const POLL_WAIT_SECS: u64 = 30;
/// How long `--wait` keeps retrying while Airlock cannot be reached.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// `airlock escalate` (exit codes: see the `EXIT_*` constants).
#[derive(clap::Args, Debug)]
pub struct EscalateArgs {
    /// Environment to ask access for.
    #[arg(long)]
    env: String,
    /// Scope to ask for (repeat for more).
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    /// How long the grant should last once approved (30m, 2h, ...); capped by the
    /// environment's maximum.
    #[arg(long)]
    duration: String,
    /// Why (shown to approvers): what you will do, and the ticket.
    #[arg(long)]
    reason: String,
    /// Wait until the request is approved, denied, expires or is cancelled.
    #[arg(long)]
    wait: bool,
    /// Print the server's JSON (with --wait: the final state).
    #[arg(long)]
    json: bool,
}

/// `airlock escalations ...`.
#[derive(clap::Subcommand, Debug)]
pub enum EscalationsCmd {
    /// List the requests you may see (yours, and those you approve), newest first.
    List {
        /// Only requests still waiting for a decision.
        #[arg(long)]
        pending: bool,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one request: every field, its grant and its history.
    Show {
        /// Request id (a UUID).
        id: String,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `airlock approve`.
#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    /// Request id (a UUID).
    id: String,
    /// Read the TOTP code from standard input instead of the terminal.
    #[arg(long)]
    code_stdin: bool,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

/// `airlock deny`.
#[derive(clap::Args, Debug)]
pub struct DenyArgs {
    /// Request id (a UUID).
    id: String,
    /// Why (shown to the requester).
    #[arg(long)]
    reason: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

/// `airlock cancel`.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// Request id (a UUID).
    id: String,
    /// Print the server's JSON.
    #[arg(long)]
    json: bool,
}

/// `airlock grants ...`.
#[derive(clap::Subcommand, Debug)]
pub enum GrantsCmd {
    /// List the grants you may see (yours, and those of environments you approve).
    List {
        /// Only grants in force now.
        #[arg(long)]
        active: bool,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a grant now: tokens minted under it stop working and no new ones are issued.
    Revoke {
        /// Grant id (a UUID).
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
        /// Print the server's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Why a call to Airlock's API failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// No answer: connection refused or reset, timeout. Worth retrying.
    Unreachable(String),
    /// Airlock answered with an error.
    Answered {
        /// HTTP status.
        status: StatusCode,
        /// The stable error code (`conflict`, `totp_invalid`, ...).
        code: String,
        /// The server's message for the person.
        message: String,
    },
    /// Something on this side: no session, an unreadable answer, a refused refresh.
    Local(anyhow::Error),
}

impl Failure {
    /// Whether trying again later may succeed (no answer, 5xx, 429).
    fn is_transient(&self) -> bool {
        match self {
            Failure::Unreachable(_) => true,
            Failure::Answered { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Local(_) => false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unreachable(m) => f.write_str(m),
            Failure::Answered { status, code, .. }
                if *status == StatusCode::UNAUTHORIZED && code == "unauthenticated" =>
            {
                f.write_str("your session is no longer valid: run `airlock login`, then try again")
            }
            Failure::Answered { status, message, .. } => write!(f, "Airlock answered {status}: {message}"),
            Failure::Local(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for Failure {}

/// Airlock's `/v1` API with the stored session, with errors a command can tell apart.
pub(super) struct Api {
    client: SessionClient,
    http: reqwest::Client,
}

impl Api {
    /// From the stored session (fails with what to do when there is none).
    pub(super) fn load() -> anyhow::Result<Api> {
        Ok(Api {
            client: SessionClient::load()?,
            http: session_file::http()?,
        })
    }

    /// The server's base URL.
    fn server(&self) -> String {
        self.client.session.server.clone()
    }

    /// Who the session belongs to.
    fn username(&self) -> &str {
        &self.client.session.username
    }

    /// Refresh the session (under the session lock, as every command does).
    async fn refresh(&mut self) -> Result<(), Failure> {
        self.client.refresh().await.map_err(|e| {
            let text = format!("{e:#}");
            // SessionClient words a failed connection "cannot reach ..."; anything else
            // means the server refused the refresh token (the message says to log in).
            if text.starts_with("cannot reach") {
                Failure::Unreachable(text)
            } else {
                Failure::Local(e)
            }
        })
    }

    /// A usable session access token: the stored one (another `airlock` may have
    /// refreshed it), refreshed first when it is about to expire.
    async fn bearer(&mut self) -> Result<String, Failure> {
        self.client.session = session_file::load().map_err(Failure::Local)?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if self.client.session.access_expires_at - 30 <= now {
            self.refresh().await?;
        }
        Ok(self.client.session.access_token.clone())
    }

    /// Call `path` (under the server's base URL) and return its JSON.
    pub(super) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Failure> {
        let mut refreshed = false;
        loop {
            let token = self.bearer().await?;
            let server = self.server();
            let unreachable = |e: reqwest::Error| {
                Failure::Unreachable(format!(
                    "cannot reach Airlock at {server}: {}",
                    crate::client::network_error(e)
                ))
            };
            let mut req = self
                .http
                .request(method.clone(), format!("{server}{path}"))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = req.send().await.map_err(unreachable)?;
            let status = r.status();
            let bytes = r.bytes().await.map_err(unreachable)?;
            if status.is_success() {
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&bytes).map_err(|_| {
                    Failure::Local(anyhow::anyhow!("unexpected answer from Airlock at {server}"))
                });
            }
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let code = v["error"]["code"]
                .as_str()
                .or_else(|| v["error"].as_str())
                .unwrap_or_default()
                .to_string();
            let message = v["error"]["message"]
                .as_str()
                .or_else(|| v["error_description"].as_str())
                .unwrap_or("unexpected answer")
                .to_string();
            // Only a refused session is worth a refresh. A refused TOTP code is also a
            // 401, and sending the same code again would only count another failure.
            if status == StatusCode::UNAUTHORIZED && code == "unauthenticated" && !refreshed {
                refreshed = true;
                self.refresh().await?;
                continue;
            }
            return Err(Failure::Answered {
                status,
                code,
                message,
            });
        }
    }

    /// As [`Api::send`], for commands that stop at the first failure.
    async fn call(&mut self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        Ok(self.send(method, path, body).await?)
    }
}

/// Percent-encode one path segment (ids are passed on as given).
fn seg(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Read a TOTP code from the terminal (`/dev/tty`) or, with `from_stdin`, one line of
/// standard input. Spaces are ignored (`123 456`).
pub(super) fn read_code(prompt: &str, from_stdin: bool) -> anyhow::Result<SecretString> {
    let line = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read the code from standard input")?;
        s
    } else {
        rpassword::prompt_password(prompt).map_err(|_| {
            anyhow::anyhow!(
                "cannot read the code from a terminal; pass --code-stdin and give it on standard input"
            )
        })?
    };
    let code: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if code.is_empty() {
        bail!("no code was entered");
    }
    Ok(SecretString::from(code))
}

/// Exit code for a failed call, as `airlock token` reports them: 69 when Airlock could
/// not be reached or was unavailable, 77 when it refused.
pub(super) fn exit_code_of(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Failure>() {
        Some(f) if f.is_transient() => EXIT_UNAVAILABLE,
        Some(Failure::Answered { .. }) => 77,
        _ => 1,
    }
}

/// Confirm a fresh TOTP code for this session (`POST /v1/me/step-up`).
pub(super) async fn step_up(code: &SecretString) -> anyhow::Result<()> {
    let mut api = Api::load()?;
    api.call(
        Method::POST,
        "/v1/me/step-up",
        Some(&json!({ "code": code.expose_secret() })),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn parse_time(v: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &Rfc3339).ok()
}

/// `1h30m`, `45s`, `2d3h`.
fn span(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// `2025-01-31 14:05:00 UTC`.
fn stamp(t: OffsetDateTime) -> String {
    crate::domain::utc_stamp(t)
}

/// `2025-01-31 14:05:00 UTC (in 29m)`, `(... ago)` or `(now)`.
fn when(v: &Value) -> String {
    let Some(t) = parse_time(v) else {
        return "-".into();
    };
    let delta = (t - OffsetDateTime::now_utc()).whole_seconds();
    match delta {
        0 => format!("{} (now)", stamp(t)),
        d if d > 0 => format!("{} (in {})", stamp(t), span(d)),
        d => format!("{} ({} ago)", stamp(t), span(-d)),
    }
}

/// A timestamp without the relative part (history lines).
fn at(v: &Value) -> String {
    parse_time(v).map(stamp).unwrap_or_else(|| "-".into())
}

/// `user:bob` as `bob`; agents and `system` as they are.
fn actor(s: &str) -> &str {
    s.strip_prefix("user:").unwrap_or(s)
}

fn age(v: &Value) -> String {
    parse_time(v)
        .map(|t| span((OffsetDateTime::now_utc() - t).whole_seconds()))
        .unwrap_or_else(|| "-".into())
}

fn is_past(v: &Value) -> bool {
    parse_time(v).is_some_and(|t| t <= OffsetDateTime::now_utc())
}

/// A request's state; a pending one past its deadline is expired (the server treats it
/// so whether or not its sweeper has run yet).
fn state_of(view: &Value) -> &str {
    match text(&view["state"]) {
        "pending" if is_past(&view["expires_at"]) => "expired",
        s => s,
    }
}

/// Scopes with the destructive ones marked: `db:write, db:drop!`.
fn scopes_marked(view: &Value) -> String {
    let destructive = strings(&view["destructive_scopes"]);
    strings(&view["scopes"])
        .into_iter()
        .map(|s| {
            if destructive.contains(&s) {
                format!("{s}!")
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `bob`, `process:x (agent, for alice)`, or `agt_x (agent, owned by alice)`.
fn requester(view: &Value) -> String {
    let who = text(&view["requester"]);
    match (text(&view["requester_kind"]), view["sponsor"].as_str()) {
        ("agent", Some(_)) if view["owner"].is_string() => {
            format!("{who} (agent, owned by {})", text(&view["owner"]))
        }
        ("agent", Some(sponsor)) => format!("{who} (agent, for {sponsor})"),
        ("agent", None) => format!("{who} (agent)"),
        _ => who.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Print rows as columns, the last one left ragged.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The `airlock token` command that uses a grant.
fn token_command(env: &str, scopes: &[String]) -> String {
    let mut cmd = format!("airlock token --env {env}");
    for s in scopes {
        cmd.push_str(&format!(" --scope {s}"));
    }
    cmd
}

fn approvers(view: &Value) -> String {
    view["approvals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| text(&x["approver"]).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// One paragraph about a grant.
fn grant_line(g: &Value) -> String {
    format!(
        "grant {} ({}) for {}: {} in {} until {}",
        text(&g["id"]),
        text(&g["status"]),
        text(&g["holder_name"]),
        strings(&g["scopes"]).join(", "),
        text(&g["environment"]),
        when(&g["ends_at"])
    )
}

/// What is being asked for, for an approver (on standard error, before the prompt).
fn summary(view: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!("request     {}\n", text(&view["id"])));
    out.push_str(&format!("environment {}\n", text(&view["environment"])));
    out.push_str(&format!("scopes      {}", scopes_marked(view)));
    if !strings(&view["destructive_scopes"]).is_empty() {
        out.push_str("   (! = destructive)");
    }
    out.push('\n');
    out.push_str(&format!("requester   {}\n", requester(view)));
    out.push_str(&format!(
        "duration    {}\n",
        span(view["duration_secs"].as_i64().unwrap_or(0))
    ));
    out.push_str(&format!("reason      {}\n", text(&view["reason"])));
    out.push_str(&format!(
        "approvals   {} of {}{}\n",
        view["approvals"].as_array().map_or(0, Vec::len),
        view["quorum"].as_u64().unwrap_or(1),
        match approvers(view) {
            a if a.is_empty() => String::new(),
            a => format!(" ({a})"),
        }
    ));
    out.push_str(&format!("state       {}\n", state_of(view)));
    out
}

/// Every field and the history (`airlock escalations show`).
fn print_view(view: &Value) {
    print!("{}", summary(view));
    if view["duration_capped"] == true {
        println!("            (the duration asked for was capped to the environment's maximum)");
    }
    println!("created     {}", when(&view["created_at"]));
    if state_of(view) == "pending" {
        println!("pending until {}", when(&view["expires_at"]));
    } else if let Some(by) = view["decided_by"].as_str() {
        let reason = view["decision_reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!(
            "decided     {} by {}{reason}",
            when(&view["decided_at"]),
            actor(by)
        );
    }
    if view["grant"].is_object() {
        println!("grant       {}", grant_line(&view["grant"]));
    }
    println!("page        {}", text(&view["url"]));
    println!("history:");
    for h in view["history"].as_array().into_iter().flatten() {
        let note = h["note"].as_str().map(|n| format!("  {n}")).unwrap_or_default();
        println!(
            "  {}  {:<14} {}{note}",
            at(&h["at"]),
            text(&h["kind"]),
            actor(text(&h["actor"]))
        );
    }
}

// ---------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------

/// `airlock escalate`.
pub(super) async fn escalate(args: &EscalateArgs) -> anyhow::Result<ExitCode> {
    let mut api = Api::load()?;
    let body = json!({
        "environment": args.env,
        "scopes": args.scopes,
        "duration": args.duration,
        "reason": args.reason,
    });
    let view = api.call(Method::POST, "/v1/escalations", Some(&body)).await?;
    let id = text(&view["id"]).to_string();
    if id.is_empty() {
        bail!("unexpected answer from Airlock: the request has no id");
    }
    if args.json && !args.wait {
        print_json(&view);
        return Ok(ExitCode::SUCCESS);
    }
    // With --json the final JSON is the only thing on standard output.
    let created = format!(
        "Request {id} created: {} in {} for {}.\nApproval page: {}",
        scopes_marked(&view),
        text(&view["environment"]),
        span(view["duration_secs"].as_i64().unwrap_or(0)),
        text(&view["url"])
    );
    let capped = (view["duration_capped"] == true).then(|| {
        format!(
            "Note: {} is longer than {} allows; the grant will last {}.",
            args.duration,
            text(&view["environment"]),
            span(view["duration_secs"].as_i64().unwrap_or(0))
        )
    });
    if args.json {
        eprintln!("{created}");
        if let Some(c) = &capped {
            eprintln!("{c}");
        }
    } else {
        println!("{created}");
        if let Some(c) = &capped {
            println!("{c}");
        }
    }
    if !args.wait {
        if view["state"] == "pending" {
            println!(
                "An approver must say yes before it can be used. Check on it with \
                 `airlock escalations show {id}`, or withdraw it with `airlock cancel {id}`."
            );
        } else {
            return Ok(outcome(&view, false));
        }
        return Ok(ExitCode::SUCCESS);
    }

    // Installed before saying we wait, so Ctrl-C from then on leaves the request pending.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch for Ctrl-C")?;
    if view["state"] == "pending" {
        eprintln!("Waiting for approval (Ctrl-C stops waiting; the request stays pending)...");
    }
    match wait_for_decision(&mut api, &id, view, &mut sigint).await? {
        Waited::Decided(v) => {
            if args.json {
                print_json(&v);
            }
            Ok(outcome(&v, args.json))
        }
        Waited::Interrupted => {
            eprintln!(
                "\nStopped waiting. Request {id} is still pending: an approver can still approve it.\n\
                 Check it with `airlock escalations show {id}`; withdraw it with `airlock cancel {id}`."
            );
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
        Waited::Lost(why) => {
            eprintln!(
                "error: gave up waiting: {why}\nRequest {id} may still be pending or decided; \
                 check it with `airlock escalations show {id}`."
            );
            Ok(ExitCode::from(EXIT_UNAVAILABLE))
        }
    }
}

/// How waiting ended.
enum Waited {
    /// The request left `pending` (the final view).
    Decided(Value),
    /// Ctrl-C.
    Interrupted,
    /// Airlock stayed unreachable.
    Lost(String),
}

/// Long-poll `GET /v1/escalations/{id}?wait=30` until the request leaves `pending`.
/// Failed polls (no answer, 5xx, 429) are retried with a growing pause; Ctrl-C ends the
/// wait at any point without touching the request.
async fn wait_for_decision(
    api: &mut Api,
    id: &str,
    mut view: Value,
    sigint: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<Waited> {
    let path = format!("/v1/escalations/{}?wait={POLL_WAIT_SECS}", seg(id));
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);
    let mut overdue_polls = 0;
    let mut seen_approvals = view["approvals"].as_array().map_or(0, Vec::len);
    loop {
        if view["state"] != "pending" {
            return Ok(Waited::Decided(view));
        }
        if is_past(&view["expires_at"]) {
            // The server's sweeper marks it expired within a second or two; give it the
            // chance to say so itself, then call it expired (it can no longer be decided).
            overdue_polls += 1;
            if overdue_polls > 5 {
                // `state_of` reads an overdue pending request as expired.
                return Ok(Waited::Decided(view));
            }
        }
        let started = Instant::now();
        // Any refresh the session needs happens here, outside the race with Ctrl-C:
        // dropping a refresh half-way could lose the rotated refresh token (and reusing
        // the old one ends the session). A signal arriving meanwhile is kept for below.
        let polled = match api.bearer().await {
            Err(f) => Err(f),
            Ok(_) => tokio::select! {
                _ = sigint.recv() => return Ok(Waited::Interrupted),
                r = api.send(Method::GET, &path, None) => r,
            },
        };
        let pause = match polled {
            Ok(v) => {
                if failing_since.take().is_some() {
                    eprintln!("Reached Airlock again; still waiting...");
                }
                backoff = Duration::from_secs(1);
                view = v;
                let approvals = view["approvals"].as_array().map_or(0, Vec::len);
                if approvals > seen_approvals && view["state"] == "pending" {
                    eprintln!(
                        "Approved by {} ({approvals} of {}); waiting for more...",
                        approvers(&view),
                        view["quorum"].as_u64().unwrap_or(1)
                    );
                }
                seen_approvals = approvals;
                // A poll that came back at once while still pending (an overdue request,
                // or a server that does not hold polls) must not become a busy loop.
                (view["state"] == "pending" && started.elapsed() < Duration::from_secs(1))
                    .then_some(Duration::from_secs(1))
            }
            Err(f) if f.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > GIVE_UP_AFTER {
                    return Ok(Waited::Lost(format!(
                        "{f} (for over {} minutes)",
                        GIVE_UP_AFTER.as_secs() / 60
                    )));
                }
                eprintln!("note: {f}; retrying in {}s", backoff.as_secs());
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                Some(pause)
            }
            Err(f) => return Err(f.into()),
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = sigint.recv() => return Ok(Waited::Interrupted),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Say how a decided request ended; the exit code for it. With `quiet_stdout` (the JSON
/// is printed already) everything goes to standard error.
fn outcome(view: &Value, quiet_stdout: bool) -> ExitCode {
    let id = text(&view["id"]);
    let by = actor(view["decided_by"].as_str().unwrap_or("someone"));
    match state_of(view) {
        "approved" => {
            let g = &view["grant"];
            let scopes = if g.is_object() {
                strings(&g["scopes"])
            } else {
                strings(&view["scopes"])
            };
            let env = text(&view["environment"]);
            let mut msg = format!("Approved by {}.", approvers(view));
            if g.is_object() {
                msg.push_str(&format!(
                    "\nGrant {}: {} in {env} until {}.",
                    text(&g["id"]),
                    scopes.join(", "),
                    when(&g["ends_at"])
                ));
            }
            msg.push_str(&format!("\nNow run: {}", token_command(env, &scopes)));
            if quiet_stdout {
                eprintln!("{msg}");
            } else {
                println!("{msg}");
            }
            ExitCode::SUCCESS
        }
        "denied" => {
            eprintln!(
                "Denied by {by}: {}",
                view["decision_reason"].as_str().unwrap_or("(no reason given)")
            );
            ExitCode::from(EXIT_DENIED)
        }
        "expired" => {
            eprintln!(
                "Expired: nobody approved request {id} in time. If you still need it, ask again: {}",
                crate::policy::escalate_command(text(&view["environment"]), &strings(&view["scopes"]))
            );
            ExitCode::from(EXIT_EXPIRED)
        }
        "cancelled" => {
            eprintln!("Cancelled by {by}: request {id} can no longer be approved.");
            ExitCode::from(EXIT_CANCELLED)
        }
        other => {
            eprintln!("error: request {id} is in an unexpected state '{other}'");
            ExitCode::FAILURE
        }
    }
}

/// `airlock escalations list | show`.
pub(super) async fn escalations(cmd: &EscalationsCmd) -> anyhow::Result<ExitCode> {
    let mut api = Api::load()?;
    match cmd {
        EscalationsCmd::List { pending, env, json } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if *pending {
                query.append_pair("pending", "true");
            }
            if let Some(e) = env {
                query.append_pair("environment", e);
            }
            let query = query.finish();
            let path = if query.is_empty() {
                "/v1/escalations".to_string()
            } else {
                format!("/v1/escalations?{query}")
            };
            let list = api.call(Method::GET, &path, None).await?;
            if *json {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            let items = list["escalations"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!(
                    "No {}requests{}.",
                    if *pending { "pending " } else { "" },
                    env.as_deref().map(|e| format!(" in {e}")).unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|v| {
                    vec![
                        text(&v["id"]).to_string(),
                        text(&v["environment"]).to_string(),
                        scopes_marked(v),
                        requester(v),
                        state_of(v).to_string(),
                        age(&v["created_at"]),
                        truncate(text(&v["reason"]), 40),
                    ]
                })
                .collect();
            table(
                &["ID", "ENV", "SCOPES", "REQUESTER", "STATE", "AGE", "REASON"],
                &rows,
            );
            if items
                .iter()
                .any(|v| !strings(&v["destructive_scopes"]).is_empty())
            {
                println!("(! = destructive scope)");
            }
        }
        EscalationsCmd::Show { id, json } => {
            let view = api
                .call(Method::GET, &format!("/v1/escalations/{}", seg(id)), None)
                .await?;
            if *json {
                print_json(&view);
            } else {
                print_view(&view);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock approve`.
pub(super) async fn approve(args: &ApproveArgs) -> anyhow::Result<ExitCode> {
    let mut api = Api::load()?;
    let path = format!("/v1/escalations/{}", seg(&args.id));
    let view = api.call(Method::GET, &path, None).await?;
    eprint!("{}", summary(&view));
    // Checked here only to spare a code; the server decides (and checks again).
    match state_of(&view) {
        "pending" => {}
        s => bail!("request {} is {s}; there is nothing to approve", args.id),
    }
    if text(&view["requester_kind"]) == "person" && text(&view["requester"]) == api.username() {
        bail!("you cannot approve your own request; another approver must");
    }
    let code = read_code("Code from your authenticator app: ", args.code_stdin)?;
    let after = api
        .call(
            Method::POST,
            &format!("{path}/approve"),
            Some(&json!({ "totp": code.expose_secret() })),
        )
        .await?;
    if args.json {
        print_json(&after);
        return Ok(ExitCode::SUCCESS);
    }
    if text(&after["state"]) == "approved" {
        println!("Approved request {}.", args.id);
        if after["grant"].is_object() {
            println!("Created {}.", grant_line(&after["grant"]));
        }
    } else {
        let have = after["approvals"].as_array().map_or(0, Vec::len);
        let need = after["quorum"].as_u64().unwrap_or(1) as usize;
        println!(
            "Approval recorded: {have} of {need}. It needs {} more approver(s) who are not you.",
            need.saturating_sub(have)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock deny`.
pub(super) async fn deny(args: &DenyArgs) -> anyhow::Result<ExitCode> {
    let mut api = Api::load()?;
    let view = api
        .call(
            Method::POST,
            &format!("/v1/escalations/{}/deny", seg(&args.id)),
            Some(&json!({ "reason": args.reason })),
        )
        .await?;
    if args.json {
        print_json(&view);
    } else {
        println!(
            "Denied request {} ({} in {}, asked by {}).",
            args.id,
            scopes_marked(&view),
            text(&view["environment"]),
            requester(&view)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock cancel`.
pub(super) async fn cancel(args: &CancelArgs) -> anyhow::Result<ExitCode> {
    let mut api = Api::load()?;
    let view = api
        .call(
            Method::POST,
            &format!("/v1/escalations/{}/cancel", seg(&args.id)),
            None,
        )
        .await?;
    if args.json {
        print_json(&view);
    } else {
        println!("Cancelled request {}; it can no longer be approved.", args.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock grants list | revoke`.
pub(super) async fn grants(cmd: &GrantsCmd) -> anyhow::Result<ExitCode> {
    let mut api = Api::load()?;
    match cmd {
        GrantsCmd::List { active, env, json } => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if *active {
                query.append_pair("active", "true");
            }
            if let Some(e) = env {
                query.append_pair("environment", e);
            }
            let query = query.finish();
            let path = if query.is_empty() {
                "/v1/grants".to_string()
            } else {
                format!("/v1/grants?{query}")
            };
            let list = api.call(Method::GET, &path, None).await?;
            if *json {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            let items = list["grants"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                println!("No {}grants.", if *active { "active " } else { "" });
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|g| {
                    vec![
                        text(&g["id"]).to_string(),
                        text(&g["environment"]).to_string(),
                        strings(&g["scopes"]).join(", "),
                        text(&g["holder_name"]).to_string(),
                        text(&g["status"]).to_string(),
                        when(&g["ends_at"]),
                        text(&g["escalation_id"]).to_string(),
                    ]
                })
                .collect();
            table(
                &["ID", "ENV", "SCOPES", "HOLDER", "STATUS", "ENDS", "REQUEST"],
                &rows,
            );
        }
        GrantsCmd::Revoke { id, reason, json } => {
            let g = api
                .call(
                    Method::POST,
                    &format!("/v1/grants/{}/revoke", seg(id)),
                    Some(&json!({ "reason": reason })),
                )
                .await?;
            if *json {
                print_json(&g);
            } else {
                println!(
                    "Revoked grant {id}: tokens minted under it stop working now, and no new ones are issued."
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_durations() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(1800), "30m");
        assert_eq!(span(90), "1m30s");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(5400), "1h30m");
        assert_eq!(span(86_400 * 2 + 3600 * 3), "2d3h");
        assert_eq!(span(-5), "0s");
    }

    #[test]
    fn destructive_scopes_are_marked() {
        let v = json!({ "scopes": ["db:write", "db:drop"], "destructive_scopes": ["db:drop"] });
        assert_eq!(scopes_marked(&v), "db:write, db:drop!");
    }

    #[test]
    fn an_overdue_pending_request_reads_as_expired() {
        let v = json!({ "state": "pending", "expires_at": "2000-01-01T00:00:00Z" });
        assert_eq!(state_of(&v), "expired");
        let v = json!({ "state": "pending", "expires_at": "2999-01-01T00:00:00Z" });
        assert_eq!(state_of(&v), "pending");
    }

    #[test]
    fn long_reasons_are_cut_on_one_line() {
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn the_suggested_token_command_names_every_scope() {
        assert_eq!(
            token_command("prod", &["db:write".into(), "db:drop".into()]),
            "airlock token --env prod --scope db:write --scope db:drop"
        );
        // It runs as printed.
        use clap::Parser;
        let words = token_command("prod", &["db:write".into()]);
        crate::cli::Cli::try_parse_from(words.split(' ')).expect("a valid command");
    }

    #[test]
    fn a_refused_session_says_to_log_in_but_a_refused_code_does_not() {
        let session = Failure::Answered {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthenticated".into(),
            message: "sign in first".into(),
        };
        assert!(session.to_string().contains("airlock login"));
        let code = Failure::Answered {
            status: StatusCode::UNAUTHORIZED,
            code: "totp_invalid".into(),
            message: "that code is wrong or was already used; wait for the next one".into(),
        };
        assert!(!code.to_string().contains("airlock login"));
        assert!(code.to_string().contains("that code is wrong"));
        assert!(!code.is_transient());
    }
}
