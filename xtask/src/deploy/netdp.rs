//! What netdp needs of the manifests that no schema knows: the objects (namespace, an
//! account without token, no role bound by default), the configs as netdp parses them,
//! the DaemonSet a CNI dataplane must be, and every reference in it resolved.
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::Value;

use super::{
    HEALTHZ_PORT,
    manifest::{Container, Doc, agent_container, config_data, containers, find, items, one},
};

/// What netdp needs of the manifests; returns a summary of what was checked.
pub fn checks(docs: &[Doc], optional: &[Doc]) -> Result<String> {
    let mut checked = Vec::new();

    let sa = objects(docs, optional)?;
    checked.push("namespace, service account without token, no role bound by default, optional API-mode role");

    let config = configs(docs)?;
    checked.push(
        "net-conf.json parses as netdp's network config, cni-conf.json is netdp-cni's, \
         health on the probes' port, metrics on loopback",
    );

    let ds = &one(docs, "DaemonSet")?.value;
    daemonset(ds, sa.name())?;
    references(ds, docs, &config)?;
    checked.push("DaemonSet: host network, system-node-critical, tolerates every taint, rolling one node at a time, no token, privileged agent with requests and probes on :9876 /healthz /readyz, bpffs Bidirectional, cgroup2, /run/flannel, CNI dirs for install-cni, the two init steps, every volume, ConfigMap key and $(VAR) resolved, Secrets optional");

    Ok(checked
        .iter()
        .map(|c| format!("  ok: {c}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The namespace, an account that gets no token, no role bound by default, the
/// Kubernetes-API mode's role in `deploy/optional/`; returns the ServiceAccount.
fn objects<'a>(docs: &'a [Doc], optional: &[Doc]) -> Result<&'a Doc> {
    let namespace = "netdp-system";
    let ns = one(docs, "Namespace")?;
    ensure!(
        ns.name() == namespace,
        "the namespace is {:?}, not {namespace}",
        ns.name()
    );
    ensure!(
        ns.value["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged",
        "namespace {namespace} must allow privileged pods (pod-security.kubernetes.io/enforce: privileged)"
    );
    for d in docs {
        let ns_of = d.value["metadata"]["namespace"].as_str();
        ensure!(
            matches!(d.kind(), "Namespace" | "ClusterRole" | "ClusterRoleBinding")
                || ns_of == Some(namespace),
            "{} {} ({}) is not in namespace {namespace}",
            d.kind(),
            d.name(),
            d.file.display()
        );
    }
    let bindings: Vec<String> = docs
        .iter()
        .filter(|d| d.kind().ends_with("RoleBinding") || d.kind().ends_with("Role"))
        .map(|d| format!("{} {}", d.kind(), d.name()))
        .collect();
    ensure!(
        bindings.is_empty(),
        "the default manifests must grant no API access (the etcd-mode agent needs none); \
         move {} to deploy/optional/",
        bindings.join(", ")
    );
    let sa = one(docs, "ServiceAccount")?;
    ensure!(
        sa.value["automountServiceAccountToken"] == false,
        "ServiceAccount {} must set automountServiceAccountToken: false",
        sa.name()
    );
    let optional_roles = find(optional, "ClusterRole", None);
    ensure!(
        optional_roles
            .iter()
            .any(|r| !items(&r.value["rules"]).is_empty()),
        "deploy/optional/ must hold the ClusterRole of the Kubernetes-API mode"
    );
    for b in find(optional, "ClusterRoleBinding", None) {
        let subject_ok = b.value["subjects"].as_array().is_some_and(|s| {
            s.iter().all(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == sa.name()
                    && s["namespace"] == namespace
            })
        });
        ensure!(
            subject_ok,
            "ClusterRoleBinding {} must bind only ServiceAccount {namespace}/{}",
            b.name(),
            sa.name()
        );
    }
    Ok(sa)
}

/// The configs in the ConfigMap, as netdp reads them; returns the ConfigMap's data.
fn configs(docs: &[Doc]) -> Result<BTreeMap<String, String>> {
    let config = config_data(docs)?;
    let get = |key: &str| {
        config
            .get(key)
            .with_context(|| format!("the ConfigMap has no {key}"))
    };
    netdp_dataplane::config::NetworkConfig::parse(get("net-conf.json")?)
        .map_err(|e| anyhow!("the ConfigMap's net-conf.json is not a valid network config: {e}"))?;
    let cni: Value = serde_json::from_str(get("cni-conf.json")?)
        .context("the ConfigMap's cni-conf.json is not JSON")?;
    ensure!(
        cni["type"] == "netdp-cni" && cni["name"].is_string() && cni["cniVersion"].is_string(),
        "cni-conf.json must be a CNI config of type netdp-cni with a name and cniVersion"
    );
    for e in get("etcd-endpoints")?.split(',') {
        ensure!(
            e.starts_with("http://") || e.starts_with("https://"),
            "etcd-endpoints: {e:?} must start with http:// or https://"
        );
    }
    ensure!(
        get("healthz-addr")?.ends_with(&format!(":{HEALTHZ_PORT}")),
        "healthz-addr must listen on port {HEALTHZ_PORT}, where the DaemonSet's probes look"
    );
    ensure!(
        get("metrics-addr")?.starts_with("127."),
        "metrics-addr must stay on loopback: the pod is on the host network"
    );
    Ok(config)
}

/// The pod's volumes by name.
fn volumes(ds: &Value) -> BTreeMap<String, &Value> {
    items(&ds["spec"]["template"]["spec"]["volumes"])
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?.to_string(), v)))
        .collect()
}

