//! Printing settings without their secrets (`airlock config`, `Debug`).

use std::fmt;

use super::Settings;

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("mode", &self.mode)
            .field("listen", &self.listen)
            .field("public_url", &self.public_url)
            .field("database_url", &redact_url(&self.database_url))
            .field("master_key", &self.master_key.as_ref().map(|_| "[redacted]"))
            .field("environments", &self.environments.keys())
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

/// Replace the password of a URL with `***` for display.
///
/// ```
/// use airlock::config::redact_url;
/// assert_eq!(redact_url("postgres://app:hunter2@db/airlock"), "postgres://app:***@db/airlock");
/// assert!(!redact_url("host=db password=hunter2").contains("hunter2"));
/// ```
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // sqlx also takes `?password=` (and TLS key passphrases) in the query.
            if u.query().is_some() {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let secret = k.to_ascii_lowercase().contains("password");
                        (
                            k.into_owned(),
                            if secret { "***".to_string() } else { v.into_owned() },
                        )
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        // Not a URL we can parse: show only the scheme, never the rest.
        Err(_) => match url.split_once(':') {
            Some((scheme, _)) => format!("{scheme}:[redacted]"),
            None => "[redacted]".to_string(),
        },
    }
}

impl Settings {
    /// The effective settings as TOML with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(Default::default()));
        if let toml::Value::Table(t) = &mut value {
            t.insert(
                "database_url".into(),
                toml::Value::String(redact_url(&self.database_url)),
            );
            if self.master_key.is_some() {
                t.insert("master_key".into(), toml::Value::String("[redacted]".into()));
            }
            if let Some(toml::Value::Table(hooks)) = t.get_mut("webhooks") {
                for (name, hook) in hooks.iter_mut() {
                    let (Some(settings), toml::Value::Table(h)) = (self.webhooks.get(name), hook) else {
                        continue;
                    };
                    h.insert("url".into(), toml::Value::String(settings.redacted_url()));
                    if settings.secret.is_some() {
                        h.insert("secret".into(), toml::Value::String("[redacted]".into()));
                    }
                }
            }
        }
        toml::to_string_pretty(&value).unwrap_or_default()
    }

    /// The effective settings as JSON with secrets redacted.
    pub fn to_redacted_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = value.as_object_mut() {
            o.insert("database_url".into(), redact_url(&self.database_url).into());
            if self.master_key.is_some() {
                o.insert("master_key".into(), "[redacted]".into());
            }
            if let Some(hooks) = o.get_mut("webhooks").and_then(|h| h.as_object_mut()) {
                for (name, hook) in hooks.iter_mut() {
                    let (Some(settings), Some(h)) = (self.webhooks.get(name), hook.as_object_mut()) else {
                        continue;
                    };
                    h.insert("url".into(), settings.redacted_url().into());
                    if settings.secret.is_some() {
                        h.insert("secret".into(), "[redacted]".into());
                    }
                }
            }
        }
        value
    }
}
