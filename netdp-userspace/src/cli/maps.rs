//! `netdp map list`: the map catalogue next to what this node has pinned, with the
//! `bpftool` path to dump each one.
use anyhow::Result;
use aya::maps::MapInfo;
use netdp_common::maps::CATALOGUE;
use serde_json::json;

use super::{NodeArgs, Output, print_table, print_value};

#[derive(clap::Subcommand, Debug)]
pub enum MapCmd {
    /// Every map: kind, key and value sizes, capacity (pinned and default), what it holds.
    List(NodeArgs),
}

pub fn run(cmd: MapCmd) -> Result<()> {
    let MapCmd::List(args) = cmd;
    let pins = args.pins()?;
    let rows: Vec<_> = CATALOGUE
        .iter()
        .map(|m| {
            let path = pins.map(m.name);
            let pinned = MapInfo::from_pin(&path).ok().map(|i| i.max_entries());
            (m, path, pinned)
        })
        .collect();
    match args.output {
        Output::Json | Output::Yaml => print_value(
            args.output,
            &json!(
                rows.iter()
                    .map(|(m, path, pinned)| json!({
                        "name": m.name, "kind": m.kind.name(), "keySize": m.key_size,
                        "valueSize": m.value_size, "capacity": pinned,
                        "defaultCapacity": m.capacity, "resizable": m.resizable,
                        "pin": path.display().to_string(), "doc": m.doc,
                    }))
                    .collect::<Vec<_>>()
            ),
        ),
        Output::Table => print_table(
            &[
                "MAP", "KIND", "KEY", "VALUE", "CAPACITY", "DEFAULT", "HOLDS",
            ],
            &rows
                .iter()
                .map(|(m, _, pinned)| {
                    vec![
                        m.name.to_string(),
                        m.kind.name().to_string(),
                        m.key_size.to_string(),
                        m.value_size.to_string(),
                        pinned.map_or("(not pinned)".into(), |n| n.to_string()),
                        m.capacity.to_string(),
                        m.doc.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    Ok(())
}
