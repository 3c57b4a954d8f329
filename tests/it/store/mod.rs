//! The `Store` contract, checked the same way on SQLite and PostgreSQL.

mod contract;
mod escalations;
