//! `airlock login | logout | whoami | token | exec | totp | user | admin`.
//!
//! Passwords and TOTP codes are read from the terminal without echo, or from standard
//! input with `--password-stdin` / `--code-stdin` (as `docker login` does). They are
//! never command-line arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{Cli, cli_actor, init_logs, load_settings, print_json};
use crate::session_file::{self, SessionClient, SessionFile, SessionTokens, read_secret};

const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `airlock login`.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// Airlock's base URL.
    #[arg(long, env = "AIRLOCK_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// Sign in here with username and password instead of the browser (headless).
    #[arg(long)]
    password: bool,
    /// Username for --password (prompted if absent).
    #[arg(long)]
    username: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// Read the TOTP code from standard input (after the password, if both).
    #[arg(long)]
    code_stdin: bool,
}

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

/// `airlock totp ...`.
#[derive(clap::Subcommand, Debug)]
pub enum TotpCmd {
    /// Enrol an authenticator app: shows a QR code, activates after a correct code.
    Enroll {
        /// Read your password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Read the code from standard input (after the password, if both).
        #[arg(long)]
        code_stdin: bool,
        /// Print the secret and URI as JSON (then read the code as usual).
        #[arg(long)]
        json: bool,
    },
}

/// `airlock user ...` (admin, over the HTTP API).
#[derive(clap::Subcommand, Debug)]
pub enum UserCmd {
    /// Create a person; prompts for their initial password.
    Create {
        /// Username.
        username: String,
        /// Role (repeat for more).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List people.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show one person.
    Show {
        /// Username.
        username: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Disable a person; their sessions end at once.
    Disable {
        /// Username.
        username: String,
    },
    /// Re-enable a person.
    Enable {
        /// Username.
        username: String,
    },
    /// Reset a password (ends their sessions), TOTP, or roles.
    Reset {
        /// Username.
        username: String,
        /// Set a new password (prompted, or --password-stdin).
        #[arg(long)]
        password: bool,
        /// Read the new password from standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Remove their TOTP enrolment.
        #[arg(long)]
        totp: bool,
        /// Replace their roles (repeat).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
}

/// `airlock admin ...` (store-direct).
#[derive(clap::Subcommand, Debug)]
pub enum AdminCmd {
    /// Create the first admin; refused once any admin exists.
    Bootstrap {
        /// Username.
        #[arg(long)]
        username: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn http_err(server: &str, e: reqwest::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot reach Airlock at {server}: {}",
        crate::client::network_error(e)
    )
}

fn describe(v: &Value) -> String {
    v["error_description"]
        .as_str()
        .or_else(|| v["error"]["message"].as_str())
        .or_else(|| v["error"].as_str())
        .unwrap_or("unexpected answer")
        .to_string()
}

pub(super) async fn login(args: &LoginArgs) -> anyhow::Result<ExitCode> {
    let server = args.server.trim_end_matches('/').to_string();
    let http = session_file::http()?;
    let tokens = if args.password || args.password_stdin {
        password_login(&http, &server, args).await?
    } else {
        device_login(&http, &server).await?
    };
    let file = SessionFile::from_tokens(&server, tokens);
    // Ends a previous session server-side (best effort) before saving this one.
    session_file::replace(&file).await?;
    println!("Logged in to {server} as {}.", file.username);
    Ok(ExitCode::SUCCESS)
}

async fn password_login(
    http: &reqwest::Client,
    server: &str,
    args: &LoginArgs,
) -> anyhow::Result<SessionTokens> {
    let username = match &args.username {
        Some(u) => u.clone(),
        None if args.password_stdin => bail!("--password-stdin needs --username"),
        None => {
            eprint!("Username: ");
            let mut u = String::new();
            std::io::stdin().read_line(&mut u)?;
            u.trim().to_string()
        }
    };
    let password = read_secret("Password: ", args.password_stdin)?;
    let mut code: Option<SecretString> = None;
    for _ in 0..2 {
        let mut body = json!({ "username": username, "password": password.expose_secret() });
        if let Some(c) = &code {
            body["totp_code"] = json!(c.expose_secret());
        }
        let r = http
            .post(format!("{server}/v1/sessions"))
            .json(&body)
            .send()
            .await
            .map_err(|e| http_err(server, e))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_value(v).context("unexpected sign-in answer");
        }
        if v["error"]["code"] == "totp_required" && code.is_none() {
            code = Some(read_secret("Authenticator code: ", args.code_stdin)?);
            continue;
        }
        bail!("sign-in refused: {}", describe(&v));
    }
    bail!("sign-in refused")
}

async fn device_login(http: &reqwest::Client, server: &str) -> anyhow::Result<SessionTokens> {
    let r = http
        .post(format!("{server}/oauth/device_authorization"))
        .form(&[("client_id", crate::domain::CLI_CLIENT_ID)])
        .send()
        .await
        .map_err(|e| http_err(server, e))?;
    let status = r.status();
    let d: Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("Airlock refused to start a sign-in: {}", describe(&d));
    }
    let device_code = d["device_code"].as_str().context("no device_code")?.to_string();
    let mut interval = d["interval"].as_u64().unwrap_or(5).max(1);
    eprintln!(
        "To sign in, open this page in a browser:\n\n    {}\n\nand check that it shows the code  {}\n\nWaiting for approval (the code expires in {} minutes)...",
        d["verification_uri_complete"].as_str().unwrap_or_default(),
        d["user_code"].as_str().unwrap_or_default(),
        d["expires_in"].as_u64().unwrap_or(600) / 60
    );
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let r = http
            .post(format!("{server}/oauth/token"))
            .form(&[
                ("grant_type", crate::oauth::DEVICE_CODE_GRANT),
                ("client_id", crate::domain::CLI_CLIENT_ID),
                ("device_code", device_code.as_str()),
            ])
            .send()
            .await
            .map_err(|e| http_err(server, e))?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_value(v).context("unexpected token answer");
        }
        match v["error"].as_str() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            Some("expired_token") => {
                bail!("the code expired before it was approved; run `airlock login` again")
            }
            Some("access_denied") => bail!("the sign-in was denied in the browser"),
            _ => bail!("sign-in failed: {}", describe(&v)),
        }
    }
}

