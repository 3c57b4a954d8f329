//! The command line: one binary for the server and every client command.
//!
//! Two kinds of command, in two directories:
//! - [`operator`]: commands that open the store on this machine (`serve`, `migrate`,
//!   `config`, `audit`, `agent create|list|...`, `admin bootstrap`). Changes are audited
//!   as `cli:<user>`; only `serve` and `migrate` migrate.
//! - [`client`]: commands that talk to a running Airlock over HTTP through one typed
//!   client (`login`, `token`, `exec`, `escalate`, `agent token|run`, ...). They never
//!   import the store or the server's state (`.ci/layers.py` checks it).
//!
//! Commands that print data take `--json`; every failure exits non-zero with a message
//! on standard error that says what to do.

pub mod client;
pub mod operator;
pub mod prompt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::LogFormat;
use client::escalate;

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
    Serve(operator::serve::ServeArgs),
    /// Apply pending database migrations, then exit.
    Migrate(operator::serve::MigrateArgs),
    /// Exit 0 if the local server answers /healthz (for Docker HEALTHCHECK).
    Healthcheck(operator::serve::HealthArgs),
    /// Check or show the configuration.
    #[command(subcommand)]
    Config(operator::config::ConfigCmd),
    /// Manage agents in the store (create, list, show, disable, enable, rotate-secret),
    /// or fetch an agent's tokens from a server (token, run).
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Read and verify the audit trail.
    #[command(subcommand)]
    Audit(operator::audit::AuditCmd),
    /// Sign in from this terminal (browser device flow, or --password).
    Login(client::session::LoginArgs),
    /// End the session here and on the server.
    Logout,
    /// Show who you are signed in as.
    Whoami {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print a short-lived token for an environment.
    Token(client::token::TokenArgs),
    /// Run a command with an environment token (never your session).
    Exec(client::token::ExecArgs),
    /// Confirm a fresh TOTP code for this session (needed for admin changes).
    StepUp {
        /// Read the code from standard input.
        #[arg(long)]
        code_stdin: bool,
    },
    /// Manage your TOTP authenticator.
    #[command(subcommand)]
    Totp(client::session::TotpCmd),
    /// Manage people (admin, over the HTTP API with your session).
    #[command(subcommand)]
    User(client::users::UserCmd),
    /// Store-direct administration.
    #[command(subcommand)]
    Admin(operator::admin::AdminCmd),
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

/// `airlock agent ...`: the store-direct management commands (operator), and an agent
/// fetching its own tokens from a server (client).
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Register and manage agents in the store.
    #[command(flatten)]
    Manage(operator::agent::ManageCmd),
    /// Fetch one token from a server and print it.
    Token(client::agent::FetchArgs),
    /// Fetch a token, start CMD with it, keep it fresh until CMD exits.
    Run {
        /// Connection and identity.
        #[command(flatten)]
        fetch: client::agent::FetchArgs,
        /// The command to run, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
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
        Command::Serve(args) => operator::serve::serve(&cli, args).await,
        Command::Migrate(args) => operator::serve::migrate(&cli, args).await,
        Command::Healthcheck(args) => operator::serve::healthcheck(&cli, args).await,
        Command::Config(cmd) => operator::config::run(&cli, cmd),
        Command::Agent(AgentCmd::Manage(cmd)) => operator::agent::run(&cli, cmd).await,
        Command::Agent(AgentCmd::Token(args)) => client::agent::token(args).await,
        Command::Agent(AgentCmd::Run { fetch, command }) => client::agent::run(fetch, command).await,
        Command::Audit(cmd) => operator::audit::run(&cli, cmd).await,
        Command::Admin(cmd) => operator::admin::run(&cli, cmd).await,
        Command::Login(args) => client::session::login(args).await,
        Command::Logout => client::session::logout().await,
        Command::Whoami { json } => client::session::whoami(*json).await,
        Command::StepUp { code_stdin } => client::session::step_up(*code_stdin).await,
        Command::Totp(cmd) => client::session::totp(cmd).await,
        Command::Token(args) => client::token::token(args).await,
        Command::Exec(args) => client::token::exec(args).await,
        Command::User(cmd) => client::users::user(cmd).await,
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

/// Print JSON to standard output.
pub(crate) fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}
