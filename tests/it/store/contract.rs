//! The store contract: every `Store` behaviour, checked the same way on SQLite and
//! PostgreSQL. The domain code relies on these rules whatever backend it runs on.

use std::collections::HashSet;
use std::time::Duration;

use airlock::audit::{GENESIS, Verifier};
use airlock::domain::{self, Agent, AuditRecord, KeySet, KeyStatus, NewAuditEvent, Outcome, StoredKey};
use airlock::store::{self, AgentChange, ConnectOptions, Store, StoreError, StoreResult};
use serde_json::json;
use time::OffsetDateTime;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::support::{Backend, TestDb, events_of, fresh, spawn_app};

/// An agent with every field set to something recognisable.
fn agent(env: &str, name: &str) -> Agent {
    let updated = domain::now();
    Agent {
        id: Uuid::new_v4(),
        client_id: domain::new_client_id(),
        name: name.into(),
        environment: env.into(),
        allowed_scopes: vec!["db:read".into(), "db:write".into(), "deploy".into()],
        default_scopes: vec!["db:read".into()],
        disabled: false,
        // Bytes that a text column or a NUL-terminated copy would mangle.
        secret_hash: vec![0x00, 0xff, 0x7f, 0x80, 0x00, 0x01, 0xfe],
        created_at: updated - Duration::from_secs(3600),
        updated_at: updated,
        owner_id: None,
        owner: None,
    }
}

/// The audit event a caller would pass along with a change to `agent`.
fn agent_event(kind: &str, agent: &Agent) -> NewAuditEvent {
    NewAuditEvent::new(kind, "cli:tester", Outcome::Success)
        .env(agent.environment.clone())
        .subject(agent.client_id.clone())
        .detail("name", agent.name.clone())
}

fn signing_key(kid: &str, keyset: KeySet, status: KeyStatus, created_at: OffsetDateTime) -> StoredKey {
    StoredKey {
        kid: kid.into(),
        keyset,
        public_key: format!("public {kid}").into_bytes(),
        sealed_private_key: [b"\x00sealed\xff".as_slice(), kid.as_bytes()].concat(),
        status,
        created_at,
    }
}

fn key_event(kid: &str) -> NewAuditEvent {
    NewAuditEvent::new("key.created", "system", Outcome::Success).subject(kid)
}

/// The error of a call that must fail (for results whose value has no `Debug`).
fn expect_err<T>(result: StoreResult<T>, what: &str) -> StoreError {
    match result {
        Ok(_) => panic!("{what}: expected an error, the call succeeded"),
        Err(e) => e,
    }
}

/// Every audit record, oldest first.
async fn all_events(store: &dyn Store) -> Vec<AuditRecord> {
    store.audit_page(0, 100_000).await.expect("audit page")
}

/// Read the whole chain in pages, verify every link and the head; return the records.
async fn verify_chain(store: &dyn Store) -> Vec<AuditRecord> {
    let mut verifier = Verifier::default();
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_page(after, 64).await.expect("audit page");
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            verifier
                .check(r)
                .unwrap_or_else(|e| panic!("chain breaks at #{}: {e}", r.seq));
        }
        records.extend(page);
    }
    let (head_seq, head_hash) = store.audit_head().await.expect("audit head");
    let checked = verifier
        .finish(head_seq, &head_hash)
        .expect("head matches the last event");
    assert_eq!(checked, records.len() as u64);
    records
}

fn seqs(records: &[AuditRecord]) -> Vec<i64> {
    records.iter().map(|r| r.seq).collect()
}

// ---------------------------------------------------------------------------------------
// Migrations and meta

async fn a_migrated_store_is_ready_and_migrating_again_applies_nothing(backend: Backend) {
    let Some((db, store)) = fresh(backend).await else {
        return;
    };

    store.ping().await.expect("ping");
    store.ready().await.expect("a freshly migrated store is ready");
    assert_eq!(store.migrate().await.expect("migrate again"), 0);
    store.ready().await.expect("still ready");

    // A second replica on the same database finds nothing to do either.
    let replica = db.store().await;
    assert_eq!(replica.migrate().await.expect("replica migrates"), 0);
    replica.ready().await.expect("replica ready");
}

