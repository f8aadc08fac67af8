//! The maps, sized by the defaults in netdp-common; the agent can resize them at load time.
use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, PerCpuArray},
    macros::btf_map,
};
use netdp_common::{
    Ipv4,
    counters::{CounterValue, SLOTS},
    endpoint::{Endpoint, EndpointKey},
    route::Route,
};

#[btf_map]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint, 16384> = HashMap::new();

#[btf_map]
pub static ROUTES: LpmTrie<Ipv4, Route, 16384> = LpmTrie::new();

#[btf_map]
pub static COUNTERS: PerCpuArray<CounterValue, { SLOTS as usize }> = PerCpuArray::new();
