-- People, their sessions, refresh tokens, device codes and sign-in throttling.

create table users (
    id blob primary key,
    username text not null unique,
    password_hash text not null,
    roles text not null,
    totp_sealed blob,
    totp_pending_sealed blob,
    totp_last_step integer,
    disabled boolean not null default false,
    created_at text not null,
    updated_at text not null
);

-- kind: 'cli' (device flow or password login) or 'web' (browser sign-in for the pages).
create table sessions (
    id blob primary key,
    user_id blob not null references users (id),
    kind text not null check (kind in ('cli', 'web')),
    secret_hash blob unique,
    created_at text not null,
    last_used_at text not null,
    expires_at text not null,
    revoked_at text,
    revoked_reason text
);

create index sessions_user on sessions (user_id);

create table refresh_tokens (
    token_hash blob primary key,
    session_id blob not null references sessions (id),
    created_at text not null,
    used_at text
);

create index refresh_tokens_session on refresh_tokens (session_id);

create table device_codes (
    id blob primary key,
    device_code_hash blob not null unique,
    user_code text not null unique,
    client_id text not null,
    status text not null check (status in ('pending', 'approved', 'denied', 'consumed')),
    interval_secs integer not null,
    created_at text not null,
    expires_at text not null,
    last_polled_at text,
    user_id blob references users (id),
    session_id blob references sessions (id)
);

create table login_throttle (
    key text primary key,
    failures integer not null,
    blocked_until text,
    updated_at text not null
);
