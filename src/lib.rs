//! Airlock: a credential broker that keeps environments apart.
//!
//! It issues short-lived, environment-scoped tokens so that an agent or person working
//! in one environment never holds a credential another environment accepts. The ten
//! invariants in DESIGN.md are kept by the modules named in their docs:
//! `token` (key isolation), `policy` (bound agents, gated scopes, short life),
//! `store` + `audit` (fail closed, tamper evidence), `secrets` (secrets at rest).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agents;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
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
pub mod session_file;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod token;
pub mod totp;
