//! Per-packet cost of each program path, measured in the kernel with BPF_PROG_TEST_RUN next
//! to `bench_redirect`, a program that only redirects (the floor).
//!
//! The kernel runs a program `repeat` times on the same buffer, so a path that rewrites the
//! packet (every forwarding path decrements the TTL) would change path part way through.
//! Each call therefore runs a fresh copy `PER_CALL` times, the kernel's average of a call is
//! weighted over many calls (millions of packets per sample), and after every call the
//! verdict and the TTL prove that each run took the path being measured.
use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use netdp_common::{
    Ipv4,
    endpoint::{Endpoint, EndpointKey},
    map_names,
    program_names::{BENCH_REDIRECT, FROM_NETDEV, FROM_POD},
    route::{Route, flags, mode},
};
use netdp_testbed::packet::{IPPROTO_TCP, PacketSpec};

use super::{
    report::{NS_PER_PACKET, Outcome, Row, Section},
    runner::{self, Stats},
};

const TC_ACT_REDIRECT: u32 = 7;
/// Runs per call: less than the 255 TTL decrements a fresh packet allows.
const PER_CALL: u32 = 250;
const FLOOR: &str = "floor: redirect only";
const FLOOR_CASE: &str = "bench_redirect";

/// One program path and the packet that takes it.
struct Path_ {
    case: &'static str,
    program: &'static str,
    dst: Ipv4Addr,
    /// TTL decrements per run (0 for the floor, which does not touch the packet).
    ttl_step: u8,
}

const PATHS: &[Path_] = &[
    Path_ {
        case: "local delivery (pod -> pod on this node)",
        program: FROM_POD,
        dst: Ipv4Addr::new(10, 1, 1, 3),
        ttl_step: 1,
    },
    Path_ {
        case: "local delivery (underlay -> pod)",
        program: FROM_NETDEV,
        dst: Ipv4Addr::new(10, 1, 1, 3),
        ttl_step: 1,
    },
    Path_ {
        case: "remote forward, host-gw (pod -> peer node)",
        program: FROM_POD,
        dst: Ipv4Addr::new(10, 1, 2, 5),
        ttl_step: 1,
    },
];

/// Paths later backends add; each names what it waits for.
const NOT_YET: &[(&str, &str)] = &[
    (
        "encapsulation, vxlan (pod -> peer node)",
        "vxlan backend in eBPF (issue #4)",
    ),
    (
        "encapsulation, ipip (pod -> peer node)",
        "ipip backend in eBPF (issue #4)",
    ),
    (
        "encapsulation, udp (pod -> peer node)",
        "udp backend in eBPF (issue #4)",
    ),
    (
        "decapsulation, vxlan (underlay -> pod)",
        "vxlan backend in eBPF (issue #4)",
    ),
    (
        "decapsulation, ipip (underlay -> pod)",
        "ipip backend in eBPF (issue #4)",
    ),
    (
        "decapsulation, udp (underlay -> pod)",
        "udp backend in eBPF (issue #4)",
    ),
    (
        "service DNAT, first packet (pod -> ClusterIP)",
        "services in eBPF (issue #5)",
    ),
    (
        "service, established flow (pod -> ClusterIP)",
        "services in eBPF (issue #5)",
    ),
    (
        "service reverse NAT (backend -> pod)",
        "services in eBPF (issue #5)",
    ),
];

/// The built eBPF object (`cargo xtask build-ebpf`).
pub fn object_path() -> std::path::PathBuf {
    crate::build::workspace().join("target/ebpf/bpfel-unknown-none/release/netdp")
}

