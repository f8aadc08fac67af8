//! Pinned maps an older build (or another agent invocation) left behind: reused when their
//! layout is this build's, replaced when it is not, reported when only their size differs.
use aya::maps::{Map, MapData, MapInfo};
use log::warn;
use netdp_common::maps::{CATALOGUE, spec_of};

use super::{MapSizes, Pins};

/// Removes pinned maps this build's programs could not use (a grown route entry, conntrack
/// entries of another design, more counter slots) and maps no longer in use (an older
/// build's NAT table); the agent refills what it owns.
pub(super) fn drop_incompatible_pins(pins: &Pins) {
    let dir = pins.dir().join("maps");
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if spec_of(&name).is_none() {
            warn!(
                "removing map {} that this build no longer uses",
                entry.path().display()
            );
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for spec in CATALOGUE {
        let (name, key, value) = (spec.name, spec.key_size, spec.value_size);
        // A fixed map's size is part of its layout (counter slots, one config entry).
        let entries = (!spec.resizable).then_some(spec.capacity);
        let path = pins.map(name);
        let Ok(info) = MapInfo::from_pin(&path) else {
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
        if let Ok(info) = data.info()
            && info.max_entries() != want
        {
            warn!(
                "map {name} at {} keeps its {} entries (asked for {want}); remove the node's \
                     pins to resize it",
                pins.map(name).display(),
                info.max_entries()
            );
        }
    }
}
