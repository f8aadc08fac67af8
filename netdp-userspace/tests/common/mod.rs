//! The fixture every packet test (`packet_*.rs`) shares: netdp's programs loaded into the
//! kernel for one node, its maps filled the way the agent and the CNI plugin fill them,
//! frames run through a program with BPF_PROG_TEST_RUN, and the programs' counters.
//!
//! It sets up only what goes into the maps. What a test expects back it builds itself
//! with `netdp_testbed::packet`, independently of the code under test.
//!
//! The node under test is 192.168.10.11 on underlay interface 7 of 192.168.10.0/24, in
//! cluster 10.1.0.0/16 when a test loads it with [`node_config`]. Its neighbours: the
//! router at .1, a peer on the same underlay at .12 and a peer across the router at
//! 192.168.20.13, each leasing 10.1.2.0/24 in the tests that route to it.

// Each packet test uses the part of the fixture it needs.
#![allow(dead_code)]

use std::{collections::BTreeMap, net::Ipv4Addr};

use netdp::{
    config::Backend,
    dataplane::{
        Dataplane, MapSizes,
        conntrack::ConntrackMap,
        counters::CounterMap,
        endpoint::EndpointMap,
        lb::{FrontendPlan, Lb, LbMaps, ServicePlan, frontend_key},
        networks::NetworkSet,
        peer::PeerMap,
        route::{RouteMap, Underlay, entry_for, mode_for},
    },
    lease::LeaseAttrs,
    netlink::Link,
};
use netdp_common::{
    counters::{Event, Program, Reason},
    endpoint::Endpoint,
    lb::{Backend as LbBackend, backend_flags},
    map_names,
    node::{NodeConfig, decap},
    route::{Route, flags, mode},
};
use netdp_testbed::packet::{self, Outer, PacketSpec};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 11);
pub const UNDERLAY_IFINDEX: u32 = 7;
pub const UNDERLAY_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x11];
/// The node's VTEP MAC (vxlan).
pub const OUR_VTEP: [u8; 6] = [0x0e, 0x54, 0, 0, 0, 0x11];
/// The node's gateway address (`netdp_host`), which services source-NAT to.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 1);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
pub const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x01];
/// The peer on the node's own underlay, routed to directly.
pub const ADJACENT_PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 12);
pub const ADJACENT_PEER_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x12];
/// The peer across the router, and its VTEP MAC.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 20, 13);
pub const PEER_VTEP: [u8; 6] = [0x0e, 0x54, 0, 0, 0, 0x13];
/// The subnet a peer leases (10.1.2.0/24).
pub const PEER_SUBNET: &str = "10.1.2.0/24";

/// The device BPF_PROG_TEST_RUN runs tc programs on (lo). `from_pod` accepts a pod's
/// packets only from the veth its endpoint names, so a pod whose packets a test sends
/// through `from_pod` is attached here.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The MAC of pod number `n` on this node (`0a:00:00:00:00:n`).
pub const fn pod_mac(n: u8) -> [u8; 6] {
    [0x0a, 0, 0, 0, 0, n]
}

/// The MAC of the host side of pod `n`'s veth (`0e:00:00:00:00:n`).
pub const fn veth_mac(n: u8) -> [u8; 6] {
    [0x0e, 0, 0, 0, 0, n]
}

/// The node's settings as the agent bakes them in: this node's address, the cluster
/// 10.1.0.0/16 and the underlay interface; the rest (backend, masquerading) is the
/// test's.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        node_ip: NODE_IP.octets(),
        cluster: [10, 1, 0, 0],
        cluster_mask: [255, 255, 0, 0],
        underlay_ifindex: UNDERLAY_IFINDEX,
        ..Default::default()
    }
}

/// Only the cluster Network (10.1.0.0/16) set: no egress, no tunnels, no masquerading.
/// The underlay checks tell the cluster's sources from outside ones by it.
pub fn cluster_only() -> NodeConfig {
    NodeConfig {
        cluster: [10, 1, 0, 0],
        cluster_mask: [255, 255, 0, 0],
        ..Default::default()
    }
}

/// The node's underlay interface as the agent finds it.
pub fn underlay() -> Underlay {
    Underlay {
        link: Link {
            name: "eth0".into(),
            index: UNDERLAY_IFINDEX,
            mac: UNDERLAY_MAC,
            mtu: 1500,
        },
        addr: "192.168.10.11/24".parse().expect("a CIDR"),
    }
}