fn load(object: &Path) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load_file(object)
        .with_context(|| format!("loading {}", object.display()))?;
    for name in [FROM_POD, FROM_NETDEV, BENCH_REDIRECT] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from {}", object.display()))?
            .try_into()?;
        p.load()
            .with_context(|| format!("loading {name} into the kernel"))?;
    }
    let mut endpoints: HashMap<_, EndpointKey, Endpoint> = HashMap::try_from(
        ebpf.map_mut(map_names::ENDPOINTS)
            .ok_or_else(|| anyhow!("no ENDPOINTS map"))?,
    )?;
    endpoints.insert(
        EndpointKey {
            addr: [10, 1, 1, 3],
        },
        Endpoint {
            ifindex: 42,
            flags: 0,
            mac: [0x0a, 0, 0, 0, 0, 2],
            host_mac: [0x0e, 0, 0, 0, 0, 2],
        },
        0,
    )?;
    let mut routes: LpmTrie<_, Ipv4, Route> = LpmTrie::try_from(
        ebpf.map_mut(map_names::ROUTES)
            .ok_or_else(|| anyhow!("no ROUTES map"))?,
    )?;
    routes.insert(
        &Key::new(24, [10, 1, 2, 0]),
        Route {
            node_ip: [192, 168, 10, 12],
            nexthop: [192, 168, 10, 12],
            ifindex: 7,
            mode: mode::DIRECT,
            flags: flags::HAS_MAC,
            dmac: [0x52, 0x54, 0, 0, 0, 0x12],
            smac: [0x52, 0x54, 0, 0, 0, 0x11],
            // 0 would mean every packet is too big for the route.
            mtu: 1500,
            ..Default::default()
        },
        0,
    )?;
    Ok(ebpf)
}

/// Average ns per run of `program` on `frame` over `packets` runs, checking every call.
fn ns_per_packet(
    ebpf: &Ebpf,
    program: &str,
    frame: &[u8],
    ttl_step: u8,
    packets: u64,
) -> Result<f64> {
    let prog: &SchedClassifier = ebpf
        .program(program)
        .ok_or_else(|| anyhow!("no program {program}"))?
        .try_into()?;
    let calls = packets.div_ceil(PER_CALL as u64);
    let mut out = vec![0u8; frame.len() + 256];
    let mut total_ns = 0f64;
    for call in 0..calls {
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: PER_CALL,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        if res.return_value != TC_ACT_REDIRECT {
            bail!(
                "{program} returned {} on call {call}, not TC_ACT_REDIRECT",
                res.return_value
            );
        }
        let want_ttl = frame[22].wrapping_sub(ttl_step.wrapping_mul(PER_CALL as u8));
        if out[22] != want_ttl {
            bail!(
                "{program}: TTL {} after {PER_CALL} runs, expected {want_ttl}: a run left the path",
                out[22]
            );
        }
        total_ns += res.duration.as_nanos() as f64;
    }
    // The kernel reports each call's average per run.
    Ok(total_ns / calls as f64)
}

pub fn run(packets: u64, repeats: usize) -> Vec<Row> {
    let object = object_path();
    let ebpf = match load(&object) {
        Ok(e) => e,
        Err(e) => {
            return vec![Row::new(
                Section::PerPacket,
                "netdp",
                "all paths",
                NS_PER_PACKET,
                Outcome::Failed(format!("{e:#}")),
            )];
        }
    };
    let frame = |dst: Ipv4Addr| {
        PacketSpec {
            dst,
            ttl: 255,
            proto: IPPROTO_TCP,
            payload: vec![0; 6],
            ..Default::default()
        }
        .build()
    };
    let measure = |program: &str, dst: Ipv4Addr, step: u8| -> Result<Stats> {
        let f = frame(dst);
        runner::repeat(program, repeats, |_| {
            ns_per_packet(&ebpf, program, &f, step, packets)
        })
    };
    let mut rows = vec![Row::from_result(
        Section::PerPacket,
        FLOOR,
        FLOOR_CASE,
        NS_PER_PACKET,
        measure(BENCH_REDIRECT, Ipv4Addr::new(10, 9, 9, 9), 0),
    )];
    for p in PATHS {
        rows.push(
            Row::from_result(
                Section::PerPacket,
                "netdp",
                p.case,
                NS_PER_PACKET,
                measure(p.program, p.dst, p.ttl_step),
            )
            .compared_to_case(FLOOR, FLOOR_CASE),
        );
    }
    for (case, why) in NOT_YET {
        rows.push(
            Row::new(
                Section::PerPacket,
                "netdp",
                case,
                NS_PER_PACKET,
                Outcome::NotAvailable((*why).into()),
            )
            .compared_to_case(FLOOR, FLOOR_CASE),
        );
    }
    rows
}
