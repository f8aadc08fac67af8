//! `netdp service` (services in etcd) and `netdp lb` (what a node has programmed).
use std::{collections::HashSet, net::Ipv4Addr, path::PathBuf};

use crate::cli::Classify;
use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use serde_json::json;

use super::{Failure, NodeArgs, Output, print_table, print_value};
use crate::{
    dataplane::lb::{LbMaps, proto_name as proto},
    etcd::EtcdArgs,
    lease::{LeaseSet, Registry},
    service::{self, AddressArgs, AddressPolicy, ServiceDef, ServiceStore, store::parse_key},
};

/// etcd flags plus where the services live.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// etcd prefix of the services.
    #[arg(
        long = "service-prefix",
        default_value = service::DEFAULT_PREFIX,
        env = "NETDP_SERVICE_PREFIX"
    )]
    pub service_prefix: String,
}

impl StoreArgs {
    pub(super) async fn store(&self) -> Result<ServiceStore> {
        Ok(ServiceStore::new(
            self.etcd.connect().await?,
            &self.service_prefix,
        ))
    }
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create or update services from a JSON or YAML file (`-` reads standard input).
    Apply {
        #[command(flatten)]
        store: StoreArgs,
        /// The file (Kubernetes-shaped Services, JSON or YAML; `-`: standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// The agents' address rules, to refuse what they would not program.
        #[command(flatten)]
        addresses: AddressArgs,
        /// Where node ports are allocated from for services that name none (as
        /// kube-apiserver's flag of the same name).
        #[arg(
            long = "service-node-port-range",
            env = "NETDP_SERVICE_NODE_PORT_RANGE",
            value_parser = super::service_apply::parse_port_range,
            default_value = "30000-32767"
        )]
        node_ports: (u16, u16),
    },
    /// Services in etcd; with --node-name, whether that node has programmed them.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Also check this node's maps.
        #[arg(long = "node-name")]
        node_name: Option<String>,
        /// bpffs directory the agent pins under.
        #[arg(long = "bpf-root", default_value = netdp_common::BPF_ROOT)]
        bpf_root: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
    /// One service as stored.
    Get {
        #[command(flatten)]
        store: StoreArgs,
        /// The service's name.
        name: String,
        /// Its namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Output format (a document: table prints it as JSON).
        #[arg(short = 'o', long, value_enum, default_value = "json")]
        output: Output,
    },
    /// Delete a service.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        /// The service's name.
        name: String,
        /// Its namespace.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum LbCmd {
    /// Frontends this node balances, and their backends.
    List(NodeArgs),
}

pub(super) fn read_input(path: &PathBuf) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

pub async fn service(cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Apply {
            store,
            file,
            addresses,
            node_ports,
        } => super::service_apply::apply(store, file, addresses, node_ports).await,
        ServiceCmd::List {
            store,
            namespace,
            node_name,
            bpf_root,
            output,
        } => list(store, namespace, node_name, bpf_root, output).await,
        ServiceCmd::Get {
            store,
            name,
            namespace,
            output,
        } => {
            let mut s = store.store().await?;
            let v = s
                .get(&namespace, &name)
                .await?
                .ok_or_else(|| anyhow!("service {namespace}/{name} not found"))
                .classify(Failure::NotFound)?;
            let doc: serde_json::Value = serde_json::from_slice(&v)
                .with_context(|| format!("service {namespace}/{name} in etcd is not JSON"))?;
            super::print_document(output, &doc);
            Ok(())
        }
        ServiceCmd::Delete {
            store,
            name,
            namespace,
        } => {
            if store.store().await?.delete(&namespace, &name).await? {
                println!("service {namespace}/{name} deleted");
                Ok(())
            } else {
                Err(anyhow!("service {namespace}/{name} not found")).classify(Failure::NotFound)
            }
        }
    }
}

/// The address rules the agents hold services to, as far as a client can know them: the
/// flags, the network config and the leases' PublicIPs in etcd (nothing of the config
/// when there is none yet).
pub(super) async fn address_policy(
    client: etcd_client::Client,
    etcd: &EtcdArgs,
    args: &AddressArgs,
) -> Result<AddressPolicy> {
    let mut registry = Registry::new(client, etcd.prefix());
    let config = registry.config().await.ok().map(|(c, _)| c);
    let ips = match &config {
        Some(c) => {
            let (leases, _) = registry.leases().await?;
            let mut set = LeaseSet::new(etcd.prefix());
            set.admit(c, None, &leases);
            set.public_ips().to_vec()
        }
        None => Vec::new(),
    };
    Ok(AddressPolicy::new(args, config.as_ref(), ips))
}

