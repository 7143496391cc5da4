//! Container environment: image env, `envFrom`, `env` with `valueFrom`, and upstream's
//! `$(VAR)` expansion (also used for command and args).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

/// ConfigMaps and Secrets a pod refers to, fetched before building (None: does not exist).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
}

impl Sources {
    fn config_map(&self, name: &str) -> Option<&ConfigMap> {
        self.config_maps.get(name).and_then(Option::as_ref)
    }

    fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.get(name).and_then(Option::as_ref)
    }
}

/// What the pod's runtime facts are (filled in by the kubelet, read by fieldRef).
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

/// The names of the ConfigMaps and Secrets a container's environment reads.
pub fn referenced_objects(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            config_maps.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(source) = &var.value_from {
            if let Some(r) = &source.config_map_key_ref {
                config_maps.push(r.name.clone());
            }
            if let Some(r) = &source.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

fn config_map_value(cm: &ConfigMap, key: &str) -> Option<String> {
    if let Some(v) = cm.data.as_ref().and_then(|d| d.get(key)) {
        return Some(v.clone());
    }
    cm.binary_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// The value of a `fieldRef` path, as upstream's downward API resolves it.
pub fn field_value(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let map_entry = |map: Option<&BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = map_entry(meta.labels.as_ref(), "metadata.labels['") {
        return Ok(v);
    }
    if let Some(v) = map_entry(meta.annotations.as_ref(), "metadata.annotations['") {
        return Ok(v);
    }
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| facts.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        other => return Err(format!("unsupported fieldRef path {other:?}")),
    })
}

/// `key="value"` lines, sorted by key (the downward API's map format).
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    })
    .unwrap_or_default()
}

/// The container's own environment (without the image's), in order, `$(VAR)` expanded.
/// An error is the message of upstream's CreateContainerConfigError.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    sources: &Sources,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(existing) = env.iter_mut().find(|(n, _)| *n == name) {
            existing.1 = value;
        } else {
            env.push((name, value));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_map(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut env, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret(&r.name) {
                Some(secret) => {
                    for (k, v) in secret.data.iter().flatten() {
                        set(
                            &mut env,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            if let Some(r) = &source.config_map_key_ref {
                let optional = r.optional == Some(true);
                match sources.config_map(&r.name) {
                    None if optional => continue,
                    None => return Err(format!("configmap {:?} not found", r.name)),
                    Some(cm) => match config_map_value(cm, &r.key) {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {namespace}/{}",
                                r.key, r.name
                            ))
                        }
                    },
                }
            } else if let Some(r) = &source.secret_key_ref {
                let optional = r.optional == Some(true);
                match sources.secret(&r.name) {
                    None if optional => continue,
                    None => return Err(format!("secret {:?} not found", r.name)),
                    Some(secret) => match secret_value(secret, &r.key) {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                r.key, r.name
                            ))
                        }
                    },
                }
            } else if let Some(r) = &source.field_ref {
                field_value(pod, facts, &r.field_path)?
            } else {
                String::new()
            }
        } else {
            let defined: BTreeMap<&str, &str> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(var.value.as_deref().unwrap_or(""), |name| {
                defined.get(name).map(|v| v.to_string())
            })
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// Upstream's `$(VAR)` expansion: a defined `$(VAR)` is replaced, an undefined one is left
/// as written, `$$` is an escaped `$`, and any other `$` is literal.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) => {
                    let name = &tail[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("1".into()),
            "B" => Some("two".into()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_upstream_rules() {
        assert_eq!(expand("$(A)-$(B)", lookup), "1-two");
        assert_eq!(expand("$(C)", lookup), "$(C)");
        assert_eq!(expand("$$(A)", lookup), "$(A)");
        assert_eq!(expand("$$", lookup), "$");
        assert_eq!(expand("a$b", lookup), "a$b");
        assert_eq!(expand("trailing $", lookup), "trailing $");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("ünï$(A)çode", lookup), "ünï1çode");
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns1", "uid": "u-1", "labels": {"app": "x"}},
            "spec": {"nodeName": "node-a", "containers": containers}
        }))
        .unwrap()
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "cfg".into(),
            Some(
                serde_json::from_value(
                    json!({"metadata": {"name": "cfg"}, "data": {"color": "blue", "size": "L"}}),
                )
                .unwrap(),
            ),
        );
        let mut secret: Secret =
            serde_json::from_value(json!({"metadata": {"name": "creds"}})).unwrap();
        secret.data = Some([("password".to_string(), ByteString(b"hunter2".to_vec()))].into());
        s.secrets.insert("creds".into(), Some(secret));
        s.config_maps.insert("gone".into(), None);
        s
    }

    #[test]
    fn env_resolves_sources_fields_and_expansion_in_order() {
        let p = pod(json!([{
            "name": "c", "image": "busybox",
            "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "color"}}},
                {"name": "MSG", "value": "$(POD) in $(NS) is $(COLOR), $(LATER) $$(POD)"},
                {"name": "LATER", "value": "late"}
            ]
        }]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let facts = PodFacts {
            pod_ip: "10.1.0.5".into(),
            host_ip: "127.0.0.1".into(),
            node_name: "node-a".into(),
        };
        let env: BTreeMap<_, _> = container_env(&p, c, &facts, &sources())
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["CFG_color"], "blue");
        assert_eq!(env["CFG_size"], "L");
        assert_eq!(env["POD"], "web");
        assert_eq!(env["NS"], "ns1");
        assert_eq!(env["IP"], "10.1.0.5");
        assert_eq!(env["NODE"], "node-a");
        assert_eq!(env["APP"], "x");
        assert_eq!(env["PASS"], "hunter2");
        assert_eq!(env["MSG"], "web in ns1 is blue, $(LATER) $(POD)");
    }

    #[test]
    fn missing_sources_give_upstream_messages_unless_optional() {
        let facts = PodFacts::default();
        let cases = [
            (
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}),
                "configmap \"nope\" not found",
            ),
            (
                json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}),
                "secret \"nope\" not found",
            ),
            (
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}}),
                "couldn't find key k in ConfigMap ns1/cfg",
            ),
            (
                json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}),
                "couldn't find key k in Secret ns1/creds",
            ),
            (
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}),
                "configmap \"gone\" not found",
            ),
        ];
        for (var, message) in cases {
            let p = pod(json!([{"name": "c", "image": "i", "env": [var]}]));
            let c = &p.spec.as_ref().unwrap().containers[0];
            assert_eq!(
                container_env(&p, c, &facts, &sources()).unwrap_err(),
                message
            );
        }
        let p = pod(json!([{"name": "c", "image": "i", "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}
        ]}]));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(container_env(&p, c, &facts, &sources()).unwrap().is_empty());
    }
}
