//! DESIGN.md invariant 2, bound agents: a nonprod agent can never get a prod-tier token,
//! with or without any grant. Every path we could think of, on SQLite and PostgreSQL:
//!
//! - client credentials at `/envs/prod/token`, with Basic and with body authentication,
//!   every kind of scope (none, ordinary, destructive), and mixed-up credentials;
//! - path tricks that might land on the prod endpoint or confuse the environment;
//! - token exchange at prod with the agent's own staging token (as subject and as actor),
//!   and the refresh-token, device-code and other grant types with its token or secret;
//! - `POST /v1/escalations` for prod with its token (refused, `cross_environment_attempt`
//!   audited), and decisions on other people's requests;
//! - a prod grant of a *person* (bob, approved, stepped up, using it);
//! - a grant for the agent in prod written straight into the store (defense in depth: the
//!   token endpoint must still refuse, because the agent authenticates only at its own
//!   environment);
//! - the agent's staging token presented to prod: introspection, and verification with
//!   prod's JWKS (key, issuer and audience each fail on their own), and forged variants;
//! - the `/v1` endpoints that only a person's session may use.
//!
//! Each attempt must end without a token, and the audit trail must show no `token.issued`
//! in prod for the agent.

use airlock::domain::{
    self, Approval, Escalation, EscalationState, Grant, NewAuditEvent, Outcome, RequesterKind,
};
use airlock::store::{EscalationFilter, GrantFilter};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::decode_header;
use jsonwebtoken::jwk::JwkSet;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both_backends;
use crate::support::*;

const PROD_AUDIENCE: &str = "airlock:prod";

/// Scope parameters tried at prod: none, ordinary, destructive, mixed, not allowed,
/// unknown.
const SCOPES: &[Option<&str>] = &[
    None,
    Some("db:read"),
    Some("db:write"),
    Some("db:read db:write"),
    Some("db:migrate"),
    Some("db:drop"),
    Some("volume:delete"),
    Some("db:read db:drop"),
    Some("prod:admin"),
];

/// The cast: two nonprod agents (the subjects), a prod agent (a resource server of prod,
/// and a source of mixed-up credentials), a staging resource server.
struct Cast {
    staging: TestAgent,
    dev: TestAgent,
    prod: TestAgent,
    staging_rs: TestAgent,
}

async fn cast(app: &TestApp) -> Cast {
    Cast {
        staging: app
            .create_agent("staging", "worker", &["db:read", "db:write", "db:drop"])
            .await,
        dev: app.create_agent("dev", "worker", &["db:read", "db:write"]).await,
        prod: app.create_agent("prod", "api", &["db:read", "db:write"]).await,
        staging_rs: app.create_agent("staging", "api", &["db:read"]).await,
    }
}

impl Cast {
    fn nonprod(&self) -> [(&'static str, &TestAgent); 2] {
        [("staging", &self.staging), ("dev", &self.dev)]
    }
}

/// How a client authenticates at a token endpoint.
#[derive(Clone, Copy)]
enum ClientAuth<'a> {
    None,
    Basic(&'a str, &'a str),
    Post(&'a str, &'a str),
}

impl ClientAuth<'_> {
    /// For messages: the method, never the secret.
    fn method(&self) -> &'static str {
        match self {
            ClientAuth::None => "no client authentication",
            ClientAuth::Basic(..) => "client_secret_basic",
            ClientAuth::Post(..) => "client_secret_post",
        }
    }
}

/// One attempt at a token endpoint: what it is, how the client authenticates, the form.
type Attempt<'a> = (&'a str, ClientAuth<'a>, Vec<(&'a str, &'a str)>);

/// `POST path` with a form body and a client authentication method.
async fn form(
    app: &TestApp,
    path: &str,
    auth: ClientAuth<'_>,
    params: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut body: Vec<(&str, &str)> = params.to_vec();
    let mut req = app.client.post(app.url(path));
    match auth {
        ClientAuth::None => {}
        ClientAuth::Basic(id, secret) => req = req.basic_auth(id, Some(secret)),
        ClientAuth::Post(id, secret) => {
            body.push(("client_id", id));
            body.push(("client_secret", secret));
        }
    }
    status_json(req.form(&body).send().await.expect("request sent")).await
}

