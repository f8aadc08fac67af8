//! Global services (Cilium's `service.cilium.io/global`): a service marked global in
//! several clusters of a mesh, under the same namespace and name, is balanced over the
//! endpoints of all of them. Each cluster's agents add the other clusters' endpoints to
//! their own service; `netdp.io/global-affinity` (Cilium's `service.cilium.io/affinity`)
//! says which to prefer.
use std::collections::{BTreeMap, HashMap};

use ipnetwork::Ipv4Network;

use super::{ServiceDef, validate::EndpointDef};

pub const GLOBAL_ANNOTATION: &str = "netdp.io/global";
pub const CILIUM_GLOBAL_ANNOTATION: &str = "service.cilium.io/global";
pub const AFFINITY_ANNOTATION: &str = "netdp.io/global-affinity";
pub const CILIUM_AFFINITY_ANNOTATION: &str = "service.cilium.io/affinity";

/// Which cluster's endpoints a global service prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// All of them alike.
    #[default]
    None,
    /// This cluster's, the others' only while none of this cluster's is ready.
    Local,
    /// The other clusters', this cluster's only while none of theirs is ready.
    Remote,
}

/// The global annotations of `annotations`: `None` for a service that is not global.
/// Errors name the annotation.
pub(super) fn parse(
    annotations: &BTreeMap<String, String>,
    err: &mut impl FnMut(String),
) -> Option<Affinity> {
    let pick = |keys: [&'static str; 2]| {
        keys.into_iter()
            .find_map(|k| annotations.get(k).map(|v| (k, v.as_str())))
    };
    let global = match pick([GLOBAL_ANNOTATION, CILIUM_GLOBAL_ANNOTATION]) {
        None | Some((_, "false")) => false,
        Some((_, "true")) => true,
        Some((key, other)) => {
            err(format!(
                "metadata.annotations[\"{key}\"]: {other:?} is not one of true, false"
            ));
            false
        }
    };
    let affinity = match pick([AFFINITY_ANNOTATION, CILIUM_AFFINITY_ANNOTATION]) {
        None | Some((_, "none")) => Affinity::None,
        Some((_, "local")) => Affinity::Local,
        Some((_, "remote")) => Affinity::Remote,
        Some((key, other)) => {
            err(format!(
                "metadata.annotations[\"{key}\"]: {other:?} is not one of none, local, remote"
            ));
            Affinity::None
        }
    };
    global.then_some(affinity)
}

/// The endpoints the other clusters' global services have, by service and cluster.
#[derive(Debug, Default)]
pub struct RemoteEndpoints {
    by_service: HashMap<String, BTreeMap<String, Vec<EndpointDef>>>,
}

