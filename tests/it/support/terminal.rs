//! The `airlock` binary as people, agents and operators run it: a real subprocess with
//! nothing inherited but `PATH`, in a [`Terminal`] of its own (HOME, config, data dir,
//! TMPDIR), against the test server or none.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::app::{TestAgent, TestApp};
use super::people::{PASSWORD, Person};

/// No CLI process may outlive this; a hung child fails the test instead of the suite.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// How long a running CLI process may take to react to something (a decision, a signal).
const QUICKLY: Duration = Duration::from_secs(30);

/// A private place for one person's (or operator's) CLI: `HOME`, `XDG_CONFIG_HOME` (so
/// the session file), `AIRLOCK_DATA_DIR`, `TMPDIR`, and `OUT` for files that scripts the
/// CLI runs write. `AIRLOCK_SERVER` names the test server unless made without one.
pub struct Terminal {
    dir: tempfile::TempDir,
    server: Option<String>,
    /// `AIRLOCK_SESSION_FILE`, when the test chooses where the session lives.
    pub session_file: Option<PathBuf>,
}

impl Terminal {
    /// A terminal talking to `app`.
    pub fn new(app: &TestApp) -> Terminal {
        Terminal::with_server(&app.base)
    }

    /// A terminal talking to `server`.
    pub fn with_server(server: &str) -> Terminal {
        Terminal::create(Some(server.to_string()))
    }

    /// A terminal with no `AIRLOCK_SERVER`: operator commands, or a server given by flag.
    pub fn without_server() -> Terminal {
        Terminal::create(None)
    }

    fn create(server: Option<String>) -> Terminal {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["home", "config", "data", "tmp", "out"] {
            std::fs::create_dir(dir.path().join(sub)).expect("terminal dir");
        }
        Terminal {
            dir,
            server,
            session_file: None,
        }
    }

    /// A path inside this terminal's private directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where child processes put temporary files (the runner's token directory).
    pub fn tmp(&self) -> PathBuf {
        self.path("tmp")
    }

    /// Where scripts run by `agent run` write what they saw (`$OUT`).
    pub fn out(&self, name: &str) -> PathBuf {
        self.path("out").join(name)
    }

    /// The session file the CLI uses.
    pub fn session_path(&self) -> PathBuf {
        self.session_file
            .clone()
            .unwrap_or_else(|| self.path("config/airlock/session.json"))
    }

    /// The session file as saved.
    pub fn saved(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.session_path()).unwrap()).unwrap()
    }

    /// `airlock` with this terminal's environment and nothing inherited but `PATH`;
    /// standard input empty, the output piped.
    pub fn airlock(&self) -> Command {
        self.program(TestApp::bin())
    }

    /// `program` (a shell, say) with this terminal's environment, as [`Terminal::airlock`].
    pub fn program(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("USER", "tester")
            .env("TMPDIR", self.tmp())
            .env("AIRLOCK_DATA_DIR", self.path("data"))
            .env("OUT", self.path("out"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(server) = &self.server {
            cmd.env("AIRLOCK_SERVER", server);
        }
        if let Some(f) = &self.session_file {
            cmd.env("AIRLOCK_SESSION_FILE", f);
        }
        cmd
    }

    /// `airlock ARGS...`.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.airlock();
        cmd.args(args);
        cmd
    }

    /// `airlock --database URL` with the app's master key: store-direct commands.
    pub fn admin(&self, app: &TestApp) -> Command {
        let mut cmd = self.airlock();
        cmd.env("AIRLOCK_MASTER_KEY", app.master_key_b64())
            .arg("--database")
            .arg(&app.db.url);
        cmd
    }

    /// Run `airlock ARGS...` to completion with `stdin` as its standard input.
    pub async fn run(&self, args: &[&str], stdin: &str) -> Out {
        run_with_input(self.cmd(args), stdin).await
    }

    /// Start `airlock ARGS...`, which keeps running (standard input empty).
    pub fn spawn(&self, args: &[&str]) -> Running {
        spawn(self.cmd(args))
    }

    /// `airlock login` with [`PASSWORD`] from standard input (no TOTP code).
    pub async fn login(&self, username: &str) -> Out {
        self.run(
            &["login", "--password", "--username", username, "--password-stdin"],
            &format!("{PASSWORD}\n"),
        )
        .await
    }

    /// Sign in with password and a fresh TOTP code of `p`, both from standard input.
    pub async fn login_with_code(&self, p: &mut Person) {
        let code = p.code().await;
        let out = self
            .run(
                &[
                    "login",
                    "--password",
                    "--username",
                    p.name(),
                    "--password-stdin",
                    "--code-stdin",
                ],
                &format!("{PASSWORD}\n{code}\n"),
            )
            .await;
        assert_eq!(out.code, 0, "login of {}: {}", p.name(), out.stderr);
    }

    /// Register an agent with `airlock agent create --json` (store-direct).
    pub async fn agent_create(&self, app: &TestApp, env: &str, name: &str, scopes: &[&str]) -> TestAgent {
        let mut cmd = self.admin(app);
        cmd.args(["agent", "create", "--env", env, "--name", name, "--json"]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        let out = run(&mut cmd).await;
        out.expect_success("agent create");
        let v = out.json();
        TestAgent {
            client_id: v["client_id"].as_str().expect("client_id").to_string(),
            secret: SecretString::from(v["client_secret"].as_str().expect("client_secret").to_string()),
        }
    }

    /// A file holding `secret` with `mode`.
    pub fn secret_file(&self, name: &str, secret: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .expect("secret file");
        std::io::Write::write_all(&mut f, format!("{secret}\n").as_bytes()).expect("write secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// Token directories the runner left behind in TMPDIR.
    pub fn leftover_token_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp())
            .expect("read TMPDIR")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("airlock-token-"))
            .collect()
    }
}

