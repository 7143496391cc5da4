//! Which lists of the built-in kinds merge, and by which key.
//!
//! Strategic merge patch is defined by Go struct tags (`patchStrategy`, `patchMergeKey`) in
//! `k8s.io/api`. rkube has no Go types, so the facts are restated here as a table from a dotted
//! field path (list items add no segment: `spec.template.spec.containers.env` is the `env` list
//! of any container) to the list's strategy. A list not in the table is replaced wholesale,
//! which is also what upstream does for untagged lists (`tolerations`, `readinessGates`,
//! `envFrom`, `Endpoints.subsets`, `resizePolicy`, `ServiceAccount.imagePullSecrets`, ...).
//!
//! `patchStrategy:"retainKeys"` (Deployment `spec.strategy`, pod `volumes`, `resourceClaims`)
//! needs no entry: the `$retainKeys` directive is honoured wherever a client sends it.

use std::collections::HashMap;
use std::sync::OnceLock;

/// How a list field is merged when both the object and the patch have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListStrategy {
    /// `patchStrategy:"merge" patchMergeKey:"<key>"`: items are matched by this field.
    MergeByKey(&'static str),
    /// `patchStrategy:"merge"` on a list of scalars: the list is treated as a set.
    MergeSet,
}

use ListStrategy::{MergeByKey, MergeSet};

/// The list strategies of one kind, keyed by dotted path.
#[derive(Debug, Default)]
pub(crate) struct Schema {
    lists: HashMap<String, ListStrategy>,
}

impl Schema {
    /// An empty schema: every list is replaced, which makes strategic merge behave like
    /// RFC 7396 merge patch (plus directive handling).
    pub(crate) fn empty() -> &'static Schema {
        static EMPTY: OnceLock<Schema> = OnceLock::new();
        EMPTY.get_or_init(Schema::default)
    }

    /// The schema of a built-in kind, or `None` for kinds rkube does not know (CRDs).
    pub(crate) fn for_kind(kind: &str) -> Option<&'static Schema> {
        static SCHEMAS: OnceLock<HashMap<&'static str, Schema>> = OnceLock::new();
        SCHEMAS.get_or_init(build_all).get(kind)
    }

    pub(crate) fn list_strategy(&self, path: &str) -> Option<ListStrategy> {
        self.lists.get(path).copied()
    }

    fn add(&mut self, prefix: &str, rules: &[(&str, ListStrategy)]) {
        for (field, strategy) in rules {
            let path = if prefix.is_empty() {
                (*field).to_string()
            } else {
                format!("{prefix}.{field}")
            };
            self.lists.insert(path, *strategy);
        }
    }

    fn add_pod_spec(&mut self, prefix: &str) {
        self.add(prefix, POD_SPEC);
        for container_list in CONTAINER_LISTS {
            self.add(&format!("{prefix}.{container_list}"), CONTAINER);
        }
    }
}

/// ObjectMeta (apimachinery meta/v1), shared by every kind.
const OBJECT_META: &[(&str, ListStrategy)] = &[
    ("metadata.ownerReferences", MergeByKey("uid")),
    ("metadata.finalizers", MergeSet),
];

/// core/v1 PodSpec.
const POD_SPEC: &[(&str, ListStrategy)] = &[
    ("volumes", MergeByKey("name")),
    ("initContainers", MergeByKey("name")),
    ("containers", MergeByKey("name")),
    ("ephemeralContainers", MergeByKey("name")),
    ("imagePullSecrets", MergeByKey("name")),
    ("hostAliases", MergeByKey("ip")),
    ("topologySpreadConstraints", MergeByKey("topologyKey")),
    ("schedulingGates", MergeByKey("name")),
    ("resourceClaims", MergeByKey("name")),
];

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// core/v1 Container and EphemeralContainerCommon.
const CONTAINER: &[(&str, ListStrategy)] = &[
    ("ports", MergeByKey("containerPort")),
    ("env", MergeByKey("name")),
    ("volumeMounts", MergeByKey("mountPath")),
    ("volumeDevices", MergeByKey("devicePath")),
];

/// core/v1 PodStatus.
const POD_STATUS: &[(&str, ListStrategy)] = &[
    ("status.conditions", MergeByKey("type")),
    ("status.podIPs", MergeByKey("ip")),
    ("status.hostIPs", MergeByKey("ip")),
    ("status.resourceClaimStatuses", MergeByKey("name")),
];

const STATUS_CONDITIONS: &[(&str, ListStrategy)] = &[("status.conditions", MergeByKey("type"))];