impl RemoteEndpoints {
    /// Cluster `cluster` (pod Network `network`) now has `def` for service `id` (`None`:
    /// none, or not global). Only endpoints in its Network are taken, named as its nodes
    /// so none is ever taken for this node's. Returns whether anything changed.
    pub fn set(
        &mut self,
        cluster: &str,
        network: Ipv4Network,
        id: &str,
        def: Option<&ServiceDef>,
    ) -> bool {
        let endpoints: Vec<EndpointDef> = def
            .filter(|d| d.global.is_some())
            .map(|d| {
                d.endpoints
                    .iter()
                    .filter(|e| network.contains(e.ip))
                    .map(|e| EndpointDef {
                        node_name: Some(format!(
                            "{cluster}/{}",
                            e.node_name.as_deref().unwrap_or("-")
                        )),
                        zones: Vec::new(),
                        for_nodes: Vec::new(),
                        ..e.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let entry = self.by_service.entry(id.to_string()).or_default();
        let changed = if endpoints.is_empty() && def.is_none_or(|d| d.global.is_none()) {
            entry.remove(cluster).is_some()
        } else {
            entry.insert(cluster.to_string(), endpoints.clone()) != Some(endpoints)
        };
        if entry.is_empty() {
            self.by_service.remove(id);
        }
        changed
    }

    /// Forgets every endpoint of `cluster`; returns the services that had some.
    pub fn forget(&mut self, cluster: &str) -> Vec<String> {
        let mut ids = Vec::new();
        self.by_service.retain(|id, clusters| {
            if clusters.remove(cluster).is_some() {
                ids.push(id.clone());
            }
            !clusters.is_empty()
        });
        ids
    }

    /// The services cluster `cluster` has endpoints of.
    pub fn services_of(&self, cluster: &str) -> Vec<String> {
        (self.by_service.iter())
            .filter(|(_, c)| c.contains_key(cluster))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// `def` with the other clusters' endpoints, as its affinity has them; `None` when it
    /// is not global or no other cluster has it.
    pub fn merged(&self, def: &ServiceDef) -> Option<ServiceDef> {
        let affinity = def.global?;
        let theirs: Vec<&EndpointDef> =
            self.by_service.get(&def.id())?.values().flatten().collect();
        let ready = |e: &[&EndpointDef]| e.iter().any(|e| e.ready);
        let ours: Vec<&EndpointDef> = def.endpoints.iter().collect();
        let endpoints: Vec<EndpointDef> = match affinity {
            Affinity::Local if ready(&ours) => return None,
            Affinity::Remote if ready(&theirs) => theirs.into_iter().cloned().collect(),
            _ => ours.into_iter().chain(theirs).cloned().collect(),
        };
        Some(ServiceDef {
            endpoints,
            ..def.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(annotations: &str, endpoints: &[(&str, bool)]) -> ServiceDef {
        let eps: Vec<String> = endpoints
            .iter()
            .map(|(ip, ready)| format!(r#"{{"ip": "{ip}", "nodeName": "n1", "ready": {ready}}}"#))
            .collect();
        let doc = format!(
            r#"{{"metadata": {{"name": "web", "namespace": "shop", "annotations": {{{annotations}}}}},
                "spec": {{"clusterIP": "10.96.0.10", "ports": [{{"port": 80}}]}},
                "endpoints": [{}]}}"#,
            eps.join(",")
        );
        super::super::decode(doc.as_bytes()).expect("a valid service")
    }

    const GLOBAL: &str = r#""netdp.io/global": "true""#;
    const WEST: &str = "10.245.0.0/16";

    fn ips(d: &ServiceDef) -> Vec<String> {
        let mut v: Vec<String> = d.endpoints.iter().map(|e| e.ip.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn annotations_and_their_errors() {
        assert_eq!(service("", &[]).global, None);
        assert_eq!(service(GLOBAL, &[]).global, Some(Affinity::None));
        let cilium = r#""service.cilium.io/global": "true", "service.cilium.io/affinity": "local""#;
        assert_eq!(service(cilium, &[]).global, Some(Affinity::Local));
        let doc = |a: &str| {
            format!(
                r#"{{"metadata": {{"name": "web", "annotations": {{{a}}}}},
                    "spec": {{"clusterIP": "10.96.0.10", "ports": [{{"port": 80}}]}}}}"#
            )
        };
        let e = super::super::decode(doc(r#""netdp.io/global": "yes""#).as_bytes()).unwrap_err();
        assert!(
            e.contains(r#"metadata.annotations["netdp.io/global"]: "yes""#),
            "{e}"
        );
        let e = super::super::decode(
            doc(r#""netdp.io/global": "true", "netdp.io/global-affinity": "near""#).as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains(r#"["netdp.io/global-affinity"]: "near""#), "{e}");
    }

    #[test]
    fn the_other_clusters_endpoints_join_as_affinity_says() {
        let net: Ipv4Network = WEST.parse().unwrap();
        let mut remote = RemoteEndpoints::default();
        let theirs = service(GLOBAL, &[("10.245.1.5", true), ("10.9.9.9", true)]);
        assert!(remote.set("west", net, "shop/web", Some(&theirs)));
        assert!(
            !remote.set("west", net, "shop/web", Some(&theirs)),
            "unchanged"
        );
        // Ours and theirs (but for the one outside west's Network), theirs named as
        // west's nodes so none is ever taken for this node's.
        let ours = service(GLOBAL, &[("10.244.1.5", true)]);
        let m = remote.merged(&ours).expect("merged");
        assert_eq!(ips(&m), ["10.244.1.5", "10.245.1.5"]);
        let west_ep = m
            .endpoints
            .iter()
            .find(|e| e.ip.to_string() == "10.245.1.5")
            .unwrap();
        assert_eq!(west_ep.node_name.as_deref(), Some("west/n1"));
        // Not global here: ours alone.
        assert!(
            remote
                .merged(&service("", &[("10.244.1.5", true)]))
                .is_none()
        );
        // Local first: ours while one is ready, theirs too once none is.
        let local = r#""netdp.io/global": "true", "netdp.io/global-affinity": "local""#;
        assert!(
            remote
                .merged(&service(local, &[("10.244.1.5", true)]))
                .is_none()
        );
        let m = remote
            .merged(&service(local, &[("10.244.1.5", false)]))
            .unwrap();
        assert_eq!(ips(&m), ["10.244.1.5", "10.245.1.5"]);
        // Remote first.
        let rem = r#""netdp.io/global": "true", "netdp.io/global-affinity": "remote""#;
        let m = remote
            .merged(&service(rem, &[("10.244.1.5", true)]))
            .unwrap();
        assert_eq!(ips(&m), ["10.245.1.5"]);
        // Theirs no longer global: gone.
        assert!(remote.set(
            "west",
            net,
            "shop/web",
            Some(&service("", &[("10.245.1.5", true)]))
        ));
        assert!(remote.merged(&ours).is_none());
        assert!(remote.set("west", net, "shop/web", Some(&theirs)));
        assert_eq!(remote.forget("west"), ["shop/web"]);
        assert!(remote.merged(&ours).is_none());
    }
}
