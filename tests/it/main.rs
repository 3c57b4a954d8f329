//! Integration tests: one binary, the real server over HTTP, a fresh database per test,
//! every behaviour on SQLite and PostgreSQL.
//!
//! `support/` is the one harness; the tests are grouped by the surface they exercise.

mod support;

mod cli;
mod invariants;
mod oauth;
mod server;
mod store;
mod v1;
mod web;
mod wire_snapshot;

// The harness's paths before it became `support`, for branches written against them.
// New code names `crate::support`; these go once those branches are merged.
#[allow(unused_imports)]
use support as escalation_support;
#[allow(unused_imports)]
use support as harness;
