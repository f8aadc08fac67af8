//! The CNI plugin as a container runtime drives it: spec 1.x commands, results and errors.
use std::net::Ipv4Addr;

use anyhow::Result;
use netdp_testbed::{Spec, Testbed, netns, traffic};
use serde_json::{Value, json};

const HOST_GW: &str = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#;

fn code(v: &Value) -> u64 {
    v["code"].as_u64().unwrap_or(0)
}

#[test]
fn version_errors_and_try_again_before_the_agent_is_up() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(1).network(HOST_GW))?;
    let conf = tb.cni_config("n1");
    let (ok, v) = tb.cni("n1", "VERSION", &[], &conf)?;
    assert!(ok);
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        versions.contains(&"1.0.0") && versions.contains(&"1.1.0") && versions.contains(&"0.4.0"),
        "{v}"
    );

    let ns = "/var/run/netns/none".to_string();
    let env = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", ns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    // No agent yet: the runtime is told to try again later.
    let (ok, v) = tb.cni("n1", "ADD", &env, &conf)?;
    assert!(!ok);
    assert_eq!(code(&v), 11, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap_or("")
            .contains("has not leased a subnet yet"),
        "{v}"
    );
    let (ok, v) = tb.cni("n1", "STATUS", &[], &conf)?;
    assert!(!ok && code(&v) == 50, "{v}");

    // Bad environment and bad config.
    let (ok, v) = tb.cni("n1", "", &env, &conf)?;
    assert!(
        !ok && code(&v) == 4 && v["msg"] == "CNI_COMMAND is not set",
        "{v}"
    );
    let (ok, v) = tb.cni("n1", "FROB", &env, &conf)?;
    assert!(!ok && code(&v) == 4, "{v}");
    let (ok, v) = tb.cni("n1", "ADD", &env[..2], &conf)?;
    assert!(
        !ok && code(&v) == 4 && v["msg"] == "CNI_IFNAME is not set",
        "{v}"
    );
    let mut old = conf.clone();
    old["cniVersion"] = json!("9.9.9");
    let (ok, v) = tb.cni("n1", "ADD", &env, &old)?;
    assert!(!ok && code(&v) == 1, "{v}");
    let (ok, v) = tb.cni("n1", "ADD", &env, &json!("not a config"))?;
    assert!(!ok && code(&v) == 6, "{v}");
    let mut bad_node = conf.clone();
    bad_node["nodeName"] = json!("../etc");
    tb.start_agent("n1", &[])?;
    let (ok, v) = tb.cni("n1", "ADD", &env, &bad_node)?;
    assert!(!ok && code(&v) == 7, "{v}");
    // The agent is up now.
    let (ok, v) = tb.cni("n1", "STATUS", &[], &conf)?;
    assert!(ok, "{v}");
    tb.add_pod("n1", "p1")?;
    Ok(())
}

#[test]
fn add_check_gc_and_del_as_a_runtime_calls_them() -> Result<()> {
    let mut tb = Testbed::new(Spec::flat(2).network(HOST_GW))?;
    tb.start_all_agents(&[])?;
    let p1 = tb.add_pod("n1", "p1")?;
    let p2 = tb.add_pod("n1", "p2")?;
    let far = tb.add_pod("n2", "p1")?;

    // The result a runtime stores.
    let r = &p1.result;
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"].as_array().map(|a| a.len()), Some(2));
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        netns::path(&p1.ns).display().to_string()
    );
    let gw = r["ips"][0]["gateway"].as_str().unwrap_or("").to_string();
    assert_eq!(r["ips"][0]["address"], format!("{}/32", p1.ip));
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["routes"][0]["gw"], gw);
    let subnet = tb.subnet_of("n1")?;
    assert!(
        gw.ends_with(".1") && subnet.starts_with(gw.trim_end_matches('1')),
        "gateway {gw} subnet {subnet}"
    );
    // Inside the pod: address, MTU from the subnet file, default route via the node.
    let link = netns::exec(&p1.ns, &["ip", "-o", "link", "show", "eth0"])?;
    let mtu = std::fs::read_to_string(tb.node("n1").subnet_file())?
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_MTU=").map(String::from))
        .unwrap_or_default();
    assert!(link.contains(&format!("mtu {mtu} ")), "{link}");
    let route = netns::exec(&p1.ns, &["ip", "route", "show", "default"])?;
    assert!(route.contains(&format!("via {gw} dev eth0")), "{route}");
    traffic::ping(&p1.ns, gw.parse::<Ipv4Addr>()?, 1)?;

    let conf = tb.cni_config("n1");
    let nsp = |p: &netdp_testbed::Pod| netns::path(&p.ns).display().to_string();
    let env = |p: &netdp_testbed::Pod| {
        vec![
            ("CNI_CONTAINERID", p.container_id.clone()),
            ("CNI_NETNS", nsp(p)),
            ("CNI_IFNAME", "eth0".to_string()),
        ]
    };
    let call = |cmd: &str, p: &netdp_testbed::Pod, conf: &Value| {
        let e = env(p);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tb.cni("n1", cmd, &e, conf)
    };

    // CHECK passes on a healthy pod and fails with a plugin code once it is broken.
    let (ok, v) = call("CHECK", &p1, &conf)?;
    assert!(ok, "{v}");
    netns::exec(&p1.ns, &["ip", "addr", "flush", "dev", "eth0"])?;
    let (ok, v) = call("CHECK", &p1, &conf)?;
    assert!(
        !ok && code(&v) == 101 && v["msg"].as_str().unwrap_or("").contains("lost its address"),
        "{v}"
    );

    // Asking for an address in use is refused.
    let (ok, v) = {
        let mut e = env(&p1);
        e[0].1 = "another".into();
        e.push(("CNI_ARGS", format!("IP={}", p2.ip)));
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        tb.cni("n1", "ADD", &e, &conf)?
    };
    assert!(
        !ok && code(&v) == 100 && v["msg"].as_str().unwrap_or("").contains("already in use"),
        "{v}"
    );

    // GC removes everything not in the valid list: p2 goes, p1 stays.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": p1.container_id, "ifname": "eth0"}]);
    let (ok, v) = call("GC", &p1, &gc)?;
    assert!(ok, "{v}");
    assert!(
        !traffic::reachable(&far.ns, p2.ip),
        "GC'd pod still reachable"
    );
    let eps = tb.netdp_json("n1", &["endpoint", "list"])?;
    let listed: Vec<&str> = eps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["ip"].as_str())
        .collect();
    assert_eq!(listed, vec![p1.ip.to_string()]);

    // DEL works when the pod's namespace is already gone, and again after that.
    netns::delete(&p1.ns);
    let (ok, v) = call("DEL", &p1, &conf)?;
    assert!(ok, "{v}");
    let (ok, v) = call("DEL", &p1, &conf)?;
    assert!(ok, "{v}");
    let eps = tb.netdp_json("n1", &["endpoint", "list"])?;
    assert_eq!(eps.as_array().map(|a| a.len()), Some(0), "{eps}");
    Ok(())
}
