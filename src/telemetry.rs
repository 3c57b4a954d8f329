//! Logging: `tracing` with an `EnvFilter` (from `AIRLOCK_LOG`, then `RUST_LOG`), pretty
//! output for people, JSON lines for log shippers. Logs go to standard error so the
//! CLI's standard output stays clean for scripts.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::LogFormat;

/// Default filter when neither `AIRLOCK_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_FILTER: &str = "airlock=info,tower_http=info,sqlx=warn";

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = std::env::var("AIRLOCK_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let writer = std::io::stderr.with_max_level(tracing::Level::TRACE);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
