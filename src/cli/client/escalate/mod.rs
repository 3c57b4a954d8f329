//! `airlock escalate | escalations | approve | deny | cancel | grants`: asking for
//! production or destructive access, and the human sign-off that grants it.
//!
//! Every command talks to `/v1/escalations` and `/v1/grants` with the stored CLI session
//! (refreshed as the other commands do), through [`Client`]. `--json` prints the
//! server's JSON (its keys sorted, as the CLI always printed it); failures print the
//! server's message on standard error and exit non-zero.
//!
//! SECURITY: an approval needs a fresh TOTP code, read from the terminal (or standard
//! input with `--code-stdin`), never from the command line. A refused code is never sent
//! twice: a 401 is retried with a refreshed session only when the session itself was
//! refused (`unauthenticated`), not when the code was (`totp_invalid`).

mod format;
mod wait;

use std::process::ExitCode;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;

use self::format::{
    age, grant_line, print_view, requester, scopes_marked, span, state_of, summary, table, truncate, when,
};
use self::wait::{Waited, outcome, wait_for_decision};
use super::api::Client;
use super::{read_code, seg};
use crate::cli::print_json;
use crate::domain::{EscalationState, RequesterKind};
use crate::wire::escalations::{
    Approve, DurationField, EscalationList, EscalationQuery, GrantList, GrantQuery, NewEscalation, Reason,
};
use crate::wire::{EscalationView, GrantView, Sorted};

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

