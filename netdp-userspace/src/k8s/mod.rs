//! The Kubernetes API: services (kube-proxy's Services and EndpointSlices, [`services`])
//! and subnets (flanneld's `--kube-subnet-mgr`: Node objects, [`nodes`]), both followed
//! with kube-rs's watcher (list, then watch from the list's resourceVersion with
//! bookmarks; a 410 Gone or a restart re-lists; errors back off as client-go's reflector
//! does).
use std::path::Path;

use anyhow::{Context, Result};
use futures::{FutureExt, Stream, StreamExt};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use log::info;

pub mod nodes;
pub mod services;

pub use services::{Changes, watch_services};

/// Events handled in one batch at most (a re-list of a large cluster arrives as many).
const MAX_BATCH: usize = 4096;

/// A client from `kubeconfig`, else as kubectl finds one (`$KUBECONFIG`, `~/.kube/config`)
/// or, in a pod, the service account's in-cluster config.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => Config::infer().await.context(
            "no Kubernetes API config: give --kubeconfig, set KUBECONFIG, or run in a pod",
        )?,
    };
    info!("kubernetes API at {}", config.cluster_url);
    Client::try_from(config).context("building the Kubernetes API client")
}

/// The next event and whatever else is ready behind it (at most [`MAX_BATCH`]); `None`
/// when the stream has ended.
async fn next_batch<S: Stream + Unpin>(events: &mut S) -> Option<Vec<S::Item>> {
    let first = events.next().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match events.next().now_or_never() {
            Some(Some(e)) => batch.push(e),
            _ => break,
        }
    }
    Some(batch)
}
