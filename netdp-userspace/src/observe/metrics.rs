//! Prometheus metrics, in Prometheus' conventions (`netdp_` prefix, `_total` counters, base
//! units). What the programs counted is read from COUNTERS at scrape time, so a scrape
//! costs the packet path nothing; the agent's own figures are kept as it works.
use std::{fmt, sync::Arc};

use netdp_common::counters::{Program, Reason};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::ConstCounter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use super::Health;
use crate::dataplane::counters::CounterMap;

/// Which change a map update applied.
pub type ChangeLabels = [(&'static str, &'static str); 1];

pub struct Metrics {
    registry: Registry,
    /// Remote subnets in ROUTES.
    pub routes: Gauge,
    /// Services and their backends programmed in the service maps.
    pub services: Gauge,
    pub service_backends: Gauge,
    /// Conntrack entries and masqueraded flows, as the last GC pass counted them.
    pub conntrack_entries: Gauge,
    /// Of those, entries of TCP flows still in HALF_OPEN (a SYN flood shows here).
    pub conntrack_half_open: Gauge,
    pub masquerade_flows: Gauge,
    /// Time from a change (leases, services) arriving to the maps holding it.
    pub apply_duration: Family<ChangeLabels, Histogram, fn() -> Histogram>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

fn apply_histogram() -> Histogram {
    // 50 us to about 13 s.
    Histogram::new(exponential_buckets(0.00005, 4.0, 10))
}

impl Metrics {
    /// The agent's metrics; `counters` is the node's COUNTERS map (the programs' counts).
    pub fn new(counters: CounterMap, health: Arc<Health>) -> Self {
        let mut registry = Registry::with_prefix("netdp");
        let m = Metrics {
            routes: Gauge::default(),
            services: Gauge::default(),
            service_backends: Gauge::default(),
            conntrack_entries: Gauge::default(),
            conntrack_half_open: Gauge::default(),
            masquerade_flows: Gauge::default(),
            apply_duration: Family::new_with_constructor(apply_histogram),
            registry: Registry::default(),
        };
        registry.register("routes", "Remote pod subnets in ROUTES", m.routes.clone());
        registry.register("services", "Services programmed", m.services.clone());
        registry.register(
            "service_backends",
            "Backends of the programmed services",
            m.service_backends.clone(),
        );
        registry.register(
            "conntrack_entries",
            "Conntrack entries (CONNTRACK and HALF_OPEN) at the last GC pass (two per flow)",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "conntrack_half_open_entries",
            "HALF_OPEN entries at the last GC pass: TCP flows whose SYN is unanswered",
            m.conntrack_half_open.clone(),
        );
        registry.register(
            "masquerade_flows",
            "Masqueraded flows (node ports in use) at the last GC pass",
            m.masquerade_flows.clone(),
        );
        registry.register_with_unit(
            "map_apply_duration",
            "Time from a change arriving to the maps holding it",
            Unit::Seconds,
            m.apply_duration.clone(),
        );
        registry.register_collector(Box::new(Datapath(counters)));
        registry.register_collector(Box::new(Lease(health)));
        Metrics { registry, ..m }
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The programs' counters, read at scrape time.
struct Datapath(CounterMap);

impl fmt::Debug for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Datapath")
    }
}

fn labels(program: Program, reason: Reason) -> [(&'static str, &'static str); 3] {
    [
        ("program", program.name()),
        ("verdict", reason.verdict().name()),
        ("reason", reason.name()),
    ]
}

impl Collector for Datapath {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        // An unreadable map (torn down under us) yields no samples rather than a failed scrape.
        let (Ok(counts), Ok(events)) = (self.0.all(), self.0.events()) else {
            return Ok(());
        };
        {
            let mut m = encoder.encode_descriptor(
                "datapath_packets",
                "Packets the programs handled, per program, verdict and reason",
                None,
                MetricType::Counter,
            )?;
            for c in &counts {
                ConstCounter::new(c.packets)
                    .encode(m.encode_family(&labels(c.program, c.reason))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "datapath",
                "Bytes the programs handled, per program, verdict and reason",
                Some(&Unit::Bytes),
                MetricType::Counter,
            )?;
            for c in &counts {
                ConstCounter::new(c.bytes)
                    .encode(m.encode_family(&labels(c.program, c.reason))?)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "datapath_events",
            "Flows the programs set up and other events, per program",
            None,
            MetricType::Counter,
        )?;
        for e in &events {
            let l = [("program", e.program.name()), ("event", e.event.name())];
            ConstCounter::new(e.count).encode(m.encode_family(&l)?)?;
        }
        Ok(())
    }
}

/// The node's lease (held or not, how long until it expires) and the etcd watches.
struct Lease(Arc<Health>);

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lease")
    }
}

impl Collector for Lease {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let left = self.0.lease_expires_in();
        {
            let m = encoder.encode_descriptor(
                "lease_held",
                "Whether this node holds its subnet lease",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(i64::from(left.is_some())).encode(m)?;
        }
        {
            let m = encoder.encode_descriptor(
                "etcd_watch_reconnects",
                "Times a broken etcd watch was resumed or had to re-list",
                None,
                MetricType::Counter,
            )?;
            let n = crate::etcd::watch::RECONNECTS.load(std::sync::atomic::Ordering::Relaxed);
            ConstCounter::new(n).encode(m)?;
        }
        if let Some(left) = left {
            let m = encoder.encode_descriptor(
                "lease_expires_in",
                "Time until this node's lease expires unless renewed",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(left).encode(m)?;
        }
        Ok(())
    }
}
