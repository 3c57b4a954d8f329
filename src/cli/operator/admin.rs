//! `airlock admin bootstrap`: the first admin, created directly in the store (no one can
//! sign in to the admin API before someone exists).

use std::process::ExitCode;

use super::{cli_actor, init_logs, load_settings, open_state};
use crate::cli::Cli;
use crate::cli::prompt::new_password;

/// `airlock admin ...` (store-direct).
#[derive(clap::Subcommand, Debug)]
pub enum AdminCmd {
    /// Create the first admin; refused once any admin exists.
    #[command(
        after_help = "Store-direct: works on the database named by the config (or --database) with \
the master key, and is audited as cli:<your user>. It never migrates: run `airlock migrate` first."
    )]
    Bootstrap {
        /// Username.
        #[arg(long)]
        username: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// `airlock admin bootstrap`.
pub async fn run(cli: &Cli, cmd: &AdminCmd) -> anyhow::Result<ExitCode> {
    let AdminCmd::Bootstrap {
        username,
        password_stdin,
    } = cmd;
    let settings = load_settings(cli)?;
    init_logs(cli, Some(&settings), "airlock=warn,sqlx=warn");
    let password = new_password(*password_stdin)?;
    let state = open_state(settings).await?;
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
