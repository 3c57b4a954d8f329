//! Airlock: a credential broker that keeps environments apart.
//!
//! It issues short-lived, environment-scoped tokens so that an agent or person working
//! in one environment never holds a credential another environment accepts.
//!
//! Modules are layered, each importing only downward (`docs/architecture.md`, checked by
//! `.ci/layers.py`): pure (`domain`, `secrets`, `config`, `policy`, `audit`, `token`,
//! `totp`, `wire`) → infrastructure (`store`, `keyring`, `password`, `refusals`, `throttle`,
//! `notify`, `telemetry`) → `state` → services (`auth`, `people`, `agents`,
//! `escalations`, `oauth`) → edges (`http`) → `app` → `cli`.
//!
//! The ten invariants of DESIGN.md and where they are kept:
//! 1. key isolation: `keyring`, `token`, `oauth::issue` (the only signer of access tokens);
//! 2. bound agents: `policy::authenticate_agent`, `oauth` (client credentials), `store`;
//! 3. production needs a grant: `policy`, `oauth` (token exchange), `people` (session key);
//! 4. human sign-off: `policy::escalation`, `escalations` (fresh TOTP per approval);
//! 5. destructive scopes gated everywhere: `policy`, `config` (never auto-approved);
//! 6. short life: `policy` (lifetimes capped by `max_ttl` and the grant), `config`;
//! 7. fail closed: `oauth` (no token without its audit event), `store`, `refusals`;
//! 8. secrets at rest: `password`, `secrets`, `keyring`, `people`;
//! 9. tamper evidence: `audit` (chain maths), `store` (chained appends, `verify_store`);
//! 10. revocation: `auth` (every use re-reads the store), `oauth` (introspection).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agents;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod escalations;
pub mod http;
pub mod keyring;
pub mod notify;
pub mod oauth;
pub mod password;
pub mod people;
pub mod policy;
pub mod refusals;
pub mod secrets;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod token;
pub mod totp;
pub mod wire;
