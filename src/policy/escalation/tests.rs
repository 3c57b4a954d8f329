use super::*;
use crate::config::Sources;

#[test]
fn creations_are_limited_over_a_sliding_window() {
    let t0 = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(10_000);
    let per = Duration::from_secs(60);
    let s = |n: u64| t0 + Duration::from_secs(n);
    // A burst of 10 at once is allowed; the 11th waits for the first to leave.
    let burst: Vec<_> = (0..10).map(|_| s(0)).collect();
    assert_eq!(creation_retry_at(&burst[..9], s(0), 10, per), None);
    assert_eq!(creation_retry_at(&burst, s(0), 10, per), Some(s(60)));
    assert_eq!(creation_retry_at(&burst, s(59), 10, per), Some(s(60)));
    assert_eq!(creation_retry_at(&burst, s(60), 10, per), None);
    // Spread out: the wait is for the oldest that keeps the holder at the limit.
    let spread = [s(50), s(10), s(30), s(40), s(20)];
    assert_eq!(creation_retry_at(&spread, s(55), 3, per), Some(s(90)));
    // More than the limit (the limit was lowered): wait until limit - 1 remain.
    assert_eq!(creation_retry_at(&spread, s(55), 2, per), Some(s(100)));
    // Clock skew between replicas: a creation stamped in the future still counts.
    assert_eq!(creation_retry_at(&[s(70)], s(55), 1, per), Some(s(130)));
}

fn settings() -> Settings {
    Settings::load(&Sources::default()).unwrap()
}