async fn an_unmigrated_database_reports_pending_migrations_until_migrated(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let options = ConnectOptions {
        migrate: false,
        ..ConnectOptions::default()
    };
    let store = store::connect(&db.url, &options)
        .await
        .expect("connect without migrating");
    let folder = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let embedded = std::fs::read_dir(format!("{}/migrations/{folder}", env!("CARGO_MANIFEST_DIR")))
        .expect("migrations folder")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    assert!(embedded > 0);

    // Act / Assert: blank schema → pending; migrate applies them all; then ready.
    let before = store.ready().await;
    assert!(
        matches!(before, Err(StoreError::MigrationsPending)),
        "a blank database must report MigrationsPending, got {before:?}"
    );
    assert_eq!(store.migrate().await.expect("migrate"), embedded);
    store.ready().await.expect("ready after migrating");
    assert_eq!(store.migrate().await.expect("migrate again"), 0);
}

async fn init_meta_keeps_the_first_value_and_a_missing_key_is_none(backend: Backend) {
    let Some((db, store)) = fresh(backend).await else {
        return;
    };
    let first = b"first\x00\xff value".to_vec();

    assert_eq!(store.meta("install.id").await.expect("meta"), None);
    assert_eq!(store.init_meta("install.id", &first).await.expect("init"), first);
    assert_eq!(
        store
            .init_meta("install.id", b"second")
            .await
            .expect("init again"),
        first
    );
    assert_eq!(store.meta("install.id").await.expect("meta"), Some(first.clone()));
    assert_eq!(store.meta("no.such.key").await.expect("meta"), None);

    // Concurrent first writers on two replicas all see one and the same value.
    let replica = db.store().await;
    let mut tasks = JoinSet::new();
    for i in 0..10u8 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            replica.clone()
        };
        tasks.spawn(async move { s.init_meta("race", &[i]).await.expect("init race") });
    }
    let seen: HashSet<Vec<u8>> = tasks.join_all().await.into_iter().collect();
    assert_eq!(seen.len(), 1, "racing writers saw different values: {seen:?}");
    let stored = store
        .meta("race")
        .await
        .expect("meta")
        .expect("race value stored");
    assert!(seen.contains(&stored));
}

// ---------------------------------------------------------------------------------------
// Agents

