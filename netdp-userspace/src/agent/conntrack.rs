//! The agent's side of conntrack, which service flows and masqueraded flows share: the
//! table's size and lifetimes (load-time settings of the programs), and reclaiming
//! expired entries (the programs ignore them; the LRU would only evict them once the table
//! is full).
use std::time::Duration;

use log::debug;
use netdp_common::capacity;

use crate::{
    dataplane::{MapSizes, conntrack::ConntrackMap},
    util::parse_duration,
};

/// The agent's conntrack flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ConntrackArgs {
    /// Capacity of the conntrack map (two entries per translated flow: service flows and
    /// masqueraded ones).
    #[arg(long = "conntrack-map-size", default_value_t = capacity::CONNTRACK)]
    pub conntrack: u32,
    /// Capacity of the half-open table: TCP flows (two entries each) until their SYN is
    /// answered. A SYN flood fills this table and evicts its oldest; established flows in
    /// the conntrack map are never touched by it.
    #[arg(long = "conntrack-half-open-size", default_value_t = capacity::HALF_OPEN)]
    pub half_open: u32,
    /// How often expired conntrack entries are reclaimed.
    #[arg(long = "conntrack-gc-interval", value_parser = parse_duration, default_value = "30s")]
    pub gc_interval: Duration,
    /// Conntrack lifetime of a TCP connection until the other side answers.
    #[arg(long = "conntrack-timeout-tcp-syn", value_parser = parse_duration, default_value = "60s")]
    pub timeout_tcp_syn: Duration,
    /// Conntrack lifetime of an established TCP connection after its last packet.
    #[arg(long = "conntrack-timeout-tcp-established", value_parser = parse_duration, default_value = "6h")]
    pub timeout_tcp_established: Duration,
    /// Conntrack lifetime of a closing TCP connection (FIN or RST seen).
    #[arg(long = "conntrack-timeout-tcp-closing", value_parser = parse_duration, default_value = "10s")]
    pub timeout_tcp_closing: Duration,
    /// Conntrack lifetime of a UDP flow (or a masqueraded ping) after its last packet.
    #[arg(long = "conntrack-timeout-udp", value_parser = parse_duration, default_value = "60s")]
    pub timeout_udp: Duration,
}

impl ConntrackArgs {
    pub fn map_sizes(&self, sizes: &mut MapSizes) {
        sizes.conntrack = self.conntrack;
        sizes.half_open = self.half_open;
        let secs = |d: Duration| d.as_secs().clamp(1, u32::MAX as u64) as u32;
        sizes.conntrack_timeouts = [
            secs(self.timeout_tcp_syn),
            secs(self.timeout_tcp_established),
            secs(self.timeout_tcp_closing),
            secs(self.timeout_udp),
        ];
    }
}

/// Reclaims expired conntrack entries.
pub fn gc(conntrack: &mut ConntrackMap) {
    let n = conntrack.gc();
    if n > 0 {
        debug!("conntrack: reclaimed {n} expired entries");
    }
}