/// Whether `c` runs with each of `words` among its arguments.
fn argv_has(c: &Container, words: &[&str]) -> bool {
    let argv = c.argv();
    words.iter().all(|w| argv.iter().any(|a| a == w))
}

/// What a CNI dataplane's DaemonSet must have: the pod on the host network, critical,
/// everywhere, rolling one node at a time, with no token; the agent privileged, with
/// requests and probes; the init steps; the host's directories each part needs.
fn daemonset(ds: &Value, service_account: &str) -> Result<()> {
    let spec = &ds["spec"]["template"]["spec"];
    let want = |ok: bool, what: &str| -> Result<()> {
        ensure!(ok, "the DaemonSet must have {what}");
        Ok(())
    };
    want(spec["hostNetwork"] == true, "hostNetwork: true")?;
    want(
        spec["priorityClassName"] == "system-node-critical",
        "priorityClassName: system-node-critical",
    )?;
    want(
        spec["tolerations"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
        }),
        "a toleration of every taint (operator: Exists, no key)",
    )?;
    want(
        spec["automountServiceAccountToken"] == false,
        "automountServiceAccountToken: false in the pod",
    )?;
    want(
        spec["serviceAccountName"] == service_account,
        "serviceAccountName of the ServiceAccount",
    )?;
    want(
        spec["terminationGracePeriodSeconds"].is_u64(),
        "terminationGracePeriodSeconds",
    )?;
    let strategy = &ds["spec"]["updateStrategy"];
    want(
        strategy["type"] == "RollingUpdate" && strategy["rollingUpdate"]["maxUnavailable"] == 1,
        "updateStrategy RollingUpdate with maxUnavailable: 1",
    )?;

    let volumes = volumes(ds);
    let host_path = |name: &str| {
        volumes
            .get(name)
            .and_then(|v| v["hostPath"]["path"].as_str())
    };
    let all = containers(ds);
    let agent = agent_container(&all).context("the DaemonSet has no container")?;
    want(
        argv_has(agent, &["agent"]),
        "the agent container running `netdp agent`",
    )?;
    want(
        all.iter()
            .any(|c| c.init && argv_has(c, &["network", "apply"])),
        "an init container running `netdp network apply`",
    )?;
    want(
        all.iter().any(|c| c.init && argv_has(c, &["install-cni"])),
        "an init container running `netdp install-cni`",
    )?;
    want(
        agent.value["securityContext"]["privileged"] == true,
        "a privileged agent",
    )?;
    want(
        agent.value["resources"]["requests"].is_object(),
        "resource requests on the agent",
    )?;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &agent.value[probe]["httpGet"];
        want(
            get["path"] == path && get["port"] == HEALTHZ_PORT,
            &format!("a {probe} on port {HEALTHZ_PORT} path {path}"),
        )?;
    }
    let bpffs = items(&agent.value["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"] == "/sys/fs/bpf");
    want(
        bpffs.is_some_and(|m| {
            m["mountPropagation"] == "Bidirectional"
                && host_path(m["name"].as_str().unwrap_or("")) == Some("/sys/fs/bpf")
        }),
        "the host's /sys/fs/bpf mounted at /sys/fs/bpf with mountPropagation: Bidirectional",
    )?;
    let mounts_host = |c: &Container, host: &str| {
        c.mounts()
            .iter()
            .any(|(name, _)| host_path(name) == Some(host))
    };
    for (host, who) in [
        ("/run/flannel", "the agent (subnet.env)"),
        ("/sys/fs/cgroup", "the agent (socket programs)"),
    ] {
        want(
            mounts_host(agent, host),
            &format!("the host's {host} mounted into {who}"),
        )?;
    }
    for host in ["/opt/cni/bin", "/etc/cni/net.d"] {
        want(
            all.iter()
                .any(|c| c.init && argv_has(c, &["install-cni"]) && mounts_host(c, host)),
            &format!("the host's {host} mounted into install-cni"),
        )?;
    }
    Ok(())
}

