-- People, their sessions, refresh tokens, device codes and sign-in throttling.

create table users (
    id uuid primary key,
    username text not null unique,
    password_hash text not null,
    roles text not null,
    totp_sealed bytea,
    totp_pending_sealed bytea,
    totp_last_step bigint,
    disabled boolean not null default false,
    created_at timestamptz not null,
    updated_at timestamptz not null
);

-- kind: 'cli' (device flow or password login) or 'web' (browser sign-in for the pages).
create table sessions (
    id uuid primary key,
    user_id uuid not null references users (id),
    kind text not null check (kind in ('cli', 'web')),
    secret_hash bytea unique,
    created_at timestamptz not null,
    last_used_at timestamptz not null,
    expires_at timestamptz not null,
    revoked_at timestamptz,
    revoked_reason text
);

create index sessions_user on sessions (user_id);

create table refresh_tokens (
    token_hash bytea primary key,
    session_id uuid not null references sessions (id),
    created_at timestamptz not null,
    used_at timestamptz
);

create index refresh_tokens_session on refresh_tokens (session_id);

create table device_codes (
    id uuid primary key,
    device_code_hash bytea not null unique,
    user_code text not null unique,
    client_id text not null,
    status text not null check (status in ('pending', 'approved', 'denied', 'consumed')),
    interval_secs bigint not null,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    last_polled_at timestamptz,
    user_id uuid references users (id),
    session_id uuid references sessions (id)
);

create table login_throttle (
    key text primary key,
    failures bigint not null,
    blocked_until timestamptz,
    updated_at timestamptz not null
);
