//! Kubernetes services: the schema users write and etcd stores ([`schema`]), checking it
//! ([`validate`]), what a node programs for it ([`plan`]), the etcd store ([`store`]) and
//! the Kubernetes API's objects ([`api`], [`slices`]).
pub mod addresses;
pub mod allocate;
pub mod api;
pub mod endpoints;
pub mod global;
pub mod plan;
pub mod schema;
pub mod slices;
pub mod store;
pub mod validate;

#[cfg(test)]
mod tests;

pub use addresses::{AddressArgs, AddressPolicy};
pub use plan::{NodeInfo, plan};
pub use schema::{Manifests, ServiceDoc, parse_file, parse_manifests};
pub use store::{DEFAULT_PREFIX, ServiceStore};
pub use validate::{ServiceDef, validate};

/// Parses and checks a stored value.
pub fn decode(bytes: &[u8]) -> Result<ServiceDef, String> {
    let doc = schema::from_json(bytes).map_err(|e| format!("{e:#}"))?;
    validate(&doc)
}
