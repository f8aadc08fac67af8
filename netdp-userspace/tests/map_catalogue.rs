//! The map catalogue in netdp-common is what the built programs declare: every map the
//! object carries is in it with the same kind, key and value sizes and default capacity,
//! and a pinned dataplane has exactly the catalogue's maps.
use aya::maps::{Map, MapData, MapType};
use netdp::dataplane::{Dataplane, MapSizes, Pins};
use netdp_common::maps::{CATALOGUE, MapKind};

fn kind(t: MapType) -> Option<MapKind> {
    Some(match t {
        MapType::Hash => MapKind::Hash,
        MapType::Array => MapKind::Array,
        MapType::PerCpuArray => MapKind::PerCpuArray,
        MapType::LruHash => MapKind::LruHash,
        MapType::LpmTrie => MapKind::LpmTrie,
        MapType::RingBuf => MapKind::RingBuf,
        _ => return None,
    })
}

fn data(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d) => Some(d),
        _ => None,
    }
}

#[test]
fn every_map_the_programs_declare_is_the_catalogues() -> anyhow::Result<()> {
    let mut dp = Dataplane::load(netdp::ebpf_object(), None, &MapSizes::default())?;
    // Every map but the globals' data sections is catalogued.
    for name in dp.map_names() {
        assert!(
            name.starts_with('.') || CATALOGUE.iter().any(|m| m.name == name),
            "map {name} is not in netdp_common::maps::CATALOGUE"
        );
    }
    for spec in CATALOGUE {
        let map = dp.take_map(spec.name)?;
        let info = data(&map)
            .ok_or_else(|| anyhow::anyhow!("{} has a kind netdp does not use", spec.name))?
            .info()?;
        assert_eq!(kind(info.map_type()?), Some(spec.kind), "{}", spec.name);
        assert_eq!(info.key_size() as usize, spec.key_size, "{} key", spec.name);
        assert_eq!(
            info.value_size() as usize,
            spec.value_size,
            "{} value",
            spec.name
        );
        assert_eq!(info.max_entries(), spec.capacity, "{} entries", spec.name);
    }
    Ok(())
}

#[test]
fn a_pinned_dataplane_has_exactly_the_catalogues_maps() -> anyhow::Result<()> {
    let root = std::path::Path::new(netdp_common::BPF_ROOT);
    let node = format!("catalogue-{}", std::process::id());
    let pins = Pins::new(root, &node)?;
    let result = (|| -> anyhow::Result<()> {
        let _dp = Dataplane::load(netdp::ebpf_object(), Some(&pins), &MapSizes::default())?;
        let mut pinned: Vec<String> = std::fs::read_dir(pins.dir().join("maps"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        pinned.sort();
        let mut want: Vec<String> = CATALOGUE.iter().map(|m| m.name.to_string()).collect();
        want.sort();
        assert_eq!(pinned, want);
        Ok(())
    })();
    pins.remove_all()?;
    result
}
