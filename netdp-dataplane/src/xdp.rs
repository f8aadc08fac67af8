//! The XDP program on the underlay interface (`xdp_netdev`): attached in native (driver)
//! mode where the driver has it (veth does), in generic mode only when asked; its link is
//! pinned like the tc links, named by its mode, so the next agent adopts it (an atomic
//! program swap) or, asked for another mode or none, detaches it.
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        Xdp, XdpMode as AttachMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use log::warn;
use netdp_common::program_names::XDP_NETDEV;

use crate::{Dataplane, Hook, Pins};

/// How the XDP program runs (`--xdp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// After the kernel built the skb (any driver; slower than tc alone would be for what
    /// XDP leaves to tc).
    Generic,
    Off,
}

impl XdpMode {
    pub const fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Off => "off",
        }
    }

    fn hook(self) -> Option<Hook> {
        match self {
            XdpMode::Native => Some(Hook::XdpNative),
            XdpMode::Generic => Some(Hook::XdpGeneric),
            XdpMode::Off => None,
        }
    }
}

impl std::str::FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            "off" => Ok(XdpMode::Off),
            _ => Err(format!("XDP mode {s:?} is none of native, generic, off")),
        }
    }
}

pub(crate) fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(XDP_NETDEV)
        .ok_or_else(|| anyhow!("program {XDP_NETDEV} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {XDP_NETDEV} is not an XDP program"))
}

/// The mode XDP runs in as the pins say, and on which interface (what `netdp status`
/// shows); `Off` and `None` when no XDP link is pinned.
pub fn attached(pins: &Pins) -> (XdpMode, Option<String>) {
    for mode in [XdpMode::Native, XdpMode::Generic] {
        if let Some(hook) = mode.hook()
            && let Ok(links) = pins.links(hook)
            && let Some((ifname, _)) = links.into_iter().next()
        {
            return (mode, Some(ifname));
        }
    }
    (XdpMode::Off, None)
}

impl Dataplane {
    /// The XDP program, to run on crafted frames (BPF_PROG_TEST_RUN).
    pub fn xdp(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// XDP program `name` of the object (the benchmarks' floor is one), to load.
    pub fn xdp_named(&mut self, name: &str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not an XDP program"))
    }

    /// XDP program `name`, to run on crafted frames (BPF_PROG_TEST_RUN).
    pub fn xdp_ref(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not an XDP program"))
    }

    /// Runs the XDP program on `netdev` in `mode`, taking over the pinned link a previous
    /// agent left in that mode; links in another mode or on another interface are
    /// detached. Returns the mode XDP now runs in: `Native` that the driver refuses falls
    /// back to off (tc alone does all the work), with a warning.
    pub fn attach_xdp(&mut self, pins: &Pins, netdev: &str, mode: XdpMode) -> Result<XdpMode> {
        let wanted = mode.hook().map(|h| pins.link(h, netdev));
        for hook in [Hook::XdpNative, Hook::XdpGeneric] {
            for (_, path) in pins.links(hook)? {
                if Some(&path) != wanted.as_ref() {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let Some(pin) = wanted else {
            return Ok(XdpMode::Off);
        };
        let prog_pin = pins.program(XDP_NETDEV);
        let tmp = pins.program(&format!("{XDP_NETDEV}_new"));
        let _ = std::fs::remove_file(&tmp);
        self.xdp()?
            .pin(&tmp)
            .with_context(|| format!("pinning program {XDP_NETDEV}"))?;
        std::fs::rename(&tmp, &prog_pin)
            .with_context(|| format!("pinning program {XDP_NETDEV} at {}", prog_pin.display()))?;
        if self.adopt_xdp(&pin)? {
            return Ok(mode);
        }
        let attach_mode = match mode {
            XdpMode::Native => AttachMode::Driver,
            _ => {
                warn!(
                    "XDP on {netdev} in generic mode: it runs after the skb is built, so it \
                     saves little; native mode is the one worth having"
                );
                AttachMode::Skb
            }
        };
        let id = match self.xdp()?.attach(netdev, attach_mode) {
            Ok(id) => id,
            Err(e) if mode == XdpMode::Native => {
                warn!(
                    "XDP is off: {netdev}'s driver refused native XDP ({e}); tc does all the \
                     work. --xdp=generic runs it in generic mode"
                );
                return Ok(XdpMode::Off);
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("attaching XDP to {netdev} ({})", mode.name()));
            }
        };
        let link: FdLink = self
            .xdp()?
            .take_link(id)
            .context("taking the new XDP link")?
            .try_into()
            .context("the XDP link is not fd based (needs kernel 5.9+)")?;
        link.pin(&pin)
            .with_context(|| format!("pinning link at {}", pin.display()))?;
        Ok(mode)
    }

    /// Points the pinned XDP link at `path` to the program just loaded. `false` if none.
    fn adopt_xdp(&mut self, path: &Path) -> Result<bool> {
        let pinned = match PinnedLink::from_pin(path) {
            Ok(p) => p,
            Err(_) if !path.exists() => return Ok(false),
            Err(e) => {
                warn!("dropping unusable pinned link {}: {e}", path.display());
                let _ = std::fs::remove_file(path);
                return Ok(false);
            }
        };
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| anyhow!("{} is not an XDP link: {e}", path.display()))?;
        self.xdp()?
            .attach_to_link(link)
            .with_context(|| format!("updating {} to the new program", path.display()))?;
        Ok(true)
    }
}
