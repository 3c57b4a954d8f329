//! `airlock agent ...`: register and manage agents (store-direct for now), and fetch
//! their tokens from a server (`token`, `run`).

use std::path::PathBuf;
use std::process::ExitCode;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{Cli, cli_actor, init_logs, load_settings, print_json};
use crate::agents::{self, NewAgent};
use crate::app::open_state;
use crate::client::TokenClient;
use crate::domain::Agent;

/// Agent commands.
#[derive(clap::Subcommand, Debug)]
pub enum AgentCmd {
    /// Register an agent bound to one environment; prints its secret once.
    Create {
        /// The one environment this agent can ever get tokens for.
        #[arg(long)]
        env: String,
        /// Name, unique within the environment.
        #[arg(long)]
        name: String,
        /// A scope the agent may request (repeat for more).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A scope it gets when it asks for none (default: every allowed non-destructive scope).
        #[arg(long = "default-scope")]
        default_scopes: Vec<String>,
        /// The person who answers for the agent (required once any person exists). Their
        /// approval never counts toward the agent's own escalation requests.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// Print {"client_id", "client_secret", ...} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List agents.
    List {
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one agent (client id, ENV/NAME, or a unique name).
    Show {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Disable an agent: it can no longer authenticate anywhere.
    Disable {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Re-enable a disabled agent.
    Enable {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replace an agent's secret; the old one stops working at once. Prints the new one once.
    RotateSecret {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Fetch one token from a server and print it.
    Token(FetchArgs),
    /// Fetch a token, start CMD with it, keep it fresh until CMD exits.
    Run {
        /// Connection and identity.
        #[command(flatten)]
        fetch: FetchArgs,
        /// The command to run, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

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

    /// A token client for these arguments.
    pub fn client(&self) -> anyhow::Result<TokenClient> {
        Ok(TokenClient::new(
            &self.server,
            &self.env,
            &self.client_id,
            &self.secret()?,
            self.scopes.clone(),
        )?)
    }
}

fn warn_if_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    {
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
}

pub(super) async fn run(cli: &Cli, cmd: &AgentCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCmd::Token(args) => return token(args).await,
        AgentCmd::Run { fetch, command } => return super::run::run(fetch, command).await,
        _ => {}
    }
    // Logged in and no --database: the admin API, as the person logged in.
    if cli.database.is_none() && crate::session_file::exists() {
        return over_http(cmd).await;
    }
    let settings = load_settings(cli)?;
    init_logs(cli, Some(&settings), "airlock=warn,sqlx=warn");
    let state = open_state(settings, true).await?;
    let store = state.store.as_ref();
    let actor = cli_actor();
    let result = match cmd {
        AgentCmd::Create {
            env,
            name,
            scopes,
            default_scopes,
            owner,
            json,
        } => {
            let new = NewAgent {
                name: name.clone(),
                environment: env.clone(),
                scopes: scopes.clone(),
                default_scopes: default_scopes.clone(),
                owner: owner.clone(),
            };
            let (agent, secret) = agents::create(store, &state.settings, &state.hasher, new, &actor).await?;
            print_secret(&agent, &secret, *json, "created");
            Ok(ExitCode::SUCCESS)
        }
        AgentCmd::List { env, json } => {
            let list = store.agents(env.as_deref()).await?;
            if *json {
                print_json(&list);
            } else {
                print_list(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCmd::Show { agent, json } => {
            let a = agents::find(store, agent).await?;
            show(&a, *json);
            Ok(ExitCode::SUCCESS)
        }
        AgentCmd::Disable { agent, json } | AgentCmd::Enable { agent, json } => {
            let disable = matches!(cmd, AgentCmd::Disable { .. });
            let a = agents::set_disabled(store, agent, disable, &actor).await?;
            show(&a, *json);
            Ok(ExitCode::SUCCESS)
        }
        AgentCmd::RotateSecret { agent, json } => {
            let (a, secret) = agents::rotate_secret(store, &state.hasher, agent, &actor).await?;
            print_secret(&a, &secret, *json, "new secret for");
            Ok(ExitCode::SUCCESS)
        }
        AgentCmd::Token(_) | AgentCmd::Run { .. } => unreachable!("handled above"),
    };
    state.store.close().await;
    result
}

/// An owner's name for text output; agents registered before owners existed have none.
fn owner_text(a: &Agent) -> &str {
    a.owner.as_deref().unwrap_or("-")
}

fn print_list(list: &[Agent]) {
    if list.is_empty() {
        println!("no agents");
        return;
    }
    println!(
        "{:<36}  {:<10}  {:<20}  {:<8}  {:<16}  SCOPES",
        "CLIENT ID", "ENV", "NAME", "STATE", "OWNER"
    );
    for a in list {
        println!(
            "{:<36}  {:<10}  {:<20}  {:<8}  {:<16}  {}",
            a.client_id,
            a.environment,
            a.name,
            if a.disabled { "disabled" } else { "active" },
            owner_text(a),
            a.allowed_scopes.join(" ")
        );
    }
}

fn print_secret(agent: &Agent, secret: &SecretString, json: bool, what: &str) {
    if json {
        print_json(&json!({
            "client_id": agent.client_id,
            "client_secret": secret.expose_secret(),
            "name": agent.name,
            "environment": agent.environment,
            "scopes": agent.allowed_scopes,
            "default_scopes": agent.default_scopes,
            "owner": agent.owner,
        }));
    } else {
        println!("{what} agent {} in environment {}", agent.name, agent.environment);
        println!("client_id:     {}", agent.client_id);
        println!("client_secret: {}", secret.expose_secret());
        println!("scopes:        {}", agent.allowed_scopes.join(" "));
        println!("default:       {}", agent.default_scopes.join(" "));
        println!("owner:         {}", owner_text(agent));
        println!();
        println!("The secret is shown only now. Store it in a file with mode 0600 and pass --secret-file.");
    }
}

fn show(a: &Agent, json: bool) {
    if json {
        print_json(a);
    } else {
        println!("client_id:   {}", a.client_id);
        println!("name:        {}", a.name);
        println!("environment: {}", a.environment);
        println!("state:       {}", if a.disabled { "disabled" } else { "active" });
        println!("owner:       {}", owner_text(a));
        println!("scopes:      {}", a.allowed_scopes.join(" "));
        println!("default:     {}", a.default_scopes.join(" "));
        println!("created:     {}", a.created_at);
        println!("updated:     {}", a.updated_at);
    }
}

async fn token(args: &FetchArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(crate::config::LogFormat::Pretty, "airlock=warn");
    let client = args.client()?;
    match client.fetch().await {
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

/// The management commands through `/v1/agents`, authenticated by the session.
async fn over_http(cmd: &AgentCmd) -> anyhow::Result<ExitCode> {
    use reqwest::Method;
    let mut c = crate::session_file::SessionClient::load()?;
    let seg = |r: &str| url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>();
    let agent_of =
        |v: &serde_json::Value| -> anyhow::Result<Agent> { Ok(serde_json::from_value(v.clone())?) };
    match cmd {
        AgentCmd::Create {
            env,
            name,
            scopes,
            default_scopes,
            owner,
            json,
        } => {
            let mut body = json!({ "name": name, "environment": env, "scopes": scopes, "default_scopes": default_scopes });
            if let Some(owner) = owner {
                body["owner"] = json!(owner);
            }
            let v = c.call(Method::POST, "/v1/agents", Some(&body)).await?;
            let secret = SecretString::from(v["client_secret"].as_str().unwrap_or_default().to_string());
            print_secret(&agent_of(&v)?, &secret, *json, "created");
        }
        AgentCmd::List { env, json } => {
            let path = match env {
                Some(e) => format!("/v1/agents?env={}", seg(e)),
                None => "/v1/agents".into(),
            };
            let v = c.call(Method::GET, &path, None).await?;
            if *json {
                print_json(&v);
            } else {
                let list = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(agent_of)
                    .collect::<anyhow::Result<Vec<Agent>>>()?;
                print_list(&list);
            }
        }
        AgentCmd::Show { agent, json } => show(
            &agent_of(
                &c.call(Method::GET, &format!("/v1/agents/{}", seg(agent)), None)
                    .await?,
            )?,
            *json,
        ),
        AgentCmd::Disable { agent, json } => show(
            &agent_of(
                &c.call(
                    Method::POST,
                    &format!("/v1/agents/{}/disable", seg(agent)),
                    Some(&json!({})),
                )
                .await?,
            )?,
            *json,
        ),
        AgentCmd::Enable { agent, json } => show(
            &agent_of(
                &c.call(
                    Method::POST,
                    &format!("/v1/agents/{}/enable", seg(agent)),
                    Some(&json!({})),
                )
                .await?,
            )?,
            *json,
        ),
        AgentCmd::RotateSecret { agent, json } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/agents/{}/reset", seg(agent)),
                    Some(&json!({})),
                )
                .await?;
            let secret = SecretString::from(v["client_secret"].as_str().unwrap_or_default().to_string());
            print_secret(&agent_of(&v)?, &secret, *json, "new secret for");
        }
        AgentCmd::Token(_) | AgentCmd::Run { .. } => unreachable!("handled by the caller"),
    }
    Ok(ExitCode::SUCCESS)
}