async fn list(
    store: StoreArgs,
    namespace: Option<String>,
    node_name: Option<String>,
    bpf_root: PathBuf,
    output: Output,
) -> Result<()> {
    let mut s = store.store().await?;
    let (kvs, _) = s.list().await?;
    let maps = match &node_name {
        Some(n) => Some(LbMaps::open(&crate::dataplane::Pins::new(&bpf_root, n)?)?),
        None => None,
    };
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    for (k, v) in kvs {
        let Some(id) = parse_key(s.prefix(), &k) else {
            continue;
        };
        let def = match service::decode(&v) {
            Ok(d) => d,
            Err(e) => {
                rows.push(vec![id.to_string(), format!("INVALID: {e}")]);
                json_rows.push(json!({"service": id, "error": e}));
                continue;
            }
        };
        if namespace.as_ref().is_some_and(|n| *n != def.namespace) {
            continue;
        }
        let ports: Vec<String> = def
            .ports
            .iter()
            .map(|p| match p.node_port {
                Some(np) => format!("{}:{np}/{}", p.port, proto(p.proto)),
                None => format!("{}/{}", p.port, proto(p.proto)),
            })
            .collect();
        let ready = def.ready_endpoints().count();
        let programmed = maps.as_ref().map(|m| programmed(m, &def));
        let kind = format!("{:?}", def.kind).replace("ClusterIp", "ClusterIP");
        let cip = def
            .cluster_ip
            .map(|a| a.to_string())
            .unwrap_or_else(|| "None".into());
        let ext: Vec<String> = def.external_ips.iter().map(|a| a.to_string()).collect();
        json_rows.push(json!({
            "namespace": def.namespace, "name": def.name, "type": kind, "clusterIP": cip,
            "externalIPs": ext, "ports": ports, "readyEndpoints": ready,
            "endpoints": def.endpoints.len(), "algorithm": format!("{:?}", def.algorithm).to_lowercase(),
            "sessionAffinity": def.affinity_timeout.is_some(), "programmed": programmed,
        }));
        let mut row = vec![
            def.namespace.clone(),
            def.name.clone(),
            kind,
            cip,
            if ext.is_empty() {
                "<none>".into()
            } else {
                ext.join(",")
            },
            ports.join(","),
            format!("{ready}/{}", def.endpoints.len()),
            format!("{:?}", def.algorithm).to_lowercase(),
        ];
        if let Some(p) = programmed {
            row.push(if p { "yes" } else { "no" }.into());
        }
        rows.push(row);
    }
    match output {
        Output::Json | Output::Yaml => print_value(output, &json!(json_rows)),
        Output::Table => {
            let mut header = vec![
                "NAMESPACE",
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "READY",
                "ALGORITHM",
            ];
            if maps.is_some() {
                header.push("PROGRAMMED");
            }
            print_table(&header, &rows);
        }
    }
    Ok(())
}

/// Whether the node's maps serve every cluster and external IP frontend of the service
/// with its ready endpoints.
fn programmed(maps: &LbMaps, def: &ServiceDef) -> bool {
    let Some(cip) = def.cluster_ip else {
        return true;
    };
    let ready: HashSet<[u8; 4]> = def.ready_endpoints().map(|e| e.ip.octets()).collect();
    def.ports.iter().all(|p| {
        std::iter::once(cip)
            .chain(def.external_ips.iter().copied())
            .all(|a| match maps.get(a, p.port, p.proto) {
                Some(f) => {
                    f.target_port() == p.target_port
                        && f.backends.len() == ready.len()
                        && f.backends.iter().all(|b| ready.contains(&b.addr))
                }
                None => false,
            })
    })
}

pub fn lb(cmd: LbCmd) -> Result<()> {
    let LbCmd::List(args) = cmd;
    let maps = LbMaps::open(&args.pins()?)?;
    let list = maps.list();
    let backends = |f: &crate::dataplane::lb::FrontendEntry| -> Vec<String> {
        f.backends
            .iter()
            .map(|b| {
                let local = b.flags & netdp_common::lb::backend_flags::LOCAL != 0;
                format!("{}{}", Ipv4Addr::from(b.addr), if local { "*" } else { "" })
            })
            .collect()
    };
    match args.output {
        Output::Json | Output::Yaml => print_value(
            args.output,
            &json!(list.iter().map(|f| json!({
                "address": f.addr().to_string(), "port": f.port(), "protocol": f.proto_name(),
                "serviceId": f.fe.service_id, "targetPort": f.target_port(),
                "algorithm": f.algorithm(), "flags": f.flag_names(),
                "localBackends": f.fe.local_count, "backends": backends(f),
                "affinityTimeout": f.fe.affinity_timeout,
            })).collect::<Vec<_>>()),
        ),
        Output::Table => print_table(
            &[
                "FRONTEND",
                "SERVICE",
                "TARGET",
                "ALGORITHM",
                "FLAGS",
                "BACKENDS",
            ],
            &list
                .iter()
                .map(|f| {
                    let b = backends(f);
                    vec![
                        format!("{}:{}/{}", f.addr(), f.port(), f.proto_name()),
                        f.fe.service_id.to_string(),
                        f.target_port().to_string(),
                        f.algorithm().into(),
                        f.flag_names().join(","),
                        if b.is_empty() {
                            "(none: rejects)".into()
                        } else {
                            b.join(",")
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}
