//! What `airlock agent run` and `airlock exec` share: fetch a token, start the command
//! with it, keep it fresh until the command exits.
//!
//! The child gets `AIRLOCK_TOKEN` (the first token), `AIRLOCK_TOKEN_FILE` (a 0600 file
//! in a 0700 directory, rewritten atomically before each expiry) and `AIRLOCK_ENV`.
//! SECURITY: the agent's secret is removed from the child's environment, and the
//! token directory is deleted when the runner exits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::{Instant, sleep_until};

use std::future::Future;
use std::pin::Pin;

use super::api::{ClientError, FetchedToken};
use super::session_file::NO_SESSION;

/// When to refresh a token that lives `expires_in` seconds: at two thirds of its life.
fn refresh_after(expires_in: u64) -> Duration {
    Duration::from_millis((expires_in.max(3) * 1000) * 2 / 3)
}

/// Something that fetches a fresh token: a client-credentials client or a session exchange.
pub(super) type Fetch =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<FetchedToken, ClientError>> + Send>> + Send>;

/// Start `command` with a token from `fetch` and keep it fresh until it exits.
pub(super) async fn run_with(env: &str, command: &[String], mut fetch: Fetch) -> anyhow::Result<ExitCode> {
    let first = match fetch().await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot start {}: {e}", command[0]);
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    let dir = token_dir()?;
    let token_file = dir.path().join("token");
    write_token(&token_file, &first)?;

    // Handlers first, so a signal arriving while the child starts is forwarded, not fatal.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut child = tokio::process::Command::new(&command[0]);
    child.args(&command[1..]);
    // SECURITY: no AIRLOCK_* variable of ours reaches the child (agent secrets, master
    // keys, session locations); it gets its token and nothing that leads to a session.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AIRLOCK_") {
            child.env_remove(&key);
        }
    }
    child
        .env("AIRLOCK_TOKEN", first.access_token.expose_secret())
        .env("AIRLOCK_TOKEN_FILE", &token_file)
        .env("AIRLOCK_ENV", env)
        .env("AIRLOCK_SESSION_FILE", NO_SESSION);
    let mut child = child
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {:?}: {e}", command[0]))?;
    let pid = child.id();
    let mut refresh_at = Instant::now() + refresh_after(first.expires_in);
    let mut expires_at = Instant::now() + Duration::from_secs(first.expires_in);

    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            // Ctrl-C in a terminal already reached the child (same foreground process
            // group); forwarding it too would deliver it twice.
            _ = sigint.recv() => if !interrupt_came_from_terminal() {
                forward(pid, nix::sys::signal::Signal::SIGINT)
            },
            _ = sigterm.recv() => forward(pid, nix::sys::signal::Signal::SIGTERM),
            _ = sleep_until(refresh_at) => {
                match refresh(&mut fetch, &token_file).await {
                    Ok(t) => {
                        refresh_at = Instant::now() + refresh_after(t.expires_in);
                        expires_at = Instant::now() + Duration::from_secs(t.expires_in);
                        tracing::info!(expires_in = t.expires_in, "token refreshed");
                    }
                    Err(e) => {
                        let left = expires_at.saturating_duration_since(Instant::now());
                        let retry = (left / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
                        tracing::warn!(error = %e, retry_in = ?retry, token_left = ?left, "token refresh failed");
                        refresh_at = Instant::now() + retry;
                    }
                }
            }
        }
    };
    drop(dir);
    Ok(exit_code(status))
}

async fn refresh(fetch: &mut Fetch, path: &Path) -> anyhow::Result<FetchedToken> {
    let t = fetch().await?;
    write_token(path, &t)?;
    Ok(t)
}

/// Whether we are the terminal's foreground process group, in which case a SIGINT we got
/// from Ctrl-C was also delivered to the child.
fn interrupt_came_from_terminal() -> bool {
    let stdin = std::io::stdin();
    nix::unistd::tcgetpgrp(&stdin).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}

fn forward(pid: Option<u32>, signal: nix::sys::signal::Signal) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

#[cfg(unix)]
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    }
}

/// A private directory for the token file.
fn token_dir() -> anyhow::Result<tempfile::TempDir> {
    let base: PathBuf = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("airlock-token-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(base)
        .map_err(|e| anyhow::anyhow!("cannot create a private directory for the token: {e}"))
}

/// Write the token to a 0600 temporary file beside `path` and rename it into place, so
/// a reader never sees a half-written token.
fn write_token(path: &Path, token: &FetchedToken) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".token-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(token.access_token.expose_secret().as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write the token file: {}", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_well_before_expiry() {
        assert_eq!(refresh_after(600), Duration::from_secs(400));
        assert!(refresh_after(0) >= Duration::from_secs(2));
    }
}
