//! `airlock serve`, `airlock migrate`, `airlock healthcheck`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{init_logs, load_settings};
use crate::app::{App, connect_options, shutdown_signal};
use crate::cli::{Cli, print_json};
use crate::telemetry::DEFAULT_FILTER;

/// Arguments of `airlock serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default from the config: 127.0.0.1:8080).
    #[arg(long, env = "AIRLOCK_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
}

/// Arguments of `airlock migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// Print {"applied": N} as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `airlock healthcheck`.
#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    /// Base URL to check (default: http://<listen address from the config>).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

/// `airlock serve`: migrate, then serve until SIGTERM or SIGINT.
pub async fn serve(cli: &Cli, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = load_settings(cli)?;
    if let Some(listen) = &args.listen {
        settings.listen = listen.clone();
    }
    init_logs(cli, Some(&settings), DEFAULT_FILTER);
    tracing::info!(
        database = %crate::config::redact_url(&settings.database_url),
        mode = ?settings.mode,
        environments = ?settings.environments.keys().collect::<Vec<_>>(),
        "starting airlock"
    );
    let app = App::build(settings.clone()).await?;
    let addr = app.local_addr()?;
    tracing::info!(%addr, public_url = %settings.public_url, "listening");
    eprintln!(
        "airlock listening on http://{addr} (issuers under {}/envs/...)",
        settings.public_url
    );
    app.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `airlock migrate`: apply pending migrations, then exit.
pub async fn migrate(cli: &Cli, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let settings = load_settings(cli)?;
    init_logs(cli, Some(&settings), "airlock=warn,sqlx=warn");
    let store = crate::store::connect(&settings.database_url, &connect_options(&settings, false)).await?;
    let applied = store.migrate().await.context("migration failed")?;
    if args.json {
        print_json(&serde_json::json!({ "applied": applied, "current": true }));
    } else {
        println!("migrations applied: {applied}; schema is current");
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `airlock healthcheck`: exit 0 when `/healthz` answers.
pub async fn healthcheck(cli: &Cli, args: &HealthArgs) -> anyhow::Result<ExitCode> {
    let base = match &args.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("http://{}", load_settings(cli)?.listen),
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    match client.get(format!("{base}/healthz")).send().await {
        Ok(r) if r.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(r) => {
            eprintln!("unhealthy: /healthz answered {}", r.status());
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!(
                "unhealthy: cannot reach {base}: {}",
                crate::cli::client::network_error(e)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
