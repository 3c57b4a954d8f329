//! The command line: one binary for the server and every client command.
//!
//! Commands that print data take `--json`; every failure exits non-zero with a message
//! on standard error that says what to do. Commands that change state write audit
//! events with actor `cli:<user>`.

mod agent;
mod audit;
mod config;
mod escalate;
mod people;
mod run;
mod serve;
mod stepup;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{LogFormat, Settings, Sources};

/// Airlock: short-lived, environment-scoped credentials with human sign-off.
#[derive(Parser, Debug)]
#[command(name = "airlock", version, about)]
pub struct Cli {
    /// Extra config file layered over the built-in defaults.
    #[arg(long, env = "AIRLOCK_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Database URL (sqlite://PATH or postgres://...); overrides the config.
    #[arg(long, global = true, value_name = "URL")]
    pub database: Option<String>,
    /// Log format (default: from the config, pretty).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server.
    Serve(serve::ServeArgs),
    /// Apply pending database migrations, then exit.
    Migrate(serve::MigrateArgs),
    /// Exit 0 if the local server answers /healthz (for Docker HEALTHCHECK).
    Healthcheck(serve::HealthArgs),
    /// Check or show the configuration.
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Manage agents and fetch their tokens.
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Read and verify the audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Sign in from this terminal (browser device flow, or --password).
    Login(people::LoginArgs),
    /// End the session here and on the server.
    Logout,
    /// Show who you are signed in as.
    Whoami {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a short-lived token for an environment.
    Token(people::TokenArgs),
    /// Run a command with an environment token (never your session).
    Exec(people::ExecArgs),
    /// Confirm a fresh TOTP code for this session (needed for admin changes).
    StepUp {
        /// Read the code from standard input.
        #[arg(long)]
        code_stdin: bool,
    },
    /// Manage your TOTP authenticator.
    #[command(subcommand)]
    Totp(people::TotpCmd),
    /// Manage people (admin).
    #[command(subcommand)]
    User(people::UserCmd),
    /// Store-direct administration.
    #[command(subcommand)]
    Admin(people::AdminCmd),
    /// Ask for production or destructive access; a human approver must say yes.
    ///
    /// Exit codes with --wait: 0 approved, 3 denied, 4 expired, 5 cancelled, 130 after
    /// Ctrl-C (the request stays pending), 69 if Airlock stayed unreachable, 1 otherwise.
    Escalate(escalate::EscalateArgs),
    /// List and show escalation requests.
    #[command(subcommand)]
    Escalations(escalate::EscalationsCmd),
    /// Approve an escalation request (asks for your TOTP code).
    Approve(escalate::ApproveArgs),
    /// Deny an escalation request.
    Deny(escalate::DenyArgs),
    /// Withdraw a pending escalation request (yours, or as its sponsor or an admin).
    Cancel(escalate::CancelArgs),
    /// List and revoke grants (what approved requests give).
    #[command(subcommand)]
    Grants(escalate::GrantsCmd),
}

/// Run the parsed command; the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Serve(args) => serve::serve(&cli, args).await,
        Command::Migrate(args) => serve::migrate(&cli, args).await,
        Command::Healthcheck(args) => serve::healthcheck(&cli, args).await,
        Command::Config(cmd) => config::run(&cli, cmd),
        Command::Agent(cmd) => agent::run(&cli, cmd).await,
        Command::Audit(cmd) => audit::run(&cli, cmd).await,
        Command::Login(args) => people::login(args).await,
        Command::Logout => people::logout().await,
        Command::Whoami { json } => people::whoami(*json).await,
        Command::Token(args) => people::token(args).await,
        Command::Exec(args) => people::exec(args).await,
        Command::Totp(cmd) => people::totp(cmd).await,
        Command::StepUp { code_stdin } => stepup::step_up(*code_stdin).await,
        Command::User(cmd) => people::user(cmd).await,
        Command::Admin(cmd) => people::admin(&cli, cmd).await,
        Command::Escalate(args) => escalate::escalate(args).await,
        Command::Escalations(cmd) => escalate::escalations(cmd).await,
        Command::Approve(args) => escalate::approve(args).await,
        Command::Deny(args) => escalate::deny(args).await,
        Command::Cancel(args) => escalate::cancel(args).await,
        Command::Grants(cmd) => escalate::grants(cmd).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

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

/// The audit actor for CLI commands: `cli:<login name>`.
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

/// Print JSON to standard output.
pub(crate) fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}