/// `airlock escalate`.
pub async fn escalate(args: &EscalateArgs) -> anyhow::Result<ExitCode> {
    let mut api = Client::from_session()?;
    let body = NewEscalation {
        duration: DurationField::Text(args.duration.clone()),
        environment: args.env.clone(),
        reason: args.reason.clone(),
        scopes: args.scopes.clone(),
    };
    let view: EscalationView = api.post("/v1/escalations", &body).await?;
    let id = view.id;
    if args.json && !args.wait {
        print_json(&Sorted(&view));
        return Ok(ExitCode::SUCCESS);
    }
    // With --json the final JSON is the only thing on standard output.
    let created = format!(
        "Request {id} created: {} in {} for {}.\nApproval page: {}",
        scopes_marked(&view),
        view.environment,
        span(view.duration_secs),
        view.url
    );
    let capped = view.duration_capped.then(|| {
        format!(
            "Note: {} is longer than {} allows; the grant will last {}.",
            args.duration,
            view.environment,
            span(view.duration_secs)
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
        if view.state == EscalationState::Pending {
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
    if view.state == EscalationState::Pending {
        eprintln!("Waiting for approval (Ctrl-C stops waiting; the request stays pending)...");
    }
    match wait_for_decision(&mut api, view, &mut sigint).await? {
        Waited::Decided(v) => {
            if args.json {
                print_json(&Sorted(&v));
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

/// `airlock escalations list | show`.
pub async fn escalations(cmd: &EscalationsCmd) -> anyhow::Result<ExitCode> {
    let mut api = Client::from_session()?;
    match cmd {
        EscalationsCmd::List { pending, env, json } => {
            let query = EscalationQuery {
                pending: *pending,
                environment: env.clone(),
                limit: None,
            };
            let list: EscalationList = api.get_with("/v1/escalations", &query).await?;
            if *json {
                print_json(&Sorted(&list));
                return Ok(ExitCode::SUCCESS);
            }
            let items: Vec<EscalationView> = list.escalations.into_iter().map(|Sorted(v)| v).collect();
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
                        v.id.to_string(),
                        v.environment.clone(),
                        scopes_marked(v),
                        requester(v),
                        state_of(v).as_str().to_string(),
                        age(v.created_at),
                        truncate(&v.reason, 40),
                    ]
                })
                .collect();
            table(
                &["ID", "ENV", "SCOPES", "REQUESTER", "STATE", "AGE", "REASON"],
                &rows,
            );
            if items.iter().any(|v| !v.destructive_scopes.is_empty()) {
                println!("(! = destructive scope)");
            }
        }
        EscalationsCmd::Show { id, json } => {
            let view: EscalationView = api.get(&format!("/v1/escalations/{}", seg(id))).await?;
            if *json {
                print_json(&Sorted(&view));
            } else {
                print_view(&view);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock approve`.
pub async fn approve(args: &ApproveArgs) -> anyhow::Result<ExitCode> {
    let mut api = Client::from_session()?;
    let path = format!("/v1/escalations/{}", seg(&args.id));
    let view: EscalationView = api.get(&path).await?;
    eprint!("{}", summary(&view));
    // Checked here only to spare a code; the server decides (and checks again).
    match state_of(&view) {
        EscalationState::Pending => {}
        s => bail!(
            "request {} is {}; there is nothing to approve",
            args.id,
            s.as_str()
        ),
    }
    if view.requester_kind == RequesterKind::Person && Some(view.requester.as_str()) == api.username() {
        bail!("you cannot approve your own request; another approver must");
    }
    let code = read_code("Code from your authenticator app: ", args.code_stdin)?;
    let body = Approve {
        totp: code.expose_secret().to_string(),
    };
    let after: EscalationView = api.post(&format!("{path}/approve"), &body).await?;
    if args.json {
        print_json(&Sorted(&after));
        return Ok(ExitCode::SUCCESS);
    }
    if after.state == EscalationState::Approved {
        println!("Approved request {}.", args.id);
        if let Some(g) = &after.grant {
            println!("Created {}.", grant_line(g));
        }
    } else {
        let have = after.approvals.len();
        let need = after.quorum as usize;
        println!(
            "Approval recorded: {have} of {need}. It needs {} more approver(s) who are not you.",
            need.saturating_sub(have)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock deny`.
pub async fn deny(args: &DenyArgs) -> anyhow::Result<ExitCode> {
    let mut api = Client::from_session()?;
    let body = Reason {
        reason: args.reason.clone(),
    };
    let view: EscalationView = api
        .post(&format!("/v1/escalations/{}/deny", seg(&args.id)), &body)
        .await?;
    if args.json {
        print_json(&Sorted(&view));
    } else {
        println!(
            "Denied request {} ({} in {}, asked by {}).",
            args.id,
            scopes_marked(&view),
            view.environment,
            requester(&view)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock cancel`.
pub async fn cancel(args: &CancelArgs) -> anyhow::Result<ExitCode> {
    let mut api = Client::from_session()?;
    let view: EscalationView = api
        .post_empty(&format!("/v1/escalations/{}/cancel", seg(&args.id)))
        .await?;
    if args.json {
        print_json(&Sorted(&view));
    } else {
        println!("Cancelled request {}; it can no longer be approved.", args.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock grants list | revoke`.
pub async fn grants(cmd: &GrantsCmd) -> anyhow::Result<ExitCode> {
    let mut api = Client::from_session()?;
    match cmd {
        GrantsCmd::List { active, env, json } => {
            let query = GrantQuery {
                active: *active,
                environment: env.clone(),
            };
            let list: GrantList = api.get_with("/v1/grants", &query).await?;
            if *json {
                print_json(&Sorted(&list));
                return Ok(ExitCode::SUCCESS);
            }
            if list.grants.is_empty() {
                println!("No {}grants.", if *active { "active " } else { "" });
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list
                .grants
                .iter()
                .map(|Sorted(g)| {
                    vec![
                        g.id.to_string(),
                        g.environment.clone(),
                        g.scopes.join(", "),
                        g.holder_name.clone(),
                        g.status.to_string(),
                        when(g.ends_at),
                        g.escalation_id.to_string(),
                    ]
                })
                .collect();
            table(
                &["ID", "ENV", "SCOPES", "HOLDER", "STATUS", "ENDS", "REQUEST"],
                &rows,
            );
        }
        GrantsCmd::Revoke { id, reason, json } => {
            let body = Reason {
                reason: reason.clone(),
            };
            let g: GrantView = api.post(&format!("/v1/grants/{}/revoke", seg(id)), &body).await?;
            if *json {
                print_json(&Sorted(&g));
            } else {
                println!(
                    "Revoked grant {id}: tokens minted under it stop working now, and no new ones are issued."
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
