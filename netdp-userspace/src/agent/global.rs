//! The other clusters' global services (`service/global.rs`): their endpoints, as the mesh
//! followers read them from each cluster's etcd, added to this cluster's services of the
//! same namespace and name, and those services programmed again.
use std::{collections::HashSet, time::Instant};

use ipnetwork::Ipv4Network;

use super::services::{Services, checked_plan};
use crate::service::ServiceDef;

impl Services {
    /// Cluster `cluster` (its pod Network `network`, `None` when it is not, or no longer,
    /// part of the mesh) changed `changes` (by service id; `None`: gone or not global),
    /// or listed them all (`resync`). Reprograms the global services it touched.
    pub(super) fn apply_remote(
        &mut self,
        cluster: &str,
        network: Option<Ipv4Network>,
        changes: Vec<(String, Option<ServiceDef>)>,
        resync: bool,
    ) {
        let started = Instant::now();
        let mut touched: HashSet<String> = HashSet::new();
        match network {
            None => touched.extend(self.remote.forget(cluster)),
            Some(network) => {
                if resync {
                    let listed: HashSet<&String> = changes.iter().map(|(id, _)| id).collect();
                    for id in self.remote.services_of(cluster) {
                        if !listed.contains(&id) && self.remote.set(cluster, network, &id, None) {
                            touched.insert(id);
                        }
                    }
                }
                for (id, def) in &changes {
                    if self.remote.set(cluster, network, id, def.as_ref()) {
                        touched.insert(id.clone());
                    }
                }
            }
        }
        let batch: Vec<_> = touched
            .into_iter()
            .filter_map(|id| {
                let def = self.defs.get(&id)?;
                let plan = checked_plan(
                    &self.policy,
                    &self.node,
                    &mut self.refused,
                    &self.remote,
                    &id,
                    def,
                );
                Some((id, plan))
            })
            .collect();
        if batch.is_empty() {
            return;
        }
        let stats = self.lb.apply(batch);
        self.lb.log_stats(
            &format!("updated (cluster {cluster})"),
            &stats,
            started.elapsed(),
        );
    }
}
