//! Packets per second a node forwards from an outside client to a service's endpoint on
//! another node: netdp in XDP, netdp in tc only, and kube-proxy's iptables rules, at
//! several service counts, side by side in one run, driven by a packet generator.
//!
//! Two namespaces joined by one veth: `gen` (the outside, and the "other node") and `node`.
//! The generator is BPF_PROG_TEST_RUN with live frames (what xdp-trafficgen does):
//! `xdp_gen` (the `xdp_peer` object) writes one TCP flow's data segment into each frame
//! and sends it out of `gen`'s veth. The node translates it (DNAT to the endpoint, source
//! NAT to itself) and sends it back out of the same interface to the endpoint's node,
//! whose MAC is the generator's veth, where `xdp_sink` counts and drops it. The rate is
//! what the sink counted over the generator's run; every sample also checks that the path
//! measured did the forwarding (netdp's `direct` counter of the hook, or with kube-proxy
//! no netdp program attached at all).
//!
//! - **netdp XDP**: `xdp_netdev` in native mode and `from_netdev` on the node's veth; the
//!   service is an external IP (what XDP takes: node ports, external and load-balancer
//!   IPs).
//! - **netdp tc**: the same maps; `xdp_pass` instead of `xdp_netdev` (a veth hands over
//!   frames an XDP peer sends only to an XDP program), then the skb and `from_netdev`.
//! - **kube-proxy iptables**: the rules of its full sync (`kube_proxy::iptables`) for as
//!   many ClusterIP services, reached from outside (kube-proxy DNATs and masquerades
//!   traffic from outside the cluster CIDR to a ClusterIP as it does a node port's), the
//!   kernel forwarding; `xdp_pass` on the veth as for tc.
//! - **generator -> sink**: `xdp_sink` on the node's veth itself: the generator's ceiling.
//!
//! One flow means one CPU at a time: the rates are per core, on a machine whose other
//! core runs the generator's system call part of the time.
use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use netdp_common::{
    counters::{Program, Reason},
    node::NodeConfig,
    program_names::FROM_NETDEV,
    route::{Route, flags, mode},
};
use netdp_dataplane::{
    Dataplane, MapSizes, Pins, counters::CounterMap, route::RouteMap, xdp::XdpMode as NetdpXdp,
};
use netdp_testbed::{
    netns,
    packet::{IPPROTO_TCP, PacketSpec},
};

use super::{
    kube_proxy::{self, cluster_ip},
    netfilter::{self, IptBackend},
    report::{Metric, Row, Section},
    runner::{self, Stats},
    services::case,
};

pub const PPS: Metric = Metric {
    name: "packets forwarded/s",
    unit: "Mpps",
    higher_is_better: true,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const GEN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const NODE_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x77, 1];
const GEN_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x77, 2];
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The service's endpoints: pods of the node behind the generator's veth.
const ENDPOINTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 2, 5),
    Ipv4Addr::new(10, 244, 2, 6),
    Ipv4Addr::new(10, 244, 2, 7),
];
/// Where netdp source-NATs (the node's gateway address in its pod subnet).
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const CLIENT_PORT: u16 = 40_000;
/// Frames per generator run, and per live-frames batch.
const FRAMES: u32 = 2_000_000;
const BATCH: u32 = 64;
/// Bytes `xdp_gen` rewrites in each frame (its `TEMPLATE_LEN`).
const TEMPLATE_LEN: usize = 64;

const XDP: &str = "netdp XDP";
const TC: &str = "netdp tc";
const IPTABLES: &str = "kube-proxy iptables";
const CEILING: &str = "generator -> sink";

/// The data segment the client sends (the flow's handshake is done beforehand).
fn frame(service: Ipv4Addr) -> Vec<u8> {
    PacketSpec {
        src_mac: GEN_MAC,
        dst_mac: NODE_MAC,
        src: CLIENT,
        dst: service,
        ttl: 64,
        proto: IPPROTO_TCP,
        sport: CLIENT_PORT,
        dport: PORT,
        tcp_flags: 0x18,
        seq: 5000,
        ack: 1,
        payload: vec![0x5a; 64],
    }
    .build()
}

/// The two namespaces and their veth, removed when dropped.
struct Pair {
    gen_ns: String,
    node_ns: String,
}

