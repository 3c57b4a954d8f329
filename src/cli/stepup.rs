//! `airlock step-up`: confirm a fresh TOTP code for this session. Admin changes need a
//! recent one, so a copied session file alone cannot change who may do what.

use std::process::ExitCode;

use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::session_file::{SessionClient, read_secret};

pub(super) async fn step_up(code_stdin: bool) -> anyhow::Result<ExitCode> {
    let mut c = SessionClient::load()?;
    let code = read_secret("Code from your authenticator app: ", code_stdin)?;
    c.call(
        Method::POST,
        "/v1/me/step-up",
        Some(&json!({ "code": code.expose_secret() })),
    )
    .await?;
    eprintln!("Confirmed. Admin changes are allowed from this session for the next few minutes.");
    Ok(ExitCode::SUCCESS)
}