async fn an_agent_round_trips_every_field(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let mut a = agent("staging", "builder.v2_x-1");
    a.disabled = true;
    a.default_scopes = vec![];
    let event = agent_event("agent.created", &a);

    store.create_agent(&a, event.clone()).await.expect("create");

    assert_eq!(
        store
            .agent_by_client_id(&a.client_id)
            .await
            .expect("by client id"),
        a
    );
    assert_eq!(store.agent_by_name("staging", &a.name).await.expect("by name"), a);
    let created = events_of(store.as_ref(), "agent.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].event, event, "the audit event is stored verbatim");
}

async fn agents_are_listed_by_environment_then_name(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    // Inserted out of order; names that sort differently under case or punctuation rules.
    let mut all = vec![
        agent("staging", "zeta"),
        agent("dev", "alpha"),
        agent("staging", "Build"),
        agent("prod", "a_b"),
        agent("dev", "a-b"),
        agent("dev", "a.b"),
        agent("dev", "Zed"),
        agent("staging", "alpha"),
    ];
    for a in &all {
        store
            .create_agent(a, agent_event("agent.created", a))
            .await
            .expect("create");
    }
    // Bytewise order, as SQLite's BINARY collation and PostgreSQL's "C" compare.
    all.sort_by(|x, y| (&x.environment, &x.name).cmp(&(&y.environment, &y.name)));

    assert_eq!(store.agents(None).await.expect("all agents"), all);
    let dev: Vec<Agent> = all.iter().filter(|a| a.environment == "dev").cloned().collect();
    assert_eq!(dev.len(), 4);
    assert_eq!(store.agents(Some("dev")).await.expect("dev agents"), dev);
    assert!(store.agents(Some("nowhere")).await.expect("no agents").is_empty());
}

async fn an_agent_name_is_unique_within_its_environment_only(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let first = agent("dev", "builder");
    store
        .create_agent(&first, agent_event("agent.created", &first))
        .await
        .expect("create");

    // Same name, same environment: conflict, and no audit event for it.
    let twin = agent("dev", "builder");
    let e = expect_err(
        store
            .create_agent(&twin, agent_event("agent.created", &twin))
            .await,
        "duplicate name",
    );
    assert!(matches!(e, StoreError::Conflict), "{e:?}");
    assert!(matches!(
        store.agent_by_client_id(&twin.client_id).await,
        Err(StoreError::NotFound)
    ));

    // Same client id: conflict as well.
    let mut stolen_id = agent("dev", "other");
    stolen_id.client_id = first.client_id.clone();
    let e = expect_err(
        store
            .create_agent(&stolen_id, agent_event("agent.created", &stolen_id))
            .await,
        "duplicate client id",
    );
    assert!(matches!(e, StoreError::Conflict), "{e:?}");
    assert_eq!(events_of(store.as_ref(), "agent.created").await.len(), 1);

    // Same name in another environment is another agent.
    let elsewhere = agent("staging", "builder");
    store
        .create_agent(&elsewhere, agent_event("agent.created", &elsewhere))
        .await
        .expect("same name, other environment");
    assert_eq!(store.agent_by_name("dev", "builder").await.expect("dev"), first);
    assert_eq!(
        store.agent_by_name("staging", "builder").await.expect("staging"),
        elsewhere
    );
    assert_eq!(events_of(store.as_ref(), "agent.created").await.len(), 2);
    verify_chain(store.as_ref()).await;
}

async fn looking_up_a_missing_agent_is_not_found(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let a = agent("dev", "builder");
    store
        .create_agent(&a, agent_event("agent.created", &a))
        .await
        .expect("create");

    let r = store.agent_by_client_id(&domain::new_client_id()).await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    let r = store.agent_by_name("dev", "nobody").await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    // The right name in the wrong environment is not that agent.
    let r = store.agent_by_name("prod", "builder").await;
    assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
}

async fn updating_an_agent_changes_only_that_field_and_bumps_updated_at(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let original = agent("dev", "builder");
    store
        .create_agent(&original, agent_event("agent.created", &original))
        .await
        .expect("create");

    // Disable.
    let event = agent_event("agent.disabled", &original);
    let disabled = store
        .update_agent(original.id, AgentChange::Disabled(true), event.clone())
        .await
        .expect("disable");
    assert!(
        disabled.updated_at > original.updated_at,
        "updated_at must move forward"
    );
    assert!(disabled.updated_at <= domain::now());
    assert_eq!(
        disabled,
        Agent {
            disabled: true,
            updated_at: disabled.updated_at,
            ..original.clone()
        }
    );
    assert_eq!(
        store.agent_by_client_id(&original.client_id).await.expect("read"),
        disabled
    );
    let audited = events_of(store.as_ref(), "agent.disabled").await;
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].event, event);

    // Replace the secret hash.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let new_hash = vec![0xab; 32];
    let rotated = store
        .update_agent(
            original.id,
            AgentChange::SecretHash(new_hash.clone()),
            agent_event("agent.secret_rotated", &original),
        )
        .await
        .expect("rotate");
    assert!(rotated.updated_at > disabled.updated_at);
    assert_eq!(
        rotated,
        Agent {
            secret_hash: new_hash,
            updated_at: rotated.updated_at,
            ..disabled.clone()
        }
    );
    assert_eq!(
        store.agent_by_name("dev", "builder").await.expect("read"),
        rotated
    );
    assert_eq!(events_of(store.as_ref(), "agent.secret_rotated").await.len(), 1);

    // Enable again.
    let enabled = store
        .update_agent(
            original.id,
            AgentChange::Disabled(false),
            agent_event("agent.enabled", &original),
        )
        .await
        .expect("enable");
    assert!(!enabled.disabled);
    assert_eq!(enabled.secret_hash, rotated.secret_hash);
    assert_eq!(enabled.environment, "dev");
    assert_eq!(events_of(store.as_ref(), "agent.enabled").await.len(), 1);
    assert_eq!(verify_chain(store.as_ref()).await.len(), 4);
}

