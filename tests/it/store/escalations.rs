//! The escalation part of the store contract, on SQLite and PostgreSQL, with two
//! "replicas" (two pools on one database) racing each other: decisions happen exactly
//! once, a quorum yields exactly one grant, and each expiry and grant end is recorded
//! exactly once however many processes sweep.

use std::sync::Arc;

use airlock::domain::{self, Approval, Escalation, EscalationState, Grant, NewAuditEvent, Outcome, User};
use airlock::store::{ApproveOutcome, Store, StoreError};
use time::Duration;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::support::{Backend, event, new_request, replicas, stored_user};

fn approval(u: &User) -> Approval {
    Approval {
        approver_id: u.id,
        approver: u.username.clone(),
        approved_at: domain::now(),
    }
}

async fn approve(store: &dyn Store, id: Uuid, u: &User) -> Result<ApproveOutcome, StoreError> {
    store
        .approve_escalation(
            id,
            &approval(u),
            domain::now(),
            Uuid::new_v4(),
            event("escalation.approval"),
            event("grant.created"),
        )
        .await
}

async fn count_events(store: &dyn Store, kind: &str, subject: &str) -> usize {
    store
        .audit_page(0, 100_000)
        .await
        .expect("audit")
        .iter()
        .filter(|r| r.event.kind == kind && r.event.subject.as_deref() == Some(subject))
        .count()
}

async fn concurrent_approvals_on_two_replicas_make_exactly_one_grant(backend: Backend) {
    let Some((_db, a, b)) = replicas(backend).await else {
        return;
    };
    let bob = stored_user(a.as_ref(), "bob").await;
    let carol = Arc::new(stored_user(a.as_ref(), "carol").await);
    let dave = Arc::new(stored_user(a.as_ref(), "dave").await);
    for quorum in [1u32, 2] {
        for _ in 0..8 {
            let e = new_request(&bob, quorum, domain::now() + Duration::hours(1));
            a.create_escalation(&e, None, vec![event("escalation.requested")])
                .await
                .expect("created");
            let mut tasks = JoinSet::new();
            for (store, who) in [(a.clone(), carol.clone()), (b.clone(), dave.clone())] {
                let id = e.id;
                tasks.spawn(async move { approve(store.as_ref(), id, &who).await });
            }
            let outcomes = tasks.join_all().await;
            let granted = outcomes
                .iter()
                .filter(|o| matches!(o, Ok(ApproveOutcome::Granted(..))))
                .count();
            assert_eq!(granted, 1, "quorum {quorum}: exactly one grant, got {outcomes:?}");
            let conflicts = outcomes
                .iter()
                .filter(|o| matches!(o, Err(StoreError::Conflict)))
                .count();
            // Quorum 1: the loser finds the request decided. Quorum 2: both count.
            assert_eq!(conflicts, if quorum == 1 { 1 } else { 0 }, "{outcomes:?}");
            let stored = a.escalation(e.id).await.expect("stored");
            assert_eq!(stored.state, EscalationState::Approved);
            assert_eq!(stored.approvals.len(), quorum as usize);
            let grant = a.grant_of_escalation(e.id).await.expect("grant").expect("exists");
            assert_eq!(grant.ends_at - grant.starts_at, Duration::seconds(1800));
        }
    }
    // Every grant is audited once (the store writes the caller's grant event with it).
    let grants = a
        .audit_page(0, 100_000)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.event.kind == "grant.created")
        .count();
    assert_eq!(grants, 16);
    airlock::store::verify_store(a.as_ref())
        .await
        .expect("chain intact");
}

