use super::*;
use crate::lease::LeaseAttrs;

const PREFIX: &str = "/coreos.com/network";

fn config() -> NetworkConfig {
    NetworkConfig::parse(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#)
        .expect("valid config")
}

fn net(s: &str) -> Ipv4Network {
    s.parse().expect("a CIDR")
}

fn peer(subnet: &str, ip: [u8; 4], rev: i64) -> PeerLease {
    PeerLease {
        subnet: net(subnet),
        attrs: LeaseAttrs::new(ip.into(), "host-gw", None),
        etcd_lease: 0,
        mod_revision: rev,
        create_revision: rev,
    }
}

fn own() -> Lease {
    Lease {
        subnet: net("10.244.1.0/24"),
        attrs: LeaseAttrs::new([192, 168, 10, 11].into(), "host-gw", None),
        etcd_lease: 1,
    }
}

fn key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// Accepted subnets and rejections, for leases given in this order.
fn decide(set: &LeaseSet, leases: &[PeerLease]) -> (Vec<String>, Vec<(String, Rejection)>) {
    let own = own();
    let pass = set.pass(&config(), Some(&own), leases);
    let mut accepted: Vec<String> = pass.accepted.iter().map(|l| l.subnet.to_string()).collect();
    accepted.sort();
    let rejected = pass
        .rejected
        .into_iter()
        .map(|(l, why)| (l.subnet.to_string(), why))
        .collect();
    (accepted, rejected)
}

#[test]
fn genuine_peers_are_routed_and_our_own_lease_is_left_out() {
    let set = LeaseSet::new(PREFIX);
    let leases = [
        peer("10.244.1.0/24", [192, 168, 10, 11], 2), // our own, as the watch shows it
        peer("10.244.2.0/24", [192, 168, 10, 12], 3),
        peer("10.244.3.0/24", [192, 168, 10, 13], 4),
    ];
    let (accepted, rejected) = decide(&set, &leases);
    assert_eq!(accepted, ["10.244.2.0/24", "10.244.3.0/24"]);
    assert!(rejected.is_empty(), "{rejected:?}");
}

#[test]
fn subnets_outside_the_network_or_of_another_length_are_rejected() {
    let set = LeaseSet::new(PREFIX);
    let outside = Rejection::OutsideNetwork(net("10.244.0.0/16"));
    let cases = [
        ("0.0.0.0/0", outside.clone()),
        ("10.0.0.0/8", outside.clone()),
        ("10.245.0.0/24", outside.clone()),
        ("192.168.0.0/24", outside),
        ("10.244.0.0/16", Rejection::WrongLength(24)),
        ("10.244.2.128/25", Rejection::WrongLength(24)),
        ("10.244.4.0/23", Rejection::WrongLength(24)),
        ("10.244.9.7/32", Rejection::WrongLength(24)),
    ];
    for (i, (subnet, why)) in cases.into_iter().enumerate() {
        let lease = peer(subnet, [192, 168, 20, i as u8 + 1], 10);
        let (accepted, rejected) = decide(&set, std::slice::from_ref(&lease));
        assert!(accepted.is_empty(), "{subnet} was accepted");
        assert_eq!(rejected, vec![(net(subnet).to_string(), why)], "{subnet}");
    }
}

#[test]
fn a_public_ip_must_be_a_unicast_address_outside_the_network() {
    let set = LeaseSet::new(PREFIX);
    for (ip, why) in [
        ([0, 0, 0, 0], "unspecified"),
        ([127, 0, 0, 1], "a loopback address"),
        ([224, 0, 0, 5], "not a unicast address"),
        ([255, 255, 255, 255], "not a unicast address"),
        ([10, 244, 2, 7], "inside the Network"),
    ] {
        let lease = peer("10.244.5.0/24", ip, 10);
        let (accepted, rejected) = decide(&set, std::slice::from_ref(&lease));
        assert!(accepted.is_empty());
        assert_eq!(
            rejected,
            vec![(
                "10.244.5.0/24".to_string(),
                Rejection::BadPublicIp(ip.into(), why)
            )]
        );
    }
}

#[test]
fn overlaps_are_found_both_ways_and_neighbours_are_not_overlaps() {
    let mut taken = Taken::default();
    taken.insert(net("10.244.4.0/24"), false);
    taken.insert(net("10.244.8.0/22"), true);
    for (s, hit) in [
        ("10.244.4.128/25", Some("10.244.4.0/24")), // inside a routed subnet
        ("10.244.0.0/21", Some("10.244.4.0/24")),   // containing one
        ("10.244.0.0/16", Some("10.244.4.0/24")),   // containing both
        ("10.244.11.0/24", Some("10.244.8.0/22")),  // the last part of one
        ("10.244.3.0/24", None),                    // right before
        ("10.244.5.0/24", None),                    // right after
        ("10.244.12.0/22", None),
    ] {
        assert_eq!(
            taken.overlap(net(s)).map(|(n, _)| n.to_string()),
            hit.map(String::from),
            "{s}"
        );
    }
}

#[test]
fn a_lease_overlapping_ours_is_rejected() {
    // Our lease is always routed first; here a /23 (taken under an older SubnetLen).
    let set = LeaseSet::new(PREFIX);
    let own = Lease {
        subnet: net("10.244.2.0/23"),
        ..own()
    };
    let leases = [peer("10.244.3.0/24", [192, 168, 10, 12], 1)];
    let pass = set.pass(&config(), Some(&own), &leases);
    assert!(pass.accepted.is_empty());
    assert_eq!(
        pass.rejected[0].1,
        Rejection::Overlaps {
            other: key("10.244.2.0/23"),
            own: true
        }
    );
}

#[test]
fn the_older_of_two_leases_with_one_public_ip_wins_in_any_order() {
    let set = LeaseSet::new(PREFIX);
    let old = peer("10.244.7.0/24", [192, 168, 10, 12], 5);
    let young = peer("10.244.2.0/24", [192, 168, 10, 12], 9);
    for leases in [[old.clone(), young.clone()], [young.clone(), old.clone()]] {
        let (accepted, rejected) = decide(&set, &leases);
        assert_eq!(accepted, ["10.244.7.0/24"]);
        assert_eq!(
            rejected,
            vec![(
                "10.244.2.0/24".to_string(),
                Rejection::SamePublicIp {
                    other: key("10.244.7.0/24"),
                    own: false
                }
            )]
        );
    }
}

#[test]
fn on_equal_age_the_lease_already_routed_wins() {
    let mut set = LeaseSet::new(PREFIX);
    let own = own();
    let (a, b) = (
        peer("10.244.9.0/24", [192, 168, 10, 12], 0),
        peer("10.244.2.0/24", [192, 168, 10, 12], 0),
    );
    // Alone, a is routed.
    let pass = set.pass(&config(), Some(&own), [&a]);
    set.record(Some(&own), &pass);
    // b is as old (unknown) and sorts first by address, but a is routed already.
    let (accepted, _) = decide(&set, &[b, a]);
    assert_eq!(accepted, ["10.244.9.0/24"]);
}

#[test]
fn rogue_leases_never_displace_our_own() {
    let set = LeaseSet::new(PREFIX);
    // Older than ours (revision 1) and claiming our PublicIP, or our very subnet.
    let leases = [
        peer("10.244.1.0/24", [192, 168, 10, 66], 1),
        peer("10.244.8.0/24", [192, 168, 10, 11], 1),
    ];
    let (accepted, rejected) = decide(&set, &leases);
    assert!(accepted.is_empty(), "{accepted:?}");
    assert_eq!(
        rejected,
        vec![
            (
                "10.244.1.0/24".to_string(),
                Rejection::Overlaps {
                    other: key("10.244.1.0/24"),
                    own: true
                }
            ),
            (
                "10.244.8.0/24".to_string(),
                Rejection::SamePublicIp {
                    other: key("10.244.1.0/24"),
                    own: true
                }
            ),
        ]
    );
}

#[test]
fn each_rejection_is_logged_once_and_the_loser_comes_back_when_the_winner_goes() {
    let mut set = LeaseSet::new(PREFIX);
    let own = own();
    let winner = peer("10.244.7.0/24", [192, 168, 10, 12], 5);
    let loser = peer("10.244.2.0/24", [192, 168, 10, 12], 9);
    let rogue = peer("0.0.0.0/0", [192, 168, 10, 99], 3);
    let mut pass_with = |leases: &[&PeerLease]| {
        let pass = set.pass(&config(), Some(&own), leases.iter().copied());
        let accepted: Vec<String> = pass.accepted.iter().map(|l| l.subnet.to_string()).collect();
        (accepted, set.record(Some(&own), &pass))
    };
    let (accepted, news) = pass_with(&[&winner, &loser, &rogue]);
    assert_eq!(accepted, ["10.244.7.0/24"]);
    let lines: Vec<&str> = news.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        lines,
        [
            "not routing lease /coreos.com/network/subnets/0.0.0.0-0 (PublicIP 192.168.10.99): it is not inside the Network 10.244.0.0/16",
            "not routing lease /coreos.com/network/subnets/10.244.2.0-24 (PublicIP 192.168.10.12): its PublicIP is already that of the older lease /coreos.com/network/subnets/10.244.7.0-24",
        ]
    );
    assert!(news.iter().all(|(level, _)| *level == Level::Warn));
    // Resyncs: the same decision, nothing new to say.
    for _ in 0..3 {
        let (accepted, news) = pass_with(&[&winner, &loser, &rogue]);
        assert_eq!(accepted, ["10.244.7.0/24"]);
        assert!(news.is_empty(), "{news:?}");
    }
    // The winner's lease goes: the loser is routed, and that is said once.
    let (accepted, news) = pass_with(&[&loser, &rogue]);
    assert_eq!(accepted, ["10.244.2.0/24"]);
    assert_eq!(news.len(), 1, "{news:?}");
    assert_eq!(news[0].0, Level::Info);
    assert!(
        news[0]
            .1
            .starts_with("routing lease /coreos.com/network/subnets/10.244.2.0-24"),
        "{news:?}"
    );
    // A lease written again at the old winner's key is a new key (younger): the routed
    // one stays, and the newcomer is reported.
    let again = PeerLease {
        create_revision: 20,
        mod_revision: 20,
        ..winner.clone()
    };
    let (accepted, news) = pass_with(&[&again, &loser, &rogue]);
    assert_eq!(accepted, ["10.244.2.0/24"]);
    assert_eq!(news.len(), 1, "{news:?}");
    assert!(news[0].1.contains("subnets/10.244.7.0-24"), "{news:?}");
}

