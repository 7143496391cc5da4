use super::*;
use serde_json::json;
use std::collections::BTreeMap;

fn labels(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn equality_and_inequality() {
    let l = labels(json!({"app": "web", "tier": "front"}));
    assert!(LabelSelector::parse("app=web").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("app==web").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("app=db").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("app!=db").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("app!=web").unwrap().matches(Some(&l)));
    // `!=` matches objects without the label at all.
    assert!(LabelSelector::parse("env!=prod").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("env!=prod")
        .unwrap()
        .matches(None::<&Map<String, Value>>));
}

#[test]
fn set_operators_and_existence() {
    let l = labels(json!({"app": "web", "tier": "front"}));
    let sel = LabelSelector::parse(" app in (web, db) , tier notin (back) ").unwrap();
    assert!(sel.matches(Some(&l)));
    assert!(!LabelSelector::parse("app in (db)")
        .unwrap()
        .matches(Some(&l)));
    assert!(LabelSelector::parse("env notin (prod)")
        .unwrap()
        .matches(Some(&l)));
    assert!(LabelSelector::parse("app").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("env").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("!env").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("!app").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("app,!tier").unwrap().matches(Some(&l)));
}

#[test]
fn numeric_comparisons() {
    let l = labels(json!({"gen": "5"}));
    assert!(LabelSelector::parse("gen>3").unwrap().matches(Some(&l)));
    assert!(!LabelSelector::parse("gen<3").unwrap().matches(Some(&l)));
    assert!(LabelSelector::parse("gen>x").is_err());
}

#[test]
fn empty_selector_matches_everything() {
    let s = LabelSelector::parse("").unwrap();
    assert!(s.is_empty());
    assert!(s.matches(None::<&Map<String, Value>>));
    assert!(!LabelSelector::parse("a=b").unwrap().is_empty());
}

#[test]
fn empty_value_is_allowed() {
    let s = LabelSelector::parse("a=").unwrap();
    assert!(s.matches(Some(&labels(json!({"a": ""})))));
    assert!(!s.matches(Some(&labels(json!({"a": "x"})))));
}

#[test]
fn parse_errors_are_upstream_like() {
    let e = LabelSelector::parse("a b").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
    );
    let e = LabelSelector::parse("a in b").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unable to parse requirement: found 'b', expected: '('"
    );
    let e = LabelSelector::parse("a=b=c").unwrap_err();
    assert_eq!(e.to_string(), "found '=', expected: ',' or 'end of string'");
    let e = LabelSelector::parse("=b").unwrap_err();
    assert_eq!(
        e.to_string(),
        "found '=', expected: !, identifier, or 'end of string'"
    );
    let e = LabelSelector::parse("a=b c").unwrap_err();
    assert!(matches!(e, SelectorError::Syntax(_)));
    let e = LabelSelector::parse("a=-x").unwrap_err();
    assert!(
        e.to_string().starts_with(
            "unable to parse requirement: values[0][a]: Invalid value: \"-x\": a valid label must be an empty string"
        ),
        "{e}"
    );
    let e = LabelSelector::parse("-a=x").unwrap_err();
    assert!(
        e.to_string()
            .contains("key: Invalid value: \"-a\": name part must consist of alphanumeric"),
        "{e}"
    );
}

#[test]
fn display_is_sorted_and_canonical() {
    let s = LabelSelector::parse("tier in (b,a),app=web,!x").unwrap();
    assert_eq!(s.to_string(), "app=web,tier in (a,b),!x");
}

#[test]
fn from_json_handles_labels_and_expressions() {
    let sel = LabelSelector::from_json(&json!({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "mid"]},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "app", "operator": "Exists"}
        ]
    }))
    .unwrap();
    assert!(sel.matches(Some(&labels(json!({"app": "web", "tier": "mid"})))));
    assert!(!sel.matches(Some(&labels(json!({"app": "web", "tier": "back"})))));
    assert!(!sel.matches(Some(&labels(
        json!({"app": "web", "tier": "mid", "legacy": "1"})
    ))));
    assert!(!sel.matches(Some(&labels(
        json!({"app": "web", "tier": "mid", "env": "prod"})
    ))));
    assert!(LabelSelector::from_json(&json!({}))
        .unwrap()
        .matches(None::<&Map<String, Value>>));
    assert!(!LabelSelector::from_json(&Value::Null)
        .unwrap()
        .matches(None::<&Map<String, Value>>));
    let bad =
        LabelSelector::from_json(&json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}));
    assert_eq!(
        bad.unwrap_err().to_string(),
        "\"Foo\" is not a valid label selector operator"
    );
    assert!(LabelSelector::from_json(
        &json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})
    )
    .is_err());
}

