//! What the agent tells its operators: Prometheus metrics (`--metrics-addr`), health and
//! readiness (`--healthz-addr`: `/healthz`, `/readyz`, `/status`), for probes, scrapers and
//! `netdp status`.
pub mod health;
pub mod metrics;
pub mod server;

pub use health::Health;
pub use metrics::Metrics;
