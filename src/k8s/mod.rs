//! Kubernetes objects: loading them from manifests (and later from the API server).

pub mod manifests;
