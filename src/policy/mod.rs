//! Pure policy decisions: who may have which token for how long. No I/O.
//!
//! Invariant 2 (bound agents) is [`authenticate_agent`]: an agent authenticates only at
//! its own environment. Invariant 5 (destructive scopes are gated) is
//! [`agent_scopes`]: a destructive scope is never granted by this path. Invariant 6
//! (short life) is [`token_lifetime`].

pub mod escalation;

use std::time::Duration;

use crate::config::{EnvironmentSettings, Settings};
use crate::domain::Agent;

/// Most scopes one request may name.
pub const MAX_SCOPES_PER_REQUEST: usize = 32;

/// The grant length refusals suggest; the environment's `max_grant_duration` caps it.
pub const SUGGESTED_DURATION: &str = "30m";

/// The `airlock escalate` command a refusal suggests, in backticks: complete, so it runs
/// as printed (the reason, `'...'`, is the person's to write: the server refuses it as
/// too short until they do). Single quotes, because RFC 6749 error descriptions may not
/// contain `"`. A test parses every suggested command with the real CLI.
pub fn escalate_command<S: AsRef<str>>(env: &str, scopes: &[S]) -> String {
    let scopes: String = scopes
        .iter()
        .map(|s| format!(" --scope {}", s.as_ref()))
        .collect();
    let command =
        format!("airlock escalate --env {env}{scopes} --duration {SUGGESTED_DURATION} --reason '...'");
    format!("`{command}`")
}

/// Why a client could not authenticate. Every variant answers the caller the same way
/// (`401 invalid_client`); the distinction is for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No such client.
    UnknownClient,
    /// The secret did not match.
    BadSecret,
    /// The agent is disabled.
    Disabled,
    /// Correct credentials of another environment's agent: a security event.
    CrossEnvironment,
}

impl AuthFailure {
    /// Reason recorded in the audit trail.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::UnknownClient => "unknown_client",
            AuthFailure::BadSecret => "bad_secret",
            AuthFailure::Disabled => "disabled",
            AuthFailure::CrossEnvironment => "cross_environment",
        }
    }
}

/// Decide whether `agent` (if it exists) with a secret that did or did not verify may
/// authenticate at environment `env`.
pub fn authenticate_agent(agent: Option<&Agent>, secret_ok: bool, env: &str) -> Result<(), AuthFailure> {
    let agent = agent.ok_or(AuthFailure::UnknownClient)?;
    if !secret_ok {
        return Err(AuthFailure::BadSecret);
    }
    if agent.environment != env {
        return Err(AuthFailure::CrossEnvironment);
    }
    if agent.disabled {
        return Err(AuthFailure::Disabled);
    }
    Ok(())
}

/// Why requested scopes were refused (`400 invalid_scope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRefusal {
    /// Not a well-formed scope list.
    Malformed,
    /// Not in the catalogue, or not offered in this environment.
    Unknown(String),
    /// Marked destructive: needs an approved escalation (space-separated when several).
    Destructive(String),
    /// Not among the agent's allowed scopes.
    NotAllowed(String),
    /// Nothing asked and nothing configured as default.
    NoneRequested,
}

impl ScopeRefusal {
    /// `error_description` for the caller. Safe to show: it names only scopes.
    pub fn description(&self, env: &str) -> String {
        match self {
            ScopeRefusal::Malformed => format!(
                "the scope parameter must be at most {MAX_SCOPES_PER_REQUEST} space-separated scope names"
            ),
            ScopeRefusal::Unknown(s) => format!("scope '{s}' does not exist in environment '{env}'"),
            ScopeRefusal::Destructive(s) => format!(
                "scope '{s}' is destructive and requires an approved escalation: {}",
                escalate_command(env, &s.split(' ').collect::<Vec<_>>())
            ),
            ScopeRefusal::NotAllowed(s) => format!("this client is not allowed scope '{s}'"),
            ScopeRefusal::NoneRequested => {
                "no scope was requested and this client has no default scopes".to_string()
            }
        }
    }

