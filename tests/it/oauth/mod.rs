//! The OAuth endpoints as agents and resource servers use them.

mod client_credentials;
mod introspection;
