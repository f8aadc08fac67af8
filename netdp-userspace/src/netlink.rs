//! The few rtnetlink operations the agent and the CNI plugin need.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteScope},
    },
};

pub use netdp_dataplane::Link;

/// A route lookup result: where a packet to some address leaves, and via whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// The gateway, or the destination itself when it is on-link.
    pub addr: Ipv4Addr,
}

/// A netlink connection in the current network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.raw_code() == -libc::ENODEV || m.raw_code() == -libc::ENOENT || m.raw_code() == -libc::ESRCH)
}

impl Netlink {
    /// Opens a connection; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    fn to_link(msg: &rtnetlink::packet_route::link::LinkMessage) -> Link {
        let mut link = Link {
            name: String::new(),
            index: msg.header.index,
            mac: [0; 6],
            mtu: 0,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                _ => {}
            }
        }
        link
    }

    /// The interface called `name`, or `None`.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Self::to_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(anyhow!("looking up interface {name}: {e}")),
        }
    }

    /// The interface called `name`; an error naming it if there is none.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| anyhow!("interface {name:?} not found"))
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(Self::to_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(anyhow!("looking up interface {index}: {e}")),
        }
    }

    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.context("listing addresses")? {
            out.push(msg);
        }
        Ok(out)
    }

    /// IPv4 addresses (with prefix) on an interface.
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<Ipv4Network>> {
        let mut out = Vec::new();
        for msg in self.address_messages(index).await? {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a))
                | AddressAttribute::Address(IpAddr::V4(a)) = attr
                {
                    let net = Ipv4Network::new(*a, msg.header.prefix_len)?;
                    if !out.contains(&net) {
                        out.push(net);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The interface holding the default IPv4 route.
    pub async fn default_route_link(&self) -> Result<Option<Link>> {
        match self.route_get(Ipv4Addr::new(1, 1, 1, 1)).await {
            Ok(nh) => self.link_by_index(nh.ifindex).await,
            Err(_) => Ok(None),
        }
    }

    /// `ip route get <dst>`: the egress interface and next hop for `dst`.
    pub async fn route_get(&self, dst: Ipv4Addr) -> Result<NextHop> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut stream = self.handle.route().get(msg).execute();
        let route = stream
            .try_next()
            .await
            .map_err(|e| anyhow!("no route to {dst}: {e}"))?
            .ok_or_else(|| anyhow!("no route to {dst}"))?;
        let mut nh = NextHop {
            ifindex: 0,
            addr: dst,
        };
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => nh.ifindex = *i,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => nh.addr = *g,
                _ => {}
            }
        }
        if nh.ifindex == 0 {
            bail!("no route to {dst}");
        }
        Ok(nh)
    }

    /// The resolved MAC of `addr` on `ifindex`, if the neighbour table has a usable one.
    pub async fn neighbour(&self, ifindex: u32, addr: Ipv4Addr) -> Result<Option<[u8; 6]>> {
        Ok(self.neighbours(ifindex).await?.get(&addr).copied())
    }

    /// Every usable (resolved, possibly stale) IPv4 neighbour on `ifindex`, in one dump.
    pub async fn neighbours(&self, ifindex: u32) -> Result<HashMap<Ipv4Addr, [u8; 6]>> {
        let mut out = HashMap::new();
        let mut stream = self.handle.neighbours().get().execute();
        while let Some(msg) = stream.try_next().await.context("listing neighbours")? {
            if msg.header.ifindex != ifindex
                || matches!(
                    msg.header.state,
                    NeighbourState::Failed | NeighbourState::Incomplete | NeighbourState::None
                )
            {
                continue;
            }
            let mut dst = None;
            let mut lladdr = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        let mut m = [0u8; 6];
                        m.copy_from_slice(l);
                        lladdr = Some(m);
                    }
                    _ => {}
                }
            }
            if let (Some(dst), Some(mac)) = (dst, lladdr) {
                out.insert(dst, mac);
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a permanent neighbour entry.
    pub async fn set_neighbour(&self, ifindex: u32, addr: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(ifindex, IpAddr::V4(addr))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| anyhow!("adding neighbour {addr} on {ifindex}: {e}"))
    }

    /// Creates a veth pair in this namespace.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<()> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|e| anyhow!("creating veth pair {name}/{peer}: {e}"))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(anyhow!("deleting interface {index}: {e}")),
        }
    }

    /// Moves an interface into the network namespace behind `netns_fd`.
    pub async fn move_to_netns(&self, index: u32, netns_fd: std::os::fd::RawFd) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns_fd)
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| anyhow!("moving interface {index} to the pod's namespace: {e}"))
    }

    /// Renames, sets the MTU and brings an interface up.
    pub async fn configure_link(
        &self,
        index: u32,
        name: Option<&str>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(n) = name {
            b = b.name(n.to_string());
        }
        if let Some(m) = mtu {
            b = b.mtu(m);
        }
        self.handle
            .link()
            .set(b.up().build())
            .execute()
            .await
            .map_err(|e| anyhow!("configuring interface {index}: {e}"))
    }

    /// Adds an address; an existing identical address is fine.
    pub async fn add_addr(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(anyhow!("adding {addr}/{prefix} to interface {index}: {e}")),
        }
    }

    /// Removes every IPv4 address on an interface except `keep`.
    pub async fn remove_other_addrs(&self, index: u32, keep: Ipv4Network) -> Result<()> {
        for msg in self.address_messages(index).await? {
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(x)) => Some(*x),
                _ => None,
            });
            let Some(local) = local else { continue };
            if local == keep.ip() && msg.header.prefix_len == keep.prefix() {
                continue;
            }
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| anyhow!("removing {local} from interface {index}: {e}"))?;
        }
        Ok(())
    }

    /// Turns ARP off on an interface whose peer needs no resolved MACs (a program there
    /// rewrites them).
    pub async fn set_noarp(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).arp(false).build())
            .execute()
            .await
            .map_err(|e| anyhow!("turning ARP off on interface {index}: {e}"))
    }

    /// Adds or replaces an on-link route to `dst` out of `index` with preferred source
    /// address `src`.
    pub async fn replace_route_src(
        &self,
        dst: Ipv4Network,
        index: u32,
        src: Ipv4Addr,
    ) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .output_interface(index)
            .scope(RouteScope::Link)
            .pref_source(src)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| anyhow!("routing {dst} via interface {index}: {e}"))
    }

    /// Adds a route to `dst` out of `index`, via `gateway` or on-link (scope link).
    pub async fn add_route(
        &self,
        dst: Ipv4Network,
        index: u32,
        gateway: Option<Ipv4Addr>,
        onlink: bool,
    ) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .output_interface(index);
        b = match gateway {
            Some(g) => b.gateway(g),
            None => b.scope(RouteScope::Link),
        };
        if onlink {
            b = b.onlink();
        }
        match self.handle.route().add(b.build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(anyhow!("adding route {dst} dev {index}: {e}")),
        }
    }
}
