//! Services and EndpointSlices as the Kubernetes API serves them (k8s-openapi objects, as
//! kube-rs's watcher hands them over) into the model the etcd source produces too:
//! [`ServiceDef`]s by `namespace/name`. The objects are kept, slices indexed by the service
//! their `kubernetes.io/service-name` label names, so that a change recomputes only the
//! services it touches; what the agent then programs is the diff (`Services::apply`
//! skips services that came out the same).
//!
//! A Service or slice that cannot be used is skipped with one line naming the object and
//! the field (logged once per distinct reason); the others are unaffected.
use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use log::{info, warn};

use super::{
    ServiceDef, ServiceDoc,
    schema::{IntOrString, from_value},
    slices::{self, SERVICE_NAME_LABEL, Slice},
    validate,
};

/// Where skip lines say the objects came from.
const FROM_API: &str = "kubernetes API";

/// `namespace/name` of an object's metadata.
fn object_id(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or("")
    )
}

/// The loose schema's form of a Service (what the model is computed from): far smaller
/// than the API object, which is not kept.
fn doc_of(service: &Service) -> Result<ServiceDoc, String> {
    let id = object_id(&service.metadata);
    let value = serde_json::to_value(service).map_err(|e| format!("Service {id}: {e}"))?;
    from_value(value).map_err(|e| format!("Service {id}: {e:#}"))
}

/// One service's model from its Service and slices, or an error naming the field when it
/// is unusable; with the lines for what was skipped inside it (slices, endpoints).
pub fn translate<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a Slice>,
) -> (Result<ServiceDef, String>, Vec<String>) {
    match doc_of(service) {
        Ok(doc) => translate_doc(doc, slices),
        Err(e) => (Err(e), Vec::new()),
    }
}