/// Kinds whose objects embed a pod template, and where.
const POD_TEMPLATE_KINDS: &[(&str, &str)] = &[
    ("PodTemplate", "template.spec"),
    ("ReplicationController", "spec.template.spec"),
    ("Deployment", "spec.template.spec"),
    ("ReplicaSet", "spec.template.spec"),
    ("DaemonSet", "spec.template.spec"),
    ("StatefulSet", "spec.template.spec"),
    ("Job", "spec.template.spec"),
    ("CronJob", "spec.jobTemplate.spec.template.spec"),
];

/// Kinds whose status has `conditions` merged by `type`.
const KINDS_WITH_STATUS_CONDITIONS: &[&str] = &[
    "ReplicationController",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "Service",
    "Node",
    "Namespace",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
];

/// Built-in kinds with no merge lists beyond ObjectMeta's.
const METADATA_ONLY_KINDS: &[&str] = &[
    "ConfigMap",
    "Secret",
    "Endpoints",
    "EndpointSlice",
    "Event",
    "LimitRange",
    "ResourceQuota",
    "PersistentVolume",
    "Binding",
    "Scale",
    "Lease",
    "Ingress",
    "IngressClass",
    "NetworkPolicy",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "StorageClass",
    "PriorityClass",
    "RuntimeClass",
    "ControllerRevision",
    "CustomResourceDefinition",
];

fn build_all() -> HashMap<&'static str, Schema> {
    let mut schemas: HashMap<&'static str, Schema> = HashMap::new();
    fn schema_of<'m>(
        schemas: &'m mut HashMap<&'static str, Schema>,
        kind: &'static str,
    ) -> &'m mut Schema {
        schemas.entry(kind).or_insert_with(|| {
            let mut schema = Schema::default();
            schema.add("", OBJECT_META);
            schema
        })
    }

    let pod = schema_of(&mut schemas, "Pod");
    pod.add_pod_spec("spec");
    pod.add("", POD_STATUS);

    for (kind, prefix) in POD_TEMPLATE_KINDS {
        schema_of(&mut schemas, kind).add_pod_spec(prefix);
    }
    for kind in KINDS_WITH_STATUS_CONDITIONS {
        schema_of(&mut schemas, kind).add("", STATUS_CONDITIONS);
    }
    for kind in METADATA_ONLY_KINDS {
        schema_of(&mut schemas, kind);
    }

    schema_of(&mut schemas, "Service").add("", &[("spec.ports", MergeByKey("port"))]);
    schema_of(&mut schemas, "Node").add(
        "",
        &[
            ("spec.podCIDRs", MergeSet),
            ("status.addresses", MergeByKey("type")),
        ],
    );
    schema_of(&mut schemas, "ServiceAccount").add("", &[("secrets", MergeByKey("name"))]);
    // ComponentStatus keeps its conditions at the top level, not under status.
    schema_of(&mut schemas, "ComponentStatus").add("", &[("conditions", MergeByKey("type"))]);

    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_template_kinds_reach_container_fields() {
        let deployment = Schema::for_kind("Deployment").unwrap();
        assert_eq!(
            deployment.list_strategy("spec.template.spec.containers.env"),
            Some(MergeByKey("name"))
        );
        assert_eq!(
            deployment.list_strategy("spec.template.spec.initContainers.ports"),
            Some(MergeByKey("containerPort"))
        );
        assert_eq!(
            deployment.list_strategy("status.conditions"),
            Some(MergeByKey("type"))
        );
        let cronjob = Schema::for_kind("CronJob").unwrap();
        assert_eq!(
            cronjob.list_strategy("spec.jobTemplate.spec.template.spec.volumes"),
            Some(MergeByKey("name"))
        );
    }

    #[test]
    fn untagged_lists_have_no_strategy() {
        let pod = Schema::for_kind("Pod").unwrap();
        assert_eq!(pod.list_strategy("spec.tolerations"), None);
        assert_eq!(pod.list_strategy("spec.readinessGates"), None);
        assert_eq!(pod.list_strategy("spec.containers.envFrom"), None);
        assert_eq!(pod.list_strategy("status.containerStatuses"), None);
        let endpoints = Schema::for_kind("Endpoints").unwrap();
        assert_eq!(endpoints.list_strategy("subsets"), None);
    }

    #[test]
    fn every_builtin_kind_has_object_meta_rules() {
        for kind in ["Pod", "ConfigMap", "Service", "Node", "ComponentStatus"] {
            let schema = Schema::for_kind(kind).unwrap();
            assert_eq!(
                schema.list_strategy("metadata.finalizers"),
                Some(MergeSet),
                "{kind}"
            );
            assert_eq!(
                schema.list_strategy("metadata.ownerReferences"),
                Some(MergeByKey("uid")),
                "{kind}"
            );
        }
        assert!(Schema::for_kind("Widget").is_none());
    }
}
