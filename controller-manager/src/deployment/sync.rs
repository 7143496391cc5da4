//! What every sync shares whatever the strategy: finding (or creating) the new ReplicaSet
//! and keeping its annotations, resizing ReplicaSets, and scaling when only the size of
//! the Deployment changed (proportionally over every active ReplicaSet, as upstream).

use super::*;

/// A ReplicaSet as proportional scaling sees it.
#[derive(Clone, Debug, Default)]
pub struct ScalableSet {
    pub name: String,
    /// spec.replicas
    pub replicas: i32,
    /// The max-replicas annotation: the Deployment's size plus surge when this set was
    /// last scaled.
    pub max_replicas: Option<i32>,
    pub created: Option<Timestamp>,
}

/// Sizes of `sets` after the Deployment's size became `desired` with several sets active
/// (upstream scale for a rolling update): the replicas to add or remove, up to
/// `desired + max_surge` in all, are shared in proportion to each set's size against the
/// Deployment size its max-replicas annotation records; when adding the largest (then
/// newest) sets come first, when removing the largest (then oldest), and the first takes
/// what rounding left over. Inactive sets keep their size. `status_replicas` stands in for
/// a missing annotation.
pub fn proportional_sizes(
    desired: i32,
    max_surge: i32,
    status_replicas: i32,
    sets: &[ScalableSet],
) -> Vec<i32> {
    let mut sizes: Vec<i32> = sets.iter().map(|s| s.replicas).collect();
    let total: i32 = sets.iter().map(|s| s.replicas.max(0)).sum();
    let allowed = if desired > 0 { desired + max_surge } else { 0 };
    let to_add = allowed - total;
    if to_add == 0 {
        return sizes;
    }
    let mut order: Vec<usize> = (0..sets.len()).filter(|&i| sets[i].replicas > 0).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&sets[a], &sets[b]);
        let by_age = (a.created, &a.name).cmp(&(b.created, &b.name));
        b.replicas
            .cmp(&a.replicas)
            .then(if to_add > 0 { by_age.reverse() } else { by_age })
    });
    let mut added = 0;
    for &i in &order {
        if added == to_add {
            break;
        }
        let fraction = replica_set_fraction(&sets[i], desired, max_surge, status_replicas);
        let share = if to_add > 0 {
            fraction.min(to_add - added)
        } else {
            fraction.max(to_add - added)
        };
        sizes[i] += share;
        added += share;
    }
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    sizes
}

/// How much `set` should grow (or shrink, negative) to keep its share of the Deployment:
/// its size scaled by the new `desired + max_surge` against the one it was sized for,
/// rounded half away from zero (upstream getReplicaSetFraction).
fn replica_set_fraction(
    set: &ScalableSet,
    desired: i32,
    max_surge: i32,
    status_replicas: i32,
) -> i32 {
    if desired == 0 {
        return -set.replicas;
    }
    let sized_for = i64::from(set.max_replicas.unwrap_or(status_replicas));
    if sized_for <= 0 {
        return 0;
    }
    let scaled = i64::from(set.replicas) * i64::from(desired + max_surge);
    // round(scaled / sized_for) for non-negative values
    let rounded = (2 * scaled + sized_for) / (2 * sized_for);
    i32::try_from(rounded).unwrap_or(i32::MAX) - set.replicas
}