#[test]
fn field_selectors() {
    let pod = json!({
        "metadata": {"name": "p1", "namespace": "default"},
        "spec": {"nodeName": "n1", "hostNetwork": true},
        "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}]}
    });
    let fields = selectable_fields("Pod", &pod);
    let sel = FieldSelector::parse("metadata.name=p1,spec.nodeName==n1").unwrap();
    assert!(sel.matches(&fields));
    assert!(FieldSelector::parse("status.phase!=Pending")
        .unwrap()
        .matches(&fields));
    assert!(!FieldSelector::parse("status.phase!=Running")
        .unwrap()
        .matches(&fields));
    assert!(FieldSelector::parse("spec.hostNetwork=true")
        .unwrap()
        .matches(&fields));
    assert!(FieldSelector::parse("status.podIP=10.0.0.5")
        .unwrap()
        .matches(&fields));
    // A missing field reads as "".
    assert!(FieldSelector::parse("status.nominatedNodeName=")
        .unwrap()
        .matches(&fields));
    assert_eq!(sel.required_value("metadata.name"), Some("p1"));
    assert!(FieldSelector::parse("").unwrap().is_empty());
    assert_eq!(
        FieldSelector::parse("foo").unwrap_err().to_string(),
        "invalid selector: 'foo'; can't understand 'foo'"
    );
    let escaped = FieldSelector::parse(r"metadata.name=a\,b").unwrap();
    assert_eq!(escaped.terms()[0].value, "a,b");
}

#[test]
fn multi_byte_text_in_field_selectors_is_parsed_not_sliced() {
    let sel = FieldSelector::parse("é=x").unwrap();
    assert_eq!(sel.terms()[0].field, "é");
    assert_eq!(sel.terms()[0].value, "x");
    let sel = FieldSelector::parse("metadata.name!=日本").unwrap();
    assert!(sel.terms()[0].negated);
    assert_eq!(sel.terms()[0].value, "日本");
    // An escape followed by a multi-byte character, and one at the very end.
    for text in ["a\\é=x", "é\\", "\\é", "é", "ü!é==ö", "=é", "😀=😀,é!=ß"] {
        let _ = FieldSelector::parse(text);
    }
    assert!(FieldSelector::parse("é").is_err());
    assert_eq!(
        FieldSelector::parse("a\\é=x").unwrap().terms()[0].value,
        "x"
    );
}

#[test]
fn supported_fields_per_kind() {
    let sel = FieldSelector::parse("spec.nodeName=x").unwrap();
    assert!(sel.check_supported("Pod").is_ok());
    assert_eq!(
        sel.check_supported("Deployment").unwrap_err().to_string(),
        "field label not supported: spec.nodeName"
    );
    let ev =
        FieldSelector::parse("involvedObject.name=x,involvedObject.uid=u,reason=Started").unwrap();
    assert!(ev.check_supported("Event").is_ok());
    assert!(FieldSelector::parse("metadata.namespace=x")
        .unwrap()
        .check_supported("Node")
        .is_err());
    assert!(FieldSelector::parse("spec.unschedulable=true")
        .unwrap()
        .check_supported("Node")
        .is_ok());
    assert!(FieldSelector::parse("type=Opaque")
        .unwrap()
        .check_supported("Secret")
        .is_ok());
    let rs = json!({"metadata": {"name": "r"}, "status": {"replicas": 3}});
    assert!(FieldSelector::parse("status.replicas=3")
        .unwrap()
        .matches(&selectable_fields("ReplicaSet", &rs)));
    let ev =
        json!({"metadata": {"name": "e"}, "source": {"component": "kubelet"}, "type": "Normal"});
    let f = selectable_fields("Event", &ev);
    assert!(FieldSelector::parse("source=kubelet,type=Normal")
        .unwrap()
        .matches(&f));
}

