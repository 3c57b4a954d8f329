//! The CLI's side of a person's session: the session file and an HTTP client that
//! refreshes tokens as needed.
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
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

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

/// Tokens as `/oauth/token` and `/v1/sessions` return them.
#[derive(Deserialize)]
pub struct SessionTokens {
    /// Session access token.
    pub access_token: String,
    /// Seconds.
    pub expires_in: i64,
    /// Refresh token.
    pub refresh_token: String,
    /// Session id.
    pub session_id: String,
    /// Who.
    pub username: String,
}

impl SessionFile {
    /// From a token response.
    pub fn from_tokens(server: &str, t: SessionTokens) -> SessionFile {
        SessionFile {
            server: server.trim_end_matches('/').to_string(),
            username: t.username,
            session_id: t.session_id,
            access_token: t.access_token,
            access_expires_at: time::OffsetDateTime::now_utc().unix_timestamp() + t.expires_in,
            refresh_token: t.refresh_token,
        }
    }
}

/// The session file's path.
pub fn path() -> anyhow::Result<PathBuf> {
    Ok(location()?.0)
}

/// The session file's path, and whether the person chose it with `AIRLOCK_SESSION_FILE`.
fn location() -> anyhow::Result<(PathBuf, bool)> {
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

/// Whether a session file exists (for commands that go over HTTP when logged in).
pub fn exists() -> bool {
    path().is_ok_and(|p| p != Path::new(NO_SESSION) && p.exists())
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
fn prepare_dir(p: &Path, chosen: bool) -> anyhow::Result<()> {
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

/// Save a new session in place of the stored one (`airlock login`). Under the lock, a
/// previous session that still loads is ended server-side first, best effort, so it does
/// not stay live unseen; then the new one is saved.
pub async fn replace(new: &SessionFile) -> anyhow::Result<()> {
    let (p, chosen) = location()?;
    if p == Path::new(NO_SESSION) {
        bail!("this process was started by airlock exec; it cannot keep a session");
    }
    prepare_dir(&p, chosen)?;
    let held = lock().await?;
    if p.exists()
        && let Ok(mut old) = SessionClient::stored()
        && let Err(e) = old.end_locked(&held).await
    {
        eprintln!(
            "note: could not end the previous session on {}: {e:#}",
            old.session.server
        );
    }
    save(new)
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

/// An HTTP client for Airlock's API that uses and refreshes the stored session.
pub struct SessionClient {
    http: reqwest::Client,
    /// The stored session.
    pub session: SessionFile,
}

/// An error answer from the server, as text for the person.
fn api_error(status: reqwest::StatusCode, body: &[u8]) -> anyhow::Error {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = v["error"]["message"]
        .as_str()
        .or_else(|| v["error_description"].as_str())
        .or_else(|| v["error"].as_str())
        .unwrap_or("unexpected answer")
        .to_string();
    anyhow::anyhow!("Airlock answered {status}: {message}")
}

/// A plain HTTP client with sane timeouts.
pub fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        // The device approval page shows this to the person approving a sign-in.
        .user_agent(format!(
            "airlock-cli/{} ({}; {})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        ))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(40))
        .build()?)
}

/// The warning for `AIRLOCK_SERVER` naming a server other than the session's: session
/// commands talk to the server the session belongs to, so the variable is not used.
fn server_mismatch(env_server: Option<&str>, session_server: &str) -> Option<String> {
    let wanted = env_server?.trim().trim_end_matches('/');
    let same = match (url::Url::parse(wanted), url::Url::parse(session_server)) {
        (Ok(a), Ok(b)) => a == b,
        _ => wanted == session_server.trim_end_matches('/'),
    };
    (!wanted.is_empty() && !same).then(|| {
        format!(
            "warning: AIRLOCK_SERVER is {wanted}, but you are signed in to {session_server}, \
             which this command uses. To use {wanted}, sign in there: airlock login --server {wanted}"
        )
    })
}

impl SessionClient {
    /// From the stored session; warns on standard error when `AIRLOCK_SERVER` names
    /// another server than the session's (see [`server_mismatch`]).
    pub fn load() -> anyhow::Result<SessionClient> {
        let client = Self::stored()?;
        if let Some(warning) = server_mismatch(
            std::env::var("AIRLOCK_SERVER").ok().as_deref(),
            &client.session.server,
        ) {
            eprintln!("{warning}");
        }
        Ok(client)
    }

    /// From the stored session, silently (`airlock login` replacing it).
    fn stored() -> anyhow::Result<SessionClient> {
        Ok(SessionClient {
            http: http()?,
            session: load()?,
        })
    }

    /// Make the access token usable after the server refused it: under the lock, reload
    /// the session and use a token another process refreshed meanwhile, else refresh
    /// (rotating the refresh token) and save.
    pub async fn refresh(&mut self) -> anyhow::Result<()> {
        let held = lock().await?;
        let refused = self.session.access_token.clone();
        self.renew_locked(&held, Some(&refused)).await
    }

    /// A usable access token: under the lock, always reload the session (another process
    /// may have rotated the refresh token), and refresh only if it is about to expire.
    async fn bearer(&mut self) -> anyhow::Result<String> {
        let held = lock().await?;
        self.renew_locked(&held, None).await?;
        Ok(self.session.access_token.clone())
    }

    /// Reload; if the stored access token is good for more than 30 s (and is not
    /// `refused`), keep it; otherwise refresh and save. Only with the lock held.
    async fn renew_locked(&mut self, _held: &SessionLock, refused: Option<&str>) -> anyhow::Result<()> {
        self.session = load()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if self.session.access_expires_at - 30 > now && refused != Some(self.session.access_token.as_str()) {
            return Ok(());
        }
        let r = self
            .http
            .post(format!("{}/oauth/token", self.session.server))
            .form(&[
                ("grant_type", "refresh_token"),
                ("client_id", crate::domain::CLI_CLIENT_ID),
                ("refresh_token", self.session.refresh_token.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach {}: {}",
                    self.session.server,
                    crate::client::network_error(e)
                )
            })?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            return Err(api_error(status, &body)
                .context("the session could not be refreshed; run `airlock login` again"));
        }
        let t: SessionTokens = serde_json::from_slice(&body).context("unexpected refresh answer")?;
        let server = self.session.server.clone();
        self.session = SessionFile::from_tokens(&server, t);
        save(&self.session)
    }

    /// End the stored session server-side, with the lock already held.
    async fn end_locked(&mut self, held: &SessionLock) -> anyhow::Result<()> {
        self.renew_locked(held, None).await?;
        let r = self
            .http
            .delete(format!("{}/v1/sessions/current", self.session.server))
            .bearer_auth(&self.session.access_token)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach {}: {}",
                    self.session.server,
                    crate::client::network_error(e)
                )
            })?;
        let status = r.status();
        if !status.is_success() {
            let body = r.bytes().await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(())
    }

    /// Call `/v1/...` with the session; one refresh and retry when the session token was
    /// refused (401 `unauthenticated`). Any other 401, such as a wrong TOTP code, is
    /// answered as it is: sending a code twice would count twice against the throttle.
    pub async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        for attempt in 0..2 {
            let token = self.bearer().await?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.session.server))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = req.send().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach {}: {}",
                    self.session.server,
                    crate::client::network_error(e)
                )
            })?;
            let status = r.status();
            let bytes = r.bytes().await?;
            let session_refused = status == reqwest::StatusCode::UNAUTHORIZED
                && serde_json::from_slice::<serde_json::Value>(&bytes)
                    .is_ok_and(|v| v["error"]["code"] == "unauthenticated");
            if session_refused && attempt == 0 {
                self.refresh().await?;
                continue;
            }
            if !status.is_success() {
                return Err(api_error(status, &bytes));
            }
            if bytes.is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&bytes).context("unexpected answer");
        }
        bail!("the session is no longer valid; run `airlock login` again")
    }

    /// RFC 8693: exchange the session for an environment token; when the session token is
    /// refused, one refresh and retry.
    pub async fn exchange(
        &mut self,
        env: &str,
        scopes: &[String],
        actor: Option<&str>,
    ) -> Result<crate::client::FetchedToken, crate::client::ClientError> {
        let first = self.exchange_once(env, scopes, actor).await;
        match &first {
            Err(crate::client::ClientError::Refused { error, .. }) if error == "invalid_grant" => {}
            _ => return first,
        }
        // The session access token expired in flight (or the clocks disagree), or another
        // process ended it: refresh once (under the lock) and try again.
        if self.refresh().await.is_err() {
            return first;
        }
        self.exchange_once(env, scopes, actor).await
    }

    async fn exchange_once(
        &mut self,
        env: &str,
        scopes: &[String],
        actor: Option<&str>,
    ) -> Result<crate::client::FetchedToken, crate::client::ClientError> {
        use crate::client::ClientError;
        let server = self.session.server.clone();
        let unreachable = |e: String| ClientError::Unreachable {
            url: server.clone(),
            reason: e,
        };
        let token = self.bearer().await.map_err(|e| unreachable(format!("{e:#}")))?;
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", crate::oauth::TOKEN_EXCHANGE_GRANT.into()),
            ("client_id", crate::domain::CLI_CLIENT_ID.into()),
            ("subject_token", token),
            ("subject_token_type", crate::oauth::ACCESS_TOKEN_TYPE.into()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        if let Some(a) = actor {
            form.push(("actor_token", a.to_string()));
            form.push(("actor_token_type", crate::oauth::PROCESS_TOKEN_TYPE.into()));
        }
        let url = format!(
            "{}/envs/{}/token",
            self.session.server,
            url::form_urlencoded::byte_serialize(env.as_bytes()).collect::<String>()
        );
        let r = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| unreachable(crate::client::network_error(e)))?;
        let status = r.status();
        let bytes = r.bytes().await.map_err(|e| unreachable(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::Protocol(format!("HTTP {status} without a JSON body")))?;
        if status.is_success() {
            Ok(crate::client::FetchedToken {
                access_token: SecretString::from(v["access_token"].as_str().unwrap_or_default().to_string()),
                expires_in: v["expires_in"].as_u64().unwrap_or(0),
                scope: v["scope"].as_str().unwrap_or_default().to_string(),
                token_type: v["token_type"].as_str().unwrap_or_default().to_string(),
            })
        } else {
            Err(ClientError::Refused {
                status: status.as_u16(),
                error: v["error"].as_str().unwrap_or("error").to_string(),
                description: v["error_description"].as_str().unwrap_or_default().to_string(),
            })
        }
    }
}

/// Read a secret from the terminal (no echo) or, with `from_stdin`, one line of stdin.
pub fn read_secret(prompt: &str, from_stdin: bool) -> anyhow::Result<SecretString> {
    let line = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        rpassword::prompt_password(prompt).context("cannot read from the terminal (use --password-stdin)")?
    };
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    if line.is_empty() {
        bail!("nothing was entered");
    }
    Ok(SecretString::from(line))
}

#[cfg(test)]
mod tests {
    use super::server_mismatch;

    #[test]
    fn airlock_server_naming_another_server_than_the_session_is_a_warning() {
        assert_eq!(server_mismatch(None, "https://a.example"), None);
        assert_eq!(server_mismatch(Some(""), "https://a.example"), None);
        assert_eq!(
            server_mismatch(Some("https://a.example/"), "https://a.example"),
            None
        );
        assert_eq!(
            server_mismatch(Some("https://A.example:443"), "https://a.example"),
            None
        );
        let w = server_mismatch(Some("https://b.example"), "https://a.example").expect("a warning");
        assert!(w.contains("signed in to https://a.example"), "{w}");
        assert!(w.contains("airlock login --server https://b.example"), "{w}");
    }
}