    /// Reason recorded in the audit trail.
    pub fn reason(&self) -> &'static str {
        match self {
            ScopeRefusal::Malformed => "malformed_scope",
            ScopeRefusal::Unknown(_) => "unknown_scope",
            ScopeRefusal::Destructive(_) => "destructive_scope_needs_escalation",
            ScopeRefusal::NotAllowed(_) => "scope_not_allowed",
            ScopeRefusal::NoneRequested => "no_scope",
        }
    }
}

/// Parse an RFC 6749 `scope` parameter: space-separated, duplicates dropped, order kept.
///
/// ```
/// use airlock::policy::{parse_scope_param, ScopeRefusal};
/// assert_eq!(parse_scope_param("db:read  db:write db:read").unwrap(), ["db:read", "db:write"]);
/// // A quote is not a scope-token character (RFC 6749 section 3.3).
/// assert_eq!(parse_scope_param("db:\"read\""), Err(ScopeRefusal::Malformed));
/// ```
pub fn parse_scope_param(raw: &str) -> Result<Vec<String>, ScopeRefusal> {
    let mut out: Vec<String> = Vec::new();
    for token in raw.split(' ').filter(|t| !t.is_empty()) {
        // RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if !token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(ScopeRefusal::Malformed);
        }
        if !out.iter().any(|s| s == token) {
            out.push(token.to_string());
        }
        if out.len() > MAX_SCOPES_PER_REQUEST {
            return Err(ScopeRefusal::Malformed);
        }
    }
    Ok(out)
}

/// What a token request asks for, and which of it only a grant can give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopePlan {
    /// Every scope asked for (or the defaults), in order, deduplicated.
    pub wanted: Vec<String>,
    /// The subset that needs an active grant covering it: destructive scopes
    /// (invariant 5), everything in a prod-tier environment for a person (invariant 3),
    /// and scopes the principal does not have by itself.
    pub needs_grant: Vec<String>,
}

/// Plan the scopes an agent asks for at its environment (`None`: no `scope` parameter).
/// Refuses only what no grant could fix: malformed, unknown, or nothing asked.
pub fn agent_scope_plan(
    settings: &Settings,
    env: &EnvironmentSettings,
    agent: &Agent,
    requested: Option<&str>,
) -> Result<ScopePlan, ScopeRefusal> {
    let wanted = match requested {
        Some(raw) => parse_scope_param(raw)?,
        None => agent.default_scopes.clone(),
    };
    if wanted.is_empty() {
        return Err(ScopeRefusal::NoneRequested);
    }
    if let Some(unknown) = wanted.iter().find(|s| !settings.env_offers_scope(env, s)) {
        return Err(ScopeRefusal::Unknown(unknown.clone()));
    }
    // SECURITY: a destructive scope needs a grant even for an agent registered with it.
    let needs_grant = wanted
        .iter()
        .filter(|s| settings.scopes[s.as_str()].destructive || !agent.allowed_scopes.contains(s))
        .cloned()
        .collect();
    Ok(ScopePlan { wanted, needs_grant })
}

/// The refusal for an agent whose plan needs a grant it does not have: a destructive
/// scope is named first (it is what `airlock escalate` is for).
pub fn agent_refusal(settings: &Settings, needs_grant: &[String]) -> ScopeRefusal {
    let destructive: Vec<&str> = needs_grant
        .iter()
        .filter(|s| settings.scopes[s.as_str()].destructive)
        .map(String::as_str)
        .collect();
    if destructive.is_empty() {
        ScopeRefusal::NotAllowed(needs_grant.first().cloned().unwrap_or_default())
    } else {
        ScopeRefusal::Destructive(destructive.join(" "))
    }
}

/// The scopes an agent gets at its environment without any grant (`None`: no `scope`
/// parameter). A destructive scope is never given this way (invariant 5).
pub fn agent_scopes(
    settings: &Settings,
    env: &EnvironmentSettings,
    agent: &Agent,
    requested: Option<&str>,
) -> Result<Vec<String>, ScopeRefusal> {
    let plan = agent_scope_plan(settings, env, agent, requested)?;
    if plan.needs_grant.is_empty() {
        Ok(plan.wanted)
    } else {
        Err(agent_refusal(settings, &plan.needs_grant))
    }
}

