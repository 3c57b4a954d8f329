//! `airlock token` and `airlock exec`: environment tokens for a signed-in person, by the
//! RFC 8693 exchange of their session (never the session itself).

use std::path::PathBuf;
use std::process::ExitCode;

use secrecy::ExposeSecret;
use serde_json::json;

use super::api::{Client, ClientError};
use super::read_code;
use crate::cli::print_json;
use crate::wire::people::Code;

/// `airlock token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Scope (repeat for more; default: your role's non-destructive scopes there).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// Print the whole token response as JSON.
    #[arg(long)]
    json: bool,
    /// If Airlock asks for a fresh TOTP code (the first token under a prod-tier or destructive grant),
    /// read it from standard input instead of the terminal.
    #[arg(long)]
    code_stdin: bool,
}

/// `airlock exec`.
#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Scope (repeat for more).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    /// The command, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `airlock token`: print a token for an environment.
pub async fn token(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    let mut c = Client::from_session()?;
    let mut result = c.exchange(&args.env, &args.scopes, None).await;
    // The first token under a prod-tier or destructive grant needs a fresh TOTP code (RFC 9470's
    // error): ask once, step up, and try once more.
    if let Err(ClientError::OAuth { error, .. }) = &result
        && error == "insufficient_user_authentication"
    {
        eprintln!(
            "Your first {} token under this grant needs a fresh code from your authenticator app.",
            args.env
        );
        let code = read_code("Code from your authenticator app: ", args.code_stdin)?;
        let body = Code {
            code: code.expose_secret().to_string(),
        };
        if let Err(e) = c.post::<_, ()>("/v1/me/step-up", &body).await {
            eprintln!("error: the step-up did not succeed: {e}");
            return Ok(ExitCode::from(e.exit_code()));
        }
        result = c.exchange(&args.env, &args.scopes, None).await;
    }
    match result {
        Ok(t) => {
            if args.json {
                print_json(&json!({
                    "access_token": t.access_token.expose_secret(),
                    "token_type": t.token_type,
                    "expires_in": t.expires_in,
                    "scope": t.scope,
                }));
            } else {
                println!("{}", t.access_token.expose_secret());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

/// `airlock exec`: run a command with an environment token, kept fresh, acting for the
/// person as the process named by the command (the token's `act` claim).
pub async fn exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(crate::config::LogFormat::Pretty, "airlock=info");
    let client = std::sync::Arc::new(tokio::sync::Mutex::new(Client::from_session()?));
    let actor = PathBuf::from(&args.command[0])
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "process".into());
    let (env, scopes) = (args.env.clone(), args.scopes.clone());
    let fetch: super::run::Fetch = Box::new(move || {
        let (c, env, scopes, actor) = (client.clone(), env.clone(), scopes.clone(), actor.clone());
        Box::pin(async move { c.lock().await.exchange(&env, &scopes, Some(&actor)).await })
    });
    super::run::run_with(&args.env, &args.command, fetch).await
}
