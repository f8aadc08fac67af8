//! The HTTP endpoints: `/healthz`, `/readyz` and `/status` on `--healthz-addr` (for the
//! kubelet's probes), `/metrics` (and the same health paths) on `--metrics-addr`.
use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use log::{info, warn};

use super::{Health, Metrics};

fn health_routes(health: Arc<Health>) -> Router {
    let (live, ready, status) = (health.clone(), health.clone(), health);
    Router::new()
        .route(
            "/healthz",
            get(move || async move {
                if live.live() {
                    (StatusCode::OK, "ok\n".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the agent's loops stalled\n".into(),
                    )
                }
            }),
        )
        .route(
            "/readyz",
            get(move || async move {
                let failing: Vec<&str> = ready
                    .checks()
                    .iter()
                    .filter(|(_, ok)| !ok)
                    .map(|(name, _)| *name)
                    .collect();
                if failing.is_empty() {
                    (StatusCode::OK, "ok\n".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", failing.join(", ")),
                    )
                }
            }),
        )
        .route(
            "/status",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    status.status().to_string(),
                )
            }),
        )
}

/// Binds both addresses (a bind failure is an error naming the flag) and serves them in
/// the background. `None` turns an endpoint off.
pub async fn spawn(
    healthz: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    health: Arc<Health>,
    metrics: Option<Arc<Metrics>>,
) -> Result<()> {
    if let Some(addr) = healthz {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--healthz-addr {addr}: cannot listen"))?;
        info!("health on http://{addr}/healthz, /readyz, /status");
        serve(listener, health_routes(health.clone()));
    }
    if let (Some(addr), Some(metrics)) = (metrics_addr, metrics) {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        info!("metrics on http://{addr}/metrics");
        let router = health_routes(health).route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
                    .into_response()
            }),
        );
        serve(listener, router);
    }
    Ok(())
}

fn serve(listener: tokio::net::TcpListener, router: Router) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            warn!("HTTP endpoint stopped: {e}");
        }
    });
}
