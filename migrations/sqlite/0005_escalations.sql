-- Escalations (requests for production or destructive access), their approvals and
-- history, and the grants approved requests become.

-- requester_kind: 'person' (signed-in human) or 'agent' (a registered agent, or a
-- process acting for a person, whose person is then the sponsor).
-- holder: who may use the grant, 'user:<uuid>' or 'agent:<client_id>'; holder_actor
-- narrows a person's grant to one delegated process.
create table escalations (
    id blob primary key,
    environment text not null,
    scopes text not null,
    duration_secs integer not null,
    reason text not null,
    requester_kind text not null check (requester_kind in ('person', 'agent')),
    requester text not null,
    requester_user_id blob references users (id),
    sponsor text,
    sponsor_user_id blob references users (id),
    holder text not null,
    holder_actor text,
    quorum integer not null check (quorum >= 1),
    state text not null check (state in ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    created_at text not null,
    expires_at text not null,
    decided_at text,
    decided_by text,
    decision_reason text
);

create index escalations_pending on escalations (state, expires_at);
create index escalations_created on escalations (created_at);

-- One row per approving person: the primary key is what makes the quorum count
-- distinct people.
create table escalation_approvals (
    escalation_id blob not null references escalations (id),
    approver_id blob not null references users (id),
    approver text not null,
    approved_at text not null,
    primary key (escalation_id, approver_id)
);

create table escalation_events (
    id integer primary key autoincrement,
    escalation_id blob not null references escalations (id),
    at text not null,
    kind text not null,
    actor text not null,
    note text
);

create index escalation_events_escalation on escalation_events (escalation_id, id);

-- escalation_id is unique: one request can never become two grants.
create table grants (
    id blob primary key,
    escalation_id blob not null unique references escalations (id),
    environment text not null,
    scopes text not null,
    holder text not null,
    holder_actor text,
    starts_at text not null,
    ends_at text not null,
    session_id blob references sessions (id),
    revoked_at text,
    revoked_by text,
    revoked_reason text,
    end_recorded boolean not null default false
);

create index grants_holder on grants (holder, environment);
create index grants_ending on grants (end_recorded, ends_at);
