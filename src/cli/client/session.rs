//! `airlock login | logout | whoami | step-up | totp`: a person's session on this
//! terminal, and their own account.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use secrecy::{ExposeSecret, SecretString};

use super::api::{Client, ClientError};
use super::read_secret;
use super::session_file::{self, SessionFile};
use crate::cli::print_json;
use crate::wire::people::{Code, Me, Reauthenticate, SignIn};
use crate::wire::{SessionTokens, Sorted, TotpEnrolment};

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

/// `airlock login`: a new session, in place of any previous one.
pub async fn login(args: &LoginArgs) -> anyhow::Result<ExitCode> {
    let client = Client::anonymous(&args.server)?;
    let tokens = if args.password || args.password_stdin {
        password_login(&client, args).await?
    } else {
        device_login(&client).await?
    };
    let file = SessionFile::from_tokens(client.server(), tokens);
    // Ends a previous session server-side (best effort) before saving this one.
    Client::replace_session(&file).await?;
    println!("Logged in to {} as {}.", client.server(), file.username);
    Ok(ExitCode::SUCCESS)
}

/// What the server said when it refused, or the failure itself when it did not answer.
fn refused(what: &str, e: ClientError) -> anyhow::Error {
    match e.server_message() {
        Some(m) => anyhow::anyhow!("{what}: {m}"),
        None => e.into(),
    }
}

async fn password_login(client: &Client, args: &LoginArgs) -> anyhow::Result<SessionTokens> {
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
        let body = SignIn {
            password: password.clone(),
            totp_code: code.as_ref().map(|c| c.expose_secret().to_string()),
            username: username.clone(),
        };
        match client.sign_in(&body).await {
            Ok(tokens) => return Ok(tokens),
            Err(e) if e.code() == Some("totp_required") && code.is_none() => {
                code = Some(read_secret("Authenticator code: ", args.code_stdin)?);
            }
            Err(e) => return Err(refused("sign-in refused", e)),
        }
    }
    bail!("sign-in refused")
}

async fn device_login(client: &Client) -> anyhow::Result<SessionTokens> {
    let d = client
        .device_authorization()
        .await
        .map_err(|e| refused("Airlock refused to start a sign-in", e))?;
    let mut interval = d.interval.max(1);
    eprintln!(
        "To sign in, open this page in a browser:\n\n    {}\n\nand check that it shows the code  {}\n\nWaiting for approval (the code expires in {} minutes)...",
        d.verification_uri_complete,
        d.user_code,
        d.expires_in / 60
    );
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        let e = match client.poll_device(&d.device_code).await {
            Ok(tokens) => return Ok(tokens),
            Err(e) => e,
        };
        match e.code() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += 5,
            Some("expired_token") => {
                bail!("the code expired before it was approved; run `airlock login` again")
            }
            Some("access_denied") => bail!("the sign-in was denied in the browser"),
            _ => return Err(refused("sign-in failed", e)),
        }
    }
}

/// `airlock logout`: end the session on the server, and remove it here whatever the
/// server answers.
pub async fn logout() -> anyhow::Result<ExitCode> {
    match Client::from_session() {
        Ok(mut c) => {
            let server_side = c.delete("/v1/sessions/current").await;
            session_file::remove()?;
            match server_side {
                Ok(()) => println!("Logged out of {}.", c.server()),
                Err(e) => println!("Removed the local session ({e})."),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `airlock whoami`.
pub async fn whoami(json_out: bool) -> anyhow::Result<ExitCode> {
    let mut c = Client::from_session()?;
    let me: Me = c.get("/v1/me").await?;
    if json_out {
        // The CLI has always printed the server's JSON with its keys sorted.
        print_json(&Sorted(&me));
    } else {
        println!("{} on {}", me.username, c.server());
        println!("roles:     {}", me.roles.join(", "));
        println!("in effect: {}", me.effective_roles.join(", "));
        println!(
            "totp:      {}",
            if me.totp_enrolled {
                "enrolled"
            } else {
                "not enrolled"
            }
        );
        // The end as the API sends it, in quotes, as this line has always shown it.
        let ends = me
            .session
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        println!("session:   {} (ends \"{ends}\")", me.session.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// `airlock step-up`: confirm a fresh TOTP code for this session. Admin changes need a
/// recent one, so a copied session file alone cannot change who may do what.
pub async fn step_up(code_stdin: bool) -> anyhow::Result<ExitCode> {
    let mut c = Client::from_session()?;
    let code = read_secret("Code from your authenticator app: ", code_stdin)?;
    c.post::<_, ()>(
        "/v1/me/step-up",
        &Code {
            code: code.expose_secret().to_string(),
        },
    )
    .await?;
    eprintln!("Confirmed. Admin changes are allowed from this session for the next few minutes.");
    Ok(ExitCode::SUCCESS)
}

/// `airlock totp enroll`.
pub async fn totp(cmd: &TotpCmd) -> anyhow::Result<ExitCode> {
    let TotpCmd::Enroll {
        code_stdin,
        password_stdin,
        json: json_out,
    } = cmd;
    let mut c = Client::from_session()?;
    // The password again: a copied session alone must not be able to enrol.
    let password = read_secret("Password: ", *password_stdin)?;
    let e: TotpEnrolment = c.post("/v1/me/totp", &Reauthenticate { password }).await?;
    if *json_out {
        print_json(&Sorted(&e));
    } else {
        eprintln!(
            "Scan this with your authenticator app:\n\n{}",
            crate::totp::qr_terminal(&e.otpauth_uri)
        );
        eprintln!("or enter the secret by hand: {}\n", e.secret);
    }
    let code = read_secret("Code from the app: ", *code_stdin)?;
    c.post::<_, ()>(
        "/v1/me/totp/activate",
        &Code {
            code: code.expose_secret().to_string(),
        },
    )
    .await?;
    eprintln!("TOTP enrolled. Admin and approver roles you hold are now in effect.");
    Ok(ExitCode::SUCCESS)
}
