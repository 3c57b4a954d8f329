//! The one test harness: a fresh database per test ([`db`]), the real server on it
//! ([`app`]), people with TOTP ([`people`]), the `/v1` API ([`api`]) and the OAuth side
//! ([`oauth`]) as clients call them, the shapes of error answers ([`assertions`]), the
//! web pages' cookies and forms ([`web`]), and the `airlock` binary in a [`Terminal`].
//!
//! Everything is re-exported here, so a test file needs one `use crate::support::...`.

pub mod api;
pub mod app;
pub mod assertions;
pub mod db;
pub mod oauth;
pub mod people;
pub mod terminal;
pub mod web;

pub use api::*;
pub use app::*;
pub use assertions::*;
pub use db::*;
pub use oauth::*;
pub use people::*;
pub use terminal::*;
pub use web::*;

/// Generate one `#[tokio::test]` per backend for each named `async fn(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )+
        }
    };
}
