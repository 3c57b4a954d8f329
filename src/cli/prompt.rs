//! Reading secrets a person types: passwords and TOTP codes come from the terminal
//! without echo, or from standard input with `--password-stdin` / `--code-stdin` (as
//! `docker login` does). They are never command-line arguments.

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};

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

/// Read a TOTP code from the terminal (`/dev/tty`) or, with `from_stdin`, one line of
/// standard input. Spaces are ignored (`123 456`).
pub fn read_code(prompt: &str, from_stdin: bool) -> anyhow::Result<SecretString> {
    let line = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read the code from standard input")?;
        s
    } else {
        rpassword::prompt_password(prompt).map_err(|_| {
            anyhow::anyhow!(
                "cannot read the code from a terminal; pass --code-stdin and give it on standard input"
            )
        })?
    };
    let code: String = line.chars().filter(|c| !c.is_whitespace()).collect();
    if code.is_empty() {
        bail!("no code was entered");
    }
    Ok(SecretString::from(code))
}

/// A new password, typed twice at a terminal (once from standard input).
pub fn new_password(from_stdin: bool) -> anyhow::Result<SecretString> {
    let first = read_secret("New password: ", from_stdin)?;
    if !from_stdin {
        let again = read_secret("Repeat it: ", false)?;
        if again.expose_secret() != first.expose_secret() {
            bail!("the passwords differ");
        }
    }
    Ok(first)
}
