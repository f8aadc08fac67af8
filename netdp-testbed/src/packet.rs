//! Crafting and checking packets for BPF_PROG_TEST_RUN tests and benchmarks.
use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

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
                t.extend_from_slice(&1000u32.to_be_bytes()); // seq
                t.extend_from_slice(&0u32.to_be_bytes()); // ack
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
        let total = 20 + l4.len();
        let mut ip = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0x12,
            0x34,
            0x40, // DF
            0,
            self.ttl,
            self.proto,
            0,
            0,
        ];
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        let c = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut frame = Vec::with_capacity(14 + total);
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
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
    let total = 20 + icmp.len();
    let mut ip = vec![
        0x45,
        0xc0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        0,
        0,
    ];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = Vec::with_capacity(14 + total);
    frame.extend_from_slice(&quoted[6..12]);
    frame.extend_from_slice(&quoted[0..6]);
    frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
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