impl Pair {
    fn new() -> Result<Self> {
        let id = std::process::id();
        let p = Pair {
            gen_ns: format!("ndr{id}-gen"),
            node_ns: format!("ndr{id}-node"),
        };
        for ns in [&p.gen_ns, &p.node_ns] {
            netns::delete(ns);
            netns::create(ns)?;
        }
        let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        let (g, n) = (p.gen_ns.as_str(), p.node_ns.as_str());
        let (gmac, nmac) = (mac(GEN_MAC), mac(NODE_MAC));
        let gen_addr = format!("{GEN_IP}/24");
        let node_addr = format!("{NODE_IP}/24");
        let gen_ip = GEN_IP.to_string();
        for args in [
            vec![
                "-n", g, "link", "add", "g0", "address", &gmac, "type", "veth", "peer", "name",
                "n0", "address", &nmac, "netns", n,
            ],
            vec!["-n", g, "addr", "add", &gen_addr, "dev", "g0"],
            vec!["-n", n, "addr", "add", &node_addr, "dev", "n0"],
            vec!["-n", g, "link", "set", "g0", "up"],
            vec!["-n", n, "link", "set", "n0", "up"],
            vec!["-n", n, "link", "set", "lo", "up"],
            vec!["-n", n, "route", "add", "198.51.100.0/24", "via", &gen_ip],
            vec!["-n", n, "route", "add", "10.244.2.0/24", "via", &gen_ip],
            vec![
                "-n",
                n,
                "neigh",
                "replace",
                &gen_ip,
                "lladdr",
                &gmac,
                "dev",
                "n0",
                "nud",
                "permanent",
            ],
        ] {
            netns::ip(&args).with_context(|| format!("ip {args:?}"))?;
        }
        // The client's packets cross the node: the kernel (kube-proxy) must forward, and
        // XDP's next-hop lookups need it on the interface.
        netns::sysctl(n, "net.ipv4.ip_forward", "1")?;
        Ok(p)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        netns::delete(&self.gen_ns);
        netns::delete(&self.node_ns);
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn within<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = std::fs::File::open(netns::path(ns)).with_context(|| format!("opening {ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on an fd we own; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("entering {ns}: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("a thread in {ns} panicked"))?
    })
}

/// The generator's and sink's programs (`xdp_peer`), and one for the node's veth.
struct Peer(Ebpf);

impl Peer {
    fn load() -> Result<Self> {
        let path = netdp_testbed::peer_xdp_object();
        let mut ebpf =
            Ebpf::load_file(&path).with_context(|| format!("loading {}", path.display()))?;
        for name in ["xdp_gen", "xdp_sink", "xdp_pass"] {
            prog(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name}"))?;
        }
        Ok(Peer(ebpf))
    }

    fn sunk(&self) -> Result<u64> {
        let sink: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.0.map("SINK").ok_or_else(|| anyhow!("no SINK map"))?)?;
        Ok(sink.get(&0, 0)?.iter().sum())
    }
}

fn prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("no program {name}"))?
        .try_into()?)
}

/// The node with netdp's programs loaded (not attached) and `n` services programmed.
struct Netdp {
    dp: Dataplane,
    pins: Pins,
    counters: CounterMap,
}

fn netdp(object: &[u8], pair: &Pair, n: usize, bpf_root: &std::path::Path) -> Result<Netdp> {
    let node = NodeConfig {
        node_ip: NODE_IP.octets(),
        cluster: [10, 244, 0, 0],
        cluster_mask: [255, 255, 0, 0],
        ..Default::default()
    };
    let sizes = MapSizes {
        frontends: (2 * n as u32).max(1024),
        ..Default::default()
    };
    let mut dp = Dataplane::load_for(object, None, &sizes, &node)?;
    let pins = Pins::new(bpf_root, &pair.node_ns)?;
    pins.create_dirs()?;
    let n0 = within(&pair.node_ns, || {
        // SAFETY: a NUL-terminated name.
        Ok(unsafe { libc::if_nametoindex(c"n0".as_ptr()) })
    })?;
    let route = Route {
        node_ip: GEN_IP.octets(),
        nexthop: GEN_IP.octets(),
        ifindex: n0,
        mode: mode::DIRECT,
        flags: flags::HAS_MAC,
        dmac: GEN_MAC,
        smac: NODE_MAC,
        src_ip: NODE_IP.octets(),
        mtu: 1500,
        ..Default::default()
    };
    RouteMap::from_map(dp.take_map(netdp_common::map_names::ROUTES)?)?.sync(
        &std::collections::HashMap::from([("10.244.2.0/24".parse()?, route)]),
    )?;
    let services = super::per_packet::BenchServices {
        n,
        frontend: cluster_ip,
        external: true,
        real: ENDPOINTS,
        fake: |i, j| [10, 246, (i / 200 % 250) as u8, (i % 200 + j) as u8],
        snat: Some(SNAT),
    };
    super::per_packet::program_services(&mut dp, &sizes, &services)?;
    let counters = CounterMap::from_map(dp.take_map(netdp_common::map_names::COUNTERS)?)?;
    Ok(Netdp { dp, pins, counters })
}

