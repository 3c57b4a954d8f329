-- Core schema: settings, signing keys, agents, the audit hash chain.

create table meta (
    key text primary key,
    value bytea not null
);

create table signing_keys (
    kid text primary key,
    keyset text not null,
    public_key bytea not null,
    sealed_private_key bytea not null,
    status text not null check (status in ('active', 'retired')),
    created_at timestamptz not null
);

-- At most one signing key per key set is active.
create unique index signing_keys_one_active on signing_keys (keyset) where status = 'active';

create table agents (
    id uuid primary key,
    client_id text not null unique,
    name text not null,
    environment text not null,
    allowed_scopes text not null,
    default_scopes text not null,
    disabled boolean not null default false,
    secret_hash bytea not null,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    unique (environment, name)
);

-- Invariant 2: an agent's environment is fixed at registration, whatever code runs.
create function agents_environment_is_fixed() returns trigger language plpgsql as $$
begin
    if new.environment is distinct from old.environment then
        raise exception 'an agent''s environment cannot change';
    end if;
    return new;
end;
$$;

create trigger agents_environment_is_fixed
before update of environment on agents
for each row execute function agents_environment_is_fixed();

create table audit_events (
    seq bigint primary key,
    id uuid not null unique,
    time timestamptz not null,
    kind text not null,
    actor text not null,
    environment text,
    subject text,
    outcome text not null,
    details text not null,
    prev_hash bytea not null,
    hash bytea not null
);

create index audit_events_kind on audit_events (kind);

-- The head of the chain. Every writer locks this row first, which serialises appends
-- across replicas and lets `audit verify` notice events removed from the end.
create table audit_head (
    id integer primary key check (id = 1),
    seq bigint not null,
    hash bytea not null
);

insert into audit_head (id, seq, hash) values (1, 0, decode(repeat('00', 32), 'hex'));
