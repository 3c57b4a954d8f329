//! The CLI's session file, through `session_file::parse` (what `session_file::load`
//! calls after its ownership and mode checks).
#![no_main]

use std::path::Path;

use airlock::cli::client::session_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `load` reads the file with `read_to_string`: anything not UTF-8 stops there.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = session_file::parse(text, Path::new("/home/fuzz/.config/airlock/session.json"));
});