impl Netdp {
    /// Opens the measured flow (SYN, SYN-ACK, ACK through tc's program on crafted
    /// packets), so the generator's segments are an established flow's.
    fn open_flow(&mut self, service: Ipv4Addr) -> Result<()> {
        let syn = PacketSpec {
            src_mac: GEN_MAC,
            dst_mac: NODE_MAC,
            src: CLIENT,
            dst: service,
            proto: IPPROTO_TCP,
            sport: CLIENT_PORT,
            dport: PORT,
            tcp_flags: 0x02,
            seq: 4999,
            ..Default::default()
        };
        let prog = self.dp.classifier(FROM_NETDEV)?;
        let (v, out) = netdp_testbed::packet::test_run(prog, &syn.build(), None);
        let Some(view) = netdp_testbed::packet::Ipv4View::parse(&out) else {
            bail!("the SYN came out as no IPv4 (verdict {v})");
        };
        let (sport, _) = netdp_testbed::packet::ports(&out);
        let syn_ack = PacketSpec {
            src: view.dst,
            dst: view.src,
            sport: TARGET_PORT,
            dport: sport,
            tcp_flags: 0x12,
            seq: 1,
            ack: 5000,
            ..syn.clone()
        };
        netdp_testbed::packet::test_run(prog, &syn_ack.build(), None);
        let ack = PacketSpec {
            tcp_flags: 0x10,
            seq: 5000,
            ack: 2,
            ..syn
        };
        netdp_testbed::packet::test_run(prog, &ack.build(), None);
        Ok(())
    }
}

/// One generator run of `FRAMES` frames: the sink's count over the run's time (Mpps), and
/// the count.
fn generate(pair: &Pair, peer: &mut Peer, service: Ipv4Addr) -> Result<(f64, u64)> {
    let frame = frame(service);
    let mut template: Array<_, [u8; TEMPLATE_LEN]> = Array::try_from(
        peer.0
            .map_mut("TEMPLATE")
            .ok_or_else(|| anyhow!("no TEMPLATE map"))?,
    )?;
    let mut head = [0u8; TEMPLATE_LEN];
    head.copy_from_slice(&frame[..TEMPLATE_LEN]);
    template.set(0, head, 0)?;
    let before = peer.sunk()?;
    let gen_prog: &Xdp = peer
        .0
        .program("xdp_gen")
        .ok_or_else(|| anyhow!("no xdp_gen"))?
        .try_into()?;
    let took = within(&pair.gen_ns, || {
        // SAFETY: a NUL-terminated name.
        let g0 = unsafe { libc::if_nametoindex(c"g0".as_ptr()) };
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: Vec<u8> = [0, frame.len() as u32, 0, g0, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let start = Instant::now();
        gen_prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&md),
                repeat: FRAMES,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN with live frames")?;
        Ok(start.elapsed())
    })?;
    // Let what is still queued arrive.
    std::thread::sleep(Duration::from_millis(50));
    let sunk = peer.sunk()? - before;
    Ok((sunk as f64 / took.as_secs_f64() / 1e6, sunk))
}

impl Peer {
    /// Attaches `name` to `dev` of `ns` (native mode); the link id, to detach it.
    fn attach(&mut self, ns: &str, dev: &str, name: &str) -> Result<aya::programs::xdp::XdpLinkId> {
        let p = prog(&mut self.0, name)?;
        within(ns, || {
            p.attach(dev, XdpMode::Driver)
                .with_context(|| format!("attaching {name} to {dev}"))
        })
    }

    fn detach(&mut self, name: &str, id: aya::programs::xdp::XdpLinkId) -> Result<()> {
        prog(&mut self.0, name)?.detach(id)?;
        Ok(())
    }
}

/// One variant's samples at one service count; `check` gets the frames the sink counted
/// in a sample and fails it if the path measured did not forward them.
fn measure(
    pair: &Pair,
    peer: &mut Peer,
    what: &str,
    repeats: usize,
    service: Ipv4Addr,
    mut check: impl FnMut(u64) -> Result<()>,
) -> Result<Stats> {
    runner::repeat(what, repeats, |_| {
        let (mpps, sunk) = generate(pair, peer, service)?;
        if sunk < FRAMES as u64 / 100 {
            bail!("{what}: {sunk} of {FRAMES} frames came back");
        }
        check(sunk)?;
        Ok(mpps)
    })
}

/// The netdp hook's `direct` counter must have grown by what the sink counted, but for a
/// few frames the node sends itself (ARP, say).
fn forwarded_by(counters: &CounterMap, program: Program) -> impl FnMut(u64) -> Result<()> + '_ {
    let mut last = counters
        .get(program, Reason::Direct)
        .map(|c| c.packets)
        .unwrap_or(0);
    move |sunk| {
        let now = counters.get(program, Reason::Direct)?.packets;
        let n = now - last;
        last = now;
        if n + 16 < sunk {
            bail!(
                "{} forwarded {n} of the {sunk} frames the sink counted",
                program.name()
            );
        }
        Ok(())
    }
}

