//! Where a pod may run: taints against tolerations (`Toleration.ToleratesTaint`), node
//! selector terms and required node affinity (component-helpers' `nodeaffinity`), as the
//! scheduler, the DaemonSet controller and the node lifecycle controller all need them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

use crate::selectors::{set_selector_matches, Labels, Operator};

/// Upstream's `Toleration.ToleratesTaint`: an empty effect matches every effect, an empty
/// key (with `Exists`) every key; `Equal` (also the empty operator) compares values.
pub fn toleration_tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| toleration_tolerates(t, taint))
}

/// The node facts a selector looks at: its name (the only selectable field) and labels.
pub struct NodeView<'a, L: Labels + ?Sized> {
    pub name: &'a str,
    pub labels: &'a L,
}

// By hand: derived impls would require `L: Copy`, and only references are copied.
impl<L: Labels + ?Sized> Clone for NodeView<'_, L> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L: Labels + ?Sized> Copy for NodeView<'_, L> {}

impl<'a> NodeView<'a, BTreeMap<String, String>> {
    pub fn of(node: &'a Node) -> Self {
        static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
        NodeView {
            name: node.metadata.name.as_deref().unwrap_or(""),
            labels: node.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
        }
    }
}

fn requirement_values(req: &NodeSelectorRequirement) -> &[String] {
    req.values.as_deref().unwrap_or_default()
}

/// A `matchExpressions` entry, read as the label requirement upstream converts it to. A
/// malformed one (unknown operator, wrong number of values) is `None`.
fn label_requirement_matches<L: Labels + ?Sized>(
    req: &NodeSelectorRequirement,
    labels: &L,
) -> Option<bool> {
    let values = requirement_values(req);
    let operator =
        Operator::from_expression(&req.operator, true).filter(|op| op.accepts(values))?;
    Some(operator.evaluate(labels.label(&req.key).as_deref(), values))
}

/// A `matchFields` entry: only `In` and `NotIn` with exactly one value; a node has one
/// field, `metadata.name`, and any other reads as empty (upstream's fields.Set).
fn field_requirement_matches(req: &NodeSelectorRequirement, node_name: &str) -> Option<bool> {
    let [value] = requirement_values(req) else {
        return None;
    };
    let field = if req.key == "metadata.name" {
        node_name
    } else {
        ""
    };
    match req.operator.as_str() {
        "In" => Some(field == value),
        "NotIn" => Some(field != value),
        _ => None,
    }
}

/// One NodeSelectorTerm: every expression and every field requirement must hold. A term
/// with neither, or with a malformed requirement, matches nothing.
pub fn node_selector_term_matches<L: Labels + ?Sized>(
    term: &NodeSelectorTerm,
    node: NodeView<'_, L>,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    // Every requirement is checked for well-formedness even after one fails to match, so a
    // malformed term never matches whatever order its requirements are in.
    let mut matched = true;
    for req in expressions {
        match label_requirement_matches(req, node.labels) {
            Some(ok) => matched &= ok,
            None => return false,
        }
    }
    for req in fields {
        match field_requirement_matches(req, node.name) {
            // Upstream skips field requirements for a node without a name.
            Some(ok) => matched &= ok || node.name.is_empty(),
            None => return false,
        }
    }
    matched
}

/// A NodeSelector: its terms are ORed; no terms match nothing.
pub fn node_selector_matches<L: Labels + ?Sized>(
    selector: &NodeSelector,
    node: NodeView<'_, L>,
) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|term| node_selector_term_matches(term, node))
}

/// [`node_selector_matches`] for a Node object.
pub fn node_matches(selector: &NodeSelector, node: &Node) -> bool {
    node_selector_matches(selector, NodeView::of(node))
}

/// Upstream's `RequiredNodeAffinity.Match`: `spec.nodeSelector` (every label equal) and
/// the required node affinity, if any, must both hold.
pub fn required_node_affinity_matches<L: Labels + ?Sized>(
    node_selector: Option<&BTreeMap<String, String>>,
    required_affinity: Option<&NodeSelector>,
    node: NodeView<'_, L>,
) -> bool {
    let by_labels = node_selector.is_none_or(|set| set_selector_matches(set, node.labels));
    by_labels && required_affinity.is_none_or(|selector| node_selector_matches(selector, node))
}

