//! The testbed as a container runtime: the CNI network config it passes, calls of the
//! real `netdp-cni` plugin, and pods added and deleted with them.
use std::{net::Ipv4Addr, path::Path, process::Stdio};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{Pod, Testbed, netns};

impl Testbed {
    /// The CNI network config a runtime on this node would pass.
    pub fn cni_config(&self, node: &str) -> Value {
        let n = self.node(node);
        json!({
            "cniVersion": "1.0.0",
            "name": format!("netdp-{}", self.id),
            "type": "netdp-cni",
            "nodeName": n.ns,
            "subnetFile": n.subnet_file(),
            "dataDir": n.dir.join("cni"),
        })
    }

    /// Calls the CNI plugin on a node as a container runtime would.
    pub fn cni(
        &self,
        node: &str,
        command: &str,
        env: &[(&str, &str)],
        conf: &Value,
    ) -> Result<(bool, Value)> {
        use std::io::Write;
        let n = self.node(node);
        let mut cmd = netns::command(&n.ns, &self.bins.cni)?;
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", self.bins.cni.parent().unwrap_or(Path::new("/")))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("running netdp-cni")?;
        let written = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("no stdin"))?
            .write_all(conf.to_string().as_bytes());
        match written {
            // A plugin refusing its environment may exit before reading its config.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            r => r?,
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text.trim())
                .with_context(|| format!("CNI printed non-JSON: {text}"))?
        };
        Ok((out.status.success(), v))
    }

    /// Creates a pod namespace on `node` and wires it with CNI ADD.
    pub fn add_pod(&mut self, node: &str, name: &str) -> Result<Pod> {
        self.add_pod_with(node, name, None)
    }

    /// Like [`add_pod`](Self::add_pod), asking for a specific address (CNI_ARGS IP=).
    pub fn add_pod_with(&mut self, node: &str, name: &str, ip: Option<Ipv4Addr>) -> Result<Pod> {
        self.add_pod_with_conf(node, name, ip, json!({}))
    }

    /// Like [`add_pod_with`](Self::add_pod_with), with `extra` merged into the CNI network
    /// config (e.g. `{"mtu": 1500}`).
    pub fn add_pod_with_conf(
        &mut self,
        node: &str,
        name: &str,
        ip: Option<Ipv4Addr>,
        extra: Value,
    ) -> Result<Pod> {
        let ns = format!("{}-{name}", self.node(node).ns);
        if !netns::exists(&ns) {
            self.add_ns(&ns)?;
        }
        let container_id = format!("{}-{node}-{name}", self.id);
        let netns_path = netns::path(&ns).display().to_string();
        let args = ip.map(|ip| format!("IgnoreUnknown=1;IP={ip}"));
        let mut env = vec![
            ("CNI_CONTAINERID", container_id.as_str()),
            ("CNI_NETNS", netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        if let Some(a) = &args {
            env.push(("CNI_ARGS", a.as_str()));
        }
        let mut conf = self.cni_config(node);
        if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let (ok, result) = self.cni(node, "ADD", &env, &conf)?;
        if !ok {
            bail!("CNI ADD for {name} on {node} failed: {result}");
        }
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("CNI result without an address: {result}"))?;
        let pod = Pod {
            name: name.into(),
            ns,
            node: node.into(),
            ip,
            container_id,
            result,
        };
        self.node_mut(node).pods.push(pod.clone());
        Ok(pod)
    }

    /// CNI DEL for a pod (the namespace stays, as a runtime would delete it afterwards).
    pub fn del_pod(&mut self, pod: &Pod) -> Result<()> {
        let netns_path = netns::path(&pod.ns).display().to_string();
        let env = [
            ("CNI_CONTAINERID", pod.container_id.as_str()),
            ("CNI_NETNS", netns_path.as_str()),
            ("CNI_IFNAME", "eth0"),
        ];
        let conf = self.cni_config(&pod.node);
        let (ok, result) = self.cni(&pod.node, "DEL", &env, &conf)?;
        if !ok {
            bail!("CNI DEL for {} failed: {result}", pod.name);
        }
        self.node_mut(&pod.node).pods.retain(|p| p.name != pod.name);
        Ok(())
    }

    pub fn pod(&self, node: &str, name: &str) -> &Pod {
        self.node(node)
            .pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} on {node}"))
    }
}
