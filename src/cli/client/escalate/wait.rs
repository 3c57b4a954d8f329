//! `airlock escalate --wait`: long-poll a request until someone decides, riding out an
//! unreachable or restarting Airlock, and say how it ended.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::format::{actor, approvers, is_past, state_of, token_command, when};
use super::{EXIT_CANCELLED, EXIT_DENIED, EXIT_EXPIRED};
use crate::cli::client::api::Client;
use crate::cli::client::seg;
use crate::domain::EscalationState;
use crate::wire::EscalationView;
use crate::wire::escalations::WaitQuery;

/// How long `--wait` asks the server to hold each poll.
const POLL_WAIT_SECS: u64 = 30;
/// How long `--wait` keeps retrying while Airlock cannot be reached.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// How waiting ended.
pub(super) enum Waited {
    /// The request left `pending` (the final view).
    Decided(Box<EscalationView>),
    /// Ctrl-C.
    Interrupted,
    /// Airlock stayed unreachable.
    Lost(String),
}

/// Long-poll `GET /v1/escalations/{id}?wait=30` until the request leaves `pending`.
/// Failed polls (no answer, 5xx, 429) are retried with a growing pause; Ctrl-C ends the
/// wait at any point without touching the request.
pub(super) async fn wait_for_decision(
    api: &mut Client,
    mut view: EscalationView,
    sigint: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<Waited> {
    let path = format!("/v1/escalations/{}", seg(&view.id.to_string()));
    let query = WaitQuery {
        wait: Some(POLL_WAIT_SECS),
    };
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_secs(1);
    let mut overdue_polls = 0;
    let mut seen_approvals = view.approvals.len();
    loop {
        if view.state != EscalationState::Pending {
            return Ok(Waited::Decided(Box::new(view)));
        }
        if is_past(view.expires_at) {
            // The server's sweeper marks it expired within a second or two; give it the
            // chance to say so itself, then call it expired (it can no longer be decided).
            overdue_polls += 1;
            if overdue_polls > 5 {
                // `state_of` reads an overdue pending request as expired.
                return Ok(Waited::Decided(Box::new(view)));
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
                r = api.get_with::<_, EscalationView>(&path, &query) => r,
            },
        };
        let pause = match polled {
            Ok(v) => {
                if failing_since.take().is_some() {
                    eprintln!("Reached Airlock again; still waiting...");
                }
                backoff = Duration::from_secs(1);
                view = v;
                let approvals = view.approvals.len();
                if approvals > seen_approvals && view.state == EscalationState::Pending {
                    eprintln!(
                        "Approved by {} ({approvals} of {}); waiting for more...",
                        approvers(&view),
                        view.quorum
                    );
                }
                seen_approvals = approvals;
                // A poll that came back at once while still pending (an overdue request,
                // or a server that does not hold polls) must not become a busy loop.
                (view.state == EscalationState::Pending && started.elapsed() < Duration::from_secs(1))
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
pub(super) fn outcome(view: &EscalationView, quiet_stdout: bool) -> ExitCode {
    let id = view.id;
    let by = actor(view.decided_by.as_deref().unwrap_or("someone"));
    match state_of(view) {
        EscalationState::Approved => {
            let scopes = match &view.grant {
                Some(g) => &g.scopes,
                None => &view.scopes,
            };
            let env = &view.environment;
            let mut msg = format!("Approved by {}.", approvers(view));
            if let Some(g) = &view.grant {
                msg.push_str(&format!(
                    "\nGrant {}: {} in {env} until {}.",
                    g.id,
                    scopes.join(", "),
                    when(g.ends_at)
                ));
            }
            msg.push_str(&format!("\nNow run: {}", token_command(env, scopes)));
            if quiet_stdout {
                eprintln!("{msg}");
            } else {
                println!("{msg}");
            }
            ExitCode::SUCCESS
        }
        EscalationState::Denied => {
            eprintln!(
                "Denied by {by}: {}",
                view.decision_reason.as_deref().unwrap_or("(no reason given)")
            );
            ExitCode::from(EXIT_DENIED)
        }
        EscalationState::Expired => {
            eprintln!(
                "Expired: nobody approved request {id} in time. If you still need it, ask again: {}",
                crate::policy::escalate_command(&view.environment, &view.scopes)
            );
            ExitCode::from(EXIT_EXPIRED)
        }
        EscalationState::Cancelled => {
            eprintln!("Cancelled by {by}: request {id} can no longer be approved.");
            ExitCode::from(EXIT_CANCELLED)
        }
        EscalationState::Pending => {
            eprintln!("error: request {id} is in an unexpected state 'pending'");
            ExitCode::FAILURE
        }
    }
}
