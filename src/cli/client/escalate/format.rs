//! How escalation requests and grants read in a terminal.

use time::OffsetDateTime;

use crate::domain::{EscalationState, RequesterKind};
use crate::wire::{EscalationView, GrantView};

/// `1h30m`, `45s`, `2d3h`.
pub(super) fn span(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{sec}s"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d{h}h"),
    }
}

/// `2025-01-31 14:05:00 UTC`.
fn stamp(t: OffsetDateTime) -> String {
    crate::domain::utc_stamp(t)
}

/// `2025-01-31 14:05:00 UTC (in 29m)`, `(... ago)` or `(now)`.
pub(super) fn when(t: OffsetDateTime) -> String {
    let delta = (t - OffsetDateTime::now_utc()).whole_seconds();
    match delta {
        0 => format!("{} (now)", stamp(t)),
        d if d > 0 => format!("{} (in {})", stamp(t), span(d)),
        d => format!("{} ({} ago)", stamp(t), span(-d)),
    }
}

/// `user:bob` as `bob`; agents and `system` as they are.
pub(super) fn actor(s: &str) -> &str {
    s.strip_prefix("user:").unwrap_or(s)
}

pub(super) fn age(t: OffsetDateTime) -> String {
    span((OffsetDateTime::now_utc() - t).whole_seconds())
}

pub(super) fn is_past(t: OffsetDateTime) -> bool {
    t <= OffsetDateTime::now_utc()
}

/// A request's state; a pending one past its deadline is expired (the server treats it
/// so whether or not its sweeper has run yet).
pub(super) fn state_of(view: &EscalationView) -> EscalationState {
    match view.state {
        EscalationState::Pending if is_past(view.expires_at) => EscalationState::Expired,
        s => s,
    }
}