/// Lifetime of a token in `env`: its default, never above its maximum (invariant 6).
pub fn token_lifetime(env: &EnvironmentSettings) -> Duration {
    env.default_ttl.min(env.max_ttl)
}

/// Why a person may not have the token they asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HumanRefusal {
    /// Not a well-formed scope list (`invalid_scope`).
    Malformed,
    /// No role gives tokens for this environment (`access_denied`).
    NoAccess,
    /// Not in the catalogue, or not offered here (`invalid_scope`).
    Unknown(String),
    /// Not among the scopes the person's roles allow here (`invalid_scope`).
    NotInRole(String),
    /// Production, or a destructive scope: needs an approved escalation (`access_denied`).
    NeedsEscalation(Vec<String>),
    /// Nothing requested and nothing allowed by default (`invalid_scope`).
    NoneRequested,
}

impl HumanRefusal {
    /// `error_description` for the caller.
    pub fn description(&self, env: &str) -> String {
        match self {
            HumanRefusal::Malformed => ScopeRefusal::Malformed.description(env),
            HumanRefusal::NoAccess => format!("your roles do not give you tokens for environment '{env}'"),
            HumanRefusal::Unknown(s) => format!("scope '{s}' does not exist in environment '{env}'"),
            HumanRefusal::NotInRole(s) => {
                format!("your roles do not allow scope '{s}' in environment '{env}'")
            }
            HumanRefusal::NeedsEscalation(scopes) => format!(
                "environment '{env}' with scope '{}' requires an approved escalation: {}",
                scopes.join(" "),
                escalate_command(env, scopes)
            ),
            HumanRefusal::NoneRequested => "ask for at least one --scope".to_string(),
        }
    }

    /// Audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            HumanRefusal::Malformed => "malformed_scope",
            HumanRefusal::NoAccess => "no_role_for_environment",
            HumanRefusal::Unknown(_) => "unknown_scope",
            HumanRefusal::NotInRole(_) => "scope_not_in_role",
            HumanRefusal::NeedsEscalation(_) => "needs_escalation",
            HumanRefusal::NoneRequested => "no_scope",
        }
    }

    /// Whether the OAuth answer is `access_denied` (else `invalid_scope`).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, HumanRefusal::NoAccess | HumanRefusal::NeedsEscalation(_))
    }
}

/// The roles that count for a person. Admin and approver roles take effect only once
/// TOTP is enrolled: those are the roles an attacker with a stolen password wants.
pub fn effective_roles(settings: &Settings, roles: &[String], totp_enrolled: bool) -> Vec<String> {
    roles
        .iter()
        .filter(|r| settings.roles.contains_key(*r))
        .filter(|r| {
            let privileged = settings.roles[*r].admin
                || settings
                    .environments
                    .values()
                    .any(|e| &e.approval.approver_role == *r);
            totp_enrolled || !privileged
        })
        .cloned()
        .collect()
}

/// Plan the scopes a person asks for in `env` (`None`: no `scope` parameter: the
/// non-destructive scopes their roles give there). Refuses only what no grant could fix.
pub fn human_scope_plan(
    settings: &Settings,
    env: &EnvironmentSettings,
    roles: &[String],
    requested: Option<&str>,
) -> Result<ScopePlan, HumanRefusal> {
    let allowed = role_scopes(settings, &env.name, roles);
    let wanted = match requested {
        Some(raw) => parse_scope_param(raw).map_err(|_| HumanRefusal::Malformed)?,
        None => allowed
            .iter()
            .filter(|s| settings.scopes.get(s.as_str()).is_some_and(|c| !c.destructive))
            .cloned()
            .collect(),
    };
    if wanted.is_empty() {
        return Err(if allowed.is_empty() && requested.is_none() {
            HumanRefusal::NoAccess
        } else {
            HumanRefusal::NoneRequested
        });
    }
    if let Some(unknown) = wanted.iter().find(|s| !settings.env_offers_scope(env, s)) {
        return Err(HumanRefusal::Unknown(unknown.clone()));
    }
    let prod = env.is_prod();
    // SECURITY: invariants 3 and 5: production and destructive scopes always need a grant.
    let needs_grant = wanted
        .iter()
        .filter(|s| prod || settings.scopes[s.as_str()].destructive || !allowed.contains(s))
        .cloned()
        .collect();
    Ok(ScopePlan { wanted, needs_grant })
}