/// Whatever the answer, it carries no token of a prod-tier environment; and unless the
/// caller says a success is possible, it is not a success at all.
#[track_caller]
fn assert_no_prod_token(label: &str, status: StatusCode, body: &Value, may_succeed: bool) {
    if let Some(t) = body.get("access_token").and_then(Value::as_str) {
        let c = claims(t);
        assert_ne!(c["aud"], PROD_AUDIENCE, "{label}: a prod token was issued: {c}");
        assert_ne!(c["env"], "prod", "{label}: a prod token was issued: {c}");
        assert!(
            !c["iss"].as_str().unwrap_or_default().ends_with("/envs/prod"),
            "{label}: a prod token was issued: {c}"
        );
    }
    if !may_succeed {
        assert!(
            !status.is_success(),
            "{label}: expected a refusal, got {status}: {body}"
        );
        assert!(
            body.get("access_token").is_none(),
            "{label}: no token on a refusal: {body}"
        );
    }
}

/// How many `cross_environment_attempt` events name `client_id` in `env`.
async fn cross_env_attempts(app: &TestApp, env: &str, client_id: &str) -> usize {
    all_events(app)
        .await
        .iter()
        .filter(|e| {
            e.kind == "cross_environment_attempt"
                && e.environment.as_deref() == Some(env)
                && e.subject.as_deref() == Some(client_id)
        })
        .count()
}

/// The audit trail shows no token issued in prod to any nonprod agent: none naming the
/// given agents, and every `token.issued` in prod by an agent is by a prod-bound one.
async fn assert_no_prod_issuance(app: &TestApp, cast: &Cast) {
    for e in all_events(app).await {
        if e.kind != "token.issued" || e.environment.as_deref() != Some("prod") {
            continue;
        }
        for (env, agent) in cast.nonprod() {
            let cid = agent.client_id.as_str();
            assert!(
                e.subject.as_deref() != Some(cid) && e.actor != format!("agent:{cid}"),
                "a prod token was issued to the {env} agent: {e:?}"
            );
        }
        if let Some(cid) = e.actor.strip_prefix("agent:") {
            let agent = app.store().agent_by_client_id(cid).await.expect("agent");
            assert_eq!(agent.environment, "prod", "prod token to a nonprod agent: {e:?}");
        }
    }
    // And the agents are where they were registered.
    for (env, agent) in cast.nonprod() {
        let stored = app.store().agent_by_client_id(&agent.client_id).await.unwrap();
        assert_eq!(stored.environment, env);
    }
}

