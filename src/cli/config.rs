//! `airlock config check` and `airlock config show`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Cli, load_settings, print_json};
use crate::config::{Settings, Sources};

/// Configuration commands.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a config file (layered over the defaults and AIRLOCK_* variables).
    Check {
        /// File to check (default: --config / AIRLOCK_CONFIG).
        file: Option<PathBuf>,
    },
    /// Print the effective configuration with secrets redacted.
    Show {
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cli: &Cli, cmd: &ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Check { file } => {
            let file = file.clone().or_else(|| cli.config.clone());
            match Settings::load(&Sources {
                file: file.clone(),
                env: true,
            }) {
                Ok(s) => {
                    println!(
                        "configuration OK: {} environments ({}), {} scopes",
                        s.environments.len(),
                        s.environments.keys().cloned().collect::<Vec<_>>().join(", "),
                        s.scopes.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        ConfigCmd::Show { json } => {
            let settings = load_settings(cli)?;
            if *json {
                print_json(&settings.to_redacted_json());
            } else {
                print!("{}", settings.to_redacted_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