/// [`required_node_affinity_matches`] for a pod spec.
pub fn pod_fits_node_affinity<L: Labels + ?Sized>(spec: &PodSpec, node: NodeView<'_, L>) -> bool {
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    required_node_affinity_matches(spec.node_selector.as_ref(), required, node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.to_string()),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(v: Value) -> Toleration {
        serde_json::from_value(v).unwrap()
    }

    /// Cases of upstream's `TestTolerationToleratesTaint` and `TestMatchTaint`.
    #[test]
    fn tolerations_follow_upstream() {
        let table = [
            (
                json!({"key": "foo", "operator": "Exists", "effect": "NoSchedule"}),
                taint("foo", "bar", "NoSchedule"),
                true,
            ),
            (
                json!({"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"}),
                taint("foo", "bar", "NoSchedule"),
                true,
            ),
            (
                json!({"key": "foo", "operator": "Equal", "value": "baz", "effect": "NoSchedule"}),
                taint("foo", "bar", "NoSchedule"),
                false,
            ),
            (
                json!({"key": "foo", "operator": "Exists", "effect": "NoExecute"}),
                taint("foo", "bar", "NoSchedule"),
                false,
            ),
            (
                json!({"key": "foo", "operator": "Exists"}),
                taint("foo", "bar", "NoExecute"),
                true,
            ),
            (
                json!({"key": "foo", "operator": "Exists"}),
                taint("bar", "", "NoExecute"),
                false,
            ),
            (
                json!({"operator": "Exists"}),
                taint("anything", "v", "PreferNoSchedule"),
                true,
            ),
            (
                json!({"operator": "Exists", "effect": "NoSchedule"}),
                taint("anything", "v", "NoExecute"),
                false,
            ),
            // The empty operator means Equal.
            (
                json!({"key": "foo", "value": "bar"}),
                taint("foo", "bar", "NoExecute"),
                true,
            ),
            (json!({"key": "foo"}), taint("foo", "", "NoExecute"), true),
            (
                json!({"key": "foo"}),
                taint("foo", "bar", "NoExecute"),
                false,
            ),
            (
                json!({"key": "foo", "operator": "Lt", "value": "1"}),
                taint("foo", "0", "NoExecute"),
                false,
            ),
        ];
        for (tol, taint, want) in table {
            assert_eq!(
                toleration_tolerates(&toleration(tol.clone()), &taint),
                want,
                "{tol} vs {taint:?}"
            );
        }
        let list = [
            toleration(json!({"key": "a", "operator": "Exists"})),
            toleration(json!({"key": "b", "operator": "Exists"})),
        ];
        assert!(tolerates(&list, &taint("b", "", "NoSchedule")));
        assert!(!tolerates(&list, &taint("c", "", "NoSchedule")));
        assert!(!tolerates(&[], &taint("c", "", "NoSchedule")));
    }

    fn node(name: &str, labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn terms(terms: Value) -> NodeSelector {
        serde_json::from_value(json!({"nodeSelectorTerms": terms})).unwrap()
    }

    /// Cases of upstream's `TestNodeSelectorMatch` and the scheduler's node affinity tests.
    #[test]
    fn node_selectors_follow_upstream() {
        let n = node(
            "host_1",
            json!({"foo": "bar", "zone": "a", "cores": "8", "gpu": "true"}),
        );
        let table = [
            (json!([]), false, "no terms"),
            (json!([{}]), false, "an empty term"),
            (
                json!([{"matchExpressions": []}]),
                false,
                "a term with empty lists",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "In", "values": ["bar", "value2"]}]}]),
                true,
                "In",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "In", "values": ["value1"]}]}]),
                false,
                "In, other value",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "In", "values": []}]}]),
                false,
                "In without values is malformed",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "NotIn", "values": ["x"]}]}]),
                true,
                "NotIn",
            ),
            (
                json!([{"matchExpressions": [{"key": "kernel", "operator": "NotIn", "values": ["x"]}]}]),
                true,
                "NotIn, label absent",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "NotIn", "values": []}]}]),
                false,
                "NotIn without values is malformed",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "Exists"}]}]),
                true,
                "Exists",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "Exists", "values": ["bar"]}]}]),
                false,
                "Exists with values is malformed",
            ),
            (
                json!([{"matchExpressions": [{"key": "kernel", "operator": "DoesNotExist"}]}]),
                true,
                "DoesNotExist",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "DoesNotExist"}]}]),
                false,
                "DoesNotExist, present",
            ),
            (
                json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]),
                true,
                "Gt",
            ),
            (
                json!([{"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]}]),
                false,
                "Lt",
            ),
            (
                json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4", "100"]}]}]),
                false,
                "Gt needs exactly one value",
            ),
            (
                json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["four"]}]}]),
                false,
                "Gt needs an integer",
            ),
            (
                json!([{"matchExpressions": [{"key": "zone", "operator": "Gt", "values": ["4"]}]}]),
                false,
                "Gt on a non-numeric label",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "Like", "values": ["bar"]}]}]),
                false,
                "unknown operator",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "In", "values": ["bar"]}, {"key": "zone", "operator": "In", "values": ["b"]}]}]),
                false,
                "expressions are ANDed",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "NotIn", "values": ["bar"]}, {"key": "zone", "operator": "Nope"}]}]),
                false,
                "a malformed requirement after a mismatch",
            ),
            (
                json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z"]}]}, {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]),
                true,
                "terms are ORed",
            ),
            (
                json!([{"matchExpressions": [{"key": "zone", "operator": "Bad"}]}, {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]),
                true,
                "a malformed term does not spoil the others",
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["host_1"]}]}]),
                true,
                "matchFields In",
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["host_2"]}]}]),
                false,
                "matchFields In, other node",
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["host_2"]}]}]),
                true,
                "matchFields NotIn",
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["host_1", "host_2"]}]}]),
                false,
                "matchFields needs exactly one value",
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "Exists"}]}]),
                false,
                "matchFields allows only In and NotIn",
            ),
            (
                json!([{"matchFields": [{"key": "spec.other", "operator": "NotIn", "values": ["x"]}]}]),
                true,
                "another field reads as empty",
            ),
            (
                json!([{"matchFields": [{"key": "spec.other", "operator": "In", "values": ["x"]}]}]),
                false,
                "another field reads as empty, In",
            ),
            (
                json!([{"matchExpressions": [{"key": "foo", "operator": "In", "values": ["bar"]}], "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["host_2"]}]}]),
                false,
                "labels and fields are ANDed",
            ),
        ];
        for (selector, want, case) in table {
            assert_eq!(node_matches(&terms(selector), &n), want, "{case}");
        }
    }

    #[test]
    fn required_affinity_needs_node_selector_and_affinity() {
        let n = node("n1", json!({"disk": "ssd", "zone": "a"}));
        let view = NodeView::of(&n);
        let spec = |v: Value| -> PodSpec { serde_json::from_value(v).unwrap() };
        let with = |v: Value| pod_fits_node_affinity(&spec(v), view);
        assert!(with(json!({"containers": []})));
        assert!(with(
            json!({"containers": [], "nodeSelector": {"disk": "ssd"}})
        ));
        assert!(!with(
            json!({"containers": [], "nodeSelector": {"disk": "hdd"}})
        ));
        assert!(
            !with(json!({"containers": [], "nodeSelector": {"gpu": ""}})),
            "an absent label is not the empty value"
        );
        let affinity = |zone: &str| json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": [zone]}]}]}}});
        assert!(with(
            json!({"containers": [], "nodeSelector": {"disk": "ssd"}, "affinity": affinity("a")})
        ));
        assert!(!with(
            json!({"containers": [], "nodeSelector": {"disk": "ssd"}, "affinity": affinity("b")})
        ));
        assert!(!with(
            json!({"containers": [], "nodeSelector": {"disk": "hdd"}, "affinity": affinity("a")})
        ));
        let no_terms = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}});
        assert!(
            !with(json!({"containers": [], "affinity": no_terms})),
            "required affinity without terms matches nothing"
        );
    }
}