/// What a finished CLI process left.
pub struct Out {
    pub status: ExitStatus,
    /// The exit code; -1 for a process ended by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn new(status: ExitStatus, stdout: String, stderr: String) -> Out {
        Out {
            status,
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        }
    }

    /// Assert the exit code, showing the output when it differs.
    pub fn expect_code(&self, code: i32, what: &str) -> &Out {
        assert_eq!(
            self.status.code(),
            Some(code),
            "{what}: exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn expect_success(&self, what: &str) -> &Out {
        self.expect_code(0, what)
    }

    /// A non-zero exit (not a death by signal).
    pub fn expect_failure(&self, what: &str) -> &Out {
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "{what}: expected a non-zero exit, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn stderr_has(&self, needle: &str, what: &str) -> &Out {
        assert!(
            self.stderr.contains(needle),
            "{what}: stderr should mention {needle:?}\n--- stderr\n{}",
            self.stderr
        );
        self
    }

    /// Standard output, which must be JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// A failure that is a clean message, not a crash.
    pub fn no_panic(&self) -> &Out {
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(
                !self.stderr.contains(bad),
                "stderr shows a panic:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// Run to completion within `limit`.
pub async fn run_within(cmd: &mut Command, limit: Duration) -> Out {
    let child = cmd.spawn().expect("airlock starts");
    wait_with_output(child, limit, cmd).await
}

/// Run to completion within [`DEADLINE`].
pub async fn run(cmd: &mut Command) -> Out {
    run_within(cmd, DEADLINE).await
}

/// Run to completion within [`DEADLINE`], with `stdin` as standard input.
pub async fn run_with_input(mut cmd: Command, stdin: &str) -> Out {
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("airlock starts");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    wait_with_output(child, DEADLINE, &cmd).await
}

/// The output of `child` (started by `cmd`) once it ends, which must be within `limit`.
async fn wait_with_output(child: tokio::process::Child, limit: Duration, cmd: &Command) -> Out {
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("airlock still running after {limit:?}: {cmd:?}"))
        .expect("airlock output");
    Out::new(
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A CLI process still running, its output collected as it comes.
pub struct Running {
    child: tokio::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

fn collect(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<String>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}

/// Start `cmd` and collect its output in the background.
pub fn spawn(mut cmd: Command) -> Running {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("airlock starts");
    drop(child.stdin.take());
    let stdout = Arc::new(Mutex::new(String::new()));
    let stderr = Arc::new(Mutex::new(String::new()));
    let readers = vec![
        collect(child.stdout.take().expect("stdout"), stdout.clone()),
        collect(child.stderr.take().expect("stderr"), stderr.clone()),
    ];
    Running {
        child,
        stdout,
        stderr,
        readers,
    }
}

impl Running {
    /// Standard output so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until `found` finds what it looks for in the output so far (standard output,
    /// standard error); at most `limit`, or the test fails saying the CLI never `did`.
    pub async fn wait_for<T>(
        &self,
        did: &str,
        limit: Duration,
        found: impl Fn(&str, &str) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(t) = found(&self.stdout(), &self.stderr()) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the CLI never {did}\nstdout: {}\nstderr: {}",
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until standard error contains `needle`.
    pub async fn wait_for_stderr(&self, needle: &str) {
        let said = format!("said {needle:?}");
        self.wait_for(&said, QUICKLY, |_, err| err.contains(needle).then_some(()))
            .await
    }

    /// The first complete line of standard error that contains `needle`, once there is
    /// one (at most `limit`).
    pub async fn stderr_line(&self, needle: &str, limit: Duration) -> String {
        let printed = format!("printed a line with {needle:?}");
        self.wait_for(&printed, limit, |_, err| {
            let complete = &err[..err.rfind('\n').map_or(0, |i| i + 1)];
            complete.lines().find(|l| l.contains(needle)).map(str::to_string)
        })
        .await
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("still running") as i32)
    }

    /// Send `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal sent");
    }

    /// Wait for the process to end (it must, within 30 s).
    pub async fn finish(self) -> Out {
        self.finish_within(QUICKLY).await
    }

    /// Wait for the process to end (it must, within `limit`).
    pub async fn finish_within(mut self, limit: Duration) -> Out {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the CLI did not finish in time\nstdout: {}\nstderr: {}",
                    self.stdout(),
                    self.stderr()
                )
            })
            .unwrap();
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        Out::new(status, self.stdout(), self.stderr())
    }
}

/// A local port nothing listens on (the listener that found it is closed again).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Wait until a server started as a child process answers `GET base/healthz`.
pub async fn wait_until_serving(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("airlock serve did not answer {base}/healthz");
}

/// The permission bits of a file or directory.
pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}
