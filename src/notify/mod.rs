//! Webhook notifications about escalations and grants.
//!
//! The operator lists webhooks under `[webhooks.NAME]` (see [`crate::config::WebhookSettings`]);
//! each is told about the events it subscribes to: `escalation.created`,
//! `escalation.decided`, `escalation.expired` and `grant.revoked`. A notification is a JSON
//! `POST` whose `text` field is a Slack `mrkdwn` summary (so a Slack incoming webhook works
//! unchanged), with the structured facts beside it:
//!
//! ```json
//! {"event": "escalation.created",
//!  "text": ":lock: `bob` asks for *db:write* in *prod* for 30m: `run the migration` — review: <https://airlock.example.com/…|open the approvals page>",
//!  "url": "https://airlock.example.com/…",
//!  "escalation": {"id": "…", "environment": "prod", "scopes": ["db:write"], "destructive_scopes": [],
//!                 "requester": "bob", "sponsor": null, "reason": "run the migration", "state": "pending",
//!                 "actor": null, "grant_id": null, "grant_ends_at": null, "duration_secs": 1800}}
//! ```
//!
//! SECURITY: a notification only *links* to the approvals page, where the approver signs in
//! and steps up (DESIGN.md invariant 4). It never carries an approve/deny link or any token,
//! so whoever reads the channel, or intercepts the request, can approve nothing. The
//! requester's reason and names are user text: in `text` each is a code span (backticks
//! removed from it), escaped for Slack (`&`, `<`, `>`) and flattened to one line. So a
//! reason cannot mention `<!channel>`, forge a link, fake a second message line, have a bare
//! URL or domain turned into a link (Slack does not link inside code), or apply `*bold*`,
//! `_italic_` or `~strike~`. Scopes and environment names come from the operator's config.
//!
//! # Headers and how a receiver verifies them
//!
//! | header | value |
//! | --- | --- |
//! | `X-Airlock-Event` | the event name |
//! | `X-Airlock-Delivery` | a UUID, the same on every retry of one delivery: deduplicate on it |
//! | `X-Airlock-Timestamp` | Unix seconds when this attempt was signed |
//! | `X-Airlock-Signature` | `sha256=` + lowercase hex of HMAC-SHA256(secret, `"{timestamp}.{raw body}"`) |
//!
//! A receiver should:
//! 1. read the raw body bytes (before any JSON parsing) and the two headers;
//! 2. compute `hex(HMAC-SHA256(secret, timestamp + "." + body))` and compare it with the part
//!    of `X-Airlock-Signature` after `sha256=` in constant time;
//! 3. reject a timestamp more than five minutes from its own clock (a replay);
//! 4. ignore a `X-Airlock-Delivery` it has already processed (a retry whose answer was lost).
//!
//! ```text
//! python3: hmac.compare_digest(sig, "sha256=" + hmac.new(secret, ts.encode() + b"." + body, "sha256").hexdigest())
//! ```
//!
//! # Delivery
//!
//! Each webhook has its own bounded queue and worker, so a slow or failing receiver never
//! delays another. [`Notifier::notify`] never blocks and never fails its caller: when a
//! queue is full the notification is dropped, logged and audited (`webhook.dropped`). An
//! attempt fails on a network error, a timeout or a non-2xx answer; network errors,
//! timeouts, 5xx and 429 are retried up to `max_attempts` times, waiting
//! `retry_base * 2^(attempt-1)` (capped at five minutes, plus up to 10% jitter) in between.
//! Redirects are not followed. Every failed attempt is logged at `warn` (webhook name and
//! host only) and audited as `webhook.failed` with `final` telling whether it was the last;
//! the secret, the URL's path, the body and the headers are never logged or audited.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

use crate::config::{Settings, WEBHOOK_BACKOFF_CEILING, WebhookSettings};
use crate::domain::{NewAuditEvent, Outcome};
use crate::store::Store;

/// A request was opened and awaits approvers.
pub const ESCALATION_CREATED: &str = "escalation.created";
/// A request was approved, denied or cancelled (or received one more approval).
pub const ESCALATION_DECIDED: &str = "escalation.decided";
/// A request timed out while pending.
pub const ESCALATION_EXPIRED: &str = "escalation.expired";
/// A grant was revoked before its end.
pub const GRANT_REVOKED: &str = "grant.revoked";

/// Notifications each webhook's queue holds before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 1024;

