//! The Kubernetes API as the source of services (kube-proxy's): Services and
//! EndpointSlices listed and watched, turned into the same model as the etcd source
//! ([`crate::service::api`]), and sent to the agent as changes of the services touched.
use std::collections::{BTreeSet, HashMap};

use futures::{StreamExt, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use log::{info, warn};
use tokio::sync::mpsc;

use super::next_batch;
use crate::service::{
    ServiceDef,
    api::{ApiServices, Stored},
    slices::Slice,
};

/// Services by `namespace/name`, as they are now (`None`: gone or not programmable).
pub type Changes = HashMap<String, Option<ServiceDef>>;

/// An event of either watch (boxed: the objects are large, and unequal).
enum Object {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// Both listings done once, and what a re-list in progress has gathered.
#[derive(Default)]
struct Sync {
    services: bool,
    slices: bool,
    /// Kept forms, not the objects: a large cluster's re-list would hold them all.
    relisting_services: Option<Vec<(String, Stored)>>,
    relisting_slices: Option<Vec<Slice>>,
}

/// Follows Services and EndpointSlices and sends the changes of the services each batch
/// of events touched (`wrap`ped as the receiver takes them). The first message, once both
/// are listed, has every service.
pub async fn watch_services<T>(client: Client, tx: mpsc::Sender<T>, wrap: fn(Changes) -> T) {
    let config = watcher::Config::default();
    let services = watcher(Api::<Service>::all(client.clone()), config.clone())
        .default_backoff()
        .map(|r| r.map(|e| Object::Service(Box::new(e))))
        .boxed();
    let slices = watcher(Api::<EndpointSlice>::all(client), config)
        .default_backoff()
        .map(|r| r.map(|e| Object::Slice(Box::new(e))))
        .boxed();
    let mut events = stream::select(services, slices);
    let mut api = ApiServices::default();
    let mut sync = Sync::default();
    let mut touched = BTreeSet::new();
    let mut synced = false;
    while let Some(batch) = next_batch(&mut events).await {
        for event in batch {
            match event {
                Ok(object) => sync.handle(&mut api, object, &mut touched),
                Err(e) => warn!("kubernetes API: {e} (retrying)"),
            }
        }
        // The first message goes out once both are listed, even with nothing in them.
        if !(sync.services && sync.slices) || (synced && touched.is_empty()) {
            continue;
        }
        synced = true;
        let changes: Changes = std::mem::take(&mut touched)
            .into_iter()
            .map(|id| {
                let def = api.def(&id);
                (id, def)
            })
            .collect();
        if tx.send(wrap(changes)).await.is_err() {
            return;
        }
    }
}

impl Sync {
    fn handle(&mut self, api: &mut ApiServices, object: Object, touched: &mut BTreeSet<String>) {
        use watcher::Event::*;
        match object {
            Object::Service(event) => match *event {
                Apply(s) => {
                    touched.insert(api.apply_service(s));
                }
                Delete(s) => {
                    touched.insert(api.delete_service(&s));
                }
                Init => self.relisting_services = Some(Vec::new()),
                InitApply(s) => (self.relisting_services.get_or_insert_default())
                    .push(ApiServices::keep_service(&s)),
                InitDone => {
                    let listed = self.relisting_services.take().unwrap_or_default();
                    info!("kubernetes API: listed {} services", listed.len());
                    touched.extend(api.replace_services(listed));
                    self.services = true;
                }
            },
            Object::Slice(event) => match *event {
                Apply(s) => touched.extend(api.apply_slice(s)),
                Delete(s) => touched.extend(api.delete_slice(&s)),
                Init => self.relisting_slices = Some(Vec::new()),
                InitApply(s) => {
                    (self.relisting_slices.get_or_insert_default()).push(ApiServices::keep_slice(s))
                }
                InitDone => {
                    let listed = self.relisting_slices.take().unwrap_or_default();
                    info!("kubernetes API: listed {} endpoint slices", listed.len());
                    touched.extend(api.replace_slices(listed));
                    self.slices = true;
                }
            },
        }
    }
}
