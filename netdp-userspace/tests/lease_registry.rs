//! The lease manager against a real etcd: race-free allocation, exhaustion, reuse, expiry,
//! renewal, malformed values, TLS.
use std::{collections::HashSet, net::Ipv4Addr, time::Duration};

use anyhow::Result;
use clap::Parser;
use netdp::{
    config::NetworkConfig,
    etcd::EtcdArgs,
    lease::{AcquireError, LeaseAttrs, LeaseOptions, Registry, subnet_key},
};
use netdp_testbed::etcd::LocalEtcd;

const PREFIX: &str = "/coreos.com/network";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    etcd: EtcdArgs,
}

fn etcd_args(etcd: &LocalEtcd, extra: &[&str]) -> EtcdArgs {
    let mut argv = vec![
        "test".to_string(),
        format!("--etcd-endpoints={}", etcd.endpoint),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Args::parse_from(argv).etcd
}

async fn registry(etcd: &LocalEtcd) -> Result<Registry> {
    Ok(Registry::new(etcd_args(etcd, &[]).connect().await?, PREFIX))
}

fn attrs(i: u8) -> LeaseAttrs {
    LeaseAttrs::new(Ipv4Addr::new(192, 168, 1, i), "host-gw", None)
}

fn opts(ttl_secs: u64) -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_secs(ttl_secs),
        renew_margin: Duration::from_secs(1),
        retry_interval: Duration::from_secs(1),
    }
}

