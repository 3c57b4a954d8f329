//! The rules checked at start-up, all reported at once. They keep DESIGN.md's
//! invariants true before the first request (see the module docs of [`crate::config`]).

use std::time::Duration;

use super::redact::redact_url;
use super::*;

/// The longest `max_ttl` any environment may configure.
pub const MAX_TTL_CEILING: Duration = Duration::from_secs(24 * 3600);

/// Seconds in a day, for the duration ceilings below.
const DAY: u64 = 24 * 3600;

/// A problem when `value` of `field` is above `ceiling_secs`.
pub(super) fn over_ceiling(field: &str, value: Duration, ceiling_secs: u64) -> Option<String> {
    (value > Duration::from_secs(ceiling_secs)).then(|| {
        format!(
            "{field} ({}) is above its ceiling of {}; choose a shorter duration",
            humantime::format_duration(value),
            humantime::format_duration(Duration::from_secs(ceiling_secs))
        )
    })
}

/// The most concurrent HTTP connections `limits.max_connections` may allow.
pub const MAX_CONNECTIONS_CEILING: usize = 65_536;

/// Largest refusal budget per window.
pub const REFUSAL_BUDGET_CEILING: u32 = 100_000;

impl Settings {
    /// Check every rule; report all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.environments.is_empty() {
            problems.push("no environments are defined; add at least one [environments.NAME] table".into());
        }
        match url::Url::parse(&self.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {
                if self.public_url.ends_with('/') {
                    problems.push(format!(
                        "public_url {:?} must not end with '/'; issuers are built as public_url + \"/envs/NAME\"",
                        self.public_url
                    ));
                }
                if self.mode == Mode::Production && u.scheme() != "https" {
                    problems.push("public_url must use https when mode = \"production\"".into());
                }
            }
            _ => problems.push(format!(
                "public_url {:?} is not an http(s) URL; set it to the address clients use, e.g. https://airlock.example.com",
                self.public_url
            )),
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "database_url {} has an unsupported scheme; use sqlite://PATH or postgres://USER@HOST/DB",
                redact_url(&self.database_url)
            ));
        }
        if self.database.max_connections == 0 {
            problems.push("database.max_connections must be at least 1".into());
        }
        if self.auth.throttle_account_ceiling < self.auth.throttle_free_failures {
            problems.push(
                "auth.throttle_account_ceiling must be at least auth.throttle_free_failures \
                 (it bounds an account's failures from all addresses together)"
                    .into(),
            );
        }
        if self.auth.totp_enrolment_lifetime < Duration::from_secs(1)
            || self.auth.totp_enrolment_lifetime > Duration::from_secs(3600)
        {
            problems.push("auth.totp_enrolment_lifetime must be between 1s and 1h".into());
        }
        if self.limits.max_body_bytes < 256 || self.limits.max_body_bytes > 1024 * 1024 {
            problems.push("limits.max_body_bytes must be between 256 and 1048576".into());
        }
        problems.extend(self.limit_problems());
        if self.limits.header_read_timeout < Duration::from_secs(1)
            || self.limits.header_read_timeout > Duration::from_secs(120)
        {
            problems.push(format!(
                "limits.header_read_timeout ({}) must be between 1s and 2m; 10s suits most clients",
                humantime::format_duration(self.limits.header_read_timeout)
            ));
        }
        if self.limits.max_connections == 0 || self.limits.max_connections > MAX_CONNECTIONS_CEILING {
            problems.push(format!(
                "limits.max_connections ({}) must be between 1 and {MAX_CONNECTIONS_CEILING}; keep it below \
                 the process's open-file limit (ulimit -n) minus the database pool",
                self.limits.max_connections
            ));
        }
        if self.master_key.is_some() && self.master_key_file.is_some() {
            problems.push("set either master_key or master_key_file, not both".into());
        }
        for name in self.scopes.keys() {
            if !valid_scope_name(name) {
                problems.push(format!(
                    "scope {name:?} is not a valid scope name (letters, digits and ':_.-', 1-64 characters)"
                ));
            }
        }
        let mut audiences: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, env) in &self.environments {
            let at = format!("environments.{name}");
            if !valid_env_name(name) {
                problems.push(format!(
                    "{at}: environment names are 1-32 characters of a-z, 0-9 and '-', starting with a letter"
                ));
            }
            if env.audience.trim().is_empty() {
                problems.push(format!("{at}.audience must not be empty"));
            } else if let Some(other) = audiences.insert(&env.audience, name) {
                problems.push(format!(
                    "{at}.audience {:?} is also the audience of environment {other:?}; every environment needs its own",
                    env.audience
                ));
            }
            if env.default_ttl.is_zero() {
                problems.push(format!("{at}.default_ttl must be longer than zero"));
            }
            if env.max_ttl < env.default_ttl {
                problems.push(format!(
                    "{at}.max_ttl ({}) is below default_ttl ({}); raise max_ttl or lower default_ttl",
                    humantime::format_duration(env.max_ttl),
                    humantime::format_duration(env.default_ttl)
                ));
            }
            if env.max_ttl > MAX_TTL_CEILING {
                problems.push(format!(
                    "{at}.max_ttl ({}) is above the 24h ceiling; Airlock issues short-lived tokens only",
                    humantime::format_duration(env.max_ttl)
                ));
            }
            if let Some(scopes) = &env.scopes {
                for scope in scopes {
                    if !self.scopes.contains_key(scope) {
                        problems.push(format!(
                            "{at}.scopes names unknown scope {scope:?}; define it under [scopes.\"{scope}\"] or remove it"
                        ));
                    }
                }
            }
            let approval = &env.approval;
            if approval.quorum < 1 {
                problems.push(format!(
                    "{at}.approval.quorum is {}; it must be at least 1 (a quorum of 0 would mean no approval at all)",
                    approval.quorum
                ));
            }
            if approval.auto_approve && env.tier == Tier::Prod {
                problems.push(format!(
                    "{at}.approval.auto_approve must be false: {name} is a prod-tier environment and production always needs a human"
                ));
            }
            if approval.approver_role.trim().is_empty() {
                problems.push(format!("{at}.approval.approver_role must not be empty"));
            }
            if approval.pending_timeout.is_zero() || approval.max_grant_duration.is_zero() {
                problems.push(format!(
                    "{at}.approval.pending_timeout and max_grant_duration must be longer than zero"
                ));
            }
            for (field, value) in [
                ("pending_timeout", approval.pending_timeout),
                ("max_grant_duration", approval.max_grant_duration),
            ] {
                problems.extend(over_ceiling(&format!("{at}.approval.{field}"), value, 30 * DAY));
            }
        }
        for (name, role) in &self.roles {
            let at = format!("roles.{name}");
            for (env, scopes) in &role.tokens {
                if !self.environments.contains_key(env) {
                    problems.push(format!("{at}.tokens names unknown environment {env:?}"));
                    continue;
                }
                for scope in scopes {
                    if !self.env_offers_scope(&self.environments[env], scope) {
                        problems.push(format!(
                            "{at}.tokens.{env} names scope {scope:?}, which environment {env} does not offer"
                        ));
                    }
                }
            }
            for env in &role.escalate {
                if !self.environments.contains_key(env) {
                    problems.push(format!("{at}.escalate names unknown environment {env:?}"));
                }
            }
        }
        for (name, env) in &self.environments {
            if !self.roles.contains_key(&env.approval.approver_role) {
                problems.push(format!(
                    "environments.{name}.approval.approver_role {:?} is not a role; define [roles.{}]",
                    env.approval.approver_role, env.approval.approver_role
                ));
            }
        }
        for (name, hook) in &self.webhooks {
            let at = format!("webhooks.{name}");
            if !valid_env_name(name) {
                problems.push(format!(
                    "{at}: webhook names are 1-32 characters of a-z, 0-9 and '-', starting with a letter"
                ));
            }
            problems.extend(hook.problems(&at, self.mode));
        }
        let auth = &self.auth;
        if auth.password_min_length < 12 {
            problems.push("auth.password_min_length must be at least 12".into());
        }
        if auth.max_concurrent_password_checks == 0 {
            problems.push("auth.max_concurrent_password_checks must be at least 1".into());
        }
        if auth.session_access_ttl.is_zero() || auth.session_access_ttl > Duration::from_secs(3600) {
            problems.push("auth.session_access_ttl must be between 1s and 1h".into());
        }
        // Every duration has a ceiling, so no date arithmetic on it can overflow whatever
        // the file says (a bounded input, like every other).
        for (field, value, ceiling) in [
            ("auth.session_idle_timeout", auth.session_idle_timeout, 90 * DAY),
            ("auth.session_lifetime", auth.session_lifetime, 90 * DAY),
            ("auth.password_queue_timeout", auth.password_queue_timeout, 300),
            ("auth.throttle_max_delay", auth.throttle_max_delay, 7 * DAY),
            ("auth.device_code_lifetime", auth.device_code_lifetime, DAY),
            ("auth.device_poll_interval", auth.device_poll_interval, 3600),
            ("auth.web_session_lifetime", auth.web_session_lifetime, 7 * DAY),
            ("auth.step_up_lifetime", auth.step_up_lifetime, DAY),
            ("database.busy_timeout", self.database.busy_timeout, 600),
            ("database.acquire_timeout", self.database.acquire_timeout, 600),
            ("limits.request_timeout", self.limits.request_timeout, 3600),
        ] {
            problems.extend(over_ceiling(field, value, ceiling));
        }
        if auth.session_idle_timeout > auth.session_lifetime {
            problems.push("auth.session_idle_timeout must not exceed auth.session_lifetime".into());
        }
        if auth.device_poll_interval.is_zero() || auth.device_code_lifetime <= auth.device_poll_interval {
            problems
                .push("auth.device_code_lifetime must be longer than auth.device_poll_interval (> 0)".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Problems of the escalation rate and refusal budgets.
    fn limit_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let rate = &self.limits.escalation_rate;
        if !(1..=10_000).contains(&rate.requests) {
            problems.push(format!(
                "limits.escalation_rate.requests is {}; it must be between 1 and 10000",
                rate.requests
            ));
        }
        if rate.per < Duration::from_secs(1) || rate.per > Duration::from_secs(24 * 3600) {
            problems.push("limits.escalation_rate.per must be between 1s and 24h".into());
        }
        let r = &self.limits.refusals;
        if r.window < Duration::from_secs(1) || r.window > Duration::from_secs(3600) {
            problems.push("limits.refusals.window must be between 1s and 1h".into());
        }
        for (name, value) in [
            ("per_address", r.per_address),
            ("all_addresses", r.all_addresses),
            ("per_principal", r.per_principal),
        ] {
            if !(1..=REFUSAL_BUDGET_CEILING).contains(&value) {
                problems.push(format!(
                    "limits.refusals.{name} is {value}; it must be between 1 and {REFUSAL_BUDGET_CEILING}"
                ));
            }
        }
        if r.all_addresses < r.per_address {
            problems.push(format!(
                "limits.refusals.all_addresses ({}) is below per_address ({}); raise all_addresses",
                r.all_addresses, r.per_address
            ));
        }
        problems
    }
}

/// Environment names: 1-32 of `a-z0-9-`, starting with a letter.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Scope names: 1-64 of letters, digits and `:_.-` (a subset of RFC 6749's scope-token).
pub fn valid_scope_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-'))
}
