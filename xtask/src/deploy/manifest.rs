//! The manifests as values: their YAML documents, the ConfigMap's data and the
//! DaemonSet's containers (which `cargo xtask image` runs as the kubelet would).
use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{manifests, tools::Tools};

/// One YAML document of a manifest file.
#[derive(Debug)]
pub struct Doc {
    pub file: PathBuf,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// The elements of a JSON array; none when `v` is not one.
pub fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The documents of kind `kind` (and name `name`, when given).
pub fn find<'a>(docs: &'a [Doc], kind: &str, name: Option<&str>) -> Vec<&'a Doc> {
    docs.iter()
        .filter(|d| d.kind() == kind && name.is_none_or(|n| d.name() == n))
        .collect()
}

pub fn one<'a>(docs: &'a [Doc], kind: &str) -> Result<&'a Doc> {
    match find(docs, kind, None).as_slice() {
        [d] => Ok(d),
        other => bail!("expected one {kind} in deploy/, found {}", other.len()),
    }
}

/// A container of the DaemonSet's pod: init containers first, in order.
pub struct Container<'a> {
    pub init: bool,
    pub value: &'a Value,
}

impl Container<'_> {
    pub fn name(&self) -> &str {
        self.value["name"].as_str().unwrap_or("")
    }

    /// `command` followed by `args`, as the runtime execs them.
    pub fn argv(&self) -> Vec<String> {
        ["command", "args"]
            .iter()
            .flat_map(|k| items(&self.value[*k]))
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }

    /// Environment variables with a literal value or one from the ConfigMap.
    pub fn env(&self, config: &BTreeMap<String, String>) -> Vec<(String, String)> {
        items(&self.value["env"])
            .iter()
            .filter_map(|e| {
                let name = e["name"].as_str()?.to_string();
                if let Some(v) = e["value"].as_str() {
                    return Some((name, v.to_string()));
                }
                let key = e["valueFrom"]["configMapKeyRef"]["key"].as_str()?;
                Some((name, config.get(key)?.clone()))
            })
            .collect()
    }

    /// Mount path of each volume it mounts.
    pub fn mounts(&self) -> Vec<(String, String)> {
        items(&self.value["volumeMounts"])
            .iter()
            .filter_map(|m| {
                Some((
                    m["name"].as_str()?.to_string(),
                    m["mountPath"].as_str()?.to_string(),
                ))
            })
            .collect()
    }
}

/// The agent: the first container that is not an init container.
pub fn agent_container<'c, 'a>(containers: &'c [Container<'a>]) -> Option<&'c Container<'a>> {
    containers.iter().find(|c| !c.init)
}

/// The parts of the default manifests the image check runs.
pub struct Deployment {
    pub docs: Vec<Doc>,
}

impl Deployment {
    /// The default manifests, read with the venv's PyYAML.
    pub fn load() -> Result<Deployment> {
        let tools = Tools::installed_or_install()?;
        let (default, _) = manifests()?;
        Ok(Deployment {
            docs: tools.documents(&default)?,
        })
    }

    pub fn daemonset(&self) -> Result<&Value> {
        Ok(&one(&self.docs, "DaemonSet")?.value)
    }

    /// The ConfigMap's data.
    pub fn config(&self) -> Result<BTreeMap<String, String>> {
        config_data(&self.docs)
    }

    pub fn containers(&self) -> Result<Vec<Container<'_>>> {
        Ok(containers(self.daemonset()?))
    }

    /// The image every container runs.
    pub fn image(&self) -> Result<String> {
        let images: BTreeSet<String> = self
            .containers()?
            .iter()
            .filter_map(|c| c.value["image"].as_str().map(String::from))
            .collect();
        match images.len() {
            1 => Ok(images.into_iter().next().unwrap_or_default()),
            _ => bail!("the DaemonSet's containers run different images: {images:?}"),
        }
    }
}

/// The DaemonSet's containers, init containers first.
pub fn containers(ds: &Value) -> Vec<Container<'_>> {
    let spec = &ds["spec"]["template"]["spec"];
    let list = |key: &str, init: bool| {
        items(&spec[key])
            .iter()
            .map(|value| Container { init, value })
            .collect::<Vec<_>>()
    };
    let mut all: Vec<Container> = list("initContainers", true);
    all.extend(list("containers", false));
    all
}

/// The data of the one ConfigMap.
pub fn config_data(docs: &[Doc]) -> Result<BTreeMap<String, String>> {
    let cm = one(docs, "ConfigMap")?;
    let data = cm.value["data"]
        .as_object()
        .with_context(|| format!("ConfigMap {} has no data", cm.name()))?;
    Ok(data
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect())
}
