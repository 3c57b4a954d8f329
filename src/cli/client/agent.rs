//! `airlock agent token` and `airlock agent run`: an agent fetches its own tokens from a
//! server with its client credentials (the client-credentials grant), over HTTP only.

use std::path::PathBuf;
use std::process::ExitCode;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::api::{AgentCredentials, Client};
use crate::cli::print_json;

/// How to reach the server and who the agent is. The secret is never an argument.
#[derive(clap::Args, Debug, Clone)]
pub struct FetchArgs {
    /// Airlock's base URL.
    #[arg(long, env = "AIRLOCK_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Environment to get a token for.
    #[arg(long)]
    pub env: String,
    /// The agent's client id.
    #[arg(long)]
    pub client_id: String,
    /// File holding the secret (otherwise AIRLOCK_CLIENT_SECRET).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Scope to request (repeat for more; default: the agent's default scopes).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

impl FetchArgs {
    /// Read the secret from the file or the environment.
    pub fn secret(&self) -> anyhow::Result<SecretString> {
        if let Some(path) = &self.secret_file {
            warn_if_readable_by_others(path);
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the secret file {}: {e}", path.display()))?;
            let secret = text.trim().to_string();
            if secret.is_empty() {
                anyhow::bail!("the secret file {} is empty", path.display());
            }
            return Ok(SecretString::from(secret));
        }
        match std::env::var("AIRLOCK_CLIENT_SECRET") {
            Ok(s) if !s.trim().is_empty() => Ok(SecretString::from(s.trim().to_string())),
            _ => anyhow::bail!(
                "no client secret: pass --secret-file FILE or set AIRLOCK_CLIENT_SECRET \
                 (secrets are never accepted as command-line arguments)"
            ),
        }
    }

    /// The client and the agent's credentials for these arguments.
    pub fn client(&self) -> anyhow::Result<(Client, AgentCredentials)> {
        let client = Client::anonymous(&self.server)?;
        let credentials =
            AgentCredentials::new(&self.env, &self.client_id, &self.secret()?, self.scopes.clone());
        Ok((client, credentials))
    }
}

fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is readable by other users; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
}

/// `airlock agent token`: print one token (or the whole answer with `--json`).
pub async fn token(args: &FetchArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(crate::config::LogFormat::Pretty, "airlock=warn");
    let (client, credentials) = args.client()?;
    match client.client_credentials(&credentials).await {
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

/// `airlock agent run`: fetch a token, start the command with it, keep it fresh.
pub async fn run(args: &FetchArgs, command: &[String]) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(crate::config::LogFormat::Pretty, "airlock=info");
    let (client, credentials) = args.client()?;
    let shared = std::sync::Arc::new((client, credentials));
    let fetch: super::run::Fetch = Box::new(move || {
        let shared = shared.clone();
        Box::pin(async move { shared.0.client_credentials(&shared.1).await })
    });
    super::run::run_with(&args.env, command, fetch).await
}
