//! Connecting to etcd with flanneld's flags, to one member or to a cluster's several.
pub mod decode;
pub mod members;
pub mod watch;

use std::{path::PathBuf, time::Duration};

use crate::cli::Classify;
use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// etcd connection flags, named as flanneld names them.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma separated or repeated.
    #[arg(
        long = "etcd-endpoints",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        env = "NETDP_ETCD_ENDPOINTS"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix of the network config and leases (Flannel's default).
    #[arg(
        long = "etcd-prefix",
        default_value = "/coreos.com/network",
        env = "NETDP_ETCD_PREFIX"
    )]
    pub prefix: String,
    /// CA bundle to verify etcd's certificate.
    #[arg(long = "etcd-cafile", env = "NETDP_ETCD_CAFILE")]
    pub cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long = "etcd-certfile", env = "NETDP_ETCD_CERTFILE")]
    pub certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long = "etcd-keyfile", env = "NETDP_ETCD_KEYFILE")]
    pub keyfile: Option<PathBuf>,
    /// etcd user (with --etcd-password).
    #[arg(long = "etcd-username")]
    pub username: Option<String>,
    /// etcd password (or the ETCDCTL_PASSWORD environment variable).
    #[arg(
        long = "etcd-password",
        env = "NETDP_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// How long to wait for etcd before giving up (at startup and per request).
    #[arg(long = "etcd-timeout", value_parser = crate::util::parse_duration, default_value = "5s")]
    pub timeout: Duration,
}

impl EtcdArgs {
    /// The prefix without a trailing slash.
    pub fn prefix(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    fn options(&self) -> Result<ConnectOptions> {
        // Keep-alive pings end a connection to a member that was cut off (its watches and
        // lease streams with it) within 10 s plus the timeout; etcd refuses pings more often
        // than every 5 s (--grpc-keepalive-min-time) and without streams. With the leader
        // required, a member cut off from its peers refuses requests and ends its watches
        // instead of leaving them silent, so they resume on a member that has one.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(10), self.timeout)
            .with_require_leader(true);
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => opts = opts.with_user(u, p),
            (Some(_), None) => bail!("--etcd-username needs --etcd-password"),
            (None, Some(_)) => bail!("--etcd-password needs --etcd-username"),
            (None, None) => {}
        }
        let tls = self.cafile.is_some() || self.certfile.is_some() || self.keyfile.is_some();
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &self.cafile {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading --etcd-cafile {}", ca.display()))?;
                t = t.ca_certificate(Certificate::from_pem(pem));
            }
            match (&self.certfile, &self.keyfile) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c)
                        .with_context(|| format!("reading --etcd-certfile {}", c.display()))?;
                    let key = std::fs::read(k)
                        .with_context(|| format!("reading --etcd-keyfile {}", k.display()))?;
                    t = t.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => bail!("--etcd-certfile and --etcd-keyfile must be given together"),
            }
            opts = opts.with_tls(t);
        }
        Ok(opts)
    }

    /// Connects and checks that etcd answers, so an unreachable etcd is reported at once.
    /// Given several endpoints, requests go to the members that answer and know a leader
    /// ([`members`]), and one member down is no reason to fail.
    pub async fn connect(&self) -> Result<Client> {
        if self.endpoints.is_empty() {
            bail!("--etcd-endpoints is empty");
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                bail!("etcd endpoint {e:?} must start with http:// or https://");
            }
        }
        let endpoints = self.endpoints.join(",");
        let opts = self.options()?;
        let connect = async {
            let mut client = Client::connect(&self.endpoints, Some(opts.clone())).await?;
            if self.endpoints.len() > 1 {
                // Probes leave the rest of the timeout for the request that follows them.
                let probe = (self.timeout / 2).min(2 * members::PROBE_EVERY);
                let mut members =
                    members::Members::new(client.clone(), &self.endpoints, opts, probe);
                members.check().await;
                members.spawn();
            }
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(anyhow!(
                "cannot reach etcd at {endpoints}: {}",
                crate::util::one_line(&e)
            ))
            .classify(crate::cli::Failure::Unreachable),
            Err(_) => Err(anyhow!(
                "cannot reach etcd at {endpoints}: no answer within {:?}",
                self.timeout
            ))
            .classify(crate::cli::Failure::Unreachable),
        }
    }
}
