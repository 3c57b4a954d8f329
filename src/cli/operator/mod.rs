//! Operator commands: the ones that open the store named by the configuration (or
//! `--database`) on this machine, with the master key: `serve`, `migrate`,
//! `healthcheck`, `config`, `audit`, `agent create|list|show|disable|enable|rotate-secret`
//! and `admin bootstrap`.
//!
//! They never look at a session file, so what they do and who they are does not depend
//! on whether someone logged in here: changes are audited as `cli:<user>` (the operating
//! system's user). Only `serve` and `migrate` apply migrations; every other command
//! refuses a database whose schema is not current, saying to run `airlock migrate`.

pub mod admin;
pub mod agent;
pub mod audit;
pub mod config;
pub mod serve;

use std::sync::Arc;

use anyhow::Context;

use super::Cli;
use crate::config::{LogFormat, Settings, Sources};
use crate::state::AppState;
use crate::store::Store;

/// Load settings for commands that need them, applying `--database`.
pub(crate) fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    for var in crate::config::unexpected_env_vars() {
        eprintln!("warning: {var} is not an Airlock setting and is ignored (typo?)");
    }
    let mut settings = Settings::load(&Sources {
        file: cli.config.clone(),
        env: true,
    })?;
    if let Some(db) = &cli.database {
        settings.database_url = db.clone();
        settings.validate()?;
    }
    Ok(settings)
}

/// Start logging for commands that log.
pub(crate) fn init_logs(cli: &Cli, settings: Option<&Settings>, default_filter: &str) {
    let format = cli
        .log_format
        .or(settings.map(|s| s.log_format))
        .unwrap_or(LogFormat::Pretty);
    crate::telemetry::init(format, default_filter);
}

/// The audit actor for operator commands: `cli:<login name>`.
pub(crate) fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "unknown".into());
    let user: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.@".contains(*c))
        .take(64)
        .collect();
    format!("cli:{user}")
}

/// What an operator command says when the schema is behind.
const NOT_MIGRATED: &str = "the database schema is not current: run `airlock migrate` first \
     (only `airlock serve` and `airlock migrate` change the schema)";

/// The server's state over the configured store, for commands that change agents or
/// people: the master key checked and the key sets loaded, the schema left as it is.
pub(crate) async fn open_state(settings: Settings) -> anyhow::Result<AppState> {
    crate::app::open_state(settings, false).await.map_err(|e| {
        if e.chain().any(|c| {
            matches!(
                c.downcast_ref::<crate::store::StoreError>(),
                Some(crate::store::StoreError::MigrationsPending)
            )
        }) {
            anyhow::anyhow!(NOT_MIGRATED)
        } else {
            e
        }
    })
}

/// The configured store, read-only use (`audit`): no migration, no keys created.
pub(crate) async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let store = crate::store::connect(
        &settings.database_url,
        &crate::app::connect_options(settings, false),
    )
    .await?;
    match store.ready().await {
        Ok(()) => Ok(store),
        Err(crate::store::StoreError::MigrationsPending) => {
            store.close().await;
            anyhow::bail!(NOT_MIGRATED)
        }
        Err(e) => {
            store.close().await;
            Err(e).context("cannot read the database")
        }
    }
}
