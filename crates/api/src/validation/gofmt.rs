//! Go's `%#v` renderings of the few values upstream prints in validation messages (label
//! maps, label selectors, string slices), so `Invalid value: ...` reads as it does upstream.

use serde_json::{Map, Value};

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn quoted(s: &str) -> String {
    // Go's %q and JSON agree for the printable ASCII found in labels.
    Value::String(s.to_string()).to_string()
}

/// `map[string]string{"a":"b", "c":"d"}` (keys sorted, as Go prints maps).
pub fn string_map(map: Option<&Map<String, Value>>) -> String {
    let Some(map) = map else {
        return "map[string]string(nil)".to_string();
    };
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let parts: Vec<String> = keys
        .iter()
        .map(|k| format!("{}:{}", quoted(k), quoted(&text(&map[k.as_str()]))))
        .collect();
    format!("map[string]string{{{}}}", parts.join(", "))
}

/// `[]string{"a", "b"}`.
pub fn string_slice(values: &[String]) -> String {
    let parts: Vec<String> = values.iter().map(|v| quoted(v)).collect();
    format!("[]string{{{}}}", parts.join(", "))
}

/// `v1.LabelSelector{MatchLabels:map[...]{...}, MatchExpressions:[]v1.LabelSelectorRequirement{...}}`.
pub fn label_selector(sel: &Value) -> String {
    if sel.is_null() {
        return "null".to_string();
    }
    let labels = string_map(sel.get("matchLabels").and_then(Value::as_object));
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|e| {
                    let values: Vec<String> = e
                        .get("values")
                        .and_then(Value::as_array)
                        .map(|vs| vs.iter().map(text).collect())
                        .unwrap_or_default();
                    let values = if e.get("values").is_none() {
                        "[]string(nil)".to_string()
                    } else {
                        string_slice(&values)
                    };
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        quoted(&text(&e["key"])),
                        quoted(&text(&e["operator"])),
                        values
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", parts.join(", "))
        }
    };
    format!("v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{exprs}}}")
}

/// How upstream prints a scalar bad value: strings quoted, numbers and bools bare, and
/// anything else as compact JSON (upstream would print a Go struct).
pub fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_like_go() {
        let m = json!({"b": "2", "a": "1"});
        assert_eq!(
            string_map(m.as_object()),
            r#"map[string]string{"a":"1", "b":"2"}"#
        );
        assert_eq!(
            label_selector(&json!({"matchLabels": {"app": "web"}})),
            r#"v1.LabelSelector{MatchLabels:map[string]string{"app":"web"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"#
        );
        assert_eq!(string_slice(&["x".into()]), r#"[]string{"x"}"#);
    }
}
