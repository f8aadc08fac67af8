//! Service load balancing, the programs' side of what `netdp-dataplane`'s `lb` programs:
//! `select` finds a packet's frontend and picks a backend (random, Maglev, affinity);
//! `flow` starts a new service flow (translation and its conntrack entries). The node's
//! own sockets use the same selection (`sock.rs`).
mod flow;
mod select;

pub use flow::{Flow, new_flow, open};
pub use select::{frontend, select};