fn config(json: &str) -> NetworkConfig {
    NetworkConfig::parse(json).expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_joining_at_once_get_fifty_distinct_subnets() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let cfg = config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=50u8 {
        let args = etcd_args(&etcd, &[]);
        let cfg = cfg.clone();
        tasks.spawn(async move {
            let mut reg = Registry::new(args.connect().await?, PREFIX);
            reg.acquire(&cfg, &attrs(i), None, &opts(60))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        });
    }
    let mut subnets = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        subnets.insert(r??.subnet);
    }
    assert_eq!(subnets.len(), 50, "two nodes got the same subnet");
    let (leases, _) = registry(&etcd).await?.leases().await?;
    assert_eq!(leases.len(), 50);
    let publics: HashSet<_> = leases.iter().map(|l| l.attrs.public_ip).collect();
    assert_eq!(publics.len(), 50);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_range_gives_exactly_the_free_subnets_and_clear_errors() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let cfg = config(
        r#"{"Network": "10.9.0.0/16", "SubnetMin": "10.9.1.0", "SubnetMax": "10.9.4.0", "Backend": {"Type": "host-gw"}}"#,
    );
    assert_eq!(cfg.subnet_count(), 4);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=6u8 {
        let args = etcd_args(&etcd, &[]);
        let cfg = cfg.clone();
        tasks.spawn(async move {
            let mut reg = Registry::new(args.connect().await?, PREFIX);
            Ok::<_, anyhow::Error>(reg.acquire(&cfg, &attrs(i), None, &opts(60)).await)
        });
    }
    let (mut ok, mut errors) = (HashSet::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r?? {
            Ok(lease) => {
                ok.insert(lease.subnet);
            }
            Err(e) => errors.push(e),
        }
    }
    assert_eq!(ok.len(), 4);
    assert_eq!(errors.len(), 2);
    for e in errors {
        assert!(matches!(e, AcquireError::Exhausted { subnets: 4 }), "{e}");
        assert_eq!(
            e.to_string(),
            "no free subnet: all 4 subnets between SubnetMin and SubnetMax are leased"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gets_its_subnet_back_and_never_steals_a_live_one() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let cfg = config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let mut reg = registry(&etcd).await?;
    let first = reg.acquire(&cfg, &attrs(1), None, &opts(60)).await?;
    // Restart: same PublicIP, no subnet file.
    let again = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(1), None, &opts(60))
        .await?;
    assert_eq!(again.subnet, first.subnet);
    assert_ne!(
        again.etcd_lease, first.etcd_lease,
        "re-taken with a fresh TTL"
    );
    // Another node copying the first one's subnet file must not get its live subnet.
    let other = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(2), Some(first.subnet), &opts(60))
        .await?;
    assert_ne!(other.subnet, first.subnet);
    // A free subnet from the subnet file is honoured.
    let wanted = "10.1.77.0/24".parse()?;
    let third = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(3), Some(wanted), &opts(60))
        .await?;
    assert_eq!(third.subnet, wanted);
    // A subnet file outside SubnetMin..SubnetMax is ignored.
    let outside = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(4), Some("10.1.0.0/24".parse()?), &opts(60))
        .await?;
    assert_ne!(outside.subnet.to_string(), "10.1.0.0/24");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_lease_provably_ours_is_taken_back() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let cfg = config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let put = |subnet: &str, value: &str| etcd.put(&format!("{PREFIX}/subnets/{subnet}"), value);
    // Our own lease names us, and is ours again after a restart without a subnet file.
    let me = attrs(1).with_node("n1");
    let first = registry(&etcd)
        .await?
        .acquire(&cfg, &me, None, &opts(60))
        .await?;
    let raw = etcd
        .get(&subnet_key(PREFIX, &first.subnet))?
        .expect("our lease");
    assert_eq!(
        raw,
        r#"{"PublicIP":"192.168.1.1","BackendType":"host-gw","NetdpNode":"n1"}"#
    );
    let again = registry(&etcd)
        .await?
        .acquire(&cfg, &me, None, &opts(60))
        .await?;
    assert_eq!(again.subnet, first.subnet);

    // A lease with n5's PublicIP written by someone else: refused, naming the key.
    put(
        "10.1.200.0-24",
        r#"{"PublicIP":"192.168.1.5","BackendType":"host-gw","NetdpNode":"n9"}"#,
    )?;
    let err = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(5).with_node("n5"), None, &opts(60))
        .await
        .expect_err("a lease naming n9 is not n5's");
    assert!(matches!(err, AcquireError::Claimed { .. }), "{err}");
    assert!(
        err.to_string().starts_with(
            "lease /coreos.com/network/subnets/10.1.200.0-24 claims this node's PublicIP \
             192.168.1.5 but it was written by node \"n9\": not adopting it"
        ),
        "{err}"
    );
    // Also when the subnet file names it, and nothing was leased instead.
    let err = registry(&etcd)
        .await?
        .acquire(
            &cfg,
            &attrs(5).with_node("n5"),
            Some("10.1.200.0/24".parse()?),
            &opts(60),
        )
        .await
        .expect_err("the subnet file does not make n9's lease n5's");
    assert!(matches!(err, AcquireError::Claimed { .. }), "{err}");
    let (leases, _) = registry(&etcd).await?.leases().await?;
    let of_n5: Vec<_> = leases
        .iter()
        .filter(|l| l.attrs.public_ip == Ipv4Addr::new(192, 168, 1, 5))
        .collect();
    assert_eq!(of_n5.len(), 1);
    assert_eq!(
        of_n5[0].attrs.node.as_deref(),
        Some("n9"),
        "n9's lease is untouched"
    );

    // A lease naming no node (flanneld's, an older netdp's) is ours at the subnet file's
    // subnet only; taking it back names us.
    let legacy = r#"{"PublicIP":"192.168.1.6","BackendType":"host-gw"}"#;
    put("10.1.201.0-24", legacy)?;
    let err = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(6).with_node("n6"), None, &opts(60))
        .await
        .expect_err("unnamed and not in the subnet file");
    assert!(err.to_string().contains("names no node"), "{err}");
    let hint = "10.1.201.0/24".parse()?;
    let taken = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(6).with_node("n6"), Some(hint), &opts(60))
        .await?;
    assert_eq!(taken.subnet, hint);
    let raw = etcd.get(&subnet_key(PREFIX, &hint))?.expect("the lease");
    assert!(raw.contains(r#""NetdpNode":"n6""#), "{raw}");

    // Two leases of ours: the subnet file's is kept, the other released.
    put(
        "10.1.210.0-24",
        r#"{"PublicIP":"192.168.1.8","BackendType":"host-gw","NetdpNode":"n8"}"#,
    )?;
    put(
        "10.1.211.0-24",
        r#"{"PublicIP":"192.168.1.8","BackendType":"host-gw","NetdpNode":"n8"}"#,
    )?;
    let kept = registry(&etcd)
        .await?
        .acquire(
            &cfg,
            &attrs(8).with_node("n8"),
            Some("10.1.211.0/24".parse()?),
            &opts(60),
        )
        .await?;
    assert_eq!(kept.subnet.to_string(), "10.1.211.0/24");
    assert!(
        etcd.get(&format!("{PREFIX}/subnets/10.1.210.0-24"))?
            .is_none()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_no_longer_fits_the_config_is_released() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let old = config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let new =
        config(r#"{"Network": "10.1.0.0/16", "SubnetLen": 25, "Backend": {"Type": "host-gw"}}"#);
    let mut reg = registry(&etcd).await?;
    let before = reg.acquire(&old, &attrs(1), None, &opts(60)).await?;
    let after = reg.acquire(&new, &attrs(1), None, &opts(60)).await?;
    assert_eq!(after.subnet.prefix(), 25);
    assert!(
        etcd.get(&subnet_key(PREFIX, &before.subnet))?.is_none(),
        "the /24 lease was not released"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_without_renewal_and_survive_many_ttls_with_it() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    let cfg = config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let mut reg = registry(&etcd).await?;
    let renewed = reg.acquire(&cfg, &attrs(1), None, &opts(2)).await?;
    let abandoned = reg.acquire(&cfg, &attrs(2), None, &opts(2)).await?;
    // Renew the first every second for four TTLs; leave the second alone. (Time passing is
    // the point: the renewals must carry one lease across TTLs that expire the other.)
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(reg.renew(&renewed).await?, "renewal failed");
    }
    assert!(etcd.get(&subnet_key(PREFIX, &renewed.subnet))?.is_some());
    assert!(
        etcd.get(&subnet_key(PREFIX, &abandoned.subnet))?.is_none(),
        "abandoned lease did not expire"
    );
    assert!(
        !reg.renew(&abandoned).await?,
        "an expired lease cannot be renewed"
    );
    // The expired subnet can be leased again.
    let reused = reg
        .acquire(&cfg, &attrs(3), Some(abandoned.subnet), &opts(60))
        .await?;
    assert_eq!(reused.subnet, abandoned.subnet);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_skipped_and_flannel_leases_are_understood() -> Result<()> {
    let etcd = LocalEtcd::start()?;
    // As flanneld writes them.
    etcd.put(
        &format!("{PREFIX}/subnets/10.1.15.0-24"),
        r#"{"PublicIP":"192.168.0.100","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}"#,
    )?;
    etcd.put(
        &format!("{PREFIX}/subnets/10.1.16.0-24"),
        r#"{"PublicIP":"192.168.0.200","BackendType":"host-gw"}"#,
    )?;
    etcd.put(&format!("{PREFIX}/subnets/10.1.17.0-24"), "{not json")?;
    etcd.put(
        &format!("{PREFIX}/subnets/garbage-key"),
        r#"{"PublicIP":"192.168.0.1"}"#,
    )?;
    etcd.put(
        &format!("{PREFIX}/subnets/10.1.18.0-24"),
        r#"{"PublicIP":"not-an-ip"}"#,
    )?;
    let (leases, _) = registry(&etcd).await?.leases().await?;
    let mut got: Vec<_> = leases
        .iter()
        .map(|l| (l.subnet.to_string(), l.attrs.public_ip.to_string()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("10.1.15.0/24".into(), "192.168.0.100".into()),
            ("10.1.16.0/24".into(), "192.168.0.200".into())
        ]
    );
    let vxlan = leases
        .iter()
        .find(|l| l.attrs.backend_type == "vxlan")
        .expect("vxlan lease");
    assert_eq!(
        vxlan.attrs.vtep_mac(),
        Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01])
    );
    // Our own leases are written in the same schema.
    let cfg = config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let mine = registry(&etcd)
        .await?
        .acquire(&cfg, &attrs(9), None, &opts(60))
        .await?;
    let raw = etcd
        .get(&subnet_key(PREFIX, &mine.subnet))?
        .expect("our lease");
    assert_eq!(raw, r#"{"PublicIP":"192.168.1.9","BackendType":"host-gw"}"#);
    // The malformed subnets are not handed out as if free either... they are occupied keys.
    assert_ne!(mine.subnet.to_string(), "10.1.17.0/24");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() -> Result<()> {
    let etcd = LocalEtcd::start_with(true)?;
    let tls = etcd.tls.clone().expect("tls files");
    assert!(etcd.endpoint.starts_with("https://"));
    let ca = tls.ca.display().to_string();
    let cert = tls.client_cert.display().to_string();
    let key = tls.client_key.display().to_string();
    let args = etcd_args(
        &etcd,
        &[
            &format!("--etcd-cafile={ca}"),
            &format!("--etcd-certfile={cert}"),
            &format!("--etcd-keyfile={key}"),
        ],
    );
    let mut reg = Registry::new(args.connect().await?, PREFIX);
    let cfg = config(r#"{"Network": "10.1.0.0/16", "Backend": {"Type": "host-gw"}}"#);
    let lease = reg.acquire(&cfg, &attrs(1), None, &opts(60)).await?;
    assert!(etcd.get(&subnet_key(PREFIX, &lease.subnet))?.is_some());
    // Without a client certificate etcd refuses us, and we say so.
    let err = etcd_args(
        &etcd,
        &[&format!("--etcd-cafile={ca}"), "--etcd-timeout=3s"],
    )
    .connect()
    .await
    .err()
    .expect("connect must fail");
    assert!(
        err.to_string().starts_with("cannot reach etcd at https://"),
        "{err}"
    );
    // Half a key pair is a usage error.
    let err = etcd_args(&etcd, &[&format!("--etcd-certfile={cert}")])
        .connect()
        .await
        .err()
        .expect("connect must fail");
    assert!(
        err.to_string()
            .contains("--etcd-certfile and --etcd-keyfile must be given together"),
        "{err}"
    );
    Ok(())
}
