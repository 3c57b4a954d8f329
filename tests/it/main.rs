//! Integration tests: one binary, the real server over HTTP, a fresh database per test,
//! every behaviour on SQLite and PostgreSQL.

mod browser;
mod cli;
mod connections;
mod contract;
mod edge_hygiene;
mod escalation_cli;
mod escalation_props;
mod escalation_store;
mod escalation_support;
mod escalations;
mod failclosed;
mod flood_limits;
mod hardening;
mod harness;
mod introspection;
mod invariant2;
mod owners_and_csrf;
mod people;
mod people_cli;
mod person_hardening;
mod session_cli;
mod stepup;
mod tokens;
mod webhooks;
mod wire_snapshot;