/// The typed `metav1.LabelSelector` matcher and parsed query selectors agree: cases of
/// upstream's `TestSelectorMatches` and `TestLabelSelectorAsSelector`, each written both ways.
#[test]
fn typed_label_selectors_match_like_parsed_ones() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as Meta;
    let objects = [
        json!({}),
        json!({"foo": "bar"}),
        json!({"foo": "bar", "baz": "blah"}),
        json!({"foo": "baz"}),
        json!({"baz": "blah", "x": "1"}),
    ];
    let table = [
        ("", json!({})),
        ("foo=bar", json!({"matchLabels": {"foo": "bar"}})),
        (
            "foo=bar,baz=blah",
            json!({"matchLabels": {"foo": "bar", "baz": "blah"}}),
        ),
        (
            "foo in (bar,baz)",
            json!({"matchExpressions": [{"key": "foo", "operator": "In", "values": ["bar", "baz"]}]}),
        ),
        (
            "foo notin (bar)",
            json!({"matchExpressions": [{"key": "foo", "operator": "NotIn", "values": ["bar"]}]}),
        ),
        (
            "foo",
            json!({"matchExpressions": [{"key": "foo", "operator": "Exists"}]}),
        ),
        (
            "!foo",
            json!({"matchExpressions": [{"key": "foo", "operator": "DoesNotExist"}]}),
        ),
        (
            "baz=blah,foo notin (baz)",
            json!({"matchLabels": {"baz": "blah"}, "matchExpressions": [{"key": "foo", "operator": "NotIn", "values": ["baz"]}]}),
        ),
    ];
    for (query, typed) in table {
        let parsed = LabelSelector::parse(query).unwrap();
        let from_json = LabelSelector::from_json(&typed).unwrap();
        let meta: Meta = serde_json::from_value(typed.clone()).unwrap();
        for object in &objects {
            let json_labels = labels(object.clone());
            let typed_labels: BTreeMap<String, String> =
                serde_json::from_value(object.clone()).unwrap();
            let want = parsed.matches(Some(&json_labels));
            assert_eq!(
                from_json.matches(Some(&json_labels)),
                want,
                "{typed} on {object}"
            );
            assert_eq!(
                label_selector_matches(Some(&meta), &typed_labels),
                want,
                "{typed} on {object}"
            );
            assert_eq!(
                label_selector_matches(Some(&meta), &json_labels),
                want,
                "{typed} on {object}"
            );
        }
    }
    // A null selector selects nothing, an empty one everything.
    let empty = BTreeMap::new();
    assert!(!label_selector_matches(None, &empty));
    assert!(label_selector_matches(Some(&Meta::default()), &empty));
    // Malformed expressions select nothing (upstream's conversion fails), even with a
    // vacuous operator such as NotIn.
    for bad in [
        json!({"matchExpressions": [{"key": "foo", "operator": "In", "values": []}]}),
        json!({"matchExpressions": [{"key": "foo", "operator": "NotIn"}]}),
        json!({"matchExpressions": [{"key": "foo", "operator": "Exists", "values": ["x"]}]}),
        json!({"matchExpressions": [{"key": "foo", "operator": "Gt", "values": ["1"]}]}),
        json!({"matchExpressions": [{"key": "foo", "operator": "Bogus"}]}),
    ] {
        let meta: Meta = serde_json::from_value(bad.clone()).unwrap();
        assert!(!label_selector_matches(Some(&meta), &empty), "{bad}");
        assert!(LabelSelector::from_json(&bad).is_err(), "{bad}");
    }
}

#[test]
fn operators_evaluate_like_upstream_requirements() {
    let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(Operator::GreaterThan.evaluate(Some("2"), &v(&["1"])));
    assert!(!Operator::GreaterThan.evaluate(Some("1"), &v(&["1"])));
    assert!(Operator::LessThan.evaluate(Some("-1"), &v(&["0"])));
    assert!(!Operator::GreaterThan.evaluate(Some("a"), &v(&["1"])));
    assert!(!Operator::GreaterThan.evaluate(None, &v(&["1"])));
    assert!(
        !Operator::GreaterThan.evaluate(Some("5"), &v(&["1", "2"])),
        "exactly one value"
    );
    assert!(Operator::NotIn.evaluate(None, &v(&["x"])));
    assert!(!Operator::In.evaluate(None, &v(&["x"])));
    assert!(Operator::NotEquals.evaluate(Some("y"), &v(&["x"])));
}