/// Deliveries of one webhook in progress at once (including those waiting to retry).
const MAX_IN_FLIGHT: usize = 16;

/// Longest reason quoted in the Slack text, in characters.
pub const REASON_MAX_CHARS: usize = 500;

/// The `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("airlock/", env!("CARGO_PKG_VERSION"));

type HmacSha256 = Hmac<Sha256>;

/// What happened, for webhook receivers.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    /// One of [`ESCALATION_CREATED`], [`ESCALATION_DECIDED`], [`ESCALATION_EXPIRED`],
    /// [`GRANT_REVOKED`].
    pub event: &'static str,
    /// The escalation request concerned.
    pub escalation_id: Uuid,
    /// Its environment.
    pub environment: String,
    /// Every scope asked for.
    pub scopes: Vec<String>,
    /// Those of `scopes` that are destructive.
    pub destructive_scopes: Vec<String>,
    /// Who asked: `bob`, or `agent deploy-bot (client_id)`.
    pub requester: String,
    /// The person an agent acts for, if any.
    pub sponsor: Option<String>,
    /// The requester's reason (user text, escaped before it reaches Slack).
    pub reason: String,
    /// `pending`, `approved`, `denied`, `expired` or `cancelled`.
    pub state: String,
    /// Who decided, cancelled or revoked, if anyone.
    pub actor: Option<String>,
    /// The grant, once one exists.
    pub grant_id: Option<Uuid>,
    /// When the grant ends.
    #[serde(with = "time::serde::rfc3339::option")]
    pub grant_ends_at: Option<OffsetDateTime>,
    /// Grant duration asked for, in seconds.
    pub duration_secs: u64,
    /// The approvals page of this request. SECURITY: a page link only, never a link or
    /// token that approves by itself.
    pub url: String,
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A webhook's settings cannot be used (its URL or secret).
    #[error("webhook {name}: {problem}")]
    Webhook {
        /// The webhook's name.
        name: String,
        /// What is wrong (never the secret or the URL's path).
        problem: String,
    },
    /// `spawn` was called outside a Tokio runtime.
    #[error("the webhook notifier must be started inside a Tokio runtime")]
    NoRuntime,
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Delivers notifications to the configured webhooks in the background.
pub struct Notifier {
    hooks: Vec<Hook>,
    /// Queued and in-progress deliveries, including their audit writes.
    pending: Arc<watch::Sender<usize>>,
    /// Where a dropped delivery's audit write runs; `None` when nothing is configured.
    runtime: Option<(tokio::runtime::Handle, Arc<dyn Store>)>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SECURITY: names only; URLs and secrets stay with the workers.
        f.debug_struct("Notifier")
            .field(
                "webhooks",
                &self.hooks.iter().map(|h| &*h.name).collect::<Vec<_>>(),
            )
            .field("pending", &*self.pending.borrow())
            .finish()
    }
}

/// One configured webhook, as the caller side sees it.
struct Hook {
    name: Arc<str>,
    events: Vec<String>,
    tx: mpsc::Sender<Job>,
}

/// One configured webhook, as its worker sees it.
struct Target {
    name: Arc<str>,
    url: reqwest::Url,
    /// Scheme, host and port: all that logs and audit show of the URL.
    display: String,
    secret: SecretString,
    timeout: Duration,
    max_attempts: u32,
    retry_base: Duration,
}

/// What the worker of every webhook shares.
struct Shared {
    client: reqwest::Client,
    store: Arc<dyn Store>,
}

/// One notification for one webhook.
struct Job {
    delivery: Uuid,
    event: &'static str,
    escalation_id: Uuid,
    environment: String,
    body: Arc<str>,
    _pending: Pending,
}

/// Counts a delivery as pending until dropped, whatever way it ends.
struct Pending(Arc<watch::Sender<usize>>);

