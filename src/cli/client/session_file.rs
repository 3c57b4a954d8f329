//! The session file: where the CLI keeps a person's session, and the lock every
//! process that may refresh it takes. The client in [`super::api`] uses, refreshes and
//! saves it.
//!
//! SECURITY: the file lives under `$XDG_CONFIG_HOME/airlock/` (or `~/.config/airlock/`)
//! in a 0700 directory, is written 0600 via rename, and is refused if anyone else could
//! read it. A directory the person chose with `AIRLOCK_SESSION_FILE` is created 0700 when
//! missing but never re-moded when it exists (it may be shared, like `/tmp`).
//! `airlock exec` points `AIRLOCK_SESSION_FILE` at `/dev/null` for its child, which this
//! module treats as "no session here".
//!
//! Refresh tokens rotate and a reused one ends the whole session, so every process that
//! may refresh takes an exclusive `flock` on `session.json.lock` (beside the file) and,
//! while holding it, reloads the session from disk, refreshes only if the stored access
//! token is about to expire, and saves. A long-lived process (`airlock exec`) thus picks
//! up tokens another `airlock` refreshed instead of presenting a spent refresh token.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::wire::SessionTokens;

/// Where a child of `airlock exec` is pointed: it has no session of its own.
pub const NO_SESSION: &str = "/dev/null";

/// What the file holds.
#[derive(Serialize, Deserialize)]
pub struct SessionFile {
    /// Server base URL.
    pub server: String,
    /// Who.
    pub username: String,
    /// Session id.
    pub session_id: String,
    /// Current session access token.
    pub access_token: String,
    /// Its expiry (Unix seconds).
    pub access_expires_at: i64,
    /// Current refresh token.
    pub refresh_token: String,
}

impl SessionFile {
    /// From a token response.
    pub fn from_tokens(server: &str, t: SessionTokens) -> SessionFile {
        let expires_in = i64::try_from(t.expires_in).unwrap_or(i64::MAX / 2);
        SessionFile {
            server: server.trim_end_matches('/').to_string(),
            username: t.username,
            session_id: t.session_id.to_string(),
            access_token: t.access_token,
            access_expires_at: time::OffsetDateTime::now_utc()
                .unix_timestamp()
                .saturating_add(expires_in),
            refresh_token: t.refresh_token,
        }
    }
}

/// The session file's path.
pub fn path() -> anyhow::Result<PathBuf> {
    Ok(location()?.0)
}

/// The session file's path, and whether the person chose it with `AIRLOCK_SESSION_FILE`.
pub(super) fn location() -> anyhow::Result<(PathBuf, bool)> {
    if let Some(p) = std::env::var_os("AIRLOCK_SESSION_FILE") {
        return Ok((PathBuf::from(p), true));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set; cannot find the session file")?;
    Ok((base.join("airlock").join("session.json"), false))
}

/// Read the session, refusing a file others can read.
pub fn load() -> anyhow::Result<SessionFile> {
    let p = path()?;
    if p == Path::new(NO_SESSION) {
        bail!("this process was started by airlock exec and has no session of its own; use $AIRLOCK_TOKEN");
    }
    let meta = match std::fs::metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("not logged in: run `airlock login --server URL`")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            bail!(
                "refusing the session file {}: other users can access it (mode {:o}); \
                 run `chmod 600 {}`, or `airlock logout` and log in again",
                p.display(),
                mode & 0o777,
                p.display()
            );
        }
        if meta.uid() != nix::unistd::getuid().as_raw() {
            bail!(
                "refusing the session file {}: it belongs to another user",
                p.display()
            );
        }
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    parse(&text, &p)
}

/// Parse the text of the session file at `p` (named in the error). Public so the fuzz
/// targets run this very code.
pub fn parse(text: &str, p: &Path) -> anyhow::Result<SessionFile> {
    serde_json::from_str(text).with_context(|| format!("{} is not an Airlock session file", p.display()))
}

/// The directory that holds the session file at `p`.
fn dir_of(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Make sure the session file's directory exists. A directory this creates is 0700, and
/// so is the default `.../airlock` directory; an existing directory the person chose
/// with `AIRLOCK_SESSION_FILE` is left exactly as it is (it may be shared, like `/tmp`).
pub(super) fn prepare_dir(p: &Path, chosen: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = dir_of(p);
    let created = if dir.is_dir() {
        false
    } else {
        if let Some(parent) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => false,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    };
    if created || !chosen {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    }
    Ok(())
}

/// Write the session atomically with mode 0600 (see [`prepare_dir`] for the directory).
///
/// Callers that replace a session another process might be refreshing hold [`lock`].
pub fn save(s: &SessionFile) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let (p, chosen) = location()?;
    if p == Path::new(NO_SESSION) {
        bail!("this process was started by airlock exec; it cannot keep a session");
    }
    prepare_dir(&p, chosen)?;
    let dir = dir_of(&p);
    let mut tmp = tempfile::Builder::new()
        .prefix(".session-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)?;
    tmp.write_all(serde_json::to_string_pretty(s)?.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&p)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", p.display(), e.error))?;
    Ok(())
}

/// How long to wait for another `airlock` process to finish with the session.
const LOCK_WAIT: Duration = Duration::from_secs(90);

/// Exclusive hold of the session (an `flock` on `session.json.lock`); released on drop.
pub struct SessionLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

fn lock_path(p: &Path) -> PathBuf {
    let mut s: OsString = p.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Open (creating it 0600) the lock file, refusing a symlink or another user's file.
fn open_lock_file(lp: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(lp)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("not logged in: run `airlock login --server URL`")
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open the session lock {}", lp.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", lp.display()))?;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        bail!(
            "refusing the session lock {}: it belongs to another user",
            lp.display()
        );
    }
    Ok(file)
}

/// Take the session lock, waiting while another `airlock` process holds it. The session's
/// directory must exist (it does once a session was saved).
pub async fn lock() -> anyhow::Result<SessionLock> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    let p = path()?;
    if p == Path::new(NO_SESSION) {
        bail!("this process was started by airlock exec and has no session of its own; use $AIRLOCK_TOKEN");
    }
    let lp = lock_path(&p);
    let mut file = open_lock_file(&lp)?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        // Non-blocking attempts, so a waiting process never ties up a runtime thread.
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(SessionLock { _lock: lock }),
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => {
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "another airlock process has held {} for over {}s; try again",
                        lp.display(),
                        LOCK_WAIT.as_secs()
                    );
                }
                file = f;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err((_, e)) => bail!("cannot lock {}: {e}", lp.display()),
        }
    }
}

/// Remove the session file.
pub fn remove() -> anyhow::Result<()> {
    let p = path()?;
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.display())),
    }
}
