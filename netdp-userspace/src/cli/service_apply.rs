//! `netdp service apply`: services from a file (netdp's format or Kubernetes manifests,
//! with their EndpointSlices) checked, given what kube-apiserver would give them (a
//! clusterIP, node ports), held to the agents' address rules and to each other, and
//! written to etcd.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::{Context, Result, anyhow, bail};

use super::{
    Classify, Failure,
    services::{StoreArgs, address_policy, read_input},
};
use crate::{
    dataplane::lb::proto_name as proto,
    service::{
        self, AddressArgs, ServiceDef, ServiceDoc,
        allocate::Allocator,
        store::{key, parse_key},
        validate::claims,
    },
};

/// `MIN-MAX`, both ports, MIN <= MAX.
pub(super) fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range MIN-MAX"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!("{s:?}: {lo} is above {hi}"));
    }
    Ok((lo, hi))
}

pub(super) async fn apply(
    store: StoreArgs,
    file: PathBuf,
    addresses: AddressArgs,
    node_ports: (u16, u16),
) -> Result<()> {
    let text = read_input(&file)?;
    let manifests = service::parse_manifests(&text)
        .with_context(|| format!("{}", file.display()))
        .classify(Failure::BadInput)?;
    for line in &manifests.skipped {
        eprintln!("netdp: {}: {line}", file.display());
    }
    let mut docs = manifests.services;
    let mut s = store.store().await?;
    // What the agents would refuse to program (CVE-2020-8554), refused here already.
    let policy = address_policy(s.client.clone(), &store.etcd, &addresses).await?;
    let (existing, _) = s.list().await?;
    let stored: HashMap<String, ServiceDoc> = existing
        .iter()
        .filter_map(|(k, v)| {
            let id = parse_key(s.prefix(), k)?;
            Some((id.to_string(), service::schema::from_json(v).ok()?))
        })
        .collect();
    // What kube-apiserver would fill in: a clusterIP and node ports, kept from the stored
    // service when it has them.
    let id_of = |d: &ServiceDoc| {
        let ns = d.metadata.namespace.as_deref().unwrap_or("default");
        format!("{ns}/{}", d.metadata.name)
    };
    let applied: HashSet<String> = docs.iter().map(id_of).collect();
    let mut alloc = Allocator::new(
        policy.service_range.map(|(r, _)| r),
        node_ports.0..=node_ports.1,
        stored
            .iter()
            .filter(|(id, _)| !applied.contains(*id))
            .map(|(_, d)| d)
            .chain(docs.iter()),
    );
    let mut allocated = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        let id = id_of(doc);
        let given = match alloc.fill(doc, stored.get(&id)) {
            Ok(given) => given,
            Err(e) => {
                // Whatever else is wrong with the service first (its "required" for what
                // could not be allocated is this error).
                let mut why: Vec<String> = match service::validate(doc) {
                    Err(v) => v
                        .split("; ")
                        .filter(|m| {
                            !m.starts_with("spec.clusterIP: required")
                                && !m.contains(".nodePort: required")
                        })
                        .map(String::from)
                        .collect(),
                    Ok(_) => Vec::new(),
                };
                why.push(format!("{e:#}"));
                return Err(anyhow!(
                    "{}: service {} ({id}): {}",
                    file.display(),
                    i + 1,
                    why.join("; ")
                ))
                .classify(Failure::BadInput);
            }
        };
        allocated.push(given);
    }
    let mut defs: Vec<(ServiceDoc, ServiceDef)> = Vec::with_capacity(docs.len());
    let mut ids = HashSet::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let def = service::validate(&doc)
            .map_err(|e| {
                anyhow!(
                    "{}: service {} ({}): {e}",
                    file.display(),
                    i + 1,
                    doc.metadata.name
                )
            })
            .classify(Failure::BadInput)?;
        if !ids.insert(def.id()) {
            bail!(
                "{}: service {} is in the file twice",
                file.display(),
                def.id()
            );
        }
        defs.push((doc, def));
    }
    for (i, (_, def)) in defs.iter().enumerate() {
        policy
            .check(def)
            .map_err(|e| anyhow!("{}: service {} ({}): {e}", file.display(), i + 1, def.id()))
            .classify(Failure::BadInput)?;
    }
    // Addresses and node ports must not be claimed by two services.
    let mut owner: HashMap<(Option<Ipv4Addr>, u16, u8), String> = HashMap::new();
    for (k, v) in &existing {
        let Some(id) = parse_key(s.prefix(), k) else {
            continue;
        };
        if ids.contains(id) {
            continue;
        }
        if let Ok(def) = service::decode(v) {
            for (addr, port, p, _) in claims(&def) {
                owner.insert((addr, port, p), id.to_string());
            }
        }
    }
    for (_, def) in &defs {
        for (addr, port, p, field) in claims(def) {
            if let Some(other) = owner.insert((addr, port, p), def.id())
                && other != def.id()
            {
                let what = match addr {
                    Some(a) => format!("{a}:{port}/{}", proto(p)),
                    None => format!("node port {port}/{}", proto(p)),
                };
                bail!(
                    "service {}: {field}: {what} is already used by {other}",
                    def.id()
                );
            }
        }
    }
    let writes: Vec<(String, ServiceDoc)> = defs
        .iter()
        .map(|(doc, def)| {
            let mut doc = doc.clone();
            doc.metadata.namespace = Some(def.namespace.clone());
            (key(s.prefix(), &def.namespace, &def.name), doc)
        })
        .collect();
    let n = s.put_all(&writes).await?;
    if n <= 20 {
        for ((_, def), given) in defs.iter().zip(&allocated) {
            if given.is_empty() {
                println!("service {} configured", def.id());
            } else {
                println!(
                    "service {} configured ({} allocated)",
                    def.id(),
                    given.join(", ")
                );
            }
        }
    } else {
        println!("{n} services configured");
    }
    Ok(())
}