/// The four variants at `n` services.
fn at(object: &[u8], pair: &Pair, peer: &mut Peer, n: usize, repeats: usize) -> Vec<Row> {
    let service = cluster_ip(n - 1);
    let row = |subject: &str, r: Result<Stats>| {
        let row = Row::from_result(
            Section::PacketRate,
            subject,
            &format!(
                "node port, established TCP flow to a remote endpoint, {}",
                case(n)
            ),
            PPS,
            r,
        );
        if subject == XDP {
            row.compared_to(&[TC, IPTABLES])
        } else {
            row
        }
    };
    let mut rows = Vec::new();
    // The generator's ceiling: the sink on the node's veth itself.
    let ceiling = peer.attach(&pair.node_ns, "n0", "xdp_sink").and_then(|id| {
        let r = measure(pair, peer, CEILING, repeats, service, |_| Ok(()));
        peer.detach("xdp_sink", id)?;
        r
    });
    rows.push(row(CEILING, ceiling));
    let pass = match peer.attach(&pair.node_ns, "n0", "xdp_pass") {
        Ok(id) => id,
        Err(e) => {
            for s in [IPTABLES, TC, XDP] {
                rows.push(row(s, Err(runner::same_error(&e))));
            }
            return rows;
        }
    };
    // kube-proxy's rules, then netdp's programs (the rules flushed first).
    let services = kube_proxy::bench_services(
        n,
        &ENDPOINTS
            .iter()
            .map(|e| (*e, TARGET_PORT))
            .collect::<Vec<_>>(),
    );
    let cluster = kube_proxy::bench_cluster(NODE_IP);
    let iptables = netfilter::load_iptables(
        &pair.node_ns,
        IptBackend::Nft,
        &services,
        &cluster,
        Duration::from_secs(600),
    )
    .and_then(|_| measure(pair, peer, IPTABLES, repeats, service, |_| Ok(())));
    let _ = netfilter::clear_iptables(&pair.node_ns, IptBackend::Nft);
    rows.push(row(IPTABLES, iptables));

    let bpf_root = std::path::PathBuf::from(format!("/sys/fs/bpf/ndr{}", std::process::id()));
    let loaded = netdp(object, pair, n, &bpf_root);
    let (tc, xdp) = match loaded {
        Ok(mut nd) => {
            let tc = within(&pair.node_ns, || nd.dp.install(&nd.pins, "n0").map(|_| ()))
                .and_then(|()| nd.open_flow(service))
                .and_then(|()| {
                    measure(
                        pair,
                        peer,
                        TC,
                        repeats,
                        service,
                        forwarded_by(&nd.counters, Program::FromNetdev),
                    )
                });
            let _ = peer.detach("xdp_pass", pass);
            let xdp = within(&pair.node_ns, || {
                match nd.dp.attach_xdp(&nd.pins, "n0", NetdpXdp::Native)? {
                    NetdpXdp::Native => Ok(()),
                    m => bail!("XDP came up {}", m.name()),
                }
            })
            .and_then(|()| {
                measure(
                    pair,
                    peer,
                    XDP,
                    repeats,
                    service,
                    forwarded_by(&nd.counters, Program::Xdp),
                )
            });
            let _ = nd.pins.remove_all();
            (tc, xdp)
        }
        Err(e) => {
            let _ = peer.detach("xdp_pass", pass);
            (Err(runner::same_error(&e)), Err(e))
        }
    };
    let _ = std::fs::remove_dir_all(&bpf_root);
    rows.push(row(TC, tc));
    rows.push(row(XDP, xdp));
    rows
}

/// Every variant at every service count in `counts`.
pub fn run(counts: &[usize], repeats: usize) -> Vec<Row> {
    let setup = std::fs::read(super::per_packet::object_path())
        .context("reading netdp's eBPF object")
        .and_then(|object| {
            let pair = Pair::new()?;
            let mut peer = Peer::load()?;
            let sink = peer.attach(&pair.gen_ns, "g0", "xdp_sink")?;
            Ok((object, pair, peer, sink))
        });
    let (object, pair, mut peer, _sink) = match setup {
        Ok(s) => s,
        Err(e) => {
            return vec![Row::from_result(
                Section::PacketRate,
                "netdp XDP, tc and kube-proxy",
                "node port packet rate",
                PPS,
                Err(e),
            )];
        }
    };
    counts
        .iter()
        .flat_map(|&n| at(&object, &pair, &mut peer, n, repeats))
        .collect()
}
