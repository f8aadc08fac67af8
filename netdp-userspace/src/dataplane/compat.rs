//! Pinned maps an older build (or another agent invocation) left behind: reused when their
//! layout is this build's, replaced when it is not, reported when only their size differs.
use aya::maps::{Map, MapData, MapInfo};
use log::warn;
use netdp_common::map_names;

use super::{MapSizes, Pins};

/// Key and value sizes of each map as this build's programs define them, and the number of
/// entries of the fixed-size ones.
fn layout(name: &str) -> Option<(usize, usize, Option<u32>)> {
    use core::mem::size_of;
    use netdp_common::{conntrack, counters, endpoint, lb, peer, route};
    Some(match name {
        map_names::ENDPOINTS => (
            size_of::<endpoint::EndpointKey>(),
            size_of::<endpoint::Endpoint>(),
            None,
        ),
        // LPM keys: a 32-bit prefix length, then the address.
        map_names::ROUTES => (
            4 + size_of::<netdp_common::Ipv4>(),
            size_of::<route::Route>(),
            None,
        ),
        map_names::COUNTERS => (
            4,
            size_of::<counters::CounterValue>(),
            Some(counters::SLOTS),
        ),
        map_names::PEERS => (size_of::<peer::PeerKey>(), size_of::<peer::Peer>(), None),
        map_names::FRONTENDS => (
            size_of::<lb::FrontendKey>(),
            size_of::<lb::Frontend>(),
            None,
        ),
        map_names::BACKENDS => (4, size_of::<lb::Backend>(), None),
        map_names::MAGLEV => (4, size_of::<lb::MaglevRow>(), None),
        map_names::AFFINITY => (
            size_of::<lb::AffinityKey>(),
            size_of::<lb::Affinity>(),
            None,
        ),
        map_names::AFFINITY_BACKENDS => (size_of::<lb::AffinityBackendKey>(), 4, None),
        map_names::CONNTRACK => (
            size_of::<conntrack::CtKey>(),
            size_of::<conntrack::CtEntry>(),
            None,
        ),
        map_names::LB_CONFIG => (4, size_of::<lb::LbConfig>(), Some(1)),
        map_names::SOCK_NAT => (size_of::<lb::SockNatKey>(), size_of::<lb::SockNat>(), None),
        _ => return None,
    })
}

/// Removes pinned maps this build's programs could not use (a grown route entry, conntrack
/// entries of another design, more counter slots) and maps no longer in use (an older
/// build's NAT table); the agent refills what it owns.
pub(super) fn drop_incompatible_pins(pins: &Pins) {
    let dir = pins.dir().join("maps");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !map_names::ALL.contains(&name.as_str()) {
            warn!(
                "removing map {} that this build no longer uses",
                entry.path().display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for name in map_names::ALL {
        let path = pins.map(name);
        let (Some((key, value, entries)), Ok(info)) = (layout(name), MapInfo::from_pin(&path))
        else {
            continue;
        };
        let sizes_differ = (info.key_size() as usize, info.value_size() as usize) != (key, value);
        if sizes_differ || entries.is_some_and(|n| n != info.max_entries()) {
            warn!(
                "map {name} at {} has {}-byte keys, {}-byte values and {} entries, this build \
                 uses {key}, {value}{}: replacing it (its entries are rebuilt or lost)",
                path.display(),
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                entries.map(|n| format!(" and {n}")).unwrap_or_default(),
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Warns about pinned maps that keep a capacity other than the one asked for.
pub(super) fn check_pinned_sizes(ebpf: &aya::Ebpf, pins: &Pins, sizes: &MapSizes) {
    for (name, want) in sizes.by_map() {
        let Some(map) = ebpf.map(name) else { continue };
        let data: &MapData = match map {
            Map::HashMap(d) | Map::LruHashMap(d) | Map::LpmTrie(d) | Map::Array(d) => d,
            _ => continue,
        };
        if let Ok(info) = data.info() {
            if info.max_entries() != want {
                warn!(
                    "map {name} at {} keeps its {} entries (asked for {want}); remove the node's \
                     pins to resize it",
                    pins.map(name).display(),
                    info.max_entries()
                );
            }
        }
    }
}