/// Every client-credentials attempt at prod an agent could make with its own (valid)
/// credentials, and some with mixed-up ones. Each is `invalid_client`; each one made with
/// the agent's real credentials is audited as a `cross_environment_attempt` in prod.
async fn client_credentials_battery(app: &TestApp, cast: &Cast, label: &str) {
    for (env, agent) in cast.nonprod() {
        let id = agent.client_id.as_str();
        let secret = agent.secret.expose_secret();
        let before = cross_env_attempts(app, "prod", id).await;
        let mut real_attempts = 0;
        for scope in SCOPES {
            for auth in [ClientAuth::Basic(id, secret), ClientAuth::Post(id, secret)] {
                let mut params = vec![("grant_type", "client_credentials")];
                if let Some(s) = scope {
                    params.push(("scope", s));
                }
                let (status, body) = form(app, "/envs/prod/token", auth, &params).await;
                let what = format!("{label}: {env} agent, {}, scope {scope:?}", auth.method());
                assert_no_prod_token(&what, status, &body, false);
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
                assert_eq!(body["error"], "invalid_client", "{what}: {body}");
                real_attempts += 1;
            }
        }
        // Basic, with the same client_id repeated in the body (RFC 6749 allows it).
        let (status, body) = form(
            app,
            "/envs/prod/token",
            ClientAuth::Basic(id, secret),
            &[("grant_type", "client_credentials"), ("client_id", id)],
        )
        .await;
        assert_no_prod_token(&format!("{label}: basic + body id"), status, &body, false);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        real_attempts += 1;
        assert_eq!(
            cross_env_attempts(app, "prod", id).await - before,
            real_attempts,
            "{label}: every cross-environment use of the {env} agent's credentials is audited"
        );

        // Mixed-up credentials: the prod agent's id with this agent's secret, this id
        // with another case, with whitespace, or with the prod agent's id in the body.
        let prod_id = cast.prod.client_id.as_str();
        let upper = id.to_uppercase();
        let spaced = format!(" {id}");
        let mixed: Vec<Attempt<'_>> = vec![
            (
                "prod id, nonprod secret",
                ClientAuth::Basic(prod_id, secret),
                vec![],
            ),
            (
                "prod id, nonprod secret (post)",
                ClientAuth::Post(prod_id, secret),
                vec![],
            ),
            ("upper-case id", ClientAuth::Basic(&upper, secret), vec![]),
            ("spaced id", ClientAuth::Post(&spaced, secret), vec![]),
            (
                "basic with a disagreeing body id",
                ClientAuth::Basic(id, secret),
                vec![("client_id", prod_id)],
            ),
            (
                "both authentication methods",
                ClientAuth::Basic(id, secret),
                vec![("client_secret", secret)],
            ),
            ("no authentication", ClientAuth::None, vec![("client_id", id)]),
        ];
        for (what, auth, extra) in mixed {
            let mut params = vec![("grant_type", "client_credentials"), ("scope", "db:read")];
            params.extend(extra);
            let (status, body) = form(app, "/envs/prod/token", auth, &params).await;
            assert_no_prod_token(&format!("{label}: {env} agent, {what}"), status, &body, false);
        }

        // Paths that might reach prod, or confuse which environment is meant. Only the
        // agent's own environment may answer with a token, and then one of that
        // environment.
        let paths = [
            "/envs/PROD/token".to_string(),
            "/envs/Prod/token".to_string(),
            "/envs/prod/token/".to_string(),
            "/envs//prod/token".to_string(),
            "/envs/prod%2F/token".to_string(),
            "/envs/prod%00/token".to_string(),
            format!("/envs/{env}/../prod/token"),
            format!("/envs/{env}%2F..%2Fprod/token"),
            format!("/envs/{env}/token?env=prod"),
            format!("/envs/{env}/token?aud={PROD_AUDIENCE}"),
        ];
        for path in paths {
            for auth in [ClientAuth::Basic(id, secret), ClientAuth::Post(id, secret)] {
                let (status, body) = form(
                    app,
                    &path,
                    auth,
                    &[
                        ("grant_type", "client_credentials"),
                        ("scope", "db:read"),
                        ("audience", PROD_AUDIENCE),
                        ("resource", "http://prod.example/"),
                    ],
                )
                .await;
                let what = format!("{label}: {env} agent at {path}");
                assert_no_prod_token(&what, status, &body, true);
                if let Some(t) = body.get("access_token").and_then(Value::as_str) {
                    let c = claims(t);
                    assert_eq!(c["env"], env, "{what}: {c}");
                    assert_eq!(c["aud"], format!("airlock:{env}"), "{what}: {c}");
                }
            }
        }
    }
    assert_no_prod_issuance(app, cast).await;
}

// ---------------------------------------------------------------------------------------
// Client credentials
// ---------------------------------------------------------------------------------------

async fn client_credentials_at_prod_never_yield_a_token(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cast = cast(&app).await;
    // The prod agent itself gets a prod token: the endpoint works, it is the binding
    // that refuses the others.
    let t = access_token(&app, "prod", &cast.prod, "db:read").await;
    assert_eq!(claims(&t)["aud"], PROD_AUDIENCE);
    client_credentials_battery(&app, &cast, "no grants at all").await;
}

// ---------------------------------------------------------------------------------------
// Grants: the agent's own, a person's prod grant, a forged prod grant for the agent
// ---------------------------------------------------------------------------------------

/// A grant written straight into the store, as if approved: holder `holder`, in `env`.
async fn forge_grant(
    app: &TestApp,
    approver: &Person,
    holder: &str,
    requester: &str,
    env: &str,
    scopes: &[&str],
) -> Uuid {
    let at = domain::now();
    let e = Escalation {
        id: Uuid::new_v4(),
        environment: env.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        duration_secs: 1800,
        reason: "forged for the invariant 2 test".into(),
        requester_kind: RequesterKind::Agent,
        requester: requester.into(),
        requester_user_id: None,
        sponsor: None,
        sponsor_user_id: None,
        holder: holder.into(),
        holder_actor: None,
        quorum: 1,
        state: EscalationState::Approved,
        created_at: at - time::Duration::seconds(5),
        expires_at: at + time::Duration::hours(1),
        decided_at: Some(at - time::Duration::seconds(1)),
        decided_by: Some(approver.name().to_string()),
        decision_reason: None,
        approvals: vec![Approval {
            approver_id: approver.user.id,
            approver: approver.name().to_string(),
            approved_at: at - time::Duration::seconds(1),
        }],
    };
    let g = Grant {
        id: Uuid::new_v4(),
        escalation_id: e.id,
        environment: env.into(),
        scopes: e.scopes.clone(),
        holder: holder.into(),
        holder_actor: None,
        starts_at: at - time::Duration::seconds(1),
        ends_at: at + time::Duration::minutes(30),
        session_id: None,
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
    };
    let event = NewAuditEvent::new("escalation.requested", "test:forgery", Outcome::Success)
        .env(env)
        .subject(e.id.to_string());
    app.store()
        .create_escalation(&e, Some(&g), vec![event])
        .await
        .expect("forged grant stored");
    let stored = app.store().grant(g.id).await.expect("forged grant readable");
    assert!(stored.is_active(domain::now()), "the forged grant is active");
    g.id
}

