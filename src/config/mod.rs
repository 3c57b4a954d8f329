//! Settings: layered loading, validation and secret handling.
//!
//! Layers, each overriding the one before: the built-in `config/default.toml` (compiled
//! into the binary so `airlock serve` works from any directory), then the operator's file
//! (`--config FILE` / `AIRLOCK_CONFIG`), then `AIRLOCK_*` environment variables with `__`
//! between nested keys (`AIRLOCK_ENVIRONMENTS__PROD__MAX_TTL=10m`). Every secret can also
//! come from a file named by `*_FILE` (`AIRLOCK_MASTER_KEY_FILE`, `AIRLOCK_DATABASE_URL_FILE`).
//!
//! [`Settings::validate`] enforces the rules that keep DESIGN.md's invariants true at
//! start-up: a quorum of zero must never mean "no approval needed" (invariant 4), a
//! production environment can never auto-approve (invariant 3), destructive scopes are
//! never auto-approved (invariant 5), and no environment may issue long-lived tokens
//! (invariant 6).

mod load;
mod redact;
mod sections;
mod validate;
mod webhooks;

#[cfg(test)]
mod tests;

pub use load::{DEFAULT_TOML, unexpected_env_vars};
pub use redact::redact_url;
pub use sections::*;
pub use validate::{MAX_CONNECTIONS_CEILING, MAX_TTL_CEILING, REFUSAL_BUDGET_CEILING};
pub use validate::{valid_env_name, valid_scope_name};
pub use webhooks::*;

use std::collections::BTreeMap;
use std::path::PathBuf;

use load::read_secret_file;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Whether the server runs with development conveniences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Generates a master key on first run if none is configured.
    Development,
    /// Refuses to start without an explicit master key.
    Production,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when the terminal supports it.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Whether an environment is production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// dev, staging and the like.
    Nonprod,
    /// Production: tokens only for prod-bound agents or approved grants.
    Prod,
}

/// All settings of one Airlock process.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Development or production.
    pub mode: Mode,
    /// Address the HTTP server binds.
    pub listen: String,
    /// External base URL; issuers are `{public_url}/envs/{env}`.
    pub public_url: String,
    /// `sqlite://path` or `postgres://...`.
    pub database_url: String,
    /// File holding the database URL (for URLs carrying a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_url_file: Option<PathBuf>,
    /// Where development mode keeps its generated master key.
    pub data_dir: PathBuf,
    /// Log output format.
    pub log_format: LogFormat,
    /// 32-byte master key, base64 (standard or URL-safe alphabet).
    #[serde(default, skip_serializing)]
    pub master_key: Option<SecretString>,
    /// File holding the master key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
    /// Connection pool tuning.
    pub database: DatabaseSettings,
    /// Request size and time bounds.
    pub limits: LimitSettings,
    /// The scope catalogue.
    pub scopes: BTreeMap<String, ScopeSettings>,
    /// Environments by name.
    pub environments: BTreeMap<String, EnvironmentSettings>,
    /// Roles of people, by name.
    pub roles: BTreeMap<String, RoleSettings>,
    /// Sign-in, sessions, TOTP and throttling.
    pub auth: AuthSettings,
    /// Webhooks told about escalations and grants, by name (`[webhooks.NAME]`).
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookSettings>,
}

/// What holders of a role may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSettings {
    /// Environments they may get tokens for, with the scopes allowed in each.
    #[serde(default)]
    pub tokens: BTreeMap<String, Vec<String>>,
    /// Environments where they may request escalations.
    #[serde(default)]
    pub escalate: Vec<String>,
    /// Manage people and agents.
    #[serde(default)]
    pub admin: bool,
}

/// One scope of the catalogue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSettings {
    /// Shown to people deciding on escalations.
    #[serde(default)]
    pub description: String,
    /// Needs an approved grant in every environment.
    #[serde(default)]
    pub destructive: bool,
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The layers could not be read or parsed.
    #[error("cannot read configuration: {0}")]
    Load(String),
    /// The settings parse but break a rule.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// Where the layers come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The operator's file, layered over the defaults.
    pub file: Option<PathBuf>,
    /// Read `AIRLOCK_*` variables from the process environment.
    pub env: bool,
}

impl Settings {
    /// The environment named `name`, if configured.
    pub fn environment(&self, name: &str) -> Option<&EnvironmentSettings> {
        self.environments.get(name)
    }

    /// Scopes offered in `env` (the catalogue, or the environment's subset of it).
    pub fn env_offers_scope(&self, env: &EnvironmentSettings, scope: &str) -> bool {
        self.scopes.contains_key(scope)
            && env
                .scopes
                .as_ref()
                .is_none_or(|list| list.iter().any(|s| s == scope))
    }

    /// Whether any of `roles` is an admin role.
    pub fn is_admin(&self, roles: &[String]) -> bool {
        roles.iter().any(|r| self.roles.get(r).is_some_and(|r| r.admin))
    }

    /// The tier of environment `name`. SECURITY: a name no environment has counts as
    /// production, so a rule asked about an unknown environment never relaxes.
    pub fn tier_of(&self, name: &str) -> Tier {
        self.environment(name).map_or(Tier::Prod, |e| e.tier)
    }

    /// Give each environment its own name (after loading, or after a test or tool
    /// changed the map).
    pub fn name_environments(&mut self) {
        for (name, env) in self.environments.iter_mut() {
            env.name = name.clone();
        }
    }

    /// The master key material as configured, if any (inline or from its file).
    pub fn configured_master_key(&self) -> Result<Option<SecretString>, ConfigError> {
        if let Some(k) = &self.master_key {
            return Ok(Some(SecretString::from(k.expose_secret().trim().to_string())));
        }
        if let Some(path) = &self.master_key_file {
            return Ok(Some(SecretString::from(read_secret_file(
                path,
                "master_key_file",
            )?)));
        }
        Ok(None)
    }
}