/// The route to [`ADJACENT_PEER`] (which leases [`PEER_SUBNET`]) with its MAC resolved.
pub fn direct_route() -> Route {
    Route {
        node_ip: ADJACENT_PEER.octets(),
        nexthop: ADJACENT_PEER.octets(),
        ifindex: UNDERLAY_IFINDEX,
        mode: mode::DIRECT,
        flags: flags::HAS_MAC,
        dmac: ADJACENT_PEER_MAC,
        smac: UNDERLAY_MAC,
        mtu: 1500,
        ..Default::default()
    }
}

/// A frame as the pod at `ip` sends it: from its MAC to the host side of its veth. The
/// test fills in the rest.
pub fn pod_sends(ip: Ipv4Addr, mac: [u8; 6], host_mac: [u8; 6]) -> PacketSpec {
    PacketSpec {
        src_mac: mac,
        dst_mac: host_mac,
        src: ip,
        ..Default::default()
    }
}

/// The outer addresses of this node's tunnel packets to [`PEER_IP`], through the router.
pub fn outer_to_peer() -> Outer {
    Outer {
        src_mac: UNDERLAY_MAC,
        dst_mac: ROUTER_MAC,
        src: NODE_IP,
        dst: PEER_IP,
    }
}

/// The outer addresses of [`PEER_IP`]'s tunnel packets to this node, through the router.
pub fn outer_from_peer() -> Outer {
    Outer {
        src_mac: ROUTER_MAC,
        dst_mac: UNDERLAY_MAC,
        src: PEER_IP,
        dst: NODE_IP,
    }
}

/// One node's programs in the kernel and its maps, taken out to be filled and read.
pub struct Fixture {
    dp: Dataplane,
    pub endpoints: EndpointMap,
    pub routes: RouteMap,
    pub peers: PeerMap,
    pub counters: CounterMap,
    pub conntrack: ConntrackMap,
    pub routed_networks: NetworkSet,
    pub denied_sources: NetworkSet,
    /// The service maps' writer; nothing is written until a test applies a service.
    pub lb: Lb,
}

impl Fixture {
    /// Loads the programs for `node` (the embedded object, default map sizes, no pins).
    pub fn load(node: &NodeConfig) -> Self {
        Self::load_sized(node, &MapSizes::default())
    }

    /// [`load`](Self::load) with map capacities of the test's choosing.
    pub fn load_sized(node: &NodeConfig, sizes: &MapSizes) -> Self {
        let mut dp = Dataplane::load_for(netdp::ebpf_object(), None, sizes, node)
            .expect("programs load and verify");
        let endpoints = EndpointMap::from_map(take(&mut dp, map_names::ENDPOINTS))
            .expect("ENDPOINTS is the endpoint map");
        let routes =
            RouteMap::from_map(take(&mut dp, map_names::ROUTES)).expect("ROUTES is the route map");
        let peers =
            PeerMap::from_map(take(&mut dp, map_names::PEERS)).expect("PEERS is the peer map");
        let counters = CounterMap::from_map(take(&mut dp, map_names::COUNTERS))
            .expect("COUNTERS is the counter map");
        let conntrack = ConntrackMap::take(&mut dp).expect("CONNTRACK and HALF_OPEN");
        let routed_networks = NetworkSet::from_map(
            take(&mut dp, map_names::ROUTED_NETWORKS),
            map_names::ROUTED_NETWORKS,
        )
        .expect("ROUTED_NETWORKS is the routed network map");
        let denied_sources = NetworkSet::from_map(
            take(&mut dp, map_names::DENIED_SOURCES),
            map_names::DENIED_SOURCES,
        )
        .expect("DENIED_SOURCES is a network map");
        let lb = Lb::new(
            LbMaps::take(&mut dp).expect("the object has the service maps"),
            16381,
        )
        .expect("16381 is a prime Maglev table size");
        Fixture {
            dp,
            endpoints,
            routes,
            peers,
            counters,
            conntrack,
            routed_networks,
            denied_sources,
            lb,
        }
    }

    /// A map the fixture keeps no handle of.
    pub fn take_map(&mut self, name: &str) -> aya::maps::Map {
        take(&mut self.dp, name)
    }