/// The scopes the person's roles give in `env_name` (none means no role covers it).
fn role_scopes(settings: &Settings, env_name: &str, roles: &[String]) -> Vec<String> {
    let mut allowed: Vec<String> = Vec::new();
    for role in roles.iter().filter_map(|r| settings.roles.get(r)) {
        for s in role.tokens.get(env_name).into_iter().flatten() {
            if !allowed.contains(s) {
                allowed.push(s.clone());
            }
        }
    }
    allowed
}

/// The refusal for a person whose plan needs a grant they do not have: "needs an
/// escalation" for production or a destructive scope (naming every gated scope),
/// otherwise what their roles lack.
pub fn human_refusal(
    settings: &Settings,
    env: &EnvironmentSettings,
    roles: &[String],
    needs_grant: &[String],
) -> HumanRefusal {
    let gated: Vec<String> = needs_grant
        .iter()
        .filter(|s| env.is_prod() || settings.scopes[s.as_str()].destructive)
        .cloned()
        .collect();
    if !gated.is_empty() {
        return HumanRefusal::NeedsEscalation(gated);
    }
    if role_scopes(settings, &env.name, roles).is_empty() {
        return HumanRefusal::NoAccess;
    }
    HumanRefusal::NotInRole(needs_grant.first().cloned().unwrap_or_default())
}

