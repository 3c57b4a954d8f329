//! `airlock config check` and `airlock config show`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::load_settings;
use crate::cli::{Cli, print_json};
use crate::config::{ConfigError, Settings, Sources};

/// Configuration commands.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCmd {
    /// Validate a config file (layered over the defaults and AIRLOCK_* variables).
    Check {
        /// File to check (default: --config / AIRLOCK_CONFIG).
        file: Option<PathBuf>,
        /// Print {"ok": bool, "problems": [...]} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration with secrets redacted.
    Show {
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

/// `airlock config check | show`.
pub fn run(cli: &Cli, cmd: &ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Check { file, json } => {
            let file = file.clone().or_else(|| cli.config.clone());
            let result = Settings::load(&Sources {
                file: file.clone(),
                env: true,
            });
            if *json {
                let problems: Vec<String> = match &result {
                    Ok(_) => vec![],
                    Err(ConfigError::Invalid(p)) => p.clone(),
                    Err(e) => vec![e.to_string()],
                };
                print_json(&serde_json::json!({ "ok": result.is_ok(), "problems": problems }));
                return Ok(if result.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            match result {
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
