-- Core schema: settings, signing keys, agents, the audit hash chain.

create table meta (
    key text primary key,
    value blob not null
);

create table signing_keys (
    kid text primary key,
    keyset text not null,
    public_key blob not null,
    sealed_private_key blob not null,
    status text not null check (status in ('active', 'retired')),
    created_at text not null
);

-- At most one signing key per key set is active.
create unique index signing_keys_one_active on signing_keys (keyset) where status = 'active';

create table agents (
    id blob primary key,
    client_id text not null unique,
    name text not null,
    environment text not null,
    allowed_scopes text not null,
    default_scopes text not null,
    disabled boolean not null default false,
    secret_hash blob not null,
    created_at text not null,
    updated_at text not null,
    unique (environment, name)
);

-- Invariant 2: an agent's environment is fixed at registration, whatever code runs.
create trigger agents_environment_is_fixed
before update of environment on agents
when new.environment is not old.environment
begin
    select raise(abort, 'an agent''s environment cannot change');
end;

create table audit_events (
    seq integer primary key,
    id blob not null unique,
    time text not null,
    kind text not null,
    actor text not null,
    environment text,
    subject text,
    outcome text not null,
    details text not null,
    prev_hash blob not null,
    hash blob not null
);

create index audit_events_kind on audit_events (kind);

-- The head of the chain. Every writer locks this row first, which serialises appends
-- across processes and lets `audit verify` notice events removed from the end.
create table audit_head (
    id integer primary key check (id = 1),
    seq integer not null,
    hash blob not null
);

insert into audit_head (id, seq, hash) values (1, 0, zeroblob(32));
