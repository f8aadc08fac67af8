//! Crafting and checking packets for BPF_PROG_TEST_RUN tests and benchmarks, and running
//! a tc or XDP program on one.
use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions, TestRunResult};

/// tc verdicts a program returns.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// XDP verdicts (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// Runs the loaded tc or XDP program `prog` once on `frame` with BPF_PROG_TEST_RUN
/// (`ctx`: an `__sk_buff` or `xdp_md` to start from, if any): its verdict and the frame as
/// the program left it. A redirect or XDP_TX is decided but never carried out.
pub fn test_run<P>(prog: &P, frame: &[u8], ctx: Option<&[u8]>) -> (u32, Vec<u8>)
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    // Room for what the program may push (encapsulation, an ICMP error's headers).
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPIP: u8 = 4;

/// Internet checksum of `data` (RFC 1071), starting from `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    u16::from_be_bytes([s[0], s[1]]) as u32
        + u16::from_be_bytes([s[2], s[3]]) as u32
        + u16::from_be_bytes([d[0], d[1]]) as u32
        + u16::from_be_bytes([d[2], d[3]]) as u32
        + proto as u32
        + len as u32
}

/// A TCP or UDP or ICMP echo packet in an Ethernet frame, with valid checksums.
#[derive(Debug, Clone)]
pub struct PacketSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (SYN by default).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers (1000 and 0 by default).
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
}

impl Default for PacketSpec {
    fn default() -> Self {
        PacketSpec {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src: Ipv4Addr::new(10, 1, 1, 2),
            dst: Ipv4Addr::new(10, 1, 2, 2),
            ttl: 64,
            proto: IPPROTO_UDP,
            sport: 40000,
            dport: 8080,
            tcp_flags: 0x02,
            seq: 1000,
            ack: 0,
            payload: b"hello netdp".to_vec(),
        }
    }
}