async fn updating_a_missing_agent_is_not_found_and_audits_nothing(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let ghost = agent("dev", "ghost");

    for change in [
        AgentChange::Disabled(true),
        AgentChange::SecretHash(vec![1, 2, 3]),
    ] {
        let r = store
            .update_agent(ghost.id, change, agent_event("agent.changed", &ghost))
            .await;
        assert!(matches!(r, Err(StoreError::NotFound)), "{r:?}");
    }
    assert!(all_events(store.as_ref()).await.is_empty());
    assert_eq!(store.audit_head().await.expect("head"), (0, GENESIS.to_vec()));
}

async fn a_write_whose_audit_event_cannot_be_stored_is_rolled_back(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let a = agent("dev", "builder");
    let first = agent_event("agent.created", &a);
    store.create_agent(&a, first.clone()).await.expect("create");
    // Reusing a stored event id makes the audit insert fail inside the transaction.
    let reused = |kind: &str| NewAuditEvent {
        kind: kind.into(),
        ..first.clone()
    };

    let b = agent("dev", "second");
    expect_err(store.create_agent(&b, reused("agent.created")).await, "create");
    assert!(matches!(
        store.agent_by_client_id(&b.client_id).await,
        Err(StoreError::NotFound)
    ));

    let r = store
        .update_agent(a.id, AgentChange::Disabled(true), reused("agent.disabled"))
        .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(store.agent_by_client_id(&a.client_id).await.expect("read"), a);

    let key = signing_key("k1", KeySet::Session, KeyStatus::Active, domain::now());
    expect_err(
        store.insert_signing_key(&key, reused("key.created")).await,
        "insert key",
    );
    assert!(
        store
            .signing_keys(&KeySet::Session)
            .await
            .expect("keys")
            .is_empty()
    );

    assert_eq!(verify_chain(store.as_ref()).await.len(), 1);
}

async fn an_agents_environment_cannot_be_changed_even_by_raw_sql(backend: Backend) {
    use sqlx::Connection;
    let Some((db, store)) = fresh(backend).await else {
        return;
    };
    let a = agent("dev", "builder");
    store
        .create_agent(&a, agent_event("agent.created", &a))
        .await
        .expect("create");
    const MOVE: &str = "update agents set environment = 'prod' where client_id = $1";

    let result = match backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("raw connection");
            let r = sqlx::query(MOVE).bind(&a.client_id).execute(&mut conn).await;
            let _ = conn.close().await;
            r.map(|done| done.rows_affected())
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url)
                .await
                .expect("raw connection");
            let r = sqlx::query(MOVE).bind(&a.client_id).execute(&mut conn).await;
            let _ = conn.close().await;
            r.map(|done| done.rows_affected())
        }
    };

    let err = result.expect_err("the schema must refuse to move an agent");
    assert!(
        err.to_string().contains("environment cannot change"),
        "refused for the wrong reason: {err}"
    );
    assert_eq!(store.agent_by_client_id(&a.client_id).await.expect("read"), a);
    assert!(store.agents(Some("prod")).await.expect("prod").is_empty());
}

