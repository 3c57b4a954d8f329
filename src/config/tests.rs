use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

fn load_with(extra: &str) -> Result<Settings, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.toml");
    std::fs::write(&path, extra).unwrap();
    Settings::load(&Sources {
        file: Some(path),
        env: false,
    })
}

fn problems(extra: &str) -> Vec<String> {
    match load_with(extra) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn every_duration_has_a_ceiling_so_date_arithmetic_cannot_overflow() {
    // Arrange: durations far beyond any sensible value (and beyond what a date can
    // hold once added to now), in the auth, database, limits and approval tables.
    let p = problems(
        "[auth]\nsession_lifetime = \"1000000years\"\nsession_idle_timeout = \"500000years\"\n\
         step_up_lifetime = \"400days\"\n[database]\nbusy_timeout = \"2h\"\n\
         [limits]\nrequest_timeout = \"3h\"\n\
         [environments.staging.approval]\npending_timeout = \"100000years\"\nmax_grant_duration = \"31days\"\n",
    );
    // Assert: each one is named, with its ceiling.
    for field in [
        "auth.session_lifetime",
        "auth.session_idle_timeout",
        "auth.step_up_lifetime",
        "database.busy_timeout",
        "limits.request_timeout",
        "environments.staging.approval.pending_timeout",
        "environments.staging.approval.max_grant_duration",
    ] {
        assert!(
            p.iter()
                .any(|m| m.starts_with(field) && m.contains("above its ceiling")),
            "{field}: {p:?}"
        );
    }
}

#[test]
fn the_default_configuration_is_valid() {
    let s = Settings::load(&Sources::default()).unwrap();
    assert_eq!(s.environments.len(), 3);
    assert_eq!(s.environments["prod"].tier, Tier::Prod);
    assert!(s.scopes["db:drop"].destructive);
    assert!(s.scopes["volume:delete"].destructive);
    assert!(!s.scopes["db:read"].destructive);
    // prod has the shortest lifetimes
    let prod = &s.environments["prod"];
    for env in s.environments.values() {
        assert!(prod.max_ttl <= env.max_ttl);
        assert!(prod.default_ttl <= env.default_ttl);
    }
}

#[test]
fn max_ttl_below_default_ttl_is_refused() {
    let p = problems("[environments.dev]\ndefault_ttl = \"30m\"\nmax_ttl = \"10m\"\n");
    assert!(
        p.iter()
            .any(|m| m.contains("environments.dev.max_ttl") && m.contains("below default_ttl")),
        "{p:?}"
    );
}

#[test]
fn the_default_limits_match_their_documented_values() {
    let s = Settings::load(&Sources::default()).unwrap();
    let rate = &s.limits.escalation_rate;
    assert_eq!((rate.requests, rate.per), (10, Duration::from_secs(60)));
    let r = &s.limits.refusals;
    assert_eq!(r.window, Duration::from_secs(10));
    assert_eq!((r.per_address, r.all_addresses, r.per_principal), (30, 300, 30));
    // The file and the code agree, so an operator file without these tables gets them too.
    let d = RefusalSettings::default();
    assert_eq!(
        (d.window, d.per_address, d.all_addresses, d.per_principal),
        (r.window, 30, 300, 30)
    );
    let d = EscalationRateSettings::default();
    assert_eq!((d.requests, d.per), (rate.requests, rate.per));
}

#[test]
fn escalation_rates_and_refusal_budgets_are_checked() {
    let p = problems(
        "[limits.escalation_rate]\nrequests = 0\nper = \"0s\"\n[limits.refusals]\nwindow = \"2h\"\nper_address = 50\nall_addresses = 40\nper_principal = 0\n",
    );
    for needle in [
        "limits.escalation_rate.requests is 0",
        "limits.escalation_rate.per",
        "limits.refusals.window",
        "limits.refusals.per_principal is 0",
        "all_addresses (40) is below per_address (50)",
    ] {
        assert!(p.iter().any(|m| m.contains(needle)), "{needle}: {p:?}");
    }
}

#[test]
fn max_ttl_above_a_day_is_refused() {
    let p = problems("[environments.dev]\nmax_ttl = \"25h\"\n");
    assert!(p.iter().any(|m| m.contains("24h ceiling")), "{p:?}");
}

#[test]
fn auto_approval_in_prod_is_refused() {
    let p = problems("[environments.prod.approval]\nauto_approve = true\n");
    assert!(
        p.iter()
            .any(|m| m.contains("environments.prod.approval.auto_approve")),
        "{p:?}"
    );
}

#[test]
fn an_environment_without_an_approval_section_gets_the_default_policy() {
    let s = load_with(
        "[environments.qa]\ntier = \"nonprod\"\naudience = \"airlock:qa\"\ndefault_ttl = \"5m\"\nmax_ttl = \"10m\"\n",
    )
    .expect("valid with the default policy");
    let qa = &s.environments["qa"].approval;
    assert_eq!(qa.quorum, 1);
    assert_eq!(qa.approver_role, "approver");
    assert_eq!(qa.pending_timeout, Duration::from_secs(3600));
    assert!(!qa.auto_approve);
}

#[test]
fn a_quorum_of_zero_is_refused() {
    let p = problems("[environments.staging.approval]\nquorum = 0\n");
    assert!(
        p.iter()
            .any(|m| m.contains("quorum is 0") && m.contains("at least 1")),
        "{p:?}"
    );
}

#[test]
fn an_unknown_scope_in_an_environment_is_refused() {
    let p = problems("[environments.dev]\nscopes = [\"db:read\", \"db:nuke\"]\n");
    assert!(p.iter().any(|m| m.contains("unknown scope \"db:nuke\"")), "{p:?}");
}

#[test]
fn an_environment_without_required_fields_is_refused() {
    match load_with("[environments.qa]\ntier = \"nonprod\"\n") {
        Err(ConfigError::Load(m)) => assert!(m.contains("missing field"), "{m}"),
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn an_unknown_key_is_refused() {
    match load_with("[environments.dev]\nmax_tll = \"10m\"\n") {
        Err(ConfigError::Load(m)) => assert!(m.contains("max_tll"), "{m}"),
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn connection_limits_have_bounds() {
    let s = Settings::load(&Sources::default()).unwrap();
    assert_eq!(s.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.limits.max_connections, 512);
    let p = problems("[limits]\nheader_read_timeout = \"0s\"\nmax_connections = 0\n");
    assert!(
        p.iter().any(|m| m.contains("limits.header_read_timeout")),
        "{p:?}"
    );
    assert!(p.iter().any(|m| m.contains("limits.max_connections")), "{p:?}");
    let p = problems("[limits]\nheader_read_timeout = \"1h\"\nmax_connections = 1000000\n");
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn shared_audiences_are_refused() {
    let p = problems("[environments.staging]\naudience = \"airlock:prod\"\n");
    assert!(p.iter().any(|m| m.contains("also the audience")), "{p:?}");
}

#[test]
fn all_problems_are_reported_together() {
    let p = problems(
        "[environments.prod.approval]\nauto_approve = true\nquorum = 0\n[environments.dev]\nmax_ttl = \"1s\"\n",
    );
    assert!(p.len() >= 3, "{p:?}");
}

#[test]
fn environment_and_scope_names_are_checked() {
    assert!(valid_env_name("prod-eu1"));
    for bad in ["", "Prod", "1prod", "pr od", "prod/x", &"a".repeat(33)] {
        assert!(!valid_env_name(bad), "{bad:?}");
    }
    assert!(valid_scope_name("db:read") && valid_scope_name("s3.bucket-x_y"));
    for bad in ["", "db read", "db\"x", &"s".repeat(65)] {
        assert!(!valid_scope_name(bad), "{bad:?}");
    }
    let p = problems(
        "[environments.Bad-Env]\ntier = \"nonprod\"\naudience = \"x\"\ndefault_ttl = \"1m\"\nmax_ttl = \"1m\"\n[environments.Bad-Env.approval]\nquorum = 1\napprover_role = \"approver\"\npending_timeout = \"1h\"\nmax_grant_duration = \"1h\"\nauto_approve = false\n",
    );
    assert!(
        p.iter()
            .any(|m| m.contains("environments.Bad-Env") && m.contains("environment names")),
        "{p:?}"
    );
}

#[test]
fn database_passwords_are_redacted() {
    assert_eq!(redact_url("postgres://u:hunter2@db/x"), "postgres://u:***@db/x");
    assert!(!redact_url("host=db password=hunter2").contains("hunter2"));
    let q = redact_url("postgres://u@db/x?sslmode=require&password=hunter2");
    assert!(!q.contains("hunter2") && q.contains("sslmode=require"), "{q}");
}

const HOOK_SECRET: &str = "whsec-0123456789abcdef";

fn hook(body: &str) -> String {
    format!("[webhooks.ops]\nurl = \"https://hooks.example.com/services/T0/B0/tok3n\"\n{body}")
}

/// The webhook problems of a config (none when it loads).
fn webhook_problems(extra: &str) -> Vec<String> {
    match load_with(extra) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid(p)) => p.into_iter().filter(|p| p.contains("webhooks.")).collect(),
        Err(e) => panic!("expected validation problems, got {e:?}"),
    }
}

#[test]
fn a_webhook_gets_default_events_and_timings() {
    let s = load_with(&hook(&format!("secret = \"{HOOK_SECRET}\"\n"))).unwrap();
    let ops = &s.webhooks["ops"];
    assert_eq!(ops.events, WEBHOOK_EVENTS);
    assert_eq!(ops.timeout, Duration::from_secs(5));
    assert_eq!(ops.max_attempts, 5);
    assert_eq!(ops.retry_base, Duration::from_secs(2));
    assert!(ops.wants("grant.revoked"));
    assert_eq!(ops.signing_secret().unwrap().expose_secret(), HOOK_SECRET);
    // No webhook unless the operator configures one.
    assert!(Settings::load(&Sources::default()).unwrap().webhooks.is_empty());
}

#[test]
fn a_webhook_without_a_secret_is_refused() {
    let p = webhook_problems(&hook(""));
    assert!(
        p.iter()
            .any(|m| m.contains("webhooks.ops") && m.contains("secret is required")),
        "{p:?}"
    );
}

#[test]
fn a_webhook_with_both_secret_and_secret_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook.secret");
    std::fs::write(&file, HOOK_SECRET).unwrap();
    let p = webhook_problems(&hook(&format!(
        "secret = \"{HOOK_SECRET}\"\nsecret_file = {:?}\n",
        file.display().to_string()
    )));
    assert!(p.iter().any(|m| m.contains("not both")), "{p:?}");
}

#[test]
fn a_webhook_secret_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook.secret");
    std::fs::write(&file, format!("{HOOK_SECRET}\n")).unwrap();
    let s = load_with(&hook(&format!(
        "secret_file = {:?}\n",
        file.display().to_string()
    )))
    .unwrap();
    assert_eq!(
        s.webhooks["ops"].signing_secret().unwrap().expose_secret(),
        HOOK_SECRET
    );

    let missing = dir.path().join("absent");
    let p = webhook_problems(&hook(&format!(
        "secret_file = {:?}\n",
        missing.display().to_string()
    )));
    assert!(p.iter().any(|m| m.contains("cannot read secret_file")), "{p:?}");
}

#[test]
fn a_short_webhook_secret_is_refused() {
    let p = webhook_problems(&hook("secret = \"tooshort\"\n"));
    assert!(p.iter().any(|m| m.contains("shorter than 16 bytes")), "{p:?}");
    assert!(!p.iter().any(|m| m.contains("tooshort")), "{p:?}");
}

#[test]
fn a_bad_webhook_url_is_refused_without_being_echoed() {
    for url in [
        "ftp://hooks.example.com/x",
        "not a url tok3n",
        "https://",
        "unix:/run/tok3n",
    ] {
        let p = webhook_problems(&format!(
            "[webhooks.ops]\nurl = {url:?}\nsecret = \"{HOOK_SECRET}\"\n"
        ));
        assert!(
            p.iter()
                .any(|m| m.contains("webhooks.ops.url is not an http(s) URL")),
            "{url}: {p:?}"
        );
        assert!(!p.iter().any(|m| m.contains("tok3n")), "{url}: {p:?}");
    }
    let p = webhook_problems(&format!(
        "[webhooks.ops]\nurl = \"https://u:pw@hooks.example.com/\"\nsecret = \"{HOOK_SECRET}\"\n"
    ));
    assert!(p.iter().any(|m| m.contains("user name or password")), "{p:?}");
}

#[test]
fn plain_http_webhooks_are_refused_in_production_except_to_loopback() {
    let prod = "mode = \"production\"\npublic_url = \"https://airlock.example.com\"\n";
    for (url, ok) in [
        ("http://hooks.example.com/x", false),
        ("https://hooks.example.com/x", true),
        ("http://127.0.0.1:9000/x", true),
        ("http://localhost:9000/x", true),
        ("http://[::1]:9000/x", true),
    ] {
        let p = webhook_problems(&format!(
            "{prod}[webhooks.ops]\nurl = {url:?}\nsecret = \"{HOOK_SECRET}\"\n"
        ));
        assert_eq!(p.is_empty(), ok, "{url}: {p:?}");
    }
    // Development mode allows plain http anywhere.
    assert!(
        load_with(&format!(
            "[webhooks.ops]\nurl = \"http://hooks.example.com/x\"\nsecret = \"{HOOK_SECRET}\"\n"
        ))
        .is_ok()
    );
}

#[test]
fn unknown_webhook_events_and_bad_timings_are_refused() {
    let p = webhook_problems(&hook(&format!(
        "secret = \"{HOOK_SECRET}\"\nevents = [\"escalation.created\", \"escalation.approved\"]\nmax_attempts = 11\ntimeout = \"0s\"\nretry_base = \"10m\"\n"
    )));
    assert!(
        p.iter()
            .any(|m| m.contains("unknown event \"escalation.approved\"")),
        "{p:?}"
    );
    assert!(p.iter().any(|m| m.contains("max_attempts is 11")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("webhooks.ops.timeout")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("webhooks.ops.retry_base")), "{p:?}");
    let p = webhook_problems(&hook(&format!("secret = \"{HOOK_SECRET}\"\nevents = []\n")));
    assert!(p.iter().any(|m| m.contains("events is empty")), "{p:?}");
    let p = webhook_problems(&hook(&format!("secret = \"{HOOK_SECRET}\"\nmax_attempts = 0\n")));
    assert!(p.iter().any(|m| m.contains("max_attempts is 0")), "{p:?}");
}

#[test]
fn webhook_names_are_checked() {
    let p = webhook_problems(&format!(
        "[webhooks.Ops_Team]\nurl = \"https://hooks.example.com/\"\nsecret = \"{HOOK_SECRET}\"\n"
    ));
    assert!(
        p.iter()
            .any(|m| m.contains("webhooks.Ops_Team") && m.contains("webhook names")),
        "{p:?}"
    );
}

#[test]
fn webhook_secrets_and_url_paths_are_redacted() {
    let s = load_with(&hook(&format!("secret = \"{HOOK_SECRET}\"\n"))).unwrap();
    let toml = s.to_redacted_toml();
    let json = s.to_redacted_json().to_string();
    let debug = format!("{s:?}");
    for shown in [&toml, &json, &debug] {
        assert!(!shown.contains(HOOK_SECRET), "{shown}");
        assert!(!shown.contains("tok3n"), "{shown}");
        assert!(shown.contains("hooks.example.com"), "{shown}");
    }
    assert!(toml.contains("secret = \"[redacted]\""), "{toml}");
    assert_eq!(s.to_redacted_json()["webhooks"]["ops"]["secret"], "[redacted]");
    assert_eq!(
        s.to_redacted_json()["webhooks"]["ops"]["url"],
        "https://hooks.example.com/…"
    );
    assert_eq!(
        redact_webhook_url("http://127.0.0.1:9000/a?token=x"),
        "http://127.0.0.1:9000/…"
    );
    assert_eq!(redact_webhook_url("nonsense tok3n"), "[redacted]");
}

#[test]
#[allow(clippy::result_large_err)]
fn webhooks_can_be_configured_from_environment_variables() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("AIRLOCK_WEBHOOKS__OPS__URL", "https://hooks.example.com/x");
        jail.set_env("AIRLOCK_WEBHOOKS__OPS__SECRET", HOOK_SECRET);
        jail.set_env("AIRLOCK_WEBHOOKS__OPS__MAX_ATTEMPTS", "3");
        let s = Settings::load(&Sources {
            file: None,
            env: true,
        })
        .unwrap();
        assert_eq!(s.webhooks["ops"].max_attempts, 3);
        assert_eq!(
            s.webhooks["ops"].signing_secret().unwrap().expose_secret(),
            HOOK_SECRET
        );
        assert!(
            unexpected_env_vars()
                .iter()
                .all(|v| !v.starts_with("AIRLOCK_WEBHOOKS"))
        );
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn environment_variables_override_files() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("AIRLOCK_ENVIRONMENTS__PROD__MAX_TTL", "10m");
        jail.set_env("AIRLOCK_LISTEN", "127.0.0.1:9999");
        jail.set_env("AIRLOCK_TOKEN", "not config");
        let s = Settings::load(&Sources {
            file: None,
            env: true,
        })
        .unwrap();
        assert_eq!(s.environments["prod"].max_ttl, Duration::from_secs(600));
        assert_eq!(s.listen, "127.0.0.1:9999");
        Ok(())
    });
}
