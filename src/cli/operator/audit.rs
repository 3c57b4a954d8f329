//! `airlock audit tail` and `airlock audit verify`.

use std::process::ExitCode;

use super::{init_logs, load_settings, open_store};
use crate::cli::{Cli, print_json};
use crate::domain::AuditRecord;

/// Audit trail commands.
#[derive(clap::Subcommand, Debug)]
pub enum AuditCmd {
    /// Print the most recent events.
    Tail {
        /// How many events.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u32,
        /// One JSON object per event, in a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Walk the hash chain; exit 1 naming the first broken link.
    Verify {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `airlock audit tail | verify` on the configured store.
pub async fn run(cli: &Cli, cmd: &AuditCmd) -> anyhow::Result<ExitCode> {
    let settings = load_settings(cli)?;
    init_logs(cli, Some(&settings), "airlock=warn,sqlx=warn");
    // Read-only: never migrate or create keys from an audit command.
    let store = open_store(&settings).await?;
    let code = match cmd {
        AuditCmd::Tail { lines, json } => {
            let records = store.audit_tail((*lines).min(100_000)).await?;
            if *json {
                print_json(&records);
            } else {
                for r in &records {
                    println!("{}", line(r));
                }
            }
            ExitCode::SUCCESS
        }
        AuditCmd::Verify { json } => match (crate::store::verify_store(store.as_ref()).await, json) {
            (Ok(v), true) => {
                print_json(&serde_json::json!({
                    "ok": true, "events": v.events, "head_seq": v.head_seq, "head_hash": hex::encode(&v.head_hash)
                }));
                ExitCode::SUCCESS
            }
            (Ok(v), false) => {
                println!(
                    "audit chain intact: {} events, head #{} {}",
                    v.events,
                    v.head_seq,
                    hex::encode(&v.head_hash)
                );
                ExitCode::SUCCESS
            }
            (Err(crate::store::VerifyError::Store(e)), _) => return Err(e.into()),
            (Err(e), true) => {
                print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }));
                ExitCode::FAILURE
            }
            (Err(e), false) => {
                eprintln!("audit chain BROKEN: {e}");
                ExitCode::FAILURE
            }
        },
    };
    store.close().await;
    Ok(code)
}

fn line(r: &AuditRecord) -> String {
    let e = &r.event;
    let time = e
        .time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "#{:<6} {time} {:<26} {:<8} env={} actor={} subject={} {}",
        r.seq,
        e.kind,
        e.outcome.as_str(),
        e.environment.as_deref().unwrap_or("-"),
        e.actor,
        e.subject.as_deref().unwrap_or("-"),
        e.details
    )
}