pub(super) async fn logout() -> anyhow::Result<ExitCode> {
    match SessionClient::load() {
        Ok(mut c) => {
            // Revoke server-side first; remove the file whatever the answer.
            let server_side = c.call(Method::DELETE, "/v1/sessions/current", None).await;
            session_file::remove()?;
            match server_side {
                Ok(_) => println!("Logged out of {}.", c.session.server),
                Err(e) => println!("Removed the local session ({e:#})."),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(super) async fn whoami(json_out: bool) -> anyhow::Result<ExitCode> {
    let mut c = SessionClient::load()?;
    let me = c.call(Method::GET, "/v1/me", None).await?;
    if json_out {
        print_json(&me);
    } else {
        let list = |v: &Value| {
            v.as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        println!(
            "{} on {}",
            me["username"].as_str().unwrap_or("?"),
            c.session.server
        );
        println!("roles:     {}", list(&me["roles"]));
        println!("in effect: {}", list(&me["effective_roles"]));
        println!(
            "totp:      {}",
            if me["totp_enrolled"] == true {
                "enrolled"
            } else {
                "not enrolled"
            }
        );
        println!(
            "session:   {} (ends {})",
            me["session"]["id"].as_str().unwrap_or("?"),
            me["session"]["expires_at"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn token(args: &TokenArgs) -> anyhow::Result<ExitCode> {
    use crate::client::ClientError;
    let mut c = SessionClient::load()?;
    let mut result = c.exchange(&args.env, &args.scopes, None).await;
    // The first token under a prod-tier or destructive grant needs a fresh TOTP code (RFC 9470's
    // error): ask once, step up, and try once more.
    if let Err(ClientError::Refused { error, .. }) = &result
        && error == "insufficient_user_authentication"
    {
        eprintln!(
            "Your first {} token under this grant needs a fresh code from your authenticator app.",
            args.env
        );
        let code = super::escalate::read_code("Code from your authenticator app: ", args.code_stdin)?;
        if let Err(e) = super::escalate::step_up(&code).await {
            eprintln!("error: the step-up did not succeed: {e:#}");
            return Ok(ExitCode::from(super::escalate::exit_code_of(&e)));
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

pub(super) async fn exec(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    crate::telemetry::init(crate::config::LogFormat::Pretty, "airlock=info");
    let client = std::sync::Arc::new(tokio::sync::Mutex::new(SessionClient::load()?));
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

pub(super) async fn totp(cmd: &TotpCmd) -> anyhow::Result<ExitCode> {
    let TotpCmd::Enroll {
        code_stdin,
        password_stdin,
        json: json_out,
    } = cmd;
    let mut c = SessionClient::load()?;
    // The password again: a copied session alone must not be able to enrol.
    let password = read_secret("Password: ", *password_stdin)?;
    let e = c
        .call(
            Method::POST,
            "/v1/me/totp",
            Some(&json!({ "password": password.expose_secret() })),
        )
        .await?;
    let uri = e["otpauth_uri"].as_str().unwrap_or_default();
    if *json_out {
        print_json(&e);
    } else {
        eprintln!(
            "Scan this with your authenticator app:\n\n{}",
            crate::totp::qr_terminal(uri)
        );
        eprintln!(
            "or enter the secret by hand: {}\n",
            e["secret"].as_str().unwrap_or_default()
        );
    }
    let code = read_secret("Code from the app: ", *code_stdin)?;
    c.call(
        Method::POST,
        "/v1/me/totp/activate",
        Some(&json!({ "code": code.expose_secret() })),
    )
    .await?;
    eprintln!("TOTP enrolled. Admin and approver roles you hold are now in effect.");
    Ok(ExitCode::SUCCESS)
}

fn new_password(from_stdin: bool) -> anyhow::Result<SecretString> {
    let first = read_secret("New password: ", from_stdin)?;
    if !from_stdin {
        let again = read_secret("Repeat it: ", false)?;
        if again.expose_secret() != first.expose_secret() {
            bail!("the passwords differ");
        }
    }
    Ok(first)
}

fn print_user(v: &Value, json_out: bool) {
    if json_out {
        print_json(v);
    } else {
        println!(
            "{}  roles: {}  totp: {}  {}",
            v["username"].as_str().unwrap_or("?"),
            v["roles"],
            v["totp_enrolled"],
            if v["disabled"] == true {
                "DISABLED"
            } else {
                "active"
            }
        );
    }
}

pub(super) async fn user(cmd: &UserCmd) -> anyhow::Result<ExitCode> {
    let mut c = SessionClient::load()?;
    let seg = |u: &str| url::form_urlencoded::byte_serialize(u.as_bytes()).collect::<String>();
    match cmd {
        UserCmd::Create {
            username,
            roles,
            password_stdin,
            json,
        } => {
            let password = new_password(*password_stdin)?;
            let body = json!({ "username": username, "password": password.expose_secret(), "roles": roles });
            print_user(&c.call(Method::POST, "/v1/users", Some(&body)).await?, *json);
        }
        UserCmd::List { json } => {
            let list = c.call(Method::GET, "/v1/users", None).await?;
            if *json {
                print_json(&list);
            } else {
                for u in list.as_array().into_iter().flatten() {
                    print_user(u, false);
                }
            }
        }
        UserCmd::Show { username, json } => print_user(
            &c.call(Method::GET, &format!("/v1/users/{}", seg(username)), None)
                .await?,
            *json,
        ),
        UserCmd::Disable { username } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/users/{}/disable", seg(username)),
                    Some(&json!({})),
                )
                .await?;
            print_user(&v, false);
        }
        UserCmd::Enable { username } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/users/{}/enable", seg(username)),
                    Some(&json!({})),
                )
                .await?;
            print_user(&v, false);
        }
        UserCmd::Reset {
            username,
            password,
            password_stdin,
            totp,
            roles,
        } => {
            let mut body = json!({ "reset_totp": totp });
            if *password || *password_stdin {
                body["password"] = json!(new_password(*password_stdin)?.expose_secret());
            }
            if !roles.is_empty() {
                body["roles"] = json!(roles);
            }
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/users/{}/reset", seg(username)),
                    Some(&body),
                )
                .await?;
            print_user(&v, false);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn admin(cli: &Cli, cmd: &AdminCmd) -> anyhow::Result<ExitCode> {
    let AdminCmd::Bootstrap {
        username,
        password_stdin,
    } = cmd;
    let settings = load_settings(cli)?;
    init_logs(cli, Some(&settings), "airlock=warn,sqlx=warn");
    let password = new_password(*password_stdin)?;
    let state = crate::app::open_state(settings, true).await?;
    let result = crate::people::bootstrap_admin(&state, username, &password, &cli_actor()).await;
    state.store.close().await;
    let user = result?;
    println!(
        "Created admin {}. Log in with `airlock login`, then run `airlock totp enroll`: \
         admin rights take effect once TOTP is enrolled.",
        user.username
    );
    Ok(ExitCode::SUCCESS)
}
