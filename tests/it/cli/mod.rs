//! The `airlock` binary as a subprocess, as people, agents and operators run it.

mod agents;
mod escalations;
mod operator;
mod people;
mod session_file;
mod suggested_commands;