async fn decisions_on_a_decided_request_conflict_and_duplicates_change_nothing(backend: Backend) {
    let Some((_db, a, _b)) = replicas(backend).await else {
        return;
    };
    let bob = stored_user(a.as_ref(), "bob").await;
    let carol = stored_user(a.as_ref(), "carol").await;
    let dave = stored_user(a.as_ref(), "dave").await;
    let e = new_request(&bob, 2, domain::now() + Duration::hours(1));
    a.create_escalation(&e, None, vec![event("escalation.requested")])
        .await
        .unwrap();
    assert!(matches!(
        approve(a.as_ref(), e.id, &carol).await,
        Ok(ApproveOutcome::Recorded(_))
    ));
    assert!(matches!(
        approve(a.as_ref(), e.id, &carol).await,
        Ok(ApproveOutcome::AlreadyApproved(_))
    ));
    let denied = a
        .finish_escalation(
            e.id,
            EscalationState::Denied,
            "dave",
            Some("not during the freeze"),
            domain::now(),
            event("escalation.denied"),
        )
        .await
        .expect("denied");
    assert_eq!(denied.state, EscalationState::Denied);
    assert_eq!(denied.decision_reason.as_deref(), Some("not during the freeze"));
    assert!(matches!(
        approve(a.as_ref(), e.id, &dave).await,
        Err(StoreError::Conflict)
    ));
    let again = a
        .finish_escalation(
            e.id,
            EscalationState::Cancelled,
            "bob",
            None,
            domain::now(),
            event("escalation.cancelled"),
        )
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)));
    assert!(a.grant_of_escalation(e.id).await.unwrap().is_none());
    let unknown = approve(a.as_ref(), Uuid::new_v4(), &dave).await;
    assert!(matches!(unknown, Err(StoreError::NotFound)));
    let history: Vec<String> = a
        .escalation_history(e.id)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.kind)
        .collect();
    assert_eq!(history, ["created", "approval", "denied"]);

    // Past its deadline, a request can no longer be decided even before any sweep.
    let late = new_request(&bob, 1, domain::now() - Duration::seconds(1));
    a.create_escalation(&late, None, vec![event("escalation.requested")])
        .await
        .unwrap();
    assert!(matches!(
        approve(a.as_ref(), late.id, &carol).await,
        Err(StoreError::Conflict)
    ));
}

async fn sweeps_on_two_replicas_expire_and_end_each_once(backend: Backend) {
    let Some((_db, a, b)) = replicas(backend).await else {
        return;
    };
    let bob = stored_user(a.as_ref(), "bob").await;
    let carol = stored_user(a.as_ref(), "carol").await;
    let mut pending = Vec::new();
    for _ in 0..20 {
        let e = new_request(&bob, 1, domain::now() + Duration::milliseconds(200));
        a.create_escalation(&e, None, vec![event("escalation.requested")])
            .await
            .unwrap();
        pending.push(e.id);
    }
    // Ten grants that end at once.
    let mut grants = Vec::new();
    for _ in 0..10 {
        let mut e = new_request(&bob, 1, domain::now() + Duration::hours(1));
        e.state = EscalationState::Approved;
        e.duration_secs = 1;
        let g = Grant {
            id: Uuid::new_v4(),
            escalation_id: e.id,
            environment: "prod".into(),
            scopes: e.scopes.clone(),
            holder: e.holder.clone(),
            holder_actor: None,
            starts_at: domain::now() - Duration::seconds(2),
            ends_at: domain::now() - Duration::seconds(1),
            session_id: None,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
        };
        a.create_escalation(&e, Some(&g), vec![event("escalation.requested")])
            .await
            .unwrap();
        grants.push(g.id);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let at = domain::now();
    fn expired(e: &Escalation) -> NewAuditEvent {
        NewAuditEvent::new("escalation.expired", "system", Outcome::Success).subject(e.id.to_string())
    }
    fn ended(g: &Grant) -> NewAuditEvent {
        NewAuditEvent::new("grant.ended", "system", Outcome::Success).subject(g.id.to_string())
    }
    let mut tasks = JoinSet::new();
    for round in 0..6 {
        let s = if round % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let e = s.expire_escalations(at, 7, expired).await;
            let g = s.end_grants(at, 3, ended).await;
            (e.map(|v| v.len()), g.map(|v| v.len()))
        });
    }
    let mut total_expired = 0;
    let mut total_ended = 0;
    for (e, g) in tasks.join_all().await {
        // SQLite may report "busy" under this contention; that sweep simply retries later.
        total_expired += e.unwrap_or(0);
        total_ended += g.unwrap_or(0);
    }
    // Whatever the races left over, a later sweep finishes; nothing is done twice.
    loop {
        let e = a.expire_escalations(at, 100, expired).await.expect("sweep").len();
        let g = a.end_grants(at, 100, ended).await.expect("sweep").len();
        total_expired += e;
        total_ended += g;
        if e == 0 && g == 0 {
            break;
        }
    }
    assert_eq!(total_expired, 20);
    assert_eq!(total_ended, 10);
    for id in &pending {
        assert_eq!(
            count_events(a.as_ref(), "escalation.expired", &id.to_string()).await,
            1
        );
        assert_eq!(a.escalation(*id).await.unwrap().state, EscalationState::Expired);
    }
    for id in &grants {
        assert_eq!(count_events(a.as_ref(), "grant.ended", &id.to_string()).await, 1);
    }
    let _ = carol;
    airlock::store::verify_store(a.as_ref())
        .await
        .expect("chain intact");
}