// ---------------------------------------------------------------------------------------
// Signing keys

async fn a_keyset_has_at_most_one_active_key(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let dev = KeySet::Environment("dev".into());
    let t0 = domain::now() - Duration::from_secs(60);

    let k1 = signing_key("k1", dev.clone(), KeyStatus::Active, t0);
    store
        .insert_signing_key(&k1, key_event("k1"))
        .await
        .expect("first active key");

    // A second active key in the same set: conflict, nothing stored, nothing audited.
    let k2 = signing_key("k2", dev.clone(), KeyStatus::Active, t0 + Duration::from_secs(10));
    let e = expect_err(
        store.insert_signing_key(&k2, key_event("k2")).await,
        "second active",
    );
    assert!(matches!(e, StoreError::Conflict), "{e:?}");
    assert!(
        !all_events(store.as_ref())
            .await
            .iter()
            .any(|r| r.event.subject.as_deref() == Some("k2"))
    );

    // A duplicate kid is a conflict too, even in another set.
    let dup = signing_key("k1", KeySet::Session, KeyStatus::Retired, t0);
    let e = expect_err(
        store.insert_signing_key(&dup, key_event("k1")).await,
        "duplicate kid",
    );
    assert!(matches!(e, StoreError::Conflict), "{e:?}");

    // Other sets have their own active key.
    let staging = KeySet::Environment("staging".into());
    let s1 = signing_key("s1", staging.clone(), KeyStatus::Active, t0);
    store
        .insert_signing_key(&s1, key_event("s1"))
        .await
        .expect("other env");
    let session = signing_key("sess1", KeySet::Session, KeyStatus::Active, t0);
    store
        .insert_signing_key(&session, key_event("sess1"))
        .await
        .expect("session set");
    // A retired key may join a set that has an active one.
    let old = signing_key(
        "k0",
        dev.clone(),
        KeyStatus::Retired,
        t0 - Duration::from_secs(10),
    );
    store
        .insert_signing_key(&old, key_event("k0"))
        .await
        .expect("retired key");

    // Rotation: retire, then a new active key is allowed.
    let retire = NewAuditEvent::new("key.retired", "system", Outcome::Success).subject("k1");
    store
        .set_key_status("k1", KeyStatus::Retired, retire.clone())
        .await
        .expect("retire");
    store
        .insert_signing_key(&k2, key_event("k2"))
        .await
        .expect("new active key");

    // Newest first, every field intact.
    let keys = store.signing_keys(&dev).await.expect("dev keys");
    let listed: Vec<(&str, KeyStatus)> = keys.iter().map(|k| (k.kid.as_str(), k.status)).collect();
    assert_eq!(
        listed,
        [
            ("k2", KeyStatus::Active),
            ("k1", KeyStatus::Retired),
            ("k0", KeyStatus::Retired)
        ]
    );
    for (got, want) in keys.iter().zip([&k2, &k1, &old]) {
        assert_eq!(got.keyset, dev);
        assert_eq!(got.public_key, want.public_key);
        assert_eq!(got.sealed_private_key, want.sealed_private_key);
        assert_eq!(got.created_at, want.created_at);
    }
    let staging_keys = store.signing_keys(&staging).await.expect("staging keys");
    assert_eq!(staging_keys.len(), 1);
    assert_eq!(staging_keys[0].kid, "s1");
    assert_eq!(staging_keys[0].keyset, staging);
    let session_keys = store.signing_keys(&KeySet::Session).await.expect("session keys");
    assert_eq!(session_keys.len(), 1);
    assert_eq!(session_keys[0].kid, "sess1");
    assert_eq!(session_keys[0].keyset, KeySet::Session);
    assert!(
        store
            .signing_keys(&KeySet::Environment("prod".into()))
            .await
            .expect("none")
            .is_empty()
    );

    // A missing kid is not found and audits nothing.
    let e = expect_err(
        store
            .set_key_status("no-such-kid", KeyStatus::Retired, key_event("no-such-kid"))
            .await,
        "missing kid",
    );
    assert!(matches!(e, StoreError::NotFound), "{e:?}");

    // Exactly the successful writes are audited: k1, s1, sess1, k0, retire k1, k2.
    let records = verify_chain(store.as_ref()).await;
    let subjects: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.event.kind.as_str(), r.event.subject.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        subjects,
        [
            ("key.created", "k1"),
            ("key.created", "s1"),
            ("key.created", "sess1"),
            ("key.created", "k0"),
            ("key.retired", "k1"),
            ("key.created", "k2"),
        ]
    );
    assert_eq!(records[4].event, retire);
}

