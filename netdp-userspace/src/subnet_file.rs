//! The subnet file (`/run/flannel/subnet.env`): the node's lease as Flannel's CNI plugin and
//! ours read it.
use std::{
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail};
use ipnetwork::Ipv4Network;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    /// The cluster Network.
    pub network: Ipv4Network,
    /// The node's subnet.
    pub subnet: Ipv4Network,
    /// Pod MTU.
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetFile {
    /// The node's address in its own subnet (the first host address); pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        crate::lease::gateway(self.subnet)
    }

    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            self.gateway(),
            self.subnet.prefix(),
            self.mtu,
            self.ipmasq
        )
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut network = None;
        let mut subnet = None;
        let mut mtu = None;
        let mut ipmasq = false;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| anyhow!("line {line:?} is not KEY=VALUE"))?;
            match k {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        v.parse::<Ipv4Network>()
                            .map_err(|_| anyhow!("FLANNEL_NETWORK={v} is not a CIDR"))?,
                    )
                }
                "FLANNEL_SUBNET" => {
                    let s: Ipv4Network = v
                        .parse()
                        .map_err(|_| anyhow!("FLANNEL_SUBNET={v} is not a CIDR"))?;
                    // A /31 or /32 has no address past the gateway (network + 1) for pods.
                    if s.prefix() > 30 {
                        bail!("FLANNEL_SUBNET={v} leaves no room for pods (at most /30)");
                    }
                    subnet = Some(Ipv4Network::new(s.network(), s.prefix())?);
                }
                "FLANNEL_MTU" => {
                    mtu = Some(
                        v.parse::<u32>()
                            .map_err(|_| anyhow!("FLANNEL_MTU={v} is not a number"))?,
                    )
                }
                "FLANNEL_IPMASQ" => ipmasq = v == "true",
                _ => {}
            }
        }
        let sf = SubnetFile {
            network: network.ok_or_else(|| anyhow!("FLANNEL_NETWORK missing"))?,
            subnet: subnet.ok_or_else(|| anyhow!("FLANNEL_SUBNET missing"))?,
            mtu: mtu.ok_or_else(|| anyhow!("FLANNEL_MTU missing"))?,
            ipmasq,
        };
        if sf.mtu < 576 || sf.mtu > 65535 {
            bail!("FLANNEL_MTU={} is out of range", sf.mtu);
        }
        Ok(sf)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading subnet file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("subnet file {}", path.display()))
    }

    /// Just the subnet, for re-leasing it after a restart; `None` if absent or unreadable.
    pub fn read_subnet(path: &Path) -> Option<Ipv4Network> {
        Self::read(path).ok().map(|sf| sf.subnet)
    }

    /// Writes the file atomically: readers see the old or the new content, never a mix.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp: PathBuf = dir.join(format!(
            ".{}.{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("subnet.env"),
            std::process::id()
        ));
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(self.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let sf = SubnetFile {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet: "10.1.15.0/24".parse().unwrap(),
            mtu: 1450,
            ipmasq: true,
        };
        let text = sf.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetFile::parse(&text).unwrap(), sf);
        let dir = std::env::temp_dir().join(format!("netdp-sf-{}", std::process::id()));
        let path = dir.join("subnet.env");
        sf.write(&path).unwrap();
        assert_eq!(SubnetFile::read(&path).unwrap(), sf);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_garbage() {
        assert!(SubnetFile::parse("FLANNEL_NETWORK=10.1.0.0/16\n").is_err());
        assert!(SubnetFile::parse("nonsense").is_err());
        assert!(
            SubnetFile::parse("FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_MTU=1500")
                .is_err()
        );
    }
}
