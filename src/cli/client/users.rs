//! `airlock user ...`: manage people through the admin API (an admin role in effect,
//! and a recent step-up for changes), as the signed-in person.

use std::process::ExitCode;

use serde::Serialize;

use super::api::Client;
use super::seg;
use crate::cli::print_json;
use crate::cli::prompt::new_password;
use crate::wire::people::{NewUser, ResetUser};
use crate::wire::{Sorted, User};

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

fn print_user(u: &User, json_out: bool) {
    if json_out {
        // The CLI has always printed the server's JSON with its keys sorted.
        print_json(&Sorted(u));
    } else {
        println!(
            "{}  roles: {}  totp: {}  {}",
            u.username,
            serde_json::to_string(&u.roles).unwrap_or_default(),
            u.totp_enrolled,
            if u.disabled { "DISABLED" } else { "active" }
        );
    }
}

/// The body of `disable` and `enable`: `{}`.
#[derive(Serialize)]
struct Empty {}

/// `airlock user ...`.
pub async fn user(cmd: &UserCmd) -> anyhow::Result<ExitCode> {
    let mut c = Client::from_session()?;
    match cmd {
        UserCmd::Create {
            username,
            roles,
            password_stdin,
            json,
        } => {
            let body = NewUser {
                password: new_password(*password_stdin)?,
                roles: roles.clone(),
                username: username.clone(),
            };
            print_user(&c.post("/v1/users", &body).await?, *json);
        }
        UserCmd::List { json } => {
            let list: Vec<User> = c.get("/v1/users").await?;
            if *json {
                print_json(&Sorted(&list));
            } else {
                for u in &list {
                    print_user(u, false);
                }
            }
        }
        UserCmd::Show { username, json } => {
            print_user(&c.get(&format!("/v1/users/{}", seg(username))).await?, *json)
        }
        UserCmd::Disable { username } => {
            let u = c
                .post(&format!("/v1/users/{}/disable", seg(username)), &Empty {})
                .await?;
            print_user(&u, false);
        }
        UserCmd::Enable { username } => {
            let u = c
                .post(&format!("/v1/users/{}/enable", seg(username)), &Empty {})
                .await?;
            print_user(&u, false);
        }
        UserCmd::Reset {
            username,
            password,
            password_stdin,
            totp,
            roles,
        } => {
            let body = ResetUser {
                password: if *password || *password_stdin {
                    Some(new_password(*password_stdin)?)
                } else {
                    None
                },
                reset_totp: *totp,
                roles: (!roles.is_empty()).then(|| roles.clone()),
            };
            let u = c
                .post(&format!("/v1/users/{}/reset", seg(username)), &body)
                .await?;
            print_user(&u, false);
        }
    }
    Ok(ExitCode::SUCCESS)
}