/// The scopes a person gets in `env` without any grant (`None`: no `scope` parameter).
pub fn human_scopes(
    settings: &Settings,
    env: &EnvironmentSettings,
    roles: &[String],
    requested: Option<&str>,
) -> Result<Vec<String>, HumanRefusal> {
    let plan = human_scope_plan(settings, env, roles, requested)?;
    if plan.needs_grant.is_empty() {
        Ok(plan.wanted)
    } else {
        Err(human_refusal(settings, env, roles, &plan.needs_grant))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    fn settings() -> Settings {
        Settings::load(&Sources::default()).unwrap()
    }

    fn agent(env: &str, allowed: &[&str], defaults: &[&str]) -> Agent {
        Agent {
            id: uuid::Uuid::new_v4(),
            client_id: crate::domain::new_client_id(),
            name: "bot".into(),
            environment: env.into(),
            allowed_scopes: allowed.iter().map(|s| s.to_string()).collect(),
            default_scopes: defaults.iter().map(|s| s.to_string()).collect(),
            disabled: false,
            created_at: crate::domain::now(),
            updated_at: crate::domain::now(),
            owner_id: None,
            owner: None,
            secret_hash: vec![],
        }
    }

    #[test]
    fn an_agent_authenticates_only_at_its_own_environment() {
        let a = agent("staging", &["db:read"], &[]);
        assert_eq!(authenticate_agent(Some(&a), true, "staging"), Ok(()));
        for other in ["dev", "prod", "Staging", "staging ", ""] {
            assert_eq!(
                authenticate_agent(Some(&a), true, other),
                Err(AuthFailure::CrossEnvironment)
            );
        }
    }

    #[test]
    fn the_secret_is_checked_before_anything_else_is_revealed() {
        let mut a = agent("staging", &[], &[]);
        a.disabled = true;
        // A wrong secret never reveals that the agent is disabled or lives elsewhere.
        assert_eq!(
            authenticate_agent(Some(&a), false, "prod"),
            Err(AuthFailure::BadSecret)
        );
        assert_eq!(
            authenticate_agent(Some(&a), true, "staging"),
            Err(AuthFailure::Disabled)
        );
        assert_eq!(
            authenticate_agent(None, true, "staging"),
            Err(AuthFailure::UnknownClient)
        );
    }

    #[test]
    fn destructive_scopes_are_refused_even_when_allowed() {
        let s = settings();
        let a = agent("dev", &["db:read", "db:drop"], &["db:read"]);
        let env = &s.environments["dev"];
        assert_eq!(
            agent_scopes(&s, env, &a, Some("db:read db:drop")),
            Err(ScopeRefusal::Destructive("db:drop".into()))
        );
        assert_eq!(agent_scopes(&s, env, &a, None), Ok(vec!["db:read".to_string()]));
    }

    #[test]
    fn unknown_and_unallowed_scopes_are_refused() {
        let s = settings();
        let a = agent("dev", &["db:read"], &[]);
        let env = &s.environments["dev"];
        assert_eq!(
            agent_scopes(&s, env, &a, Some("db:nope")),
            Err(ScopeRefusal::Unknown("db:nope".into()))
        );
        assert_eq!(
            agent_scopes(&s, env, &a, Some("db:write")),
            Err(ScopeRefusal::NotAllowed("db:write".into()))
        );
        assert_eq!(agent_scopes(&s, env, &a, None), Err(ScopeRefusal::NoneRequested));
        assert_eq!(
            agent_scopes(&s, env, &a, Some("a\"b")),
            Err(ScopeRefusal::Malformed)
        );
    }

    #[test]
    fn scope_lists_are_deduplicated_and_bounded() {
        assert_eq!(parse_scope_param("a  b a").unwrap(), vec!["a", "b"]);
        let many = (0..40).map(|i| format!("s{i}")).collect::<Vec<_>>().join(" ");
        assert_eq!(parse_scope_param(&many), Err(ScopeRefusal::Malformed));
    }

    #[test]
    fn lifetimes_never_exceed_the_maximum() {
        let s = settings();
        for env in s.environments.values() {
            assert!(token_lifetime(env) <= env.max_ttl);
        }
        let mut env = s.environments["prod"].clone();
        env.default_ttl = Duration::from_secs(7200);
        env.max_ttl = Duration::from_secs(60);
        assert_eq!(token_lifetime(&env), Duration::from_secs(60));
    }
    #[test]
    fn people_get_only_what_their_roles_give_and_never_prod_or_destructive() {
        let s = settings();
        let dev = vec!["developer".to_string()];
        let staging = &s.environments["staging"];
        assert_eq!(
            human_scopes(&s, staging, &dev, Some("db:read")),
            Ok(vec!["db:read".into()])
        );
        assert_eq!(
            human_scopes(&s, staging, &dev, Some("db:migrate")),
            Err(HumanRefusal::NotInRole("db:migrate".into()))
        );
        let prod = &s.environments["prod"];
        let r = human_scopes(&s, prod, &dev, Some("db:read")).unwrap_err();
        assert!(r.is_access_denied() && r.description("prod").contains("airlock escalate"));
        // Even a destructive scope the role does not list answers "needs an escalation".
        let r = human_scopes(&s, &s.environments["dev"], &dev, Some("db:drop")).unwrap_err();
        assert_eq!(r, HumanRefusal::NeedsEscalation(vec!["db:drop".into()]));
        assert!(r.is_access_denied());
        let mut s2 = s.clone();
        s2.roles
            .get_mut("developer")
            .unwrap()
            .tokens
            .insert("dev".into(), vec!["db:read".into(), "db:drop".into()]);
        let r = human_scopes(&s2, &s2.environments["dev"], &dev, Some("db:drop")).unwrap_err();
        assert_eq!(r, HumanRefusal::NeedsEscalation(vec!["db:drop".into()]));
        // Destructive scopes are not defaults.
        assert_eq!(
            human_scopes(&s2, &s2.environments["dev"], &dev, None),
            Ok(vec!["db:read".into()])
        );
        assert_eq!(
            human_scopes(&s, staging, &["approver".to_string()], Some("db:read")),
            Err(HumanRefusal::NoAccess)
        );
    }

    #[test]
    fn admin_and_approver_roles_wait_for_totp() {
        let s = settings();
        let roles = vec![
            "developer".to_string(),
            "admin".to_string(),
            "approver".to_string(),
            "ghost".to_string(),
        ];
        assert_eq!(effective_roles(&s, &roles, false), vec!["developer".to_string()]);
        assert_eq!(effective_roles(&s, &roles, true), roles[..3].to_vec());
    }
}