async fn signing_keys_are_listed_newest_first_within_one_second(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let set = KeySet::Environment("dev".into());
    let second = domain::now().replace_nanosecond(0).expect("whole second");
    // Created within one second, with sub-second parts of different lengths.
    let offsets_us = [0u64, 100_000, 120_000, 999_999, 5];
    for (i, us) in offsets_us.iter().enumerate() {
        let key = signing_key(
            &format!("k{i}"),
            set.clone(),
            KeyStatus::Retired,
            second + Duration::from_micros(*us),
        );
        store
            .insert_signing_key(&key, key_event(&key.kid))
            .await
            .expect("insert");
    }

    let keys = store.signing_keys(&set).await.expect("keys");

    let listed: Vec<(String, OffsetDateTime)> = keys.iter().map(|k| (k.kid.clone(), k.created_at)).collect();
    let mut newest_first = listed.clone();
    newest_first.sort_by_key(|k| std::cmp::Reverse(k.1));
    assert_eq!(listed, newest_first, "signing keys must be newest first");
}

// ---------------------------------------------------------------------------------------
// Audit chain

async fn a_fresh_chain_starts_at_genesis(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };

    assert_eq!(store.audit_head().await.expect("head"), (0, GENESIS.to_vec()));
    assert!(store.audit_page(0, 100).await.expect("page").is_empty());
    assert!(store.audit_tail(10).await.expect("tail").is_empty());

    let first = store
        .append_audit(NewAuditEvent::new("first", "system", Outcome::Success))
        .await
        .expect("append");
    assert_eq!(first.seq, 1);
    assert_eq!(first.prev_hash, GENESIS.to_vec());
    assert_eq!(store.audit_head().await.expect("head"), (1, first.hash.clone()));
    assert_eq!(verify_chain(store.as_ref()).await, [first]);
}

