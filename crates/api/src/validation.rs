//! Validation of built-in kinds. Every problem found is reported (422 lists all causes),
//! with upstream's reasons, field paths and messages. Each kind's
//! [`KindRules`](crate::kinds::KindRules) names its checks here, which add to the
//! metadata checks every kind shares.
//!
//! - [`causes`]: field paths and the cause constructors every check uses.
//! - [`meta`]: object metadata (name, namespace, labels, annotations), the metadata an
//!   update may not change, and label selectors.
//! - [`names`]: name, label, key and port-name syntax with upstream's messages.
//! - [`pod`]: pod spec rules (pods and workload templates) and the pod update rule.
//! - [`workloads`]: Deployments, ReplicaSets, DaemonSets, StatefulSets, Jobs and
//!   PodDisruptionBudgets.
//! - [`service`]: Services (types, IPs, ports, policies).
//! - [`config`]: ConfigMaps and Secrets.
//! - [`gofmt`]: Go-style renderings of bad values (`map[string]string{...}`).

pub mod causes;
pub mod config;
pub mod gofmt;
pub mod meta;
pub mod names;
pub mod pod;
pub mod service;
pub mod workloads;

pub use config::MAX_DATA_SIZE;
pub use meta::TOTAL_ANNOTATION_SIZE_LIMIT;
pub use service::NODE_PORT_RANGE;

#[cfg(test)]
mod tests;
