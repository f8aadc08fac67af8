//! Masquerading from userspace (`netdp nat list`): the masqueraded flows in CONNTRACK as
//! translations, the pod's side, the outside, and the node's side it uses. Methods of
//! [`ConntrackMap`], since masqueraded flows live in the one conntrack table.
use std::net::{Ipv4Addr, SocketAddrV4};

use netdp_common::conntrack::{CtEntry, CtKey};

use crate::conntrack::ConntrackMap;

/// One masqueraded flow: the pod's side, the outside, and the node's side it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub proto: u8,
    pub pod: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub nat: SocketAddrV4,
}

fn sock(addr: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr), port)
}

impl ConntrackMap {
    /// Masqueraded flows, as their pods send them, with their translation.
    pub fn masqueraded(&self) -> Vec<Translation> {
        self.masquerade_entries(false, |k, e| Translation {
            proto: k.proto,
            pod: sock(k.saddr, k.sport),
            remote: sock(k.daddr, k.dport),
            nat: sock(e.nat_saddr, e.nat_sport),
        })
    }

    /// The reply direction of masqueraded flows: which node port leads back to which pod.
    pub fn unmasqueraded(&self) -> Vec<Translation> {
        self.masquerade_entries(true, |k, e| Translation {
            proto: k.proto,
            pod: sock(e.nat_daddr, e.nat_dport),
            remote: sock(k.saddr, k.sport),
            nat: sock(k.daddr, k.dport),
        })
    }

    fn masquerade_entries(
        &self,
        reply: bool,
        view: impl Fn(&CtKey, &CtEntry) -> Translation,
    ) -> Vec<Translation> {
        let mut v: Vec<_> = self
            .list()
            .iter()
            .filter(|f| f.is_masquerade() && f.is_reply() == reply)
            .map(|f| view(&f.key, &f.entry))
            .collect();
        v.sort_by_key(|t| (t.proto, t.pod, t.remote));
        v
    }
}
