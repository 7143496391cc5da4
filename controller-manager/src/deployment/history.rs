//! Revisions and what identifies a pod template: the revision annotation `kubectl rollout
//! history/undo` reads, the pod-template-hash naming each ReplicaSet, the Deployment
//! annotations copied onto its ReplicaSets, and the clean-up of old ReplicaSets beyond
//! revisionHistoryLimit.

use super::*;

pub(super) fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// A template with the hash label taken out, as JSON, for comparing templates.
pub(super) fn template_ignoring_hash(template: &PodTemplateSpec) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    let mut v = serde_json::to_value(&t).unwrap_or(Value::Null);
    // An empty label map and none are the same template.
    if v["metadata"]["labels"]
        .as_object()
        .is_some_and(|m| m.is_empty())
    {
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.remove("labels");
        }
    }
    v
}

/// The pod-template-hash: FNV-1a (32 bit) of the template and the collision count,
/// spelled with upstream's vowel-free alphabet so it never forms words.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(template_ignoring_hash(template).to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

pub(super) fn copy_annotations(d: &Deployment, into: &mut BTreeMap<String, String>) {
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !NOT_COPIED.contains(&k.as_str()) {
            into.insert(k.clone(), v.clone());
        }
    }
}

impl DeploymentController {
    /// Deletes old, empty ReplicaSets beyond revisionHistoryLimit, lowest revision first.
    pub(super) async fn cleanup(&self, d: &Deployment, sets: &Sets) -> Result<(), ControllerError> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = sets
            .old
            .iter()
            .filter(|rs| !is_terminating(&rs.metadata))
            .collect();
        let excess = i64::try_from(cleanable.len()).unwrap_or(0) - i64::from(limit);
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| {
            (
                revision_of(&rs.metadata),
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let api = self.rs_api(&d.namespace().unwrap_or_default());
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(excess).unwrap_or(0))
        {
            let settled =
                rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation;
            if replicas_of(rs) != 0 || status_replicas(rs) != 0 || !settled {
                continue;
            }
            match api.delete(&rs.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_ignores_its_own_label_and_changes_with_the_template() {
        let mut t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let h = pod_template_hash(&t, None);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), h.clone());
        assert_eq!(pod_template_hash(&labelled, None), h);
        assert_ne!(pod_template_hash(&t, Some(1)), h);
        t.metadata.as_mut().unwrap().annotations =
            Some([("restartedAt".to_string(), "now".to_string())].into());
        assert_ne!(pod_template_hash(&t, None), h);
    }
}