/// Every reference resolves: volumes, ConfigMap keys, $(VAR) in arguments; the Secrets the
/// manifests do not create are optional.
fn references(ds: &Value, docs: &[Doc], config: &BTreeMap<String, String>) -> Result<()> {
    let volumes = volumes(ds);
    let cms: BTreeSet<&str> = find(docs, "ConfigMap", None)
        .iter()
        .map(|d| d.name())
        .collect();
    for c in &containers(ds) {
        for (name, _) in c.mounts() {
            ensure!(
                volumes.contains_key(&name),
                "container {} mounts volume {name}, which the pod does not define",
                c.name()
            );
        }
        let mut defined = BTreeSet::new();
        for e in items(&c.value["env"]) {
            defined.insert(e["name"].as_str().unwrap_or("").to_string());
            let r = &e["valueFrom"]["configMapKeyRef"];
            if let Some(key) = r["key"].as_str() {
                let cm = r["name"].as_str().unwrap_or("");
                ensure!(
                    cms.contains(cm) && (cm != "netdp-config" || config.contains_key(key)),
                    "container {} reads key {key} of ConfigMap {cm}, which does not exist",
                    c.name()
                );
            }
            let s = &e["valueFrom"]["secretKeyRef"];
            if s.is_object() {
                ensure!(
                    s["optional"] == true,
                    "container {} reads Secret {}, which the manifests do not create: it must be optional",
                    c.name(),
                    s["name"]
                );
            }
        }
        for arg in c.argv() {
            let mut rest = arg.as_str();
            while let Some(start) = rest.find("$(") {
                let end = rest[start..]
                    .find(')')
                    .with_context(|| format!("unclosed $( in {arg:?}"))?;
                let var = &rest[start + 2..start + end];
                ensure!(
                    defined.contains(var),
                    "container {} passes {arg:?}, but {var} is not in its env (Kubernetes would \
                     pass it literally)",
                    c.name()
                );
                rest = &rest[start + end..];
            }
        }
    }
    for (name, v) in &volumes {
        if let Some(cm) = v["configMap"]["name"].as_str() {
            ensure!(
                cms.contains(cm),
                "volume {name} mounts ConfigMap {cm}, which does not exist"
            );
        }
        if v["secret"].is_object() {
            ensure!(
                v["secret"]["optional"] == true,
                "volume {name} mounts a Secret the manifests do not create: it must be optional"
            );
        }
    }
    Ok(())
}
