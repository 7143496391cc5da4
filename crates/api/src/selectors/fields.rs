//! Field selectors (`metadata.name=x,status.phase!=Running`) and the fields each kind can
//! be selected by, as upstream's per-kind field label conversion functions allow.

use std::fmt;

use serde_json::Value;

use super::SelectorError;
use crate::registry::REGISTRY;

/// One term of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub value: String,
    pub negated: bool,
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in split_unescaped(text, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let Some((field, op, value)) = split_term(&part) else {
                return Err(SelectorError::Syntax(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let value = unescape(value).map_err(SelectorError::Syntax)?;
            terms.push(FieldTerm {
                field: field.trim().to_string(),
                value: value.trim().to_string(),
                negated: op == "!=",
            });
        }
        Ok(FieldSelector { terms })
    }

    /// `metadata.name=<name>`, as clients send when they get or watch one object.
    pub fn name_equals(name: &str) -> Self {
        FieldSelector {
            terms: vec![FieldTerm {
                field: "metadata.name".to_string(),
                value: name.to_string(),
                negated: false,
            }],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// The value this selector requires `field` to equal, if any (lets callers narrow
    /// a list to one name or namespace before filtering).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| !t.negated && t.field == field)
            .map(|t| t.value.as_str())
    }

    /// Fails with `UnsupportedField` if the selector uses a field `kind` does not support.
    pub fn check_supported(&self, kind: &str) -> Result<(), SelectorError> {
        let supported = supported_fields(kind);
        match self
            .terms
            .iter()
            .find(|t| !supported.contains(&t.field.as_str()))
        {
            Some(t) => Err(SelectorError::UnsupportedField(t.field.clone())),
            None => Ok(()),
        }
    }

    /// Whether the object whose selectable fields are `fields` (see [`selectable_fields`]) matches.
    pub fn matches(&self, fields: &[(&'static str, String)]) -> bool {
        self.terms.iter().all(|t| {
            // Upstream reads a missing field as the empty string.
            let have = fields
                .iter()
                .find(|(name, _)| *name == t.field)
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            (have == t.value) != t.negated
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| {
                let op = if t.negated { "!=" } else { "=" };
                format!("{}{}{}", t.field, op, t.value)
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            current.push('\\');
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    if escaped {
        current.push('\\');
    }
    parts.push(current);
    parts
}

/// Splits `lhs<op>rhs` at the first unescaped operator, preferring `!=` and `==` over `=`.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    // Walks characters, not bytes: selectors arrive URL-decoded and may hold any UTF-8.
    let mut chars = term.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '\\' {
            chars.next();
            continue;
        }
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], op, value));
            }
        }
    }
    None
}

fn unescape(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(e @ ('\\' | ',' | '=' | '!')) => out.push(e),
            Some(e) => {
                return Err(format!(
                    "invalid field selector: invalid escape sequence: \\{e}"
                ))
            }
            None => return Err("invalid field selector: unterminated escape sequence".to_string()),
        }
    }
    Ok(out)
}

fn is_namespaced(kind: &str) -> bool {
    REGISTRY
        .iter()
        .find(|r| r.kind == kind)
        .is_none_or(|r| r.namespaced)
}

/// The field labels upstream's conversion functions accept for `kind`.
pub fn supported_fields(kind: &str) -> Vec<&'static str> {
    let meta: &[&'static str] = if is_namespaced(kind) {
        &["metadata.name", "metadata.namespace"]
    } else {
        &["metadata.name"]
    };
    let specific: &[&'static str] = match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "Secret" => &["type"],
        "Service" => &["spec.clusterIP", "spec.type"],
        "ReplicaSet" | "ReplicationController" => &["status.replicas"],
        "Job" => &["status.successful"],
        _ => &[],
    };
    meta.iter().chain(specific).copied().collect()
}

fn text_at(obj: &Value, path: &[&str]) -> String {
    let mut cur = obj;
    for p in path {
        cur = &cur[*p];
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn bool_at(obj: &Value, path: &[&str]) -> String {
    let mut cur = obj;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_bool().unwrap_or(false).to_string()
}

fn int_at(obj: &Value, path: &[&str]) -> String {
    let mut cur = obj;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_i64().unwrap_or(0).to_string()
}

/// The values of every field selectable on `kind`, extracted once per object so that
/// caches can filter without re-reading the JSON.
pub fn selectable_fields(kind: &str, obj: &Value) -> Vec<(&'static str, String)> {
    let mut out = vec![("metadata.name", text_at(obj, &["metadata", "name"]))];
    if is_namespaced(kind) {
        out.push((
            "metadata.namespace",
            text_at(obj, &["metadata", "namespace"]),
        ));
    }
    match kind {
        "Pod" => {
            let ips: Vec<String> = obj["status"]["podIPs"]
                .as_array()
                .map(|a| a.iter().map(|ip| text_at(ip, &["ip"])).collect())
                .unwrap_or_default();
            let pod_ip = ips
                .first()
                .cloned()
                .unwrap_or_else(|| text_at(obj, &["status", "podIP"]));
            out.extend([
                ("spec.nodeName", text_at(obj, &["spec", "nodeName"])),
                (
                    "spec.restartPolicy",
                    text_at(obj, &["spec", "restartPolicy"]),
                ),
                (
                    "spec.schedulerName",
                    text_at(obj, &["spec", "schedulerName"]),
                ),
                (
                    "spec.serviceAccountName",
                    text_at(obj, &["spec", "serviceAccountName"]),
                ),
                ("spec.hostNetwork", bool_at(obj, &["spec", "hostNetwork"])),
                ("status.phase", text_at(obj, &["status", "phase"])),
                ("status.podIP", pod_ip),
                ("status.podIPs", ips.join(",")),
                (
                    "status.nominatedNodeName",
                    text_at(obj, &["status", "nominatedNodeName"]),
                ),
            ]);
        }
        "Event" => {
            let io = &obj["involvedObject"];
            out.extend([
                ("involvedObject.kind", text_at(io, &["kind"])),
                ("involvedObject.namespace", text_at(io, &["namespace"])),
                ("involvedObject.name", text_at(io, &["name"])),
                ("involvedObject.uid", text_at(io, &["uid"])),
                ("involvedObject.apiVersion", text_at(io, &["apiVersion"])),
                (
                    "involvedObject.resourceVersion",
                    text_at(io, &["resourceVersion"]),
                ),
                ("involvedObject.fieldPath", text_at(io, &["fieldPath"])),
                ("reason", text_at(obj, &["reason"])),
                ("reportingComponent", text_at(obj, &["reportingComponent"])),
                ("source", text_at(obj, &["source", "component"])),
                ("type", text_at(obj, &["type"])),
            ]);
        }
        "Node" => out.push((
            "spec.unschedulable",
            bool_at(obj, &["spec", "unschedulable"]),
        )),
        "Namespace" => out.push(("status.phase", text_at(obj, &["status", "phase"]))),
        "Secret" => out.push(("type", text_at(obj, &["type"]))),
        "Service" => out.extend([
            ("spec.clusterIP", text_at(obj, &["spec", "clusterIP"])),
            ("spec.type", text_at(obj, &["spec", "type"])),
        ]),
        "ReplicaSet" => out.push(("status.replicas", int_at(obj, &["status", "replicas"]))),
        "Job" => out.push(("status.successful", int_at(obj, &["status", "succeeded"]))),
        _ => {}
    }
    out
}
