//! The Deployment's status: replica counts summed over its ReplicaSets, the Available
//! condition, and the Progressing condition with its deadline (upstream syncRolloutStatus).

use super::*;

pub(super) fn condition<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// Sets a condition, keeping lastTransitionTime when the status does not change (and the
/// whole condition when nothing but the times would change).
pub(super) fn set_condition(
    status: &mut DeploymentStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: String,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let existing = conditions.iter().position(|c| c.type_ == type_);
    if let Some(i) = existing {
        let c = &conditions[i];
        if c.status == value
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message.as_str())
        {
            return;
        }
    }
    let transition = existing
        .and_then(|i| conditions.get(i))
        .filter(|c| c.status == value)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    let new = DeploymentCondition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: Some(transition),
        last_update_time: Some(now()),
    };
    match existing {
        Some(i) => conditions[i] = new,
        None => conditions.push(new),
    }
}

pub(super) fn deployment_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = desired(d);
    status.updated_replicas == Some(want)
        && status.replicas == Some(want)
        && status.available_replicas == Some(want)
        && status.observed_generation >= d.metadata.generation
}

pub(super) fn deployment_progressing(new: &DeploymentStatus, old: &DeploymentStatus) -> bool {
    let old_replicas =
        |s: &DeploymentStatus| s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || old_replicas(new) < old_replicas(old)
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

impl DeploymentController {
    pub(super) fn complete(&self, d: &Deployment, sets: &Sets) -> bool {
        let status = self.calculate_status(d, sets);
        deployment_complete(d, &status)
    }

    pub(super) fn calculate_status(&self, d: &Deployment, sets: &Sets) -> DeploymentStatus {
        let all = sets.all();
        let available: i32 = all.iter().map(|rs| available_of(rs)).sum();
        let total_spec: i32 = all.iter().map(|rs| replicas_of(rs)).sum();
        let old = d.status.clone().unwrap_or_default();
        let mut status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(all.iter().map(|rs| status_replicas(rs)).sum()),
            updated_replicas: Some(sets.new.as_ref().map(status_replicas).unwrap_or(0)),
            ready_replicas: Some(
                all.iter()
                    .map(|rs| {
                        rs.status
                            .as_ref()
                            .and_then(|s| s.ready_replicas)
                            .unwrap_or(0)
                    })
                    .sum(),
            ),
            available_replicas: Some(available),
            unavailable_replicas: Some((total_spec - available).max(0)),
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
        };
        let (_, unavailable) = max_surge_and_unavailable(d);
        if available >= desired(d) - unavailable {
            set_condition(
                &mut status,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            );
        } else {
            set_condition(
                &mut status,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            );
        }
        status
    }

    /// Computes and writes the status with the Progressing condition (upstream
    /// syncRolloutStatus); requeues for the progress deadline while a rollout is under way.
    pub(super) async fn sync_status(
        &self,
        d: &Deployment,
        sets: &Sets,
        pending: Option<(&'static str, String)>,
    ) -> Result<Action, ControllerError> {
        let mut status = self.calculate_status(d, sets);
        let old = d.status.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let new_name = sets
            .new
            .as_ref()
            .map(|rs| rs.name_any())
            .unwrap_or_default();
        let paused = spec.paused == Some(true);
        let current_reason = condition(&old, "Progressing").and_then(|c| c.reason.clone());
        let mut requeue = None;
        if paused {
            if current_reason.as_deref() != Some("DeploymentPaused") {
                set_condition(
                    &mut status,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                );
            }
        } else if let Some(deadline) = spec.progress_deadline_seconds.filter(|s| *s != i32::MAX) {
            if current_reason.as_deref() == Some("DeploymentPaused") {
                set_condition(
                    &mut status,
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                );
            }
            if let Some((reason, message)) = pending {
                set_condition(&mut status, "Progressing", "True", reason, message);
            }
            if deployment_complete(d, &status) {
                set_condition(
                    &mut status,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                );
            } else if deployment_progressing(&status, &old) {
                let message = format!("ReplicaSet \"{new_name}\" is progressing.");
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                let transition = conditions
                    .iter()
                    .find(|c| c.type_ == "Progressing" && c.status == "True")
                    .and_then(|c| c.last_transition_time.clone())
                    .unwrap_or_else(now);
                conditions.retain(|c| c.type_ != "Progressing");
                conditions.push(DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "True".into(),
                    reason: Some("ReplicaSetUpdated".into()),
                    message: Some(message),
                    last_transition_time: Some(transition),
                    last_update_time: Some(now()),
                });
            } else if let Some(cond) = condition(&status, "Progressing").cloned() {
                let reason = cond.reason.as_deref().unwrap_or_default();
                if reason != "NewReplicaSetAvailable" && reason != "ProgressDeadlineExceeded" {
                    let since = cond
                        .last_update_time
                        .as_ref()
                        .map(|t| t.0.as_second())
                        .unwrap_or_else(|| Timestamp::now().as_second());
                    let remaining = since + i64::from(deadline) - Timestamp::now().as_second();
                    if remaining <= 0 {
                        set_condition(
                            &mut status,
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        );
                        self.recorder.record(
                            object_reference(d),
                            EventType::Warning,
                            "ProgressDeadlineExceeded",
                            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        );
                    } else {
                        requeue = Some(Duration::from_secs(
                            u64::try_from(remaining).unwrap_or(1) + 1,
                        ));
                    }
                }
            }
        }
        patch_status_if_changed(
            &self.deployments_api(&d.namespace().unwrap_or_default()),
            &d.name_any(),
            &old,
            &status,
            &["conditions"],
        )
        .await?;
        Ok(requeue.map(Action::RequeueAfter).unwrap_or_default())
    }
}