impl Pending {
    fn new(counter: &Arc<watch::Sender<usize>>) -> Pending {
        counter.send_modify(|n| *n += 1);
        Pending(counter.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Notifier {
    /// Start one delivery worker per configured webhook. `store` is used only to audit
    /// delivery failures. Must be called inside a Tokio runtime when any webhook is
    /// configured; with none it returns [`Notifier::disabled`].
    pub fn spawn(settings: &Settings, store: Arc<dyn Store>) -> Result<Arc<Notifier>, NotifyError> {
        if settings.webhooks.is_empty() {
            return Ok(Notifier::disabled());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .build()
            .map_err(NotifyError::Client)?;
        let shared = Arc::new(Shared {
            client,
            store: store.clone(),
        });
        let mut hooks = Vec::with_capacity(settings.webhooks.len());
        for (name, hook) in &settings.webhooks {
            let target = Arc::new(target(name, hook)?);
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            runtime.spawn(run_worker(target.clone(), shared.clone(), rx));
            hooks.push(Hook {
                name: target.name.clone(),
                events: hook.events.clone(),
                tx,
            });
        }
        let (pending, _) = watch::channel(0usize);
        Ok(Arc::new(Notifier {
            hooks,
            pending: Arc::new(pending),
            runtime: Some((runtime, store)),
        }))
    }

    /// A notifier that delivers nothing (no webhooks configured).
    pub fn disabled() -> Arc<Notifier> {
        let (pending, _) = watch::channel(0usize);
        Arc::new(Notifier {
            hooks: Vec::new(),
            pending: Arc::new(pending),
            runtime: None,
        })
    }

    /// Whether any webhook is configured.
    pub fn is_enabled(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// Queue `n` for every webhook subscribed to its event. Never blocks and never fails
    /// the caller: a full queue is logged and audited as a dropped delivery.
    pub fn notify(&self, n: Notification) {
        let subscribed: Vec<&Hook> = self
            .hooks
            .iter()
            .filter(|h| h.events.iter().any(|e| e == n.event))
            .collect();
        if subscribed.is_empty() {
            return;
        }
        let body: Arc<str> = Arc::from(render_body(&n).to_string());
        for hook in subscribed {
            let job = Job {
                delivery: Uuid::new_v4(),
                event: n.event,
                escalation_id: n.escalation_id,
                environment: n.environment.clone(),
                body: body.clone(),
                _pending: Pending::new(&self.pending),
            };
            let (job, why) = match hook.tx.try_send(job) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(job)) => (job, "queue_full"),
                // Only when the worker is gone (the runtime is shutting down).
                Err(mpsc::error::TrySendError::Closed(job)) => (job, "queue_closed"),
            };
            tracing::warn!(
                webhook = %hook.name,
                event = job.event,
                escalation = %job.escalation_id,
                reason = why,
                "webhook notification dropped"
            );
            if let Some((runtime, store)) = &self.runtime {
                let store = store.clone();
                let name = hook.name.clone();
                // The job (and so its pending count) lives until the audit write is done.
                runtime.spawn(async move {
                    let event = audit_event("webhook.dropped", &name, &job, 0, why.into(), true);
                    if let Err(e) = store.append_audit(event).await {
                        tracing::error!(error = %e, webhook = %name, "cannot audit a dropped webhook delivery");
                    }
                    drop(job);
                });
            }
        }
    }

    /// Wait until every queued delivery has finished (delivered or given up) and its audit
    /// event is written, or until `timeout` passes. Returns whether everything finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let mut rx = self.pending.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|n| *n == 0)).await,
            Ok(Ok(_))
        )
    }
}

/// The worker-side view of a configured webhook.
fn target(name: &str, hook: &WebhookSettings) -> Result<Target, NotifyError> {
    let problem = |problem: &str| NotifyError::Webhook {
        name: name.to_string(),
        problem: problem.to_string(),
    };
    let url = reqwest::Url::parse(&hook.url).map_err(|_| problem("url is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(problem("url is not an http(s) URL with a host"));
    }
    let secret = hook.signing_secret().map_err(|e| problem(&e.to_string()))?;
    Ok(Target {
        name: Arc::from(name),
        url,
        display: hook.redacted_url(),
        secret,
        timeout: hook.timeout,
        max_attempts: hook.max_attempts.max(1),
        retry_base: hook.retry_base,
    })
}

/// Take one webhook's jobs off its queue and deliver each in its own task, at most
/// [`MAX_IN_FLIGHT`] at once, so one slow delivery does not hold up the next.
async fn run_worker(target: Arc<Target>, shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(job) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (target, shared) = (target.clone(), shared.clone());
        tokio::spawn(async move {
            deliver(&target, &shared, job).await;
            drop(slot);
        });
    }
}

/// Why one attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The receiver answered with a non-2xx status.
    Status(StatusCode),
    /// No answer within the timeout.
    Timeout,
    /// Could not connect (DNS, refused, TLS).
    Connect,
    /// Any other transport error.
    Network,
}

impl Failure {
    fn from_error(e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() {
            Failure::Connect
        } else {
            Failure::Network
        }
    }

