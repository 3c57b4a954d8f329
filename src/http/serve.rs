//! The accept loop: TCP connections in, HTTP/1.1 out, with the bounds `axum::serve`
//! does not offer.
//!
//! SECURITY: `axum::serve` has no header-read timeout and no connection cap, so a client
//! that opens connections and never finishes its headers (slowloris) holds a socket each
//! for as long as it likes, until the process runs out of file descriptors. Here:
//!
//! - hyper's `header_read_timeout` closes a connection whose request line and headers
//!   have not all arrived in time. The clock also runs while a kept-alive connection
//!   waits for its next request, so an idle connection is closed after the same time.
//! - at most `max_connections` connections are open at once. At the cap the loop stops
//!   accepting: further connections wait in the kernel's listen backlog and are served,
//!   in order, as soon as a slot frees (within one header timeout at worst, since every
//!   open connection is either in a request, bounded by the request deadline, or waiting
//!   for headers, bounded by the header timeout). Nothing is refused while it is merely
//!   busy, and a waiting connection costs the process no descriptor.
//!
//! Graceful shutdown works as with `axum::serve`: stop accepting, let each connection
//! finish the request in flight (idle ones close at once), then return.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// Connection-level bounds (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest time a client may take to send a request's line and headers (and longest
    /// a kept-alive connection may sit idle).
    pub header_read_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Serve `router` on `listener` until `shutdown` resolves, then drain.
///
/// Each request carries the peer's `ConnectInfo<SocketAddr>`, as with
/// `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));

    // Dropping `stop_rx` tells the loop and every connection to stop.
    let (stop_tx, stop_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(stop_rx);
    });
    // Each connection task holds a `done_rx`; when all are gone, the drain is over.
    let (done_tx, done_rx) = watch::channel(());

    let mut at_cap_logged = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_cap_logged {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached; new connections wait in the listen backlog"
                    );
                    at_cap_logged = true;
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = stop_tx.closed() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = stop_tx.closed() => break,
        };
        if slots.available_permits() > 0 {
            at_cap_logged = false;
        }
        let service =
            router
                .clone()
                .map_request(move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                });
        let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let stop_tx = stop_tx.clone();
        let done_rx = done_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _done = done_rx;
            let mut conn = std::pin::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            // Timeouts, resets and malformed requests: routine, and the
                            // error text never carries request data.
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop_tx.closed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }

    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
}

/// Accept failures: a peer that went away is routine; anything else (out of file
/// descriptors, say) is logged and retried after a pause instead of spinning.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
