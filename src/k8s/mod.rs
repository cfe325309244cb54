//! Kubernetes objects: from manifests ([`manifests`]) and from the API server ([`client`],
//! [`cache`], [`list`] for the review commands' one-shot list, [`events`]).
//!
//! Owns: everything that talks to the API server (only this module does): building the
//! client, watching Services, EndpointSlices, this node's Node and ServiceCIDRs into an
//! in-memory cache the sync loop reads through [`crate::sync::Source`], and reporting
//! invalid objects as Kubernetes Events ([`crate::sync::WarningSink`]).
//!
//! Must not: interpret objects (that is `model::build`) or touch the kernel.

pub mod cache;
pub mod client;
pub mod compact;
pub mod events;
pub mod list;
pub mod manifests;