impl PacketSpec {
    pub fn build(&self) -> Vec<u8> {
        let l4 = match self.proto {
            IPPROTO_UDP => {
                let len = 8 + self.payload.len();
                let mut u = Vec::with_capacity(len);
                u.extend_from_slice(&self.sport.to_be_bytes());
                u.extend_from_slice(&self.dport.to_be_bytes());
                u.extend_from_slice(&(len as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(&self.payload);
                let c = checksum(&u, pseudo_header_sum(self.src, self.dst, IPPROTO_UDP, len));
                let c = if c == 0 { 0xffff } else { c };
                u[6..8].copy_from_slice(&c.to_be_bytes());
                u
            }
            IPPROTO_TCP => {
                let mut t = Vec::with_capacity(20 + self.payload.len());
                t.extend_from_slice(&self.sport.to_be_bytes());
                t.extend_from_slice(&self.dport.to_be_bytes());
                t.extend_from_slice(&self.seq.to_be_bytes());
                t.extend_from_slice(&self.ack.to_be_bytes());
                t.extend_from_slice(&[0x50, self.tcp_flags]); // data offset 5
                t.extend_from_slice(&65535u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                t.extend_from_slice(&self.payload);
                let len = t.len();
                let c = checksum(&t, pseudo_header_sum(self.src, self.dst, IPPROTO_TCP, len));
                t[16..18].copy_from_slice(&c.to_be_bytes());
                t
            }
            _ => {
                // ICMP echo request.
                let mut i = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
                i.extend_from_slice(&self.payload);
                let c = checksum(&i, 0);
                i[2..4].copy_from_slice(&c.to_be_bytes());
                i
            }
        };
        ipv4_frame(
            self.dst_mac,
            self.src_mac,
            0,
            0x1234,
            0x4000,
            self.ttl,
            self.proto,
            (self.src, self.dst),
            &l4,
        )
    }
}

/// An Ethernet frame with an IPv4 header (no options, valid checksum) and `payload`.
/// `frag_off` is the flags and offset word (0x4000: DF).
#[allow(clippy::too_many_arguments)]
fn ipv4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    tos: u8,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    (src, dst): (Ipv4Addr, Ipv4Addr),
    payload: &[u8],
) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&[0x45, tos]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&frag_off.to_be_bytes());
    f.extend_from_slice(&[ttl, proto, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let c = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The outer Ethernet and IPv4 addresses of a tunnel packet.
#[derive(Debug, Clone, Copy)]
pub struct Outer {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// An outer IPv4 header as netdp and Linux tunnels write it (DF, ID 0, TTL 64), in front
/// of `payload`.
fn outer_frame(outer: &Outer, ip_payload_proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_frame(
        outer.dst_mac,
        outer.src_mac,
        0,
        0,
        0x4000,
        64,
        ip_payload_proto,
        (outer.src, outer.dst),
        payload,
    )
}

fn udp_header(sport: u16, dport: u16, payload_len: usize) -> Vec<u8> {
    let mut u = Vec::with_capacity(8);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]); // no checksum, as Linux tunnels send over IPv4
    u
}

/// A UDP datagram of `payload` with a tunnel's outer headers (a NAT keepalive, say).
pub fn udp_datagram(outer: &Outer, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = udp_header(sport, dport, payload.len());
    p.extend_from_slice(payload);
    outer_frame(outer, IPPROTO_UDP, &p)
}

/// `payload` as the whole IP payload of protocol `proto` with a tunnel's outer headers.
pub fn ip_payload(outer: &Outer, proto: u8, payload: &[u8]) -> Vec<u8> {
    outer_frame(outer, proto, payload)
}

/// `inner` (an Ethernet frame) in VXLAN: outer Ethernet/IPv4/UDP, VXLAN header with
/// `vni`, then the inner frame with its MACs replaced by `inner_dst`/`inner_src`.
pub fn vxlan(
    outer: &Outer,
    sport: u16,
    dport: u16,
    vni: u32,
    inner_dst: [u8; 6],
    inner_src: [u8; 6],
    inner: &[u8],
) -> Vec<u8> {
    let mut payload = udp_header(sport, dport, 8 + inner.len());
    payload.extend_from_slice(&[0x08, 0, 0, 0]);
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(&inner_dst);
    payload.extend_from_slice(&inner_src);
    payload.extend_from_slice(&inner[12..]);
    outer_frame(outer, IPPROTO_UDP, &payload)
}

/// The IPv4 packet of `inner` (an Ethernet frame) in another IPv4 header (protocol 4).
pub fn ipip(outer: &Outer, inner: &[u8]) -> Vec<u8> {
    outer_frame(outer, IPPROTO_IPIP, &inner[14..])
}

/// The IPv4 packet of `inner` (an Ethernet frame) as the payload of a UDP datagram,
/// Flannel's udp backend format.
pub fn udp_encap(outer: &Outer, sport: u16, dport: u16, inner: &[u8]) -> Vec<u8> {
    let mut payload = udp_header(sport, dport, inner.len() - 14);
    payload.extend_from_slice(&inner[14..]);
    outer_frame(outer, IPPROTO_UDP, &payload)
}

/// What a router does to a frame it forwards: new MACs, TTL minus one, checksum fixed.
pub fn routed(frame: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[22] -= 1;
    f[24] = 0;
    f[25] = 0;
    let ihl = ((f[14] & 0x0f) as usize) * 4;
    let c = checksum(&f[14..14 + ihl], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f
}

/// An ICMP error (`kind`, `code`) from `src` to `dst` quoting the IP header and first 8
/// payload bytes of `quoted` (an Ethernet frame), with valid checksums.
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: u8,
    code: u8,
    rest: u32,
    quoted: &[u8],
) -> Vec<u8> {
    let ihl = ((quoted[14] & 0x0f) as usize) * 4;
    let quote = &quoted[14..(14 + ihl + 8).min(quoted.len())];
    let mut icmp = vec![kind, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quote);
    let c = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    // Back the way the quoted frame came.
    let (mut dst_mac, mut src_mac) = ([0; 6], [0; 6]);
    dst_mac.copy_from_slice(&quoted[6..12]);
    src_mac.copy_from_slice(&quoted[0..6]);
    ipv4_frame(
        dst_mac,
        src_mac,
        0xc0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        (src, dst),
        &icmp,
    )
}

/// Source and destination port of the TCP/UDP packet in `frame` (no IP options).
pub fn ports(frame: &[u8]) -> (u16, u16) {
    let off = 14 + ((frame[14] & 0x0f) as usize) * 4;
    (
        u16::from_be_bytes([frame[off], frame[off + 1]]),
        u16::from_be_bytes([frame[off + 2], frame[off + 3]]),
    )
}

/// A parsed view of an Ethernet + IPv4 frame, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4View {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ethertype: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub header_len: usize,
    pub total_len: usize,
}

impl Ipv4View {
    /// Parses the frame starting at its Ethernet header.
    pub fn parse(frame: &[u8]) -> Option<Self> {
        Self::parse_at(frame, 0)
    }