/// Upstream's TestDeploymentComplete and TestDeploymentProgressing tables.
#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;

    fn status(replicas: i32, updated: i32, ready: i32, available: i32) -> DeploymentStatus {
        DeploymentStatus {
            replicas: Some(replicas),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            ..Default::default()
        }
    }

    #[test]
    fn complete_means_every_replica_updated_and_available() {
        // (desired, current, updated, available) -> complete
        let cases = [
            ((5, 5, 5, 4), false),
            ((5, 5, 5, 3), false),
            ((5, 5, 5, 5), true),
            ((5, 5, 4, 5), false),
            ((1, 2, 1, 1), false),
            ((1, 1, 1, 0), false),
        ];
        for ((desired, current, updated, available), expected) in cases {
            let d = Deployment {
                spec: Some(DeploymentSpec {
                    replicas: Some(desired),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let s = status(current, updated, 0, available);
            assert_eq!(
                deployment_complete(&d, &s),
                expected,
                "{desired} {current} {updated} {available}"
            );
        }
    }

    #[test]
    fn progressing_means_more_new_ready_or_available_or_fewer_old() {
        // old (current, updated, ready, available), new (...) -> progressing
        let cases = [
            ((10, 4, 4, 4), (10, 6, 4, 4), true),
            ((10, 4, 4, 4), (10, 4, 4, 4), false),
            ((10, 4, 6, 6), (8, 4, 6, 6), true),
            ((10, 7, 3, 3), (10, 6, 3, 3), false),
            ((10, 4, 7, 7), (8, 8, 5, 5), true),
            ((10, 10, 9, 8), (10, 10, 10, 8), true),
            ((10, 10, 10, 9), (10, 10, 10, 10), true),
        ];
        for (old, new, expected) in cases {
            let old_status = status(old.0, old.1, old.2, old.3);
            let new_status = status(new.0, new.1, new.2, new.3);
            assert_eq!(
                deployment_progressing(&new_status, &old_status),
                expected,
                "{old:?} -> {new:?}"
            );
        }
    }
}
