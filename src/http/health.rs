//! `/healthz` (the process answers) and `/readyz` (the store answers and its schema is
//! current). Load balancers route on `/readyz`; `airlock healthcheck` calls `/healthz`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::state::AppState;
use crate::store::StoreError;
use crate::wire::health::Health;

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> impl IntoResponse {
    Json(Health::new("ok"))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ready().await {
        Ok(()) => (StatusCode::OK, Json(Health::new("ready"))),
        Err(StoreError::MigrationsPending) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health::new("migrations_pending")),
        ),
        Err(e) => {
            tracing::warn!(error = ?e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health::new("store_unavailable")),
            )
        }
    }
}