    /// Parses an Ethernet header at `off` (an inner frame, say).
    pub fn parse_at(frame: &[u8], off: usize) -> Option<Self> {
        let f = frame.get(off..)?;
        if f.len() < 34 {
            return None;
        }
        let ihl = ((f[14] & 0x0f) as usize) * 4;
        Some(Ipv4View {
            dst_mac: f[0..6].try_into().ok()?,
            src_mac: f[6..12].try_into().ok()?,
            ethertype: u16::from_be_bytes([f[12], f[13]]),
            src: Ipv4Addr::new(f[26], f[27], f[28], f[29]),
            dst: Ipv4Addr::new(f[30], f[31], f[32], f[33]),
            ttl: f[22],
            proto: f[23],
            header_len: ihl,
            total_len: u16::from_be_bytes([f[16], f[17]]) as usize,
        })
    }
}

/// Whether the IPv4 header at byte `ip_off` of `frame` has a correct checksum.
pub fn ipv4_checksum_ok(frame: &[u8], ip_off: usize) -> bool {
    let ihl = ((frame[ip_off] & 0x0f) as usize) * 4;
    checksum(&frame[ip_off..ip_off + ihl], 0) == 0
}

/// Whether the TCP/UDP checksum of the IPv4 packet at `ip_off` is correct (a zero UDP
/// checksum, meaning "none", counts as correct).
pub fn l4_checksum_ok(frame: &[u8], ip_off: usize) -> bool {
    let ihl = ((frame[ip_off] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([frame[ip_off + 2], frame[ip_off + 3]]) as usize;
    let proto = frame[ip_off + 9];
    let src = Ipv4Addr::new(
        frame[ip_off + 12],
        frame[ip_off + 13],
        frame[ip_off + 14],
        frame[ip_off + 15],
    );
    let dst = Ipv4Addr::new(
        frame[ip_off + 16],
        frame[ip_off + 17],
        frame[ip_off + 18],
        frame[ip_off + 19],
    );
    let l4 = &frame[ip_off + ihl..ip_off + total];
    if proto == IPPROTO_UDP && l4[6] == 0 && l4[7] == 0 {
        return true;
    }
    if proto == IPPROTO_ICMP {
        return checksum(l4, 0) == 0;
    }
    checksum(l4, pseudo_header_sum(src, dst, proto, l4.len())) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_have_valid_checksums() {
        for proto in [IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMP] {
            let f = PacketSpec {
                proto,
                ..Default::default()
            }
            .build();
            assert!(ipv4_checksum_ok(&f, 14));
            assert!(l4_checksum_ok(&f, 14), "proto {proto}");
            let v = Ipv4View::parse(&f).unwrap();
            assert_eq!(v.proto, proto);
            assert_eq!(v.total_len, f.len() - 14);
        }
    }

    #[test]
    fn checksum_detects_corruption() {
        let mut f = PacketSpec::default().build();
        f[22] -= 1; // TTL changed without fixing the checksum
        assert!(!ipv4_checksum_ok(&f, 14));
    }
}
