//! Every `airlock ...` command that an answer or a message suggests runs as printed: it
//! parses with the real CLI definition.

use std::path::Path;

use clap::Parser;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{
    Backend, PASSWORD, approve, exchange, get, person_with_totp, post, request_ok, session_token, spawn_app,
    status_json, step_up,
};

/// Split a command line as a POSIX shell would (quotes, no expansions).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ' ') => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in `{line}`");
    if in_word {
        words.push(word);
    }
    words
}

/// The `airlock ...` commands a message suggests. Each must be in backticks; a command
/// outside them fails the test (it would escape this check).
fn suggested_commands(message: &str) -> Vec<String> {
    let parts: Vec<&str> = message.split('`').collect();
    assert!(parts.len() % 2 == 1, "unbalanced backticks: {message}");
    let outside: String = parts.iter().step_by(2).copied().collect();
    assert!(
        !outside.contains("airlock "),
        "a command outside backticks: {message}"
    );
    parts
        .iter()
        .skip(1)
        .step_by(2)
        .filter(|p| p.starts_with("airlock "))
        .map(|p| p.to_string())
        .collect()
}

/// Parse `command` with the real CLI definition.
#[track_caller]
fn assert_runs_as_printed(command: &str, context: &str) {
    let words = shell_words(command);
    if let Err(e) = airlock::cli::Cli::try_parse_from(&words) {
        panic!("`{command}` (suggested in: {context}) does not parse:\n{e}");
    }
}

/// Every command in `message` parses; the number checked.
#[track_caller]
fn check_message(message: &str) -> usize {
    let commands = suggested_commands(message);
    for c in &commands {
        assert_runs_as_printed(c, message);
    }
    commands.len()
}

async fn every_command_a_refusal_suggests_runs_as_printed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut answers: Vec<(&str, String)> = Vec::new();

    // An agent asking for a destructive scope.
    let agent = app.create_agent("staging", "migrator", &["db:read"]).await;
    let (_, body) = status_json(app.token("staging", &agent, Some("db:read db:drop")).await).await;
    answers.push(("destructive scope", body["error_description"].to_string()));
    // No session at /v1.
    let (status, body) = get(&app, "/v1/escalations", "not-a-session").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    answers.push(("no session", body["error"]["message"].to_string()));
    // A person asking for a prod token without a grant (the first-run papercut).
    let mut bob = person_with_totp(&app, "bob", &["developer"]).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:read"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    answers.push(("prod without a grant", body["error_description"].to_string()));
    // Enrolling TOTP twice.
    let (status, body) = post(&app, "/v1/me/totp", &bob.token, json!({ "password": PASSWORD })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    answers.push(("TOTP enrolled twice", body["error"]["message"].to_string()));
    // A prod grant: first use without a step-up, then from a second session.
    let mut carol = person_with_totp(&app, "carol", &["approver"]).await;
    let id = request_ok(&app, &bob.token, "prod", &["db:write"], "30m").await;
    let (status, body) = approve(&app, &mut carol, &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    answers.push(("step-up needed", body["error_description"].to_string()));
    step_up(&app, &mut bob).await;
    let (status, body) = exchange(&app, "prod", &bob.token, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let code = bob.code().await;
    let second = session_token(&app, "bob", Some(&code)).await;
    let (status, body) = exchange(&app, "prod", &second, Some("db:write"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    answers.push((
        "grant bound to another session",
        body["error_description"].to_string(),
    ));

    // Assert: each answer suggests at least one command, and each one parses.
    for (what, answer) in &answers {
        let answer: String = serde_json::from_str(answer).unwrap_or_else(|_| panic!("{what}: {answer}"));
        assert!(check_message(&answer) > 0, "{what} suggests a command: {answer}");
    }
}

/// Every command in backticks (or `<code>`) anywhere in `src/` parses: hints the
/// answers above do not reach are checked too. `{...}` format arguments stand for ids,
/// names and environments.
#[test]
fn every_command_written_in_the_source_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                files.push(entry.unwrap().path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut in_tests = false;
        for (n, line) in text.lines().enumerate() {
            // Skip unit-test modules (`#[cfg(test)]` up to their closing brace at column 0).
            if line.trim() == "#[cfg(test)]" {
                in_tests = true;
            }
            if in_tests {
                in_tests = line != "}";
                continue;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            let at = format!("{}:{}", path.display(), n + 1);
            let line = line.replace("<code>", "`").replace("</code>", "`");
            let parts: Vec<&str> = line.split('`').collect();
            if parts.len().is_multiple_of(2) {
                assert!(
                    !parts.last().unwrap().trim_start().starts_with("airlock "),
                    "{at}: keep a suggested command on one line, in backticks"
                );
            }
            for span in parts.iter().skip(1).step_by(2) {
                if !span.starts_with("airlock ") {
                    continue;
                }
                let mut command = String::new();
                let mut in_arg = false;
                for c in span.chars() {
                    match c {
                        '{' => {
                            in_arg = true;
                            command.push('X');
                        }
                        '}' => in_arg = false,
                        c if !in_arg => command.push(c),
                        _ => {}
                    }
                }
                assert_runs_as_printed(&command, &at);
                checked += 1;
            }
        }
    }
    assert!(
        checked > 10,
        "found only {checked} commands: is the scan still working?"
    );
}

#[test]
fn the_escalate_hint_is_complete() {
    let hint = airlock::policy::escalate_command("prod", &["db:read", "db:write"]);
    let commands = suggested_commands(&hint);
    assert_eq!(commands.len(), 1);
    assert_runs_as_printed(&commands[0], &hint);
    assert!(hint.contains("--duration"), "{hint}");
    // RFC 6749 section 5.2: no double quote or backslash in an error description.
    assert!(!hint.contains('"') && !hint.contains('\\'), "{hint}");
}

crate::both_backends!(every_command_a_refusal_suggests_runs_as_printed,);
