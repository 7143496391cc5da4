//! Kubernetes rules that several components apply to the same objects, written once:
//!
//! - [`qos`]: a pod's QoS class (Guaranteed, Burstable, BestEffort).
//! - [`images`]: image references and the default `imagePullPolicy`.
//! - [`scheduling`]: taints against tolerations, node selectors and required node affinity.
//!
//! Label selectors live in [`crate::selectors`] and quantities in [`crate::quantity`].
//! Functions take the k8s-openapi types the scheduler, controller manager and kubelet
//! hold; the API server, which keeps objects as JSON, gets thin adapters where it needs one.

pub mod images;
pub mod qos;
pub mod scheduling;

pub use images::{default_pull_policy, PullPolicy};
pub use qos::{qos_class, QosClass};
pub use scheduling::{node_matches, tolerates, toleration_tolerates};