    /// Network errors, timeouts, 5xx and 429 may pass; other answers will not change.
    fn retryable(self) -> bool {
        match self {
            Failure::Status(s) => s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS,
            Failure::Timeout | Failure::Connect | Failure::Network => true,
        }
    }

    /// The `status` of the audit event: the HTTP status, or the error class.
    fn detail(self) -> serde_json::Value {
        match self {
            Failure::Status(s) => s.as_u16().into(),
            Failure::Timeout => "timeout".into(),
            Failure::Connect => "connect".into(),
            Failure::Network => "network".into(),
        }
    }
}

/// Try one delivery until it succeeds, fails for good, or runs out of attempts.
async fn deliver(target: &Target, shared: &Shared, job: Job) {
    for attempt in 1..=target.max_attempts {
        match attempt_once(target, &shared.client, &job).await {
            Ok(status) => {
                tracing::debug!(
                    webhook = %target.name,
                    event = job.event,
                    escalation = %job.escalation_id,
                    attempt,
                    status = status.as_u16(),
                    "webhook delivered"
                );
                return;
            }
            Err(failure) => {
                let last = attempt == target.max_attempts || !failure.retryable();
                // SECURITY: host only; the URL's path, the body and the headers stay out.
                tracing::warn!(
                    webhook = %target.name,
                    host = %target.display,
                    event = job.event,
                    escalation = %job.escalation_id,
                    delivery = %job.delivery,
                    attempt,
                    status = %failure.detail(),
                    gave_up = last,
                    "webhook delivery failed"
                );
                let event = audit_event(
                    "webhook.failed",
                    &target.name,
                    &job,
                    attempt,
                    failure.detail(),
                    last,
                );
                if let Err(e) = shared.store.append_audit(event).await {
                    tracing::error!(error = %e, webhook = %target.name, "cannot audit a failed webhook delivery");
                }
                if last {
                    return;
                }
                tokio::time::sleep(backoff(target.retry_base, attempt)).await;
            }
        }
    }
}

/// One signed POST.
async fn attempt_once(target: &Target, client: &reqwest::Client, job: &Job) -> Result<StatusCode, Failure> {
    // Signed afresh on every attempt so a retry passes a receiver's freshness check.
    let timestamp = OffsetDateTime::now_utc().unix_timestamp();
    let signature = sign(target.secret.expose_secret().as_bytes(), timestamp, &job.body);
    let response = client
        .post(target.url.clone())
        .timeout(target.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Airlock-Event", job.event)
        .header("X-Airlock-Delivery", job.delivery.to_string())
        .header("X-Airlock-Timestamp", timestamp.to_string())
        .header("X-Airlock-Signature", format!("sha256={signature}"))
        .body(job.body.to_string())
        .send()
        .await
        .map_err(|e| Failure::from_error(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(status)
    } else {
        Err(Failure::Status(status))
    }
}

/// The audit event of a failed or dropped delivery. SECURITY: ids and the status only.
fn audit_event(
    kind: &str,
    webhook: &str,
    job: &Job,
    attempt: u32,
    status: serde_json::Value,
    last: bool,
) -> NewAuditEvent {
    NewAuditEvent::new(kind, "system", Outcome::Refused)
        .env(job.environment.clone())
        .subject(job.escalation_id.to_string())
        .detail("webhook", webhook)
        .detail("event", job.event)
        .detail("escalation", job.escalation_id.to_string())
        .detail("delivery", job.delivery.to_string())
        .detail("attempt", attempt)
        .detail("status", status)
        .detail("final", last)
}

/// Wait before attempt `attempt + 1`: `base * 2^(attempt-1)` plus up to 10% jitter,
/// never more than five minutes.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    let delay = base.saturating_mul(factor).min(WEBHOOK_BACKOFF_CEILING);
    let mut random = [0u8; 4];
    let jitter = match getrandom::getrandom(&mut random) {
        Ok(()) => delay.mul_f64(f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX) / 10.0),
        Err(_) => Duration::ZERO,
    };
    (delay + jitter).min(WEBHOOK_BACKOFF_CEILING)
}