async fn no_grant_carries_a_nonprod_agent_into_prod(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cast = cast(&app).await;
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let mut dave = person_with_totp(&app, "dave", &["approver"]).await;

    // 1. The staging agent's own destructive grant, approved by carol: it works in
    //    staging (the endpoint and the grant are real) and nowhere else.
    let bearer = access_token(&app, "staging", &cast.staging, "db:read").await;
    let id = request_ok(&app, &bearer, "staging", &["db:drop", "db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{body}"
    );
    let staging_grant = body["grant"]["id"].as_str().unwrap().to_string();
    let dropper = access_token(&app, "staging", &cast.staging, "db:drop").await;
    let c = claims(&dropper);
    assert_eq!(
        (c["aud"].as_str(), c["grant"].as_str()),
        (Some("airlock:staging"), Some(staging_grant.as_str()))
    );
    client_credentials_battery(&app, &cast, "with the agent's own staging grant").await;

    // 2. bob's prod grant, approved by dave, bound to bob's session and in use.
    let id = request_ok(
        &app,
        &bob.token,
        "prod",
        &["db:read", "db:write", "db:drop"],
        "30m",
    )
    .await;
    let (status, body) = approve(&app, &mut dave, &id).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{body}"
    );
    step_up(&app, &mut bob).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:read db:drop"), None).await;
    assert_eq!(status, StatusCode::OK, "bob's prod grant works: {body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["aud"],
        PROD_AUDIENCE
    );
    client_credentials_battery(&app, &cast, "with a person's prod grant").await;

    // 3. Grants for the nonprod agents in prod, forged straight into the store (as if a
    //    bug or an operator had written them). The token endpoint still refuses: the
    //    agent authenticates only at its own environment.
    let all = ["db:read", "db:write", "db:migrate", "db:drop", "volume:delete"];
    for (_, agent) in cast.nonprod() {
        let holder = domain::agent_holder(&agent.client_id);
        forge_grant(&app, &carol, &holder, &agent.client_id, "prod", &all).await;
    }
    client_credentials_battery(&app, &cast, "with forged prod grants for the agents").await;

    // The forged grants are there, and still nothing was issued under them.
    let grants = app
        .store()
        .grants(&GrantFilter {
            holder: None,
            environment: Some("prod".into()),
            active_at: Some(domain::now()),
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(grants.len(), 3, "bob's and the two forged ones");
    for e in all_events(&app).await {
        if e.kind == "token.issued"
            && let Some(g) = e.details.get("grant").and_then(Value::as_str)
        {
            let g = app.store().grant(g.parse().unwrap()).await.unwrap();
            assert!(
                !g.holder.starts_with("agent:") || g.environment != "prod",
                "a token was minted under a forged prod grant: {e:?}"
            );
        }
    }
    assert_no_prod_issuance(&app, &cast).await;
}

// ---------------------------------------------------------------------------------------
// Other grant types
// ---------------------------------------------------------------------------------------

async fn exchange_refresh_and_device_grants_refuse_agent_credentials(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cast = cast(&app).await;
    for (env, agent) in cast.nonprod() {
        let id = agent.client_id.as_str();
        let secret = agent.secret.expose_secret();
        let own = access_token(&app, env, agent, "db:read").await;
        let own = own.as_str();
        let label = |what: &str| format!("{env} agent: {what}");

        // RFC 8693 at prod (and at its own environment): the agent's token is not a
        // person's session, whatever it is presented as.
        for at in ["prod", env] {
            let path = format!("/envs/{at}/token");
            let attempts: Vec<Attempt<'_>> = vec![
                (
                    "its token as subject",
                    ClientAuth::None,
                    vec![
                        ("grant_type", EXCHANGE),
                        ("subject_token", own),
                        ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ],
                ),
                (
                    "its token as subject and actor",
                    ClientAuth::None,
                    vec![
                        ("grant_type", EXCHANGE),
                        ("subject_token", own),
                        ("subject_token_type", ACCESS_TOKEN_TYPE),
                        ("actor_token", own),
                        ("actor_token_type", PROCESS_TYPE),
                    ],
                ),
                (
                    "its token as an access-token actor",
                    ClientAuth::None,
                    vec![
                        ("grant_type", EXCHANGE),
                        ("subject_token", own),
                        ("subject_token_type", ACCESS_TOKEN_TYPE),
                        ("actor_token", own),
                        ("actor_token_type", ACCESS_TOKEN_TYPE),
                    ],
                ),
                (
                    "its token as a JWT subject",
                    ClientAuth::None,
                    vec![
                        ("grant_type", EXCHANGE),
                        ("subject_token", own),
                        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
                    ],
                ),
                (
                    "its secret as subject",
                    ClientAuth::None,
                    vec![
                        ("grant_type", EXCHANGE),
                        ("subject_token", secret),
                        ("subject_token_type", ACCESS_TOKEN_TYPE),
                    ],
                ),
                (
                    "its token as subject, with client authentication",
                    ClientAuth::Basic(id, secret),
                    vec![
                        ("grant_type", EXCHANGE),
                        ("subject_token", own),
                        ("subject_token_type", ACCESS_TOKEN_TYPE),
                        ("scope", "db:read"),
                    ],
                ),
                (
                    "its token as subject, with body authentication",
                    ClientAuth::Post(id, secret),
                    vec![
                        ("grant_type", EXCHANGE),
                        ("subject_token", own),
                        ("subject_token_type", ACCESS_TOKEN_TYPE),
                        ("audience", PROD_AUDIENCE),
                    ],
                ),
                (
                    "refresh_token = its token",
                    ClientAuth::Basic(id, secret),
                    vec![("grant_type", "refresh_token"), ("refresh_token", own)],
                ),
                (
                    "refresh_token = its secret",
                    ClientAuth::Post(id, secret),
                    vec![("grant_type", "refresh_token"), ("refresh_token", secret)],
                ),
                (
                    "device_code = its secret",
                    ClientAuth::Basic(id, secret),
                    vec![("grant_type", DEVICE_GRANT), ("device_code", secret)],
                ),
                (
                    "jwt-bearer assertion = its token",
                    ClientAuth::None,
                    vec![
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", own),
                    ],
                ),
                (
                    "password grant with its credentials",
                    ClientAuth::None,
                    vec![("grant_type", "password"), ("username", id), ("password", secret)],
                ),
                (
                    "authorization_code = its token",
                    ClientAuth::Basic(id, secret),
                    vec![("grant_type", "authorization_code"), ("code", own)],
                ),
            ];
            for (what, auth, params) in attempts {
                let (status, body) = form(&app, &path, auth, &params).await;
                assert_no_prod_token(&label(&format!("{what} at {at}")), status, &body, false);
                assert!(status.is_client_error(), "{}: {status} {body}", label(what));
            }
        }

        // Airlock's own token endpoint (device and refresh grants for people's sessions).
        let attempts: Vec<(&str, Vec<(&str, &str)>)> = vec![
            (
                "refresh as itself",
                vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", id),
                    ("refresh_token", secret),
                ],
            ),
            (
                "refresh as the CLI with its secret",
                vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", "airlock-cli"),
                    ("refresh_token", secret),
                ],
            ),
            (
                "refresh as the CLI with its token",
                vec![
                    ("grant_type", "refresh_token"),
                    ("client_id", "airlock-cli"),
                    ("refresh_token", own),
                ],
            ),
            (
                "device code as itself",
                vec![
                    ("grant_type", DEVICE_GRANT),
                    ("client_id", id),
                    ("device_code", secret),
                ],
            ),
            (
                "device code as the CLI with its secret",
                vec![
                    ("grant_type", DEVICE_GRANT),
                    ("client_id", "airlock-cli"),
                    ("device_code", secret),
                ],
            ),
            (
                "client credentials at the broker",
                vec![
                    ("grant_type", "client_credentials"),
                    ("client_id", id),
                    ("client_secret", secret),
                ],
            ),
            (
                "exchange at the broker",
                vec![
                    ("grant_type", EXCHANGE),
                    ("client_id", "airlock-cli"),
                    ("subject_token", own),
                    ("subject_token_type", ACCESS_TOKEN_TYPE),
                ],
            ),
        ];
        for (what, params) in attempts {
            let (status, body) = form(&app, "/oauth/token", ClientAuth::None, &params).await;
            assert_no_prod_token(&label(what), status, &body, false);
            assert!(status.is_client_error(), "{}: {status} {body}", label(what));
        }
        let (status, body) = form(
            &app,
            "/oauth/device_authorization",
            ClientAuth::None,
            &[("client_id", id)],
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{}: {body}",
            label("device authorization")
        );
    }
    assert_no_prod_issuance(&app, &cast).await;
}

