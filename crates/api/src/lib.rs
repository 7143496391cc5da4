//! Kubernetes API machinery shared by rkube components, with no IO.
//!
//! - [`registry`]: the built-in resources rkube serves (group, version, kind, plural,
//!   scope, verbs, subresources) - the single source for routing and discovery.
//! - [`status`]: `metav1.Status` errors with upstream reasons and messages.
//! - [`quantity`]: `resource.Quantity`, exact, with upstream's canonical strings.
//! - [`selectors`]: label and field selectors, and the one label-selector matcher.
//! - [`semantics`]: rules every component applies: QoS class, default pull policy,
//!   tolerations, node selectors and required node affinity.
//! - [`kinds`]: each built-in kind's rules in one place (name rule, defaulting, validation,
//!   printer), one static per kind.
//! - [`defaults`] and [`validation`]: defaulting and validation of JSON objects, by family
//!   of kinds.
//! - [`typed`]: schema checks against the upstream types (wrong JSON types, unknown fields).
//! - [`table`]: `meta.k8s.io/v1` Table columns and cells for `kubectl get`.
//!
//! Objects are handled as `serde_json::Value` so the API server can store exactly what
//! clients send (unknown fields included) while still checking the parts it understands.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod defaults;
pub mod kinds;
pub mod quantity;
pub mod registry;
pub mod selectors;
pub mod semantics;
pub mod status;
pub mod table;
pub mod typed;
pub mod validation;

pub use quantity::{Quantity, QuantityError};
pub use registry::{ResourceInfo, REGISTRY};
pub use status::{ApiError, StatusCause};
