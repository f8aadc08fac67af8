//! Keeping a client given several endpoints on the members that can serve it. etcd-client
//! balances requests over every endpoint, but its balancer still picks a member that is
//! down (each request then fails at once) and one that is cut off (each request waits for
//! its timeout). So every endpoint is probed on a connection of its own, and one that does
//! not answer, or answers without knowing a leader, leaves the balanced set until it
//! answers with one again. When no member is healthy every endpoint stays in the set, so
//! whichever comes back first gets the requests.
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use log::{info, warn};

/// Time between probes of every endpoint: how long requests may still go to a member
/// after it died (the request timeout covers the rest).
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// One endpoint and the connection that probes it (made again while making it fails).
struct Member {
    endpoint: String,
    probe: Option<Client>,
    /// In the balanced client's set.
    balanced: bool,
}

/// The endpoints of one balanced client and which of them it uses.
pub struct Members {
    client: Client,
    members: Vec<Member>,
    opts: ConnectOptions,
    timeout: Duration,
}

impl Members {
    /// `client` balances over all of `endpoints`; each probe waits at most `timeout`.
    pub fn new(
        client: Client,
        endpoints: &[String],
        opts: ConnectOptions,
        timeout: Duration,
    ) -> Self {
        let members = endpoints
            .iter()
            .map(|e| Member {
                endpoint: e.clone(),
                probe: None,
                balanced: true,
            })
            .collect();
        Members {
            client,
            members,
            opts,
            timeout,
        }
    }

    /// Probes every endpoint at once and updates the balanced set; returns how many are
    /// healthy.
    pub async fn check(&mut self) -> usize {
        let (opts, timeout) = (self.opts.clone(), self.timeout);
        let probes = self
            .members
            .iter_mut()
            .map(|m| probe(m, opts.clone(), timeout));
        let healthy = futures::future::join_all(probes).await;
        let any = healthy.iter().any(|h| *h);
        for (m, ok) in self.members.iter_mut().zip(&healthy) {
            // Without a healthy member, all stay: nothing is gained by removing any.
            let wanted = *ok || !any;
            if wanted == m.balanced {
                continue;
            }
            let changed = if wanted {
                self.client.add_endpoint(&m.endpoint).await
            } else {
                self.client.remove_endpoint(&m.endpoint).await
            };
            match changed {
                Ok(()) if wanted => info!("etcd member {} is back in use", m.endpoint),
                Ok(()) => warn!(
                    "etcd member {} does not answer or knows no leader; using the others",
                    m.endpoint
                ),
                Err(e) => warn!("etcd member {}: {e}", m.endpoint),
            }
            m.balanced = wanted;
        }
        healthy.iter().filter(|h| **h).count()
    }

    /// Checks every [`PROBE_EVERY`] for as long as the process runs.
    pub fn spawn(mut self) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                self.check().await;
            }
        });
    }
}

/// Whether the member answers a status request within `timeout` and knows a leader.
async fn probe(m: &mut Member, opts: ConnectOptions, timeout: Duration) -> bool {
    let answered = tokio::time::timeout(timeout, async {
        if m.probe.is_none() {
            m.probe = Some(Client::connect([m.endpoint.as_str()], Some(opts)).await?);
        }
        match m.probe.as_mut() {
            Some(c) => c.status().await.map(|s| s.leader() != 0),
            None => Ok(false),
        }
    })
    .await;
    matches!(answered, Ok(Ok(true)))
}
