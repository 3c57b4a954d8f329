//! Integration tests: one binary, the real server over HTTP, a fresh database per test,
//! every behaviour on SQLite and PostgreSQL.

mod browser;
mod cli;
mod contract;
mod failclosed;
mod hardening;
mod harness;
mod people;
mod people_cli;
mod session_cli;
mod stepup;
mod tokens;