    /// Adds a pod on this node, as the CNI plugin does.
    pub fn add_pod(&mut self, ip: Ipv4Addr, ifindex: u32, mac: [u8; 6], host_mac: [u8; 6]) {
        let ep = Endpoint {
            ifindex,
            flags: 0,
            mac,
            host_mac,
        };
        self.endpoints.insert(ip, &ep).expect("adding an endpoint");
    }

    /// Adds the pod a default [`PacketSpec`] comes from, attached where test runs arrive.
    pub fn add_default_sender(&mut self) {
        let spec = PacketSpec::default();
        self.add_pod(spec.src, TEST_RUN_IFINDEX, spec.src_mac, spec.dst_mac);
    }

    /// Replaces ROUTES with `routes` (subnet, route), as the agent syncs it.
    pub fn set_routes(&mut self, routes: &[(&str, Route)]) {
        let desired = routes
            .iter()
            .map(|(subnet, route)| (subnet.parse().expect("a CIDR"), *route))
            .collect();
        self.routes.sync(&desired).expect("syncing ROUTES");
    }

    /// Routes [`PEER_SUBNET`] to [`PEER_IP`] via the router for `backend`, and accepts
    /// its tunnel packets, with the agent's own planning (`mode_for`, `entry_for`).
    pub fn route_to_peer(&mut self, backend: &Backend) {
        let attrs = LeaseAttrs::new(
            PEER_IP,
            backend.type_name(),
            Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:54:00:00:00:13"})),
        );
        let m = mode_for(&underlay(), backend, &attrs).expect("peer reachable");
        let route = entry_for(&underlay(), backend, &attrs, m, ROUTER, Some(ROUTER_MAC));
        self.set_routes(&[(PEER_SUBNET, route)]);
        let subnet = PEER_SUBNET.parse().expect("a CIDR");
        self.peers
            .sync(&[(PEER_IP, subnet)].into_iter().collect())
            .expect("syncing PEERS");
    }

    /// Programs (or replaces) service `name`; fails the test if the writer refuses it.
    pub fn apply(&mut self, name: &str, plan: ServicePlan) {
        let stats = self.lb.apply(vec![(name.to_string(), Some(plan))]);
        assert_eq!(stats.failed, 0, "{stats:?}");
    }

    /// Runs program `prog` on `frame`: its verdict and the frame it leaves.
    pub fn run(&mut self, prog: &str, frame: &[u8]) -> (u32, Vec<u8>) {
        self.run_ctx(prog, frame, None)
    }

    /// [`run`](Self::run) with a `struct __sk_buff` as the context (GSO fields, say).
    pub fn run_ctx(&mut self, prog: &str, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>) {
        let prog = self
            .dp
            .program(prog)
            .unwrap_or_else(|e| panic!("program {prog}: {e:#}"));
        packet::test_run(prog, frame, ctx)
    }

    /// Runs the XDP program on `frame` arriving on interface `ifindex` (of the thread's
    /// namespace): its verdict and the frame it leaves.
    pub fn run_xdp(&mut self, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = self.dp.xdp().unwrap_or_else(|e| panic!("{e:#}"));
        // struct xdp_md: data, data_end (the frame's length), data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: Vec<u8> = [0, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        packet::test_run(prog, frame, Some(&md))
    }

    /// Packets program `p` counted for `r`.
    pub fn count(&self, p: Program, r: Reason) -> u64 {
        self.counters
            .get(p, r)
            .unwrap_or_else(|e| panic!("counter {p:?}/{r:?}: {e:#}"))
            .packets
    }

    /// How often `e` happened in program `p`.
    pub fn event(&self, p: Program, e: Event) -> u64 {
        self.counters
            .event(p, e)
            .unwrap_or_else(|err| panic!("event {p:?}/{e:?}: {err:#}"))
    }
}

