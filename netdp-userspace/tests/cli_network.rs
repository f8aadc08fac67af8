//! `netdp network apply` against a real etcd: a config is validated, created once, left
//! alone when the same, and a different one is only replaced when asked.
use std::process::{Command, Output};

use anyhow::Result;
use netdp_testbed::etcd::LocalEtcd;

fn apply(etcd: &LocalEtcd, file: &std::path::Path, extra: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_netdp"))
        .args(["network", "apply", "-f"])
        .arg(file)
        .arg(format!("--etcd-endpoints={}", etcd.endpoint))
        .args(extra)
        .output()?)
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn apply_creates_once_keeps_the_same_and_replaces_only_when_asked() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let key = "/coreos.com/network/config";
    let (first, second, bad) = (
        etcd.dir.join("first.json"),
        etcd.dir.join("second.json"),
        etcd.dir.join("bad.json"),
    );
    let first_text = r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#;
    let second_text = r#"{"Network": "10.245.0.0/16", "Backend": {"Type": "host-gw"}}"#;
    std::fs::write(&first, first_text)?;
    std::fs::write(&second, second_text)?;
    std::fs::write(&bad, r#"{"Network": "10.244.0.0/16", "SubnetLen": 8}"#)?;

    let out = apply(&etcd, &bad, &[])?;
    assert!(!out.status.success());
    assert!(said(&out).contains("SubnetLen"), "{}", said(&out));
    assert_eq!(etcd.get(key)?, None, "an invalid config was written");

    let out = apply(&etcd, &first, &[])?;
    assert!(
        out.status.success() && said(&out).contains("created"),
        "{}",
        said(&out)
    );
    assert_eq!(etcd.get(key)?.as_deref(), Some(first_text));

    let out = apply(&etcd, &first, &[])?;
    assert!(
        out.status.success() && said(&out).contains("unchanged"),
        "{}",
        said(&out)
    );

    let out = apply(&etcd, &second, &[])?;
    assert!(!out.status.success());
    assert!(said(&out).contains("--overwrite"), "{}", said(&out));
    assert_eq!(
        etcd.get(key)?.as_deref(),
        Some(first_text),
        "replaced without --overwrite"
    );

    let out = apply(&etcd, &second, &["--overwrite"])?;
    assert!(
        out.status.success() && said(&out).contains("replaced"),
        "{}",
        said(&out)
    );
    assert_eq!(etcd.get(key)?.as_deref(), Some(second_text));
    Ok(())
}