async fn a_grant_binds_to_one_session_and_is_revoked_once(backend: Backend) {
    let Some((_db, a, _b)) = replicas(backend).await else {
        return;
    };
    let bob = stored_user(a.as_ref(), "bob").await;
    let carol = stored_user(a.as_ref(), "carol").await;
    let e = new_request(&bob, 1, domain::now() + Duration::hours(1));
    a.create_escalation(&e, None, vec![event("escalation.requested")])
        .await
        .unwrap();
    let Ok(ApproveOutcome::Granted(_, grant)) = approve(a.as_ref(), e.id, &carol).await else {
        panic!("granted");
    };
    let session = |id: Uuid| domain::Session {
        id,
        user_id: bob.id,
        kind: domain::SessionKind::Cli,
        secret_hash: None,
        created_at: domain::now(),
        last_used_at: domain::now(),
        expires_at: domain::now() + Duration::hours(1),
        revoked_at: None,
        revoked_reason: None,
        totp_verified: true,
        stepped_up_at: Some(domain::now()),
    };
    let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
    for s in [s1, s2] {
        a.create_session(&session(s), None, event("session.created"))
            .await
            .unwrap();
    }
    a.bind_grant_session(grant.id, s1, domain::now(), event("grant.bound"))
        .await
        .expect("bound");
    a.bind_grant_session(grant.id, s1, domain::now(), event("grant.bound"))
        .await
        .expect("binding again to the same session is a no-op");
    let other = a
        .bind_grant_session(grant.id, s2, domain::now(), event("grant.bound"))
        .await;
    assert!(matches!(other, Err(StoreError::Conflict)));
    assert_eq!(a.grant(grant.id).await.unwrap().session_id, Some(s1));

    let revoked = a
        .revoke_grant(grant.id, "carol", "done", domain::now(), event("grant.revoked"))
        .await
        .expect("revoked");
    assert!(revoked.revoked_at.is_some());
    assert!(!revoked.is_active(domain::now()));
    let again = a
        .revoke_grant(grant.id, "carol", "done", domain::now(), event("grant.revoked"))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict)));
    let active = a
        .grants(&airlock::store::GrantFilter {
            holder: Some(domain::person_holder(bob.id)),
            environment: Some("prod".into()),
            active_at: Some(domain::now()),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(active.is_empty(), "a revoked grant is not active");
}

crate::both_backends!(
    concurrent_approvals_on_two_replicas_make_exactly_one_grant,
    decisions_on_a_decided_request_conflict_and_duplicates_change_nothing,
    sweeps_on_two_replicas_expire_and_end_each_once,
    a_grant_binds_to_one_session_and_is_revoked_once,
);