fn translate_doc<'a>(
    mut doc: ServiceDoc,
    slices: impl IntoIterator<Item = &'a Slice>,
) -> (Result<ServiceDef, String>, Vec<String>) {
    let id = format!(
        "{}/{}",
        doc.metadata.namespace.as_deref().unwrap_or("default"),
        doc.metadata.name
    );
    let skipped = slices::merge(std::slice::from_mut(&mut doc), slices);
    // A named target port no slice resolved has no endpoints behind it (none exist yet, or
    // every slice was skipped): the service is still programmed, with no backends, as
    // kube-proxy does; the number stands in for the name.
    for p in &mut doc.spec.ports {
        if let Some(IntOrString::Str(_)) = p.target_port {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    let def = validate(&doc).map_err(|e| format!("Service {id}: {e}"));
    (def, skipped)
}

/// A LoadBalancer service its load balancer has not given an address yet.
fn waits_for_ingress(svc: &Service) -> bool {
    let lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    let has_ip = ingress
        .and_then(|l| l.ingress.as_ref())
        .is_some_and(|i| i.iter().any(|i| i.ip.is_some()));
    lb && !has_ip
}

/// The Services and EndpointSlices of the cluster, as last listed and watched.
/// A Service as kept (the API object is not).
pub struct Stored {
    doc: Result<ServiceDoc, String>,
    waits_for_ingress: bool,
}

#[derive(Default)]
pub struct ApiServices {
    services: HashMap<String, Stored>,
    slices: HashMap<String, Slice>,
    /// Slice ids by the service id they name.
    by_service: HashMap<String, BTreeSet<String>>,
    /// What was logged for each service (its skip lines), so each is said once.
    reported: HashMap<String, Vec<String>>,
    /// Slices naming a service not (yet) known, already said.
    orphans: BTreeSet<String>,
}

impl ApiServices {
    /// A Service as kept, by id: what a re-list gathers instead of the objects.
    pub fn keep_service(svc: &Service) -> (String, Stored) {
        let stored = Stored {
            doc: doc_of(svc),
            waits_for_ingress: waits_for_ingress(svc),
        };
        (object_id(&svc.metadata), stored)
    }

    /// A Service was added or changed; returns the service id touched.
    pub fn apply_service(&mut self, svc: Service) -> String {
        let (id, stored) = Self::keep_service(&svc);
        self.services.insert(id.clone(), stored);
        id
    }

    /// A Service was deleted.
    pub fn delete_service(&mut self, svc: &Service) -> String {
        let id = object_id(&svc.metadata);
        self.services.remove(&id);
        self.reported.remove(&id);
        id
    }

    /// A slice was added or changed; returns the services touched (the one it names, and
    /// the one it named before if its label changed).
    pub fn apply_slice(&mut self, slice: EndpointSlice) -> Vec<String> {
        self.insert_slice(Self::keep_slice(slice))
    }

    /// A slice as kept.
    pub fn keep_slice(slice: EndpointSlice) -> Slice {
        Slice::new(FROM_API, slice)
    }

    fn insert_slice(&mut self, slice: Slice) -> Vec<String> {
        let sid = slice.id.clone();
        let mut touched = self.delete_slice_id(&sid);
        match slice.owner() {
            Some(svc) => {
                self.by_service
                    .entry(svc.clone())
                    .or_default()
                    .insert(sid.clone());
                touched.push(svc);
            }
            None => {
                if self.orphans.insert(sid.clone()) {
                    warn!(
                        "{FROM_API}: EndpointSlice {sid}: metadata.labels[\"{SERVICE_NAME_LABEL}\"]: \
                         missing, so it belongs to no service; skipped"
                    );
                }
            }
        }
        self.slices.insert(sid, slice);
        touched
    }

    /// A slice was deleted; returns the service touched.
    pub fn delete_slice(&mut self, slice: &EndpointSlice) -> Vec<String> {
        self.delete_slice_id(&object_id(&slice.metadata))
    }

    fn delete_slice_id(&mut self, sid: &str) -> Vec<String> {
        self.orphans.remove(sid);
        let Some(old) = self.slices.remove(sid) else {
            return Vec::new();
        };
        let Some(svc) = old.owner() else {
            return Vec::new();
        };
        if let Some(set) = self.by_service.get_mut(&svc) {
            set.remove(sid);
            if set.is_empty() {
                self.by_service.remove(&svc);
            }
        }
        vec![svc]
    }

    /// Replaces every Service by a fresh listing (a re-list after 410 Gone or a restart
    /// of the watch); returns the services touched: all old and new ids (unchanged ones
    /// come out the same and are not reprogrammed).
    pub fn replace_services(&mut self, listed: Vec<(String, Stored)>) -> Vec<String> {
        let mut touched: Vec<String> = self.services.keys().cloned().collect();
        self.services.clear();
        for (id, stored) in listed {
            self.services.insert(id.clone(), stored);
            touched.push(id);
        }
        touched
    }

    /// [`Self::replace_services`] for slices.
    pub fn replace_slices(&mut self, listed: Vec<Slice>) -> Vec<String> {
        let mut touched: Vec<String> = self.by_service.keys().cloned().collect();
        self.slices.clear();
        self.by_service.clear();
        self.orphans.clear();
        for s in listed {
            touched.extend(self.insert_slice(s));
        }
        touched
    }

    /// The model of service `id` now (`None`: no such service, or one that cannot be
    /// programmed, said in the log once).
    pub fn def(&mut self, id: &str) -> Option<ServiceDef> {
        let Some(svc) = self.services.get(id) else {
            if let Some(sids) = self.by_service.get(id) {
                for sid in sids {
                    if self.orphans.insert(sid.clone()) {
                        info!(
                            "{FROM_API}: EndpointSlice {sid}: metadata.labels[\"{SERVICE_NAME_LABEL}\"]: \
                             service {id} is not known; its endpoints wait for it"
                        );
                    }
                }
            }
            return None;
        };
        let sids = self.by_service.get(id);
        for sid in sids.into_iter().flatten() {
            self.orphans.remove(sid);
        }
        let slices = sids
            .into_iter()
            .flatten()
            .filter_map(|sid| self.slices.get(sid));
        let (def, mut lines) = match &svc.doc {
            Ok(doc) => translate_doc(doc.clone(), slices),
            Err(e) => (Err(e.clone()), Vec::new()),
        };
        if svc.waits_for_ingress {
            lines.push(format!(
                "{FROM_API}: Service {id}: status.loadBalancer.ingress: no IP yet; its \
                 cluster IP and node ports are programmed, the load-balancer IP once it has one"
            ));
        }
        if let Err(e) = &def {
            lines.push(format!("{FROM_API}: {e}; not programmed"));
        }
        let said = self.reported.get(id).map_or(&[][..], Vec::as_slice);
        for line in lines.iter().filter(|l| !said.contains(l)) {
            warn!("{line}");
        }
        if lines.is_empty() {
            self.reported.remove(id);
        } else {
            self.reported.insert(id.to_string(), lines);
        }
        def.ok()
    }

    /// Services known.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
