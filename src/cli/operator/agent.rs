//! `airlock agent create|list|show|disable|enable|rotate-secret`: register and manage
//! agents directly in the store named by the configuration (or `--database`), audited as
//! `cli:<user>`. Always the store: a session file on this machine changes nothing (the
//! admin API, `/v1/agents`, is the way to manage agents from elsewhere).
//!
//! An agent fetching its own tokens (`airlock agent token|run`) is a client command:
//! [`crate::cli::client::agent`].

use std::process::ExitCode;

use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::{cli_actor, init_logs, load_settings, open_state};
use crate::agents::{self, NewAgent};
use crate::cli::{Cli, print_json};
use crate::domain::Agent;

/// What every store-direct agent command says in its help.
pub const STORE_DIRECT: &str = "Store-direct: works on the database named by the config (or --database) with \
the master key, whether or not you are logged in here, and is audited as cli:<your user>. It never \
migrates: run `airlock migrate` first. To manage agents on a server from elsewhere, use the admin \
API (/v1/agents).";

/// Agent commands that work on the store (store-direct, audited as `cli:<user>`).
#[derive(clap::Subcommand, Debug)]
pub enum ManageCmd {
    /// Register an agent bound to one environment; prints its secret once.
    #[command(after_help = STORE_DIRECT)]
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
    #[command(after_help = STORE_DIRECT)]
    List {
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one agent (client id, ENV/NAME, or a unique name).
    #[command(after_help = STORE_DIRECT)]
    Show {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Disable an agent: it can no longer authenticate anywhere.
    #[command(after_help = STORE_DIRECT)]
    Disable {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Re-enable a disabled agent.
    #[command(after_help = STORE_DIRECT)]
    Enable {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Replace an agent's secret; the old one stops working at once. Prints the new one once.
    #[command(after_help = STORE_DIRECT)]
    RotateSecret {
        /// Which agent.
        agent: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Run an agent command against the configured store.
pub async fn run(cli: &Cli, cmd: &ManageCmd) -> anyhow::Result<ExitCode> {
    let settings = load_settings(cli)?;
    init_logs(cli, Some(&settings), "airlock=warn,sqlx=warn");
    let state = open_state(settings).await?;
    let store = state.store.as_ref();
    let actor = cli_actor();
    let result = match cmd {
        ManageCmd::Create {
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
        ManageCmd::List { env, json } => {
            let list = store.agents(env.as_deref()).await?;
            if *json {
                print_json(&list.iter().map(crate::wire::Agent::from).collect::<Vec<_>>());
            } else {
                print_list(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        ManageCmd::Show { agent, json } => {
            let a = agents::find(store, agent).await?;
            show(&a, *json);
            Ok(ExitCode::SUCCESS)
        }
        ManageCmd::Disable { agent, json } | ManageCmd::Enable { agent, json } => {
            let disable = matches!(cmd, ManageCmd::Disable { .. });
            let a = agents::set_disabled(store, agent, disable, &actor).await?;
            show(&a, *json);
            Ok(ExitCode::SUCCESS)
        }
        ManageCmd::RotateSecret { agent, json } => {
            let (a, secret) = agents::rotate_secret(store, &state.hasher, agent, &actor).await?;
            print_secret(&a, &secret, *json, "new secret for");
            Ok(ExitCode::SUCCESS)
        }
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
        print_json(&crate::wire::Agent::from(a));
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