async fn concurrent_appends_form_one_contiguous_verified_chain(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let mut tasks = JoinSet::new();
    for i in 0..50 {
        let s = store.clone();
        let event = NewAuditEvent::new("test.append", format!("actor{i}"), Outcome::Success)
            .env("dev")
            .detail("i", i);
        tasks.spawn(async move { (event.clone(), s.append_audit(event).await.expect("append")) });
    }
    let appended = tasks.join_all().await;

    let stored = store.audit_page(0, 1000).await.expect("page");

    assert_eq!(seqs(&stored), (1..=50).collect::<Vec<_>>());
    let mut verifier = Verifier::default();
    for r in &stored {
        verifier.check(r).unwrap_or_else(|e| panic!("{e}"));
    }
    let (head_seq, head_hash) = store.audit_head().await.expect("head");
    assert_eq!(verifier.finish(head_seq, &head_hash), Ok(50));
    // Every caller got back exactly the record that was stored for its event.
    for (event, record) in &appended {
        assert_eq!(&record.event, event);
        assert_eq!(&stored[(record.seq - 1) as usize], record);
    }

    // Paging.
    let page = |after, limit| {
        let s = store.clone();
        async move { seqs(&s.audit_page(after, limit).await.expect("page")) }
    };
    assert_eq!(page(0, 10).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(page(10, 10).await, (11..=20).collect::<Vec<_>>());
    assert_eq!(page(45, 10).await, (46..=50).collect::<Vec<_>>());
    assert_eq!(page(50, 10).await, Vec::<i64>::new());
    assert_eq!(page(-5, 3).await, vec![1, 2, 3]);
    assert_eq!(page(0, 0).await, Vec::<i64>::new());
    assert_eq!(store.audit_page(20, 5).await.expect("page"), stored[20..25]);

    // Tail: the last n, ascending.
    assert_eq!(store.audit_tail(5).await.expect("tail"), stored[45..]);
    assert_eq!(seqs(&store.audit_tail(1).await.expect("tail")), vec![50]);
    assert_eq!(store.audit_tail(1000).await.expect("tail"), stored);
    assert!(store.audit_tail(0).await.expect("tail").is_empty());
}

async fn audit_details_round_trip_exactly(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let details = json!({
        "nested": { "deeper": { "list": [1, "two", null, true, { "k": [] }] }, "empty": {} },
        "unicode": "prod — 生産 🚀 ünïcödé",
        "escapes": "quote \" backslash \\ newline \n tab \t nul \u{0000} end",
        "keys with spaces and ключи": "ok",
        "big": i64::MAX,
        "small": i64::MIN,
        "unsigned": u64::MAX,
        "float": 0.25,
        "reason": "",
    });
    let mut event = NewAuditEvent::new("détail.ünicode", "cli:zoë", Outcome::Refused)
        .env("staging")
        .subject("agt_0123456789abcdef0123456789abcdef");
    event.details = details;
    let plain = NewAuditEvent::new("plain", "system", Outcome::Success);
    let a = agent("dev", "builder");
    let via_agent = agent_event("agent.created", &a).detail("meta", json!({ "emoji": "🔑", "n": [1, 2] }));

    let appended = store.append_audit(event.clone()).await.expect("append");
    store.append_audit(plain.clone()).await.expect("append plain");
    store.create_agent(&a, via_agent.clone()).await.expect("create");

    let records = verify_chain(store.as_ref()).await;
    assert_eq!(records.len(), 3);
    assert_eq!(records[0], appended);
    assert_eq!(records[0].event, event);
    assert_eq!(records[1].event, plain);
    assert_eq!(records[1].event.environment, None);
    assert_eq!(records[1].event.subject, None);
    assert_eq!(records[2].event, via_agent);
}

async fn audit_details_with_floats_round_trip_exactly(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    // 985.6906946328695 is printed exactly by serde_json but parsed back one ULP off
    // unless the `float_roundtrip` feature is on; the re-read event then no longer
    // matches its hash and `audit verify` would report a genuine event as altered.
    let event = NewAuditEvent::new("test.float", "system", Outcome::Success)
        .detail("latency_ms", 985.690_694_632_869_5)
        .detail("ratio", 0.1)
        .detail("tiny", 1.071_566_039_146_582_6e-75);

    let appended = store.append_audit(event.clone()).await.expect("append");

    let records = verify_chain(store.as_ref()).await;
    assert_eq!(records, [appended]);
    assert_eq!(records[0].event, event);
}

async fn two_replicas_append_to_one_chain(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let replicas = [db.store().await, db.store().await];
    let mut tasks = JoinSet::new();
    for i in 0..100 {
        for (r, store) in replicas.iter().enumerate() {
            let s = store.clone();
            tasks.spawn(async move {
                let event = NewAuditEvent::new("test.replica", format!("replica{r}"), Outcome::Success)
                    .detail("i", i);
                s.append_audit(event).await.expect("append");
            });
            if i % 50 == 7 {
                let s = store.clone();
                tasks.spawn(async move {
                    let a = agent("dev", &format!("agent-{r}-{i}"));
                    s.create_agent(&a, agent_event("agent.created", &a))
                        .await
                        .expect("create agent");
                });
            }
        }
    }
    tasks.join_all().await;

    for store in &replicas {
        let records = verify_chain(store.as_ref()).await;
        assert_eq!(seqs(&records), (1..=204).collect::<Vec<_>>());
        let ids: HashSet<Uuid> = records.iter().map(|r| r.event.id).collect();
        assert_eq!(ids.len(), 204);
        for r in 0..2 {
            let actor = format!("replica{r}");
            let from_r = records.iter().filter(|x| x.event.actor == actor).count();
            assert_eq!(from_r, 100, "events of {actor}");
        }
        assert_eq!(events_of(store.as_ref(), "agent.created").await.len(), 4);
        assert_eq!(store.agents(Some("dev")).await.expect("agents").len(), 4);
    }
    assert_eq!(
        replicas[0].audit_head().await.expect("head"),
        replicas[1].audit_head().await.expect("head")
    );
}

async fn group_commit_answers_every_caller_with_its_own_stored_record(backend: Backend) {
    let Some((_db, store)) = fresh(backend).await else {
        return;
    };
    let mut tasks = JoinSet::new();
    for i in 0..300 {
        let s = store.clone();
        tasks.spawn(async move {
            let event = NewAuditEvent::new("test.burst", "system", Outcome::Success).detail("i", i);
            let id = event.id;
            (id, s.append_audit(event).await)
        });
    }
    let results = tasks.join_all().await;

    let stored = verify_chain(store.as_ref()).await;
    assert_eq!(seqs(&stored), (1..=300).collect::<Vec<_>>());
    let mut seen = HashSet::new();
    for (id, result) in results {
        let record = result.expect("every append succeeds");
        assert_eq!(record.event.id, id, "a caller got another caller's record");
        assert!(seen.insert(record.seq), "seq {} handed out twice", record.seq);
        let row = &stored[(record.seq - 1) as usize];
        assert_eq!(row.hash, record.hash);
        assert_eq!(row, &record);
    }
    assert_eq!(seen.len(), 300);
}

async fn audit_verify_is_not_fooled_by_a_busy_server(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let store = app.state.store.clone();
    let writer = tokio::spawn(async move {
        for i in 0..400 {
            let e =
                airlock::domain::NewAuditEvent::new("test.busy", "test", airlock::domain::Outcome::Success)
                    .detail("i", i);
            store.append_audit(e).await.unwrap();
        }
    });
    let mut checks = 0;
    while !writer.is_finished() {
        airlock::store::verify_store(app.store())
            .await
            .expect("an intact chain verifies while it grows");
        checks += 1;
    }
    writer.await.unwrap();
    assert!(checks > 0);
    let v = airlock::store::verify_store(app.store()).await.unwrap();
    assert!(v.events >= 400);
}

crate::both_backends!(
    a_migrated_store_is_ready_and_migrating_again_applies_nothing,
    an_unmigrated_database_reports_pending_migrations_until_migrated,
    init_meta_keeps_the_first_value_and_a_missing_key_is_none,
    an_agent_round_trips_every_field,
    agents_are_listed_by_environment_then_name,
    an_agent_name_is_unique_within_its_environment_only,
    looking_up_a_missing_agent_is_not_found,
    updating_an_agent_changes_only_that_field_and_bumps_updated_at,
    updating_a_missing_agent_is_not_found_and_audits_nothing,
    a_write_whose_audit_event_cannot_be_stored_is_rolled_back,
    an_agents_environment_cannot_be_changed_even_by_raw_sql,
    a_keyset_has_at_most_one_active_key,
    signing_keys_are_listed_newest_first_within_one_second,
    a_fresh_chain_starts_at_genesis,
    concurrent_appends_form_one_contiguous_verified_chain,
    audit_details_round_trip_exactly,
    audit_details_with_floats_round_trip_exactly,
    two_replicas_append_to_one_chain,
    group_commit_answers_every_caller_with_its_own_stored_record,
    audit_verify_is_not_fooled_by_a_busy_server,
);
