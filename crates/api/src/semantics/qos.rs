//! A pod's QoS class, as upstream's `ComputePodQOS`: only cpu and memory count, summed
//! over init and app containers, and only positive amounts count.
//!
//! Requests missing from a container default to its limits first, as the API server's
//! defaulting does before it stores a pod, so a pod reads the same before and after. The
//! class is fixed when the pod is created (`status.qosClass`); [`effective_qos_class`]
//! reads it back rather than computing a new one, as the kubelet's `GetPodQOS` does.
//! Pod-level `spec.resources` (alpha in 1.32, gate off by default) is not considered.

use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use serde_json::Value;

use crate::quantity::{self, Quantity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    pub fn parse(text: &str) -> Option<QosClass> {
        Some(match text {
            "Guaranteed" => QosClass::Guaranteed,
            "Burstable" => QosClass::Burstable,
            "BestEffort" => QosClass::BestEffort,
            _ => return None,
        })
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resources QoS looks at, in this order.
const QOS_RESOURCES: [&str; 2] = ["cpu", "memory"];

/// One container's cpu and memory (indexed as [`QOS_RESOURCES`]), unparsable amounts
/// dropped: they never passed validation.
#[derive(Default)]
pub struct ContainerAmounts {
    pub requests: [Option<Quantity>; 2],
    pub limits: [Option<Quantity>; 2],
}

impl ContainerAmounts {
    fn from_lookup(
        request: impl Fn(&str) -> Option<Quantity>,
        limit: impl Fn(&str) -> Option<Quantity>,
    ) -> ContainerAmounts {
        let mut amounts = ContainerAmounts::default();
        for (i, name) in QOS_RESOURCES.iter().enumerate() {
            amounts.limits[i] = limit(name);
            amounts.requests[i] = request(name).or(amounts.limits[i]);
        }
        amounts
    }

    pub fn of_container(c: &Container) -> ContainerAmounts {
        let resources = c.resources.as_ref();
        let read = |list: Option<&std::collections::BTreeMap<String, _>>, name: &str| {
            list.and_then(|l| l.get(name))
                .and_then(|q| Quantity::try_from(q).ok())
        };
        ContainerAmounts::from_lookup(
            |name| read(resources.and_then(|r| r.requests.as_ref()), name),
            |name| read(resources.and_then(|r| r.limits.as_ref()), name),
        )
    }

    /// A container as JSON (quantities as strings or numbers).
    pub fn of_json(c: &Value) -> ContainerAmounts {
        let read = |which: &str, name: &str| quantity::from_json(&c["resources"][which][name]).ok();
        ContainerAmounts::from_lookup(|name| read("requests", name), |name| read("limits", name))
    }
}

/// Upstream's rules over all containers' amounts.
pub fn classify(containers: impl IntoIterator<Item = ContainerAmounts>) -> QosClass {
    let mut requests: [Option<Quantity>; 2] = [None; 2];
    let mut limits: [Option<Quantity>; 2] = [None; 2];
    let mut guaranteed = true;
    let mut add = |sum: &mut Option<Quantity>, amount: Quantity| {
        *sum = match sum {
            None => Some(amount),
            Some(s) => s.checked_add(&amount).or_else(|| {
                // Amounts this large never pass validation; they cannot be compared exactly.
                guaranteed = false;
                Some(*s)
            }),
        };
    };
    let positive = |q: &Option<Quantity>| q.filter(|q| !q.is_zero() && !q.is_negative());
    let mut every_container_limits_both = true;
    for c in containers {
        for i in 0..QOS_RESOURCES.len() {
            if let Some(r) = positive(&c.requests[i]) {
                add(&mut requests[i], r);
            }
            match positive(&c.limits[i]) {
                Some(l) => add(&mut limits[i], l),
                None => every_container_limits_both = false,
            }
        }
    }
    if requests.iter().chain(&limits).all(Option::is_none) {
        return QosClass::BestEffort;
    }
    let sums_equal = requests == limits;
    if guaranteed && every_container_limits_both && sums_equal {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The QoS class of a pod spec.
pub fn qos_class_of_spec(spec: &PodSpec) -> QosClass {
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    classify(containers.map(ContainerAmounts::of_container))
}

/// The QoS class computed from the pod's spec (what the API server sets on create).
pub fn qos_class(pod: &Pod) -> QosClass {
    match &pod.spec {
        Some(spec) => qos_class_of_spec(spec),
        None => QosClass::BestEffort,
    }
}

/// The QoS class of a pod spec held as JSON (the API server's form).
pub fn qos_class_of_json_spec(spec: &Value) -> QosClass {
    let containers = ["containers", "initContainers"]
        .iter()
        .flat_map(|field| spec[*field].as_array().into_iter().flatten());
    classify(containers.map(ContainerAmounts::of_json))
}

/// The class the pod has: `status.qosClass` once the API server set it (it never changes
/// afterwards), else the computed one.
pub fn effective_qos_class(pod: &Pod) -> QosClass {
    pod.status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref())
        .and_then(QosClass::parse)
        .unwrap_or_else(|| qos_class(pod))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A container with `(cpu, memory)` requests and limits; empty strings are absent.
    fn container(requests: (&str, &str), limits: (&str, &str)) -> Value {
        let list = |(cpu, memory): (&str, &str)| {
            let mut m = serde_json::Map::new();
            if !cpu.is_empty() {
                m.insert("cpu".into(), json!(cpu));
            }
            if !memory.is_empty() {
                m.insert("memory".into(), json!(memory));
            }
            Value::Object(m)
        };
        json!({"name": "c", "resources": {"requests": list(requests), "limits": list(limits)}})
    }

    fn both_forms(spec: Value) -> QosClass {
        let typed: PodSpec = serde_json::from_value(spec.clone()).unwrap();
        let from_typed = qos_class_of_spec(&typed);
        assert_eq!(from_typed, qos_class_of_json_spec(&spec), "{spec}");
        from_typed
    }

    /// Upstream's `TestComputePodQOS` (container-level cases), plus the defaulting and
    /// exact-comparison cases rkube's copies got wrong.
    #[test]
    fn classes_follow_upstream() {
        use QosClass::*;
        let none = ("", "");
        let table = [
            (
                vec![container(("100m", "100Mi"), ("100m", "100Mi"))],
                vec![],
                Guaranteed,
            ),
            (
                vec![
                    container(("100m", "100Mi"), ("100m", "100Mi")),
                    container(("100m", "100Mi"), ("100m", "100Mi")),
                ],
                vec![],
                Guaranteed,
            ),
            (
                vec![container(none, none), container(none, none)],
                vec![],
                BestEffort,
            ),
            (vec![container(none, none)], vec![], BestEffort),
            (
                vec![container(none, none), container(("1", ""), ("2", ""))],
                vec![],
                Burstable,
            ),
            (
                vec![
                    container(none, none),
                    container(("10m", "100Mi"), ("10m", "100Mi")),
                ],
                vec![],
                Burstable,
            ),
            (
                vec![container(("", "100Mi"), ("", "100Mi"))],
                vec![],
                Burstable,
            ),
            (vec![container(("100m", "100Mi"), none)], vec![], Burstable),
            (
                vec![
                    container(("1", "100Mi"), ("2", "100Mi")),
                    container(("100m", "100Mi"), ("100m", "100Mi")),
                ],
                vec![],
                Burstable,
            ),
            (
                vec![
                    container(("100m", "100Mi"), ("200m", "200Mi")),
                    container(("100m", "100Mi"), none),
                ],
                vec![],
                Burstable,
            ),
            (
                vec![container(("10m", "100Mi"), ("100m", "200Mi"))],
                vec![],
                Burstable,
            ),
            (
                vec![container(("0", "0"), ("100m", "200Mi"))],
                vec![],
                Burstable,
            ),
            (
                vec![container(none, none)],
                vec![container(("10m", "100Mi"), ("100m", "200Mi"))],
                Burstable,
            ),
            // Equal amounts written differently.
            (
                vec![container(("1000m", "1Gi"), ("1", "1073741824"))],
                vec![],
                Guaranteed,
            ),
            (
                vec![container(("0.5", "128974848"), ("500m", "129e6"))],
                vec![],
                Burstable,
            ),
            // Limits alone: requests default to them.
            (vec![container(none, ("1", "1Gi"))], vec![], Guaranteed),
            // An init container without limits makes the pod Burstable.
            (
                vec![container(("1", "1Gi"), ("1", "1Gi"))],
                vec![container(("1", "1Gi"), none)],
                Burstable,
            ),
        ];
        for (containers, init, want) in table {
            let spec = json!({"containers": containers, "initContainers": init});
            assert_eq!(both_forms(spec.clone()), want, "{spec}");
        }
        // Only cpu and memory count (upstream's best-effort-hugepages case).
        let hugepages = json!({"containers": [{"name": "c", "resources": {
            "requests": {"cpu": "0", "memory": "0", "hugepages-2Mi": "1Gi"},
            "limits": {"cpu": "0", "memory": "0", "hugepages-2Mi": "1Gi"}}}]});
        assert_eq!(both_forms(hugepages), BestEffort);
        let storage_only = json!({"containers": [{"name": "c", "resources": {"requests": {"ephemeral-storage": "1Gi"}}}]});
        assert_eq!(both_forms(storage_only), BestEffort);
        // Quantities as JSON numbers, as clients may send them.
        let numbers = json!({"containers": [{"name": "c", "resources": {"limits": {"cpu": 1, "memory": 1073741824}}}]});
        assert_eq!(qos_class_of_json_spec(&numbers), Guaranteed);
    }

    #[test]
    fn effective_class_is_the_one_the_api_server_set() {
        let pod = |status: Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [container(("100m", ""), ("", ""))]},
                "status": status,
            }))
            .unwrap()
        };
        assert_eq!(effective_qos_class(&pod(json!({}))), QosClass::Burstable);
        assert_eq!(
            effective_qos_class(&pod(json!({"qosClass": "Guaranteed"}))),
            QosClass::Guaranteed
        );
        assert_eq!(QosClass::parse("BestEffort"), Some(QosClass::BestEffort));
        assert_eq!(QosClass::Burstable.to_string(), "Burstable");
    }
}
