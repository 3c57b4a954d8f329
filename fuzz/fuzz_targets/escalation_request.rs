//! The escalation request body (`POST /v1/escalations`) and the reason checks: the body
//! through `http::parse_create_body` (the handler's own parsing and bounds), then the
//! policy's `check_request` for every kind of requester under the default settings; and
//! denial/revocation notes through `escalations::check_note`.
//!
//! Oracles: what passes has a reason of plain text within the limits, distinct scopes
//! the environment offers, a granted duration within the environment's cap, and is never
//! auto-approved in production or for a destructive scope; an agent never asks outside
//! its own environment.
#![no_main]

use std::sync::OnceLock;

use airlock::config::{Settings, Sources, Tier};
use airlock::escalations::check_note;
use airlock::http::parse_create_body;
use airlock::policy::escalation::{self as rules, Requester};
use libfuzzer_sys::fuzz_target;

fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| Settings::load(&Sources::default()).unwrap())
}

fn requesters() -> Vec<Requester> {
    let id = uuid::Uuid::nil();
    vec![
        Requester::Person {
            user_id: id,
            username: "bob".into(),
            roles: vec!["developer".into()],
        },
        Requester::Person {
            user_id: id,
            username: "eve".into(),
            roles: vec![],
        },
        Requester::Agent {
            client_id: "agt_fuzz".into(),
            environment: "dev".into(),
        },
        Requester::Delegated {
            user_id: id,
            username: "bob".into(),
            roles: vec!["developer".into()],
            actor: "process:fuzz".into(),
            environment: "staging".into(),
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(note) = check_note(text, "reason for the denial") {
            assert!(!note.is_empty() && note == note.trim());
            assert!(!rules::has_control_chars(&note));
            assert!(note.chars().count() <= rules::MAX_NOTE_CHARS);
        }
    }
    let Ok(req) = parse_create_body(data) else { return };
    assert!(req.environment.len() <= 64 && req.reason.len() <= 4096);
    assert!(req.scopes.iter().all(|s| s.len() <= 128));
    let s = settings();
    for who in requesters() {
        let Ok(plan) =
            rules::check_request(s, &who, &req.environment, &req.scopes, req.duration, &req.reason)
        else {
            continue;
        };
        let env = s
            .environment(&req.environment)
            .expect("an unknown environment passed");
        if let Requester::Agent { environment, .. } | Requester::Delegated { environment, .. } = &who {
            assert_eq!(
                environment, &req.environment,
                "an agent asked outside its environment"
            );
        }
        assert!(!rules::has_control_chars(&req.reason));
        let chars = req.reason.trim().chars().count();
        assert!((rules::MIN_REASON_CHARS..=rules::MAX_REASON_CHARS).contains(&chars));
        assert!(!req.scopes.is_empty());
        for (i, scope) in req.scopes.iter().enumerate() {
            assert!(!req.scopes[..i].contains(scope), "a repeated scope passed");
            assert!(
                s.env_offers_scope(env, scope),
                "a scope the environment lacks passed"
            );
        }
        assert!(plan.duration <= env.approval.max_grant_duration && plan.duration >= rules::MIN_DURATION);
        if plan.auto_approve {
            assert!(env.tier != Tier::Prod);
            assert!(rules::destructive_of(s, &req.scopes).is_empty());
        }
    }
});
