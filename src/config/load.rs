//! Loading the layers: built-in defaults, the operator's file, `AIRLOCK_*` variables,
//! and secrets given as files.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use super::{ConfigError, Settings, Sources};

/// The configuration compiled into the binary: `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Top-level keys an `AIRLOCK_*` variable may set. Anything else starting with
/// `AIRLOCK_` that is not in [`NON_CONFIG_VARS`] is reported as a likely typo.
const CONFIG_KEYS: &[&str] = &[
    "mode",
    "listen",
    "public_url",
    "database_url",
    "database_url_file",
    "data_dir",
    "log_format",
    "master_key",
    "master_key_file",
    "database",
    "limits",
    "scopes",
    "environments",
    "roles",
    "auth",
    "webhooks",
];

/// `AIRLOCK_*` variables that are not configuration: they belong to the CLI, the agent
/// runner's child processes, or the test suite.
pub const NON_CONFIG_VARS: &[&str] = &[
    "AIRLOCK_CONFIG",
    "AIRLOCK_TOKEN",
    "AIRLOCK_TOKEN_FILE",
    "AIRLOCK_ENV",
    "AIRLOCK_CLIENT_SECRET",
    "AIRLOCK_SERVER",
    "AIRLOCK_LISTEN",
    "AIRLOCK_SESSION_FILE",
    "AIRLOCK_LOG",
    "AIRLOCK_TEST_POSTGRES_URL",
    "AIRLOCK_REQUIRE_POSTGRES",
    "AIRLOCK_REQUIRE_BROWSER",
];

impl Settings {
    /// Load every layer, resolve `*_FILE` secrets, and validate.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut settings = Self::load_unvalidated(sources)?;
        settings.resolve_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Load the layers without resolving files or validating (for `config check`
    /// to report problems in order).
    pub fn load_unvalidated(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = &sources.file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        if sources.env {
            figment = figment.merge(
                Env::prefixed("AIRLOCK_")
                    .split("__")
                    .filter(|key| is_config_key(key.as_str())),
            );
        }
        let mut settings = figment
            .extract::<Settings>()
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        settings.name_environments();
        Ok(settings)
    }

    /// Read secrets that were given as files.
    fn resolve_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.database_url_file {
            self.database_url = read_secret_file(path, "database_url_file")?;
        }
        Ok(())
    }
}

pub(super) fn read_secret_file(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| ConfigError::Load(format!("cannot read {what} {}: {e}", path.display())))
}

pub(super) fn is_config_key(key: &str) -> bool {
    // figment may hand us the key before or after `__` is turned into `.`.
    let top = key.split("__").next().unwrap_or_default();
    let top = top.split('.').next().unwrap_or_default().to_ascii_lowercase();
    CONFIG_KEYS.contains(&top.as_str())
}

/// `AIRLOCK_*` variables that are neither configuration nor known to the CLI: likely typos.
pub fn unexpected_env_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("AIRLOCK_"))
        .filter(|k| !NON_CONFIG_VARS.contains(&k.as_str()))
        .filter(|k| {
            let rest = k["AIRLOCK_".len()..].to_ascii_lowercase();
            let top = rest.split("__").next().unwrap_or_default().to_string();
            !CONFIG_KEYS.contains(&top.as_str())
        })
        .collect()
}