#[test]
fn public_ips_are_ours_and_the_routed_ones() {
    let mut set = LeaseSet::new(PREFIX);
    let own = own();
    let leases = [
        peer("10.244.2.0/24", [192, 168, 10, 12], 3),
        peer("10.244.2.128/25", [192, 168, 10, 66], 4),
    ];
    let routed = set.admit(&config(), Some(&own), &leases);
    assert_eq!(routed.len(), 1);
    assert_eq!(
        set.public_ips(),
        [
            Ipv4Addr::new(192, 168, 10, 11),
            Ipv4Addr::new(192, 168, 10, 12)
        ]
    );
}

#[test]
fn node_pod_cidrs_of_any_length_are_routed_and_named_by_node() {
    // The controller chooses podCIDR lengths (and a cluster may mix them): a /25 and a /23
    // are routed from Node objects, never from etcd where SubnetLen rules.
    let mut a = peer("10.244.2.0/25", [192, 168, 10, 12], 3);
    a.attrs = a.attrs.with_node("w2");
    let b = peer("10.244.4.0/23", [192, 168, 10, 13], 4);
    let (accepted, rejected) = decide(&LeaseSet::for_nodes(), &[a.clone(), b.clone()]);
    assert_eq!(accepted, ["10.244.2.0/25", "10.244.4.0/23"]);
    assert!(rejected.is_empty());
    let (accepted, _) = decide(&LeaseSet::new(PREFIX), &[a.clone(), b]);
    assert!(accepted.is_empty());
    // Log lines name the Node.
    let mut set = LeaseSet::for_nodes();
    let mut dup = peer("10.244.9.0/24", [192, 168, 10, 12], 9);
    dup.attrs = dup.attrs.with_node("w9");
    let own = own();
    let pass = set.pass(&config(), Some(&own), [&a, &dup]);
    let lines = set.record(Some(&own), &pass);
    assert!(
        lines.iter().any(|(_, l)| l
            == "not routing Node w9 (podCIDR 10.244.9.0/24) (PublicIP 192.168.10.12): its \
                PublicIP is already that of the older lease 10.244.2.0/25 (a Node's podCIDR)"),
        "{lines:?}"
    );
}