fn take(dp: &mut Dataplane, name: &str) -> aya::maps::Map {
    dp.take_map(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A service frontend as the agent plans it.
#[derive(Debug, Clone, Copy)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    /// Reached from outside the cluster (a node port, an external IP).
    pub external: bool,
    /// externalTrafficPolicy Local: only to this node's backends.
    pub local_only: bool,
    /// Direct server return to remote backends.
    pub dsr: bool,
}

/// A cluster IP frontend.
pub fn cluster_ip(addr: Ipv4Addr, port: u16, proto: u8) -> Frontend {
    Frontend {
        addr,
        port,
        proto,
        external: false,
        local_only: false,
        dsr: false,
    }
}

/// A node port (or any external) frontend.
pub fn node_port(addr: Ipv4Addr, port: u16, proto: u8) -> Frontend {
    Frontend {
        external: true,
        ..cluster_ip(addr, port, proto)
    }
}

impl Frontend {
    /// With externalTrafficPolicy Local.
    pub fn local_only(self) -> Self {
        Frontend {
            local_only: true,
            ..self
        }
    }

    /// With direct server return (`netdp.io/forwarding-mode: dsr`).
    pub fn dsr(self) -> Self {
        Frontend { dsr: true, ..self }
    }
}

/// A backend on this node.
pub fn local(addr: Ipv4Addr) -> LbBackend {
    LbBackend {
        addr: addr.octets(),
        flags: backend_flags::LOCAL,
    }
}

/// A backend on another node.
pub fn remote(addr: Ipv4Addr) -> LbBackend {
    LbBackend {
        addr: addr.octets(),
        flags: 0,
    }
}

/// A service sending `frontends` to `target_port` of `backends` (local ones first, as
/// the agent orders them) with random selection.
pub fn plan(frontends: &[Frontend], target_port: u16, backends: &[LbBackend]) -> ServicePlan {
    let local_count = backends
        .iter()
        .take_while(|b| b.flags & backend_flags::LOCAL != 0)
        .count() as u16;
    ServicePlan {
        frontends: frontends
            .iter()
            .map(|f| {
                (
                    frontend_key(f.addr, f.port, f.proto),
                    FrontendPlan {
                        target_port,
                        external: f.external,
                        local_only: f.local_only,
                        dsr: f.dsr,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        backends: backends.to_vec(),
        local_count,
        maglev: false,
        affinity_timeout: None,
    }
}

impl Fixture {
    /// [`run`](Self::run) that hands back the kernel's refusal instead of failing the test
    /// (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, or than the fixed
    /// IPv4 or IPv6 header their EtherType announces).
    pub fn try_run(&mut self, prog: &str, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        use aya::programs::{TestRun, TestRunOptions};
        let prog = self
            .dp
            .program(prog)
            .unwrap_or_else(|e| panic!("program {prog}: {e:#}"));
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .map_err(|e| format!("{e:#}"))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }
}

/// `frame` (Ethernet, then IPv4 without options) with the DSR option naming
/// `backend:port` behind its IP header: type 0x9e (copied, class 0, number 30), length 8,
/// the port, the address; the header length, total length and checksum to match.
pub fn with_option(frame: &[u8], backend: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(&[0x9e, 8]);
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&backend.octets());
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x47;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 8;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = packet::checksum(&f[14..42], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// The node settings of a node running `backend`, decapsulating what its peers send.
pub fn tunnel_node(backend: &Backend) -> NodeConfig {
    let (decap, port, vni) = match *backend {
        Backend::Vxlan { vni, port, .. } => (decap::VXLAN, port, vni),
        Backend::Ipip { .. } => (decap::IPIP, 0, 0),
        Backend::Udp { port } => (decap::UDP, port, 0),
        _ => panic!("not a tunnel: {backend:?}"),
    };
    NodeConfig {
        decap,
        port,
        vni,
        vtep_mac: OUR_VTEP,
        ..node_config()
    }
}

pub fn tunnels() -> [Backend; 3] {
    [
        Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        },
        Backend::Ipip {
            direct_routing: false,
        },
        Backend::Udp { port: 8285 },
    ]
}

/// CLUSTER_NETWORKS with `network` as the other cluster `id` (as the agent's mesh writes
/// it); the handle, to change it later.
pub fn other_cluster(f: &mut Fixture, network: &str, id: u32) -> NetworkSet {
    let mut networks = NetworkSet::from_map(
        f.take_map(map_names::CLUSTER_NETWORKS),
        map_names::CLUSTER_NETWORKS,
    )
    .expect("CLUSTER_NETWORKS is a network map");
    networks
        .insert(&network.parse().expect("a CIDR"), id)
        .expect("adding the other cluster");
    networks
}