/// Scopes with the destructive ones marked: `db:write, db:drop!`.
pub(super) fn scopes_marked(view: &EscalationView) -> String {
    view.scopes
        .iter()
        .map(|s| {
            if view.destructive_scopes.contains(s) {
                format!("{s}!")
            } else {
                s.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `bob`, `process:x (agent, for alice)`, or `agt_x (agent, owned by alice)`.
pub(super) fn requester(view: &EscalationView) -> String {
    let who = &view.requester;
    match (view.requester_kind, &view.sponsor) {
        (RequesterKind::Agent, Some(_)) if view.owner.is_some() => {
            format!(
                "{who} (agent, owned by {})",
                view.owner.as_deref().unwrap_or_default()
            )
        }
        (RequesterKind::Agent, Some(sponsor)) => format!("{who} (agent, for {sponsor})"),
        (RequesterKind::Agent, None) => format!("{who} (agent)"),
        _ => who.clone(),
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Print rows as columns, the last one left ragged.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The `airlock token` command that uses a grant.
pub(super) fn token_command(env: &str, scopes: &[String]) -> String {
    let mut cmd = format!("airlock token --env {env}");
    for s in scopes {
        cmd.push_str(&format!(" --scope {s}"));
    }
    cmd
}

pub(super) fn approvers(view: &EscalationView) -> String {
    view.approvals
        .iter()
        .map(|a| a.approver.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One paragraph about a grant.
pub(super) fn grant_line(g: &GrantView) -> String {
    format!(
        "grant {} ({}) for {}: {} in {} until {}",
        g.id,
        g.status,
        g.holder_name,
        g.scopes.join(", "),
        g.environment,
        when(g.ends_at)
    )
}

/// What is being asked for, for an approver (on standard error, before the prompt).
pub(super) fn summary(view: &EscalationView) -> String {
    let mut out = String::new();
    out.push_str(&format!("request     {}\n", view.id));
    out.push_str(&format!("environment {}\n", view.environment));
    out.push_str(&format!("scopes      {}", scopes_marked(view)));
    if !view.destructive_scopes.is_empty() {
        out.push_str("   (! = destructive)");
    }
    out.push('\n');
    out.push_str(&format!("requester   {}\n", requester(view)));
    out.push_str(&format!("duration    {}\n", span(view.duration_secs)));
    out.push_str(&format!("reason      {}\n", view.reason));
    out.push_str(&format!(
        "approvals   {} of {}{}\n",
        view.approvals.len(),
        view.quorum,
        match approvers(view) {
            a if a.is_empty() => String::new(),
            a => format!(" ({a})"),
        }
    ));
    out.push_str(&format!("state       {}\n", state_of(view).as_str()));
    out
}

/// Every field and the history (`airlock escalations show`).
pub(super) fn print_view(view: &EscalationView) {
    print!("{}", summary(view));
    if view.duration_capped {
        println!("            (the duration asked for was capped to the environment's maximum)");
    }
    println!("created     {}", when(view.created_at));
    if state_of(view) == EscalationState::Pending {
        println!("pending until {}", when(view.expires_at));
    } else if let Some(by) = &view.decided_by {
        let reason = view
            .decision_reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let at = view.decided_at.map(when).unwrap_or_else(|| "-".into());
        println!("decided     {at} by {}{reason}", actor(by));
    }
    if let Some(g) = &view.grant {
        println!("grant       {}", grant_line(g));
    }
    println!("page        {}", view.url);
    println!("history:");
    for h in &view.history {
        let note = h.note.as_deref().map(|n| format!("  {n}")).unwrap_or_default();
        println!("  {}  {:<14} {}{note}", stamp(h.at), h.kind, actor(&h.actor));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use uuid::Uuid;

    /// A pending request by bob, for `scopes`, of which `destructive` are destructive.
    pub(crate) fn view(scopes: &[&str], destructive: &[&str], expires_at: OffsetDateTime) -> EscalationView {
        let t = OffsetDateTime::now_utc();
        EscalationView {
            id: Uuid::nil(),
            environment: "prod".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            duration_secs: 1800,
            reason: "migrate (TICKET-1)".into(),
            requester_kind: RequesterKind::Person,
            requester: "bob".into(),
            requester_user_id: Some(Uuid::nil()),
            sponsor: None,
            sponsor_user_id: None,
            holder: "user:x".into(),
            holder_actor: None,
            quorum: 1,
            state: EscalationState::Pending,
            created_at: t,
            expires_at,
            decided_at: None,
            decided_by: None,
            decision_reason: None,
            approvals: vec![],
            destructive_scopes: destructive.iter().map(|s| s.to_string()).collect(),
            grant: None,
            history: vec![],
            url: "https://airlock.example/approvals#req-x".into(),
            duration_capped: false,
            owner: None,
        }
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn spans_read_like_durations() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(1800), "30m");
        assert_eq!(span(90), "1m30s");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(5400), "1h30m");
        assert_eq!(span(86_400 * 2 + 3600 * 3), "2d3h");
        assert_eq!(span(-5), "0s");
    }

    #[test]
    fn destructive_scopes_are_marked() {
        let v = view(&["db:write", "db:drop"], &["db:drop"], at("2999-01-01T00:00:00Z"));
        assert_eq!(scopes_marked(&v), "db:write, db:drop!");
    }

    #[test]
    fn an_overdue_pending_request_reads_as_expired() {
        let v = view(&["db:drop"], &[], at("2000-01-01T00:00:00Z"));
        assert_eq!(state_of(&v), EscalationState::Expired);
        let v = view(&["db:drop"], &[], at("2999-01-01T00:00:00Z"));
        assert_eq!(state_of(&v), EscalationState::Pending);
    }

    #[test]
    fn requesters_say_whose_agent_asked() {
        let mut v = view(&["db:drop"], &[], at("2999-01-01T00:00:00Z"));
        assert_eq!(requester(&v), "bob");
        v.requester_kind = RequesterKind::Agent;
        v.requester = "process:claude".into();
        v.sponsor = Some("alice".into());
        assert_eq!(requester(&v), "process:claude (agent, for alice)");
        v.owner = Some("alice".into());
        assert_eq!(requester(&v), "process:claude (agent, owned by alice)");
        v.sponsor = None;
        v.owner = None;
        assert_eq!(requester(&v), "process:claude (agent)");
    }

    #[test]
    fn long_reasons_are_cut_on_one_line() {
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn the_suggested_token_command_names_every_scope() {
        assert_eq!(
            token_command("prod", &["db:write".into(), "db:drop".into()]),
            "airlock token --env prod --scope db:write --scope db:drop"
        );
        // It runs as printed.
        use clap::Parser;
        let words = token_command("prod", &["db:write".into()]);
        crate::cli::Cli::try_parse_from(words.split(' ')).expect("a valid command");
    }
}