// ---------------------------------------------------------------------------------------
// Escalation requests and decisions
// ---------------------------------------------------------------------------------------

async fn prod_escalations_by_nonprod_agents_are_refused_and_recorded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cast = cast(&app).await;
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let mut dave = person_with_totp(&app, "dave", &["approver"]).await;
    let mut erin = person_with_totp(&app, "erin", &["approver"]).await;
    let proc_token = {
        let (status, body) = exchange(&app, "staging", &bob.token, Some("db:read"), Some("deploy-bot")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    };

    // bob's pending prod request, which the agents will try to decide.
    let bobs = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;

    let mut bearers: Vec<(String, String, Option<String>)> = Vec::new(); // (label, token, client id)
    for (env, agent) in cast.nonprod() {
        let t = access_token(&app, env, agent, "db:read").await;
        bearers.push((format!("{env} agent"), t, Some(agent.client_id.clone())));
    }
    bearers.push(("bob's staging process".into(), proc_token, None));

    for (label, bearer, cid) in &bearers {
        for scopes in [
            &["db:read"][..],
            &["db:drop"],
            &["db:read", "db:write"],
            &["volume:delete"],
        ] {
            let before = all_events(&app)
                .await
                .iter()
                .filter(|e| e.kind == "cross_environment_attempt" && e.environment.as_deref() == Some("prod"))
                .count();
            let (status, body) = request(
                &app,
                bearer,
                "prod",
                scopes,
                "30m",
                "run migration 0042 (TICKET-118)",
            )
            .await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{label} asks for prod {scopes:?}: {body}"
            );
            let after: Vec<NewAuditEvent> = all_events(&app)
                .await
                .into_iter()
                .filter(|e| e.kind == "cross_environment_attempt" && e.environment.as_deref() == Some("prod"))
                .collect();
            assert_eq!(after.len(), before + 1, "{label}: the attempt is recorded");
            let e = after.last().unwrap();
            assert_eq!(e.outcome, Outcome::Refused);
            assert_eq!(e.details["reason"], "cross_environment_attempt", "{e:?}");
            if let Some(cid) = cid {
                assert_eq!(e.actor, format!("agent:{cid}"), "{e:?}");
            }
        }
        // Spelling the environment differently finds no other door.
        for env in ["PROD", "Prod", "prod ", " prod", "prod\u{0}", "envs/prod"] {
            let (status, body) = request(
                &app,
                bearer,
                env,
                &["db:read"],
                "30m",
                "run migration 0042 (TICKET-118)",
            )
            .await;
            assert!(
                status == StatusCode::NOT_FOUND
                    || status == StatusCode::FORBIDDEN
                    || status == StatusCode::BAD_REQUEST,
                "{label} asks for {env:?}: {status} {body}"
            );
        }
        // It cannot decide, see or cancel bob's request.
        let (status, body) = post(
            &app,
            &format!("/v1/escalations/{bobs}/approve"),
            bearer,
            json!({ "totp": "123456" }),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{label} approves: {body}");
        let (status, body) = post(
            &app,
            &format!("/v1/escalations/{bobs}/deny"),
            bearer,
            json!({ "reason": "no" }),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{label} denies: {body}");
        let (status, _) = show(&app, bearer, &bobs, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{label} reads bob's request");
        let (status, _) = cancel(&app, bearer, &bobs).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{label} cancels bob's request");
    }
    // No request for prod by any of them was stored.
    let stored = app
        .store()
        .escalations(&EscalationFilter {
            state: None,
            environment: Some("prod".into()),
            holder: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "only bob's: {stored:?}");
    assert_eq!(stored[0].requester, "bob");

    // People approve everything there is: bob's prod request, and the agents' requests
    // in their own environments.
    let mut own_requests = Vec::new();
    for (env, agent) in cast.nonprod() {
        let t = access_token(&app, env, agent, "db:read").await;
        own_requests.push(request_ok(&app, &t, env, &["db:read", "db:write"], "30m").await);
    }
    let (status, body) = approve(&app, &mut carol, &bobs).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{body}"
    );
    let bobs_grant = body["grant"]["id"].as_str().unwrap().to_string();
    for (i, id) in own_requests.iter().enumerate() {
        // One approval each: a person has one spare TOTP code right after signing in.
        let approver = if i == 0 { &mut dave } else { &mut erin };
        let (status, body) = approve(&app, approver, id).await;
        assert_eq!(
            (status, body["state"].as_str()),
            (StatusCode::OK, Some("approved")),
            "{body}"
        );
        assert_ne!(body["grant"]["environment"], "prod", "{body}");
    }
    // The agents see none of bob's grant and cannot revoke it.
    for (label, bearer, _) in &bearers {
        let (status, body) = get(&app, "/v1/grants", bearer).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for g in body["grants"].as_array().into_iter().flatten() {
            assert_ne!(g["environment"], "prod", "{label} sees a prod grant: {g}");
        }
        let (status, body) = post(
            &app,
            &format!("/v1/grants/{bobs_grant}/revoke"),
            bearer,
            json!({ "reason": "mine now" }),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{label} revokes bob's grant: {body}"
        );
    }
    // bob steps up and uses his grant; the agents still get nothing in prod.
    step_up(&app, &mut bob).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    client_credentials_battery(&app, &cast, "after every request was approved").await;
}

// ---------------------------------------------------------------------------------------
// The staging token at prod
// ---------------------------------------------------------------------------------------

/// Verify as a resource server would ([`validate`]), telling a key missing from `keys`
/// (`no key ...`) from the other failures (the error kind).
fn verify(token: &str, keys: &JwkSet, iss: &str, aud: &str) -> Result<Value, String> {
    let header = decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.unwrap_or_default();
    keys.find(&kid).ok_or_else(|| format!("no key {kid}"))?;
    validate(token, keys, iss, aud).map_err(|e| format!("{:?}", e.kind()))
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

async fn a_nonprod_token_is_worthless_at_prod(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cast = cast(&app).await;
    let prod_keys = jwks(&app, "prod").await;
    let prod_iss = app.url("/envs/prod");
    let prod_kid = prod_keys.keys[0].common.key_id.clone().expect("kid");
    for (env, agent) in cast.nonprod() {
        let own_keys = jwks(&app, env).await;
        let own_iss = app.url(&format!("/envs/{env}"));
        let own_aud = format!("airlock:{env}");
        let t = access_token(&app, env, agent, "db:read db:write").await;
        // It is a good token where it belongs.
        verify(&t, &own_keys, &own_iss, &own_aud).expect("valid in its own environment");

        // Prod's resource server asks prod: not active.
        let (status, body) = introspect(&app, "prod", &cast.prod, &t).await;
        assert_eq!(
            (status, &body),
            (StatusCode::OK, &json!({ "active": false })),
            "{env}"
        );
        // The agent cannot even ask prod (its credentials are not prod's).
        let (status, body) = introspect(&app, "prod", agent, &t).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "invalid_client");

        // Three independent checks each refuse it at prod.
        let key = verify(&t, &prod_keys, &prod_iss, PROD_AUDIENCE).unwrap_err();
        assert!(key.starts_with("no key"), "key check: {key}");
        let iss = verify(&t, &own_keys, &prod_iss, &own_aud).unwrap_err();
        assert!(iss.contains("InvalidIssuer"), "issuer check: {iss}");
        let aud = verify(&t, &own_keys, &own_iss, PROD_AUDIENCE).unwrap_err();
        assert!(aud.contains("InvalidAudience"), "audience check: {aud}");
        // Relabelled with prod's kid, the signature fails.
        let parts: Vec<&str> = t.split('.').collect();
        let mut header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        header["kid"] = json!(prod_kid);
        let relabelled = format!("{}.{}.{}", b64(&header), parts[1], parts[2]);
        let sig = verify(&relabelled, &prod_keys, &own_iss, &own_aud).unwrap_err();
        assert!(sig.contains("InvalidSignature"), "signature check: {sig}");
        // Relabelled and with prod's claims: still a bad signature, and prod says inactive.
        let mut c = claims(&t);
        c["iss"] = json!(prod_iss);
        c["aud"] = json!(PROD_AUDIENCE);
        c["env"] = json!("prod");
        let forged = format!("{}.{}.{}", b64(&header), b64(&c), parts[2]);
        let sig = verify(&forged, &prod_keys, &prod_iss, PROD_AUDIENCE).unwrap_err();
        assert!(sig.contains("InvalidSignature"), "signature check: {sig}");
        let (_, body) = introspect(&app, "prod", &cast.prod, &forged).await;
        assert_eq!(body, json!({ "active": false }), "forged prod claims");
        // An unsigned token with prod's claims.
        let none = format!(
            "{}.{}.",
            b64(&json!({ "alg": "none", "typ": "at+jwt", "kid": prod_kid })),
            b64(&c)
        );
        let (_, body) = introspect(&app, "prod", &cast.prod, &none).await;
        assert_eq!(body, json!({ "active": false }), "alg none");
        for bad in [&forged, &none] {
            let (status, body) = request(
                &app,
                bad,
                "prod",
                &["db:read"],
                "30m",
                "run migration 0042 (TICKET-118)",
            )
            .await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "a forged token at /v1/escalations: {body}"
            );
        }
        // And the genuine staging token is still active at its own environment.
        if env == "staging" {
            let (_, body) = introspect(&app, "staging", &cast.staging_rs, &t).await;
            assert_eq!(body["active"], true, "{body}");
        }
    }
    assert_no_prod_issuance(&app, &cast).await;
}

// ---------------------------------------------------------------------------------------
// /v1 endpoints
// ---------------------------------------------------------------------------------------

async fn session_only_endpoints_refuse_environment_tokens(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cast = cast(&app).await;
    for (env, agent) in cast.nonprod() {
        let t = access_token(&app, env, agent, "db:read").await;
        let cid = agent.client_id.as_str();
        let new_agent = json!({ "name": "sneaky", "environment": "prod", "scopes": ["db:read", "db:write"] });
        let attempts: Vec<(&str, reqwest::Method, String, Option<Value>)> = vec![
            ("me", reqwest::Method::GET, "/v1/me".into(), None),
            (
                "step-up",
                reqwest::Method::POST,
                "/v1/me/step-up".into(),
                Some(json!({ "code": "123456" })),
            ),
            (
                "totp",
                reqwest::Method::POST,
                "/v1/me/totp".into(),
                Some(json!({ "password": "x" })),
            ),
            (
                "end session",
                reqwest::Method::DELETE,
                "/v1/sessions/current".into(),
                None,
            ),
            (
                "register a prod agent",
                reqwest::Method::POST,
                "/v1/agents".into(),
                Some(new_agent),
            ),
            ("list agents", reqwest::Method::GET, "/v1/agents".into(), None),
            (
                "show itself",
                reqwest::Method::GET,
                format!("/v1/agents/{cid}"),
                None,
            ),
            (
                "reset itself",
                reqwest::Method::POST,
                format!("/v1/agents/{cid}/reset"),
                Some(json!({})),
            ),
            (
                "enable itself",
                reqwest::Method::POST,
                format!("/v1/agents/{cid}/enable"),
                Some(json!({})),
            ),
            ("list users", reqwest::Method::GET, "/v1/users".into(), None),
            (
                "create a user",
                reqwest::Method::POST,
                "/v1/users".into(),
                Some(json!({ "username": "agentbob", "password": PASSWORD, "roles": ["developer"] })),
            ),
        ];
        for (what, method, path, body) in attempts {
            let mut req = app.client.request(method, app.url(&path)).bearer_auth(&t);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let (status, body) = status_json(req.send().await.unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{env} agent token at {what}: {body}"
            );
        }
        // Nothing changed: no agent in prod, and this one is still bound to its own.
        assert!(
            app.store().agents(Some("prod")).await.unwrap().len() == 1,
            "only the prod api agent"
        );
        let stored = app.store().agent_by_client_id(cid).await.unwrap();
        assert_eq!(stored.environment, env);
        // The grants it sees are its own (none).
        let (status, body) = get(&app, "/v1/grants", &t).await;
        assert_eq!(
            (status, body["grants"].as_array().map(Vec::len)),
            (StatusCode::OK, Some(0)),
            "{body}"
        );
    }
    assert_no_prod_issuance(&app, &cast).await;
}

both_backends!(
    client_credentials_at_prod_never_yield_a_token,
    no_grant_carries_a_nonprod_agent_into_prod,
    exchange_refresh_and_device_grants_refuse_agent_credentials,
    prod_escalations_by_nonprod_agents_are_refused_and_recorded,
    a_nonprod_token_is_worthless_at_prod,
    session_only_endpoints_refuse_environment_tokens,
);
