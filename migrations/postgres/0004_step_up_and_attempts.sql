-- Sessions remember whether they were signed in with TOTP, and when the person last
-- confirmed a fresh code (step-up). Admin and approver roles count only in sessions
-- signed in with TOTP; admin changes need a recent step-up.
alter table sessions add column totp_verified boolean not null default false;
alter table sessions add column stepped_up_at timestamptz;

-- A device approval carries the approving browser session's TOTP status to the CLI
-- session it creates, and the page shows where the request came from.
alter table device_codes add column totp_verified boolean not null default false;
alter table device_codes add column client_address text;

-- Sign-in attempts, counted atomically before any password is checked, so a burst of
-- concurrent attempts cannot slip past the throttle. Keys hold no typed username in
-- clear (user keys are keyed hashes). Times are Unix microseconds.
create table login_attempts (
    key text primary key,
    attempts bigint not null,
    window_start_us bigint not null,
    blocked_until_us bigint not null
);

drop table login_throttle;
