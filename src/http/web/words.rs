//! Plain text the pages show: sentences, times and lengths of time in words, keys in
//! groups. No markup here: the templates escape whatever these return.

use time::OffsetDateTime;

/// The first letter in capitals.
pub(super) fn capitalised(s: &str) -> String {
    let mut out = s.to_owned();
    if let Some(first) = out.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    out
}

/// A message as a sentence: capitalised, with a full stop.
pub(super) fn sentence(m: &str) -> String {
    let mut s = capitalised(m.trim());
    if !s.ends_with(['.', '!', '?', ')']) {
        s.push('.');
    }
    s
}

/// `ABCDEFGH` as `ABCD EFGH`: a key is easier to type in groups.
pub(super) fn group(s: &str, n: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    chars
        .chunks(n)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A UTC timestamp, `2025-03-01 14:03:09 UTC`.
pub(super) fn clock(t: OffsetDateTime) -> String {
    crate::domain::utc_stamp(t)
}

/// `3 minutes ago`.
pub(super) fn ago(t: OffsetDateTime, at: OffsetDateTime) -> String {
    let secs = (at - t).whole_seconds();
    if secs < 5 {
        "just now".to_string()
    } else {
        format!("{} ago", span(secs))
    }
}

/// A length of time in words, to the two largest units: `1 hour 30 minutes`.
pub(super) fn span(secs: i64) -> String {
    let secs = secs.max(0);
    let units = [(86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")];
    let mut parts = Vec::new();
    let mut left = secs;
    for (size, name) in units {
        let n = left / size;
        if n > 0 {
            parts.push(format!("{n} {name}{}", if n == 1 { "" } else { "s" }));
            left -= n * size;
        }
        if parts.len() == 2 || (!parts.is_empty() && n == 0) {
            break;
        }
    }
    if parts.is_empty() {
        "0 seconds".to_string()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_words_to_two_units() {
        assert_eq!(span(0), "0 seconds");
        assert_eq!(span(1), "1 second");
        assert_eq!(span(30 * 60), "30 minutes");
        assert_eq!(span(90 * 60), "1 hour 30 minutes");
        assert_eq!(span(3_600 + 1), "1 hour");
        assert_eq!(span(2 * 86_400 + 3_600 + 61), "2 days 1 hour");
        assert_eq!(span(-5), "0 seconds");
    }

    #[test]
    fn messages_become_sentences() {
        assert_eq!(
            sentence("you cannot decide your own request"),
            "You cannot decide your own request."
        );
        assert_eq!(sentence("done."), "Done.");
    }

    #[test]
    fn clock_is_utc() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(clock(t), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn keys_are_grouped_for_typing() {
        assert_eq!(group("ABCDEFGHIJ", 4), "ABCD EFGH IJ");
    }
}