/// Lowercase hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`: the part of
/// `X-Airlock-Signature` after `sha256=`.
pub fn sign(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The JSON body of a notification.
pub fn render_body(n: &Notification) -> serde_json::Value {
    serde_json::json!({
        "text": slack_text(n),
        "event": n.event,
        "url": n.url,
        "escalation": {
            "id": n.escalation_id,
            "environment": n.environment,
            "scopes": n.scopes,
            "destructive_scopes": n.destructive_scopes,
            "requester": n.requester,
            "sponsor": n.sponsor,
            "reason": n.reason,
            "state": n.state,
            "actor": n.actor,
            "grant_id": n.grant_id,
            "grant_ends_at": n.grant_ends_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
            "duration_secs": n.duration_secs,
        },
    })
}

/// The Slack `mrkdwn` summary of a notification: one line, every piece of user text
/// escaped, and a link to the approvals page (never anything that approves).
pub fn slack_text(n: &Notification) -> String {
    let who = slack_code(&n.requester);
    let on_behalf = match &n.sponsor {
        Some(s) => format!(" on behalf of {}", slack_code(s)),
        None => String::new(),
    };
    let actor = n.actor.as_deref().map(slack_code);
    let what = format!(
        "*{}* in *{}*",
        slack_escape(&n.scopes.join(", ")),
        slack_escape(&n.environment)
    );
    let duration = humantime::format_duration(Duration::from_secs(n.duration_secs));
    let mut text = match (n.event, n.state.as_str()) {
        (ESCALATION_CREATED, _) => format!(
            ":lock: {who}{on_behalf} asks for {what} for {duration}: {}",
            slack_code(&truncate_chars(&n.reason, REASON_MAX_CHARS))
        ),
        (ESCALATION_DECIDED, "approved") => {
            let until = n
                .grant_ends_at
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
                .map(|t| format!("; the grant ends {t}"))
                .unwrap_or_default();
            format!(
                ":white_check_mark: {} approved {who}'s request for {what}{until}",
                actor.as_deref().unwrap_or("an approver")
            )
        }
        (ESCALATION_DECIDED, "pending") => format!(
            ":ballot_box_with_check: {} approved {who}'s request for {what}; more approvals are needed",
            actor.as_deref().unwrap_or("an approver")
        ),
        (ESCALATION_DECIDED, "denied") => format!(
            ":no_entry: {} denied {who}'s request for {what}",
            actor.as_deref().unwrap_or("an approver")
        ),
        (ESCALATION_DECIDED, "cancelled") => format!(
            ":heavy_minus_sign: {} cancelled {who}'s request for {what}",
            actor.as_deref().unwrap_or(who.as_str())
        ),
        (ESCALATION_EXPIRED, _) => {
            format!(":hourglass: {who}'s request for {what} expired without a decision")
        }
        (GRANT_REVOKED, _) => format!(
            ":no_entry_sign: {} revoked {who}'s grant for {what}",
            actor.as_deref().unwrap_or("an administrator")
        ),
        (_, state) => format!(
            ":information_source: {who}'s request for {what} is now {}",
            slack_escape(state)
        ),
    };
    if !n.destructive_scopes.is_empty() {
        text.push_str(&format!(
            " :warning: destructive: *{}*",
            slack_escape(&n.destructive_scopes.join(", "))
        ));
    }
    if !n.url.is_empty() {
        let verb = if n.event == ESCALATION_CREATED {
            "review"
        } else {
            "details"
        };
        text.push_str(&format!(
            " — {verb}: <{}|open the approvals page>",
            slack_escape(&n.url)
        ));
    }
    text
}

/// Escape text for Slack `mrkdwn`: `&`, `<` and `>` become entities (so no `<!channel>`,
/// `<@user>` or `<url|label>` can be formed) and control characters, newlines included,
/// become spaces (so user text cannot start a line of its own).
pub fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// User text as a Slack code span: backticks become `'` (so the text cannot close the
/// span), then [`slack_escape`]. Slack applies no formatting inside a code span and turns
/// no bare URL, domain or e-mail address in it into a link, so a reason like
/// `*URGENT* approve at https://evil.example/approvals` shows as inert text.
pub fn slack_code(s: &str) -> String {
    let escaped = slack_escape(&s.replace('`', "'"));
    // A span that starts or ends with a space is not a code span to Slack.
    match escaped.trim() {
        "" => "`-`".to_string(),
        inner => format!("`{inner}`"),
    }
}

/// At most `max` characters of `s`, ending in `…` when cut.
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((end, _)) => {
            let cut = s[..end]
                .char_indices()
                .nth(max.saturating_sub(1))
                .map_or(end, |(i, _)| i);
            format!("{}…", &s[..cut])
        }
    }
}

#[cfg(test)]
mod tests;
