//! `netdp network apply` against a real etcd: a config is validated, created once, left
//! alone when the same, and a different one is only replaced when asked.
use std::process::{Command, Output};

use anyhow::Result;
use netdp_testbed::etcd::LocalEtcd;
use netdp_testbed::process::said;

fn apply(etcd: &LocalEtcd, file: &std::path::Path, extra: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_netdp"))
        .args(["network", "apply", "-f"])
        .arg(file)
        .arg(format!("--etcd-endpoints={}", etcd.endpoint))
        .args(extra)
        .output()?)
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

    // The Kubernetes subnet manager's agents read the file: validated, nothing written.
    let out = apply(&etcd, &bad, &["--kube-subnet-mgr"])?;
    assert!(!out.status.success() && said(&out).contains("SubnetLen"));
    let out = apply(&etcd, &first, &["--kube-subnet-mgr"])?;
    assert!(
        out.status.success() && said(&out).contains("nothing written to etcd"),
        "{}",
        said(&out)
    );
    assert_eq!(etcd.get(key)?, None, "written with --kube-subnet-mgr");

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

/// Scripts tell failures apart by exit code: 2 bad input, 3 not found, 4 etcd unreachable.
#[test]
fn exit_codes_say_what_went_wrong() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let netdp = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_netdp"))
            .args(args)
            .output()
    };
    let endpoint = format!("--etcd-endpoints={}", etcd.endpoint);
    let bad = etcd.dir.join("bad.json");
    std::fs::write(&bad, r#"{"Network": "10.244.0.0/33"}"#)?;
    let bad = bad.display().to_string();
    let cases: [(Vec<&str>, i32); 4] = [
        (vec!["network", "apply", "-f", &bad, &endpoint], 2),
        (vec!["service", "get", "nope", &endpoint], 3),
        (vec!["service", "delete", "nope", &endpoint], 3),
        (
            vec!["lease", "list", "--etcd-endpoints=http://127.0.0.1:1"],
            4,
        ),
    ];
    for (args, code) in cases {
        let out = netdp(&args)?;
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", said(&out));
    }
    Ok(())
}