fn person(roles: &[&str]) -> Requester {
    Requester::Person {
        user_id: Uuid::new_v4(),
        username: "bob".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

fn scopes(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

const REASON: &str = "run migration 0042 (TICKET-118)";
const MIN30: Duration = Duration::from_secs(1800);

#[test]
fn format_characters_are_refused_by_the_unicode_table_and_plain_text_of_any_script_passes() {
    // Every Cf code point of a few blocks, not a list chosen to match the code.
    for c in [
        '\u{ad}', '\u{61c}', '\u{180e}', '\u{200b}', '\u{200c}', '\u{200d}', '\u{2060}', '\u{2064}',
    ]
    .into_iter()
    .chain('\u{202a}'..='\u{202e}')
    .chain('\u{2066}'..='\u{206f}')
    .chain([
        '\u{feff}',
        '\u{fff9}',
        '\u{110bd}',
        '\u{1d173}',
        '\u{e0001}',
        '\u{e007f}',
    ]) {
        assert!(has_control_chars(&format!("fix {c}it")), "U+{:04X}", c as u32);
    }
    for plain in [
        "run migration 0042 (OPS-17)",
        "Migration für Kunden – Ticket №42, «urgent»",
        "修复数据库 0042 ✅ 🚀",
        "إصلاح قاعدة البيانات 0042",
        "zero width? no: 0042",
    ] {
        assert!(!has_control_chars(plain), "{plain}");
    }
}

#[test]
fn an_agent_asks_only_in_its_own_environment() {
    let s = settings();
    let agent = Requester::Agent {
        client_id: "agt_x".into(),
        environment: "staging".into(),
    };
    assert!(check_request(&s, &agent, "staging", &scopes(&["db:drop"]), MIN30, REASON).is_ok());
    // Refused as cross-environment even when everything else is wrong too.
    assert_eq!(
        check_request(&s, &agent, "prod", &[], Duration::ZERO, ""),
        Err(RequestRefusal::CrossEnvironment {
            own: "staging".into()
        })
    );
    let delegated = Requester::Delegated {
        user_id: Uuid::new_v4(),
        username: "bob".into(),
        roles: vec!["developer".into()],
        actor: "process:claude".into(),
        environment: "dev".into(),
    };
    assert_eq!(
        check_request(&s, &delegated, "prod", &scopes(&["db:read"]), MIN30, REASON),
        Err(RequestRefusal::CrossEnvironment { own: "dev".into() })
    );
}

#[test]
fn a_person_asks_where_a_role_allows_with_a_reason_and_a_capped_duration() {
    let s = settings();
    let dev = person(&["developer"]);
    let plan = check_request(
        &s,
        &dev,
        "prod",
        &scopes(&["db:write"]),
        Duration::from_secs(86400),
        REASON,
    )
    .unwrap();
    assert_eq!(plan.duration, s.environments["prod"].approval.max_grant_duration);
    assert!(plan.capped && !plan.auto_approve && plan.quorum >= 1);
    assert_eq!(
        check_request(
            &s,
            &person(&["approver"]),
            "prod",
            &scopes(&["db:write"]),
            MIN30,
            REASON
        ),
        Err(RequestRefusal::NotEscalatable)
    );
    for sneaky in [
        "run migration\n0042 now",
        "run migration \u{1b}[5A0042",
        "run \u{202e}0042 migration",
        // Format characters (Cf) hide or join text: zero-width space, zero-width
        // joiner, word joiner, byte-order mark, soft hyphen, Arabic number sign, a
        // language tag; and the line and paragraph separators.
        "run migration\u{200b}0042",
        "run migration\u{200d}0042",
        "run migration\u{2060}0042",
        "\u{feff}run migration 0042",
        "run migra\u{ad}tion 0042",
        "run migration \u{600}0042",
        "run migration 0042\u{e0041}",
        "run migration\u{2028}0042",
        "run migration\u{2029}0042",
    ] {
        assert_eq!(
            check_request(&s, &dev, "prod", &scopes(&["db:write"]), MIN30, sneaky),
            Err(RequestRefusal::ControlCharacters)
        );
    }
    for short in ["", "   fix it   ", "123456789"] {
        assert_eq!(
            check_request(&s, &dev, "prod", &scopes(&["db:write"]), MIN30, short),
            Err(RequestRefusal::ReasonTooShort)
        );
    }
    let long = "x".repeat(MAX_REASON_CHARS + 1);
    assert_eq!(
        check_request(&s, &dev, "prod", &scopes(&["db:write"]), MIN30, &long),
        Err(RequestRefusal::ReasonTooLong)
    );
    assert_eq!(
        check_request(&s, &dev, "prod", &scopes(&["db:nope"]), MIN30, REASON),
        Err(RequestRefusal::UnknownScope("db:nope".into()))
    );
    assert_eq!(
        check_request(&s, &dev, "prod", &scopes(&["db:read", "db:read"]), MIN30, REASON),
        Err(RequestRefusal::BadScopes)
    );
    assert_eq!(
        check_request(
            &s,
            &dev,
            "prod",
            &scopes(&["db:read"]),
            Duration::from_secs(59),
            REASON
        ),
        Err(RequestRefusal::DurationTooShort)
    );
    assert_eq!(
        check_request(&s, &dev, "nowhere", &scopes(&["db:read"]), MIN30, REASON),
        Err(RequestRefusal::UnknownEnvironment)
    );
}

#[test]
fn auto_approval_never_covers_production_or_a_destructive_scope() {
    let mut s = settings();
    for env in s.environments.values_mut() {
        // Bypass config validation on purpose: the policy must hold on its own.
        env.approval.auto_approve = true;
    }
    let dev = person(&["developer"]);
    let read = scopes(&["db:read"]);
    assert!(
        check_request(&s, &dev, "dev", &read, MIN30, REASON)
            .unwrap()
            .auto_approve
    );
    assert!(
        !check_request(&s, &dev, "prod", &read, MIN30, REASON)
            .unwrap()
            .auto_approve
    );
    let drop = scopes(&["db:read", "db:drop"]);
    assert!(
        !check_request(&s, &dev, "dev", &drop, MIN30, REASON)
            .unwrap()
            .auto_approve
    );
}

#[test]
fn a_quorum_counts_distinct_people_and_never_the_sponsor_alone() {
    let (a, b, sponsor) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    assert!(!quorum_reached(1, &[], None));
    assert!(quorum_reached(1, &[a], None));
    assert!(!quorum_reached(2, &[a, a], None), "the same person twice is one");
    assert!(quorum_reached(2, &[a, b], None));
    assert!(
        !quorum_reached(1, &[sponsor], Some(sponsor)),
        "a sponsor is never alone"
    );
    assert!(quorum_reached(1, &[sponsor, a], Some(sponsor)));
    assert!(
        !quorum_reached(2, &[sponsor, a], Some(sponsor)),
        "a sponsor never counts"
    );
    assert!(quorum_reached(2, &[sponsor, a, b], Some(sponsor)));
    assert!(!quorum_reached(0, &[], None), "a quorum of 0 still needs someone");
}

fn escalation(kind: RequesterKind, requester: Option<Uuid>) -> Escalation {
    let at = OffsetDateTime::now_utc();
    Escalation {
        id: Uuid::new_v4(),
        environment: "prod".into(),
        scopes: scopes(&["db:write"]),
        duration_secs: 600,
        reason: REASON.into(),
        requester_kind: kind,
        requester: "bob".into(),
        requester_user_id: requester,
        sponsor: None,
        sponsor_user_id: None,
        holder: "user:x".into(),
        holder_actor: None,
        quorum: 1,
        state: crate::domain::EscalationState::Pending,
        created_at: at,
        expires_at: at,
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        approvals: vec![],
    }
}

#[test]
fn only_an_approver_in_effect_who_did_not_ask_may_decide() {
    let s = settings();
    let bob = Uuid::new_v4();
    let carol = Uuid::new_v4();
    let e = escalation(RequesterKind::Person, Some(bob));
    let approver = scopes(&["approver"]);
    assert_eq!(check_approver(&s, &e, carol, &approver, &approver), Ok(()));
    assert_eq!(
        check_approver(&s, &e, bob, &approver, &approver),
        Err(ApprovalRefusal::OwnRequest)
    );
    // Holding the role without TOTP in effect: refused, and told why.
    let refusal = check_approver(&s, &e, carol, &approver, &[]).unwrap_err();
    assert_eq!(
        refusal,
        ApprovalRefusal::NotApprover {
            role: "approver".into(),
            needs_totp: true
        }
    );
    assert!(refusal.message("prod").contains("TOTP"));
    let dev = scopes(&["developer"]);
    assert!(matches!(
        check_approver(&s, &e, carol, &dev, &dev),
        Err(ApprovalRefusal::NotApprover {
            needs_totp: false,
            ..
        })
    ));
}

fn grant(holder: &str, env: &str, scopes_: &[&str], actor: Option<&str>, secs: i64) -> Grant {
    let at = OffsetDateTime::now_utc();
    Grant {
        id: Uuid::new_v4(),
        escalation_id: Uuid::new_v4(),
        environment: env.into(),
        scopes: scopes(scopes_),
        holder: holder.into(),
        holder_actor: actor.map(str::to_string),
        starts_at: at - time::Duration::seconds(1),
        ends_at: at + time::Duration::seconds(secs),
        session_id: None,
        revoked_at: None,
        revoked_by: None,
        revoked_reason: None,
    }
}

#[test]
fn a_grant_covers_only_its_holder_environment_scopes_actor_and_time() {
    let now = OffsetDateTime::now_utc();
    let g = grant("user:bob", "prod", &["db:write", "db:read"], None, 600);
    let gs = [g.clone()];
    let need = scopes(&["db:write"]);
    assert!(covering_grant(&gs, "user:bob", "prod", &need, None, now).is_some());
    assert!(covering_grant(&gs, "user:bob", "prod", &need, Some("process:x"), now).is_some());
    assert!(covering_grant(&gs, "user:eve", "prod", &need, None, now).is_none());
    assert!(covering_grant(&gs, "user:bob", "staging", &need, None, now).is_none());
    assert!(covering_grant(&gs, "user:bob", "prod", &scopes(&["db:drop"]), None, now).is_none());
    let mut revoked = g.clone();
    revoked.revoked_at = Some(now);
    assert!(covering_grant(&[revoked], "user:bob", "prod", &need, None, now).is_none());
    let ended = grant("user:bob", "prod", &["db:write"], None, -1);
    assert!(covering_grant(&[ended], "user:bob", "prod", &need, None, now).is_none());
    // A delegated process's grant covers that process only.
    let delegated = [grant(
        "user:bob",
        "staging",
        &["db:drop"],
        Some("process:claude"),
        600,
    )];
    let drop = scopes(&["db:drop"]);
    assert!(
        covering_grant(
            &delegated,
            "user:bob",
            "staging",
            &drop,
            Some("process:claude"),
            now
        )
        .is_some()
    );
    assert!(covering_grant(&delegated, "user:bob", "staging", &drop, None, now).is_none());
    assert!(
        covering_grant(
            &delegated,
            "user:bob",
            "staging",
            &drop,
            Some("process:other"),
            now
        )
        .is_none()
    );
}

#[test]
fn tokens_under_a_grant_end_with_it_and_gates_cover_prod_and_destructive() {
    let now = OffsetDateTime::now_utc();
    let g = grant("agent:x", "staging", &["db:drop"], None, 90);
    let life = grant_token_lifetime(Duration::from_secs(600), &g, now);
    assert!(life <= Duration::from_secs(90));
    assert_eq!(
        grant_token_lifetime(Duration::from_secs(30), &g, now),
        Duration::from_secs(30)
    );
    let ended = grant("agent:x", "staging", &["db:drop"], None, -5);
    assert_eq!(
        grant_token_lifetime(Duration::from_secs(600), &ended, now),
        Duration::ZERO
    );
    let s = settings();
    assert_eq!(
        gated_scopes(&s, "prod", &scopes(&["db:read", "db:drop"])),
        scopes(&["db:read", "db:drop"])
    );
    assert_eq!(
        gated_scopes(&s, "dev", &scopes(&["db:read", "db:drop"])),
        scopes(&["db:drop"])
    );
    assert_eq!(
        gated_scopes(&s, "nowhere", &scopes(&["db:read"])),
        scopes(&["db:read"])
    );
}
