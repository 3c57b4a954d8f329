//! The server as a process and a neighbour: connections and shutdown, floods, logs and
//! files, webhooks.

mod connections;
mod flood_limits;
mod logs_and_files;
mod webhooks;
