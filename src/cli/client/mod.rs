//! Client commands: everything that talks to a running Airlock over HTTP, through the
//! one typed client in [`api`] (`login`, `logout`, `whoami`, `token`, `exec`, `step-up`,
//! `totp`, `user`, `escalate` and the decisions, `grants`, `agent token|run`).
//!
//! Nothing here opens the store or builds the server's state: `.ci/layers.py` refuses an
//! import of `crate::store`, `crate::state` or `crate::app` (or of any service) under
//! `src/cli/client/`. What these commands may know of the server is `crate::wire`.
//!
//! Passwords and TOTP codes are read from the terminal without echo, or from standard
//! input with `--password-stdin` / `--code-stdin` (`crate::cli::prompt`).

pub mod agent;
pub mod api;
mod error;
pub mod escalate;
mod run;
pub mod session;
pub mod session_file;
pub mod token;
pub mod users;

pub use crate::cli::prompt::{read_code, read_secret};
pub use api::network_error;

/// Percent-encode one path segment (names and ids are passed on as given).
pub fn seg(s: &str) -> String {
    api::form_encode(s)
}
