//! The `airlock` binary: parse the command line and hand over to `airlock::cli`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    airlock::cli::main(airlock::cli::Cli::parse())
}