impl DeploymentController {
    /// Splits into new and old, brings the new one's annotations up to date, and creates it
    /// if `create` and there is none. Also keeps the Deployment's revision annotation.
    pub(super) async fn get_all(
        &self,
        d: &Deployment,
        owned: Vec<ReplicaSet>,
        create: bool,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<Sets, ControllerError> {
        let mut sets = self.split(d, owned);
        let max_old = sets
            .old
            .iter()
            .map(|rs| revision_of(&rs.metadata))
            .max()
            .unwrap_or(0);
        let revision = max_old + 1;
        let namespace = d.namespace().unwrap_or_default();
        let (surge, _) = max_surge_and_unavailable(d);
        if let Some(rs) = sets.new.take() {
            let current = revision_of(&rs.metadata);
            let wanted_revision = if current < revision {
                revision
            } else {
                current
            };
            let mut annotations = rs.metadata.annotations.clone().unwrap_or_default();
            copy_annotations(d, &mut annotations);
            annotations.insert(REVISION.into(), wanted_revision.to_string());
            annotations
                .entry(DESIRED_REPLICAS.into())
                .or_insert_with(|| desired(d).to_string());
            annotations
                .entry(MAX_REPLICAS.into())
                .or_insert_with(|| (desired(d) + surge).to_string());
            let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs = if Some(&annotations) != rs.metadata.annotations.as_ref()
                || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0)
            {
                let mut updated = rs.clone();
                updated.metadata.annotations = Some(annotations);
                if let Some(spec) = updated.spec.as_mut() {
                    spec.min_ready_seconds = min_ready;
                }
                self.rs_api(&namespace)
                    .replace(&rs.name_any(), &PostParams::default(), &updated)
                    .await?
            } else {
                rs
            };
            if d.status
                .as_ref()
                .and_then(|s| condition(s, "Progressing"))
                .is_none()
            {
                *pending = Some((
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{}\"", rs.name_any()),
                ));
            }
            sets.new = Some(rs);
        } else if create {
            sets.new = Some(self.create_new_rs(d, &sets, revision, pending).await?);
        }
        if let Some(rs) = &sets.new {
            let rev = revision_of(&rs.metadata).to_string();
            if d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                != Some(&rev)
            {
                let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
                self.deployments_api(&namespace)
                    .patch(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
        }
        Ok(sets)
    }

    pub(super) async fn create_new_rs(
        &self,
        d: &Deployment,
        sets: &Sets,
        revision: i64,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<ReplicaSet, ControllerError> {
        let namespace = d.namespace().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = pod_template_hash(&spec.template, collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let (surge, _) = max_surge_and_unavailable(d);
        let replicas = self.new_rs_replicas(d, sets, None);
        let mut annotations = BTreeMap::new();
        copy_annotations(d, &mut annotations);
        annotations.insert(REVISION.into(), revision.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), desired(d).to_string());
        annotations.insert(MAX_REPLICAS.into(), (desired(d) + surge).to_string());
        let name = format!("{}-{}", d.name_any(), hash);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_owner_ref(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match self
            .rs_api(&namespace)
            .create(&PostParams::default(), &rs)
            .await
        {
            Ok(created) => {
                if replicas > 0 {
                    self.recorder.record(
                        object_reference(d),
                        EventType::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {replicas}"),
                    );
                }
                *pending = Some((
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{name}\""),
                ));
                Ok(created)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Ours already (a stale cache), or a hash collision: bump collisionCount and retry.
                let existing = self.rs_api(&namespace).get(&name).await?;
                let ours = controller_ref(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| {
                        template_ignoring_hash(t) == template_ignoring_hash(&spec.template)
                    });
                if ours && same {
                    return Ok(existing);
                }
                let patch = json!({"status": {"collisionCount": collision_count.unwrap_or(0) + 1}});
                self.deployments_api(&namespace)
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                Err(ControllerError::Pending(format!(
                    "hash collision for replica set {name}"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sets a ReplicaSet's size (and its desired/max annotations); records the event.
    pub(super) async fn scale_rs(
        &self,
        d: &Deployment,
        rs: &ReplicaSet,
        to: i32,
    ) -> Result<ReplicaSet, ControllerError> {
        let from = replicas_of(rs);
        let (surge, _) = max_surge_and_unavailable(d);
        let mut updated = rs.clone();
        let annotations = updated
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let desired_s = desired(d).to_string();
        let max_s = (desired(d) + surge).to_string();
        let annotations_changed = annotations.get(DESIRED_REPLICAS) != Some(&desired_s)
            || annotations.get(MAX_REPLICAS) != Some(&max_s);
        if from == to && !annotations_changed {
            return Ok(rs.clone());
        }
        annotations.insert(DESIRED_REPLICAS.into(), desired_s);
        annotations.insert(MAX_REPLICAS.into(), max_s);
        updated.spec.get_or_insert_with(Default::default).replicas = Some(to);
        let result = self
            .rs_api(&rs.namespace().unwrap_or_default())
            .replace(&rs.name_any(), &PostParams::default(), &updated)
            .await?;
        if from != to {
            let direction = if to > from { "up" } else { "down" };
            self.recorder.record(
                object_reference(d),
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {to}",
                    rs.name_any()
                ),
            );
        }
        Ok(result)
    }

    /// Scaling without a template change (also while paused). One active ReplicaSet takes
    /// the new size; a saturated new one takes everything; else the active ones share the
    /// difference ([`proportional_sizes`]).
    pub(super) async fn scale(
        &self,
        d: &Deployment,
        sets: &mut Sets,
    ) -> Result<(), ControllerError> {
        let want = desired(d);
        let active_count = sets.all().iter().filter(|rs| replicas_of(rs) > 0).count();
        if active_count <= 1 {
            let target = match (&sets.new, sets.all().iter().find(|rs| replicas_of(rs) > 0)) {
                (_, Some(active)) => Some(active.name_any()),
                (Some(new), None) => Some(new.name_any()),
                (None, None) => sets.old.last().map(|rs| rs.name_any()),
            };
            if let Some(target) = target {
                self.resize(d, sets, &target, |_| want).await?;
            }
            return Ok(());
        }
        if let Some(new) = sets.new.clone() {
            if replicas_of(&new) == want && available_of(&new) >= want {
                for name in sets
                    .old
                    .iter()
                    .filter(|rs| replicas_of(rs) > 0)
                    .map(|rs| rs.name_any())
                    .collect::<Vec<_>>()
                {
                    self.resize(d, sets, &name, |_| 0).await?;
                }
                return Ok(());
            }
        }
        let (surge, _) = max_surge_and_unavailable(d);
        let status_replicas = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let all: Vec<ScalableSet> = sets
            .all()
            .iter()
            .map(|rs| ScalableSet {
                replicas: replicas_of(rs),
                max_replicas: rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MAX_REPLICAS))
                    .and_then(|v| v.parse().ok()),
                created: rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
                name: rs.name_any(),
            })
            .collect();
        let sizes = proportional_sizes(want, surge, status_replicas, &all);
        for (set, size) in all.iter().zip(sizes) {
            if set.replicas != size {
                self.resize(d, sets, &set.name, |_| size).await?;
            }
        }
        Ok(())
    }

    /// Scales the named set and puts the updated object back into `sets`; true if it changed size.
    pub(super) async fn resize(
        &self,
        d: &Deployment,
        sets: &mut Sets,
        name: &str,
        size: impl Fn(i32) -> i32,
    ) -> Result<bool, ControllerError> {
        let slot = if sets.new.as_ref().is_some_and(|n| n.name_any() == name) {
            sets.new.as_mut()
        } else {
            sets.old.iter_mut().find(|rs| rs.name_any() == name)
        };
        let Some(slot) = slot else { return Ok(false) };
        let from = replicas_of(slot);
        let to = size(from);
        *slot = self.scale_rs(d, slot, to).await?;
        Ok(from != to)
    }
}

/// Proportional scaling against upstream's TestScale table (its values, this code).
#[cfg(test)]
mod tests {
    use super::*;

    /// Sets named v1 (oldest) .. vN (newest), each annotated as sized for `sized_for`.
    fn sets(sizes: &[i32], sized_for: i32) -> Vec<ScalableSet> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &replicas)| ScalableSet {
                name: format!("v{}", i + 1),
                replicas,
                max_replicas: Some(sized_for),
                created: Timestamp::from_second(1_463_702_400 + 3600 * i as i64).ok(),
            })
            .collect()
    }

    /// (name, sizes oldest first, old desired + surge, new desired, new surge, sizes after)
    type ScaleCase = (&'static str, &'static [i32], i32, i32, i32, &'static [i32]);

    #[test]
    fn proportional_scaling_matches_upstream() {
        let cases: &[ScaleCase] = &[
            ("5 -> 10", &[3, 2], 5, 10, 0, &[6, 4]),
            ("5 -> 3", &[3, 2], 5, 3, 0, &[2, 1]),
            ("9 -> 4", &[1, 8], 9, 4, 0, &[0, 4]),
            ("7 -> 10", &[2, 3, 2], 7, 10, 0, &[3, 4, 3]),
            ("13 -> 8", &[3, 8, 2], 13, 8, 0, &[2, 5, 1]),
            ("leftover 3 -> 4", &[1, 1, 1], 3, 4, 0, &[1, 1, 2]),
            ("leftover 3 -> 2", &[1, 1, 1], 3, 2, 0, &[0, 1, 1]),
            ("no new set 4 -> 5", &[2, 2], 4, 5, 0, &[2, 3]),
            ("6 -> 0", &[1, 2, 3], 6, 0, 0, &[0, 0, 0]),
            ("surge 2, 10 -> 20", &[6, 6], 12, 20, 2, &[11, 11]),
            ("surge 3 -> 6, 10 -> 50", &[8, 5], 13, 50, 6, &[34, 22]),
            ("size and template 10 -> 14", &[3, 7], 10, 14, 0, &[4, 10]),
            ("saturated but broken new set", &[1, 2], 3, 2, 1, &[1, 2]),
        ];
        for (name, sizes, sized_for, desired, surge, expected) in cases {
            let got = proportional_sizes(*desired, *surge, 0, &sets(sizes, *sized_for));
            assert_eq!(&got, expected, "{name}");
        }
    }

    #[test]
    fn a_missing_annotation_falls_back_to_the_status_replicas() {
        let mut unannotated = sets(&[3, 2], 0);
        unannotated.iter_mut().for_each(|s| s.max_replicas = None);
        assert_eq!(proportional_sizes(10, 0, 5, &unannotated), [6, 4]);
    }

    #[test]
    fn inactive_sets_keep_their_size() {
        assert_eq!(
            proportional_sizes(10, 0, 0, &sets(&[0, 3, 2], 5)),
            [0, 6, 4]
        );
    }
}
