//! The config loader: arbitrary TOML as the operator's file, layered over the defaults
//! by `Settings::load` (the same entry point as `serve` and `config check`), then the
//! redacted renderings `airlock config` prints. `AIRLOCK_*` variables are not read.
//!
//! Oracle: nothing panics, whatever loads passes its own validation again, and the
//! first thing `serve` derives from it (the store's connection options) can be derived.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use airlock::config::{Settings, Sources};
use libfuzzer_sys::fuzz_target;

fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // Lives as long as the process; the OS cleans /tmp.
        dir.keep().join("airlock.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    // The loader reads a file; a file can hold any bytes.
    std::fs::write(file(), data).unwrap();
    let sources = Sources {
        file: Some(file().clone()),
        env: false,
    };
    let Ok(settings) = Settings::load(&sources) else {
        return;
    };
    settings
        .validate()
        .expect("loaded settings fail their own validation");
    let _ = settings.to_redacted_toml();
    let _ = settings.to_redacted_json();
    let _ = settings.configured_master_key();
    let _ = airlock::app::connect_options(&settings, false);
});
