//! The RollingUpdate strategy (upstream rolling.go): the new ReplicaSet grows as far as
//! maxSurge allows, old ones shrink while maxUnavailable allows. The arithmetic is pure
//! functions, tested with upstream's tables.

use super::*;

/// (maxSurge, maxUnavailable) resolved against the desired replicas. Both zero would
/// block a rollout, so unavailability becomes 1 then, as upstream.
pub fn max_surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let total = desired(d);
    let surge = scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), total, true, 25).max(0);
    let mut unavailable = scaled_value(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        total,
        false,
        25,
    )
    .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(total.max(0)))
}

/// A ReplicaSet as the rolling-update arithmetic sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetCounts {
    /// spec.replicas
    pub replicas: i32,
    /// status.availableReplicas
    pub available: i32,
}

impl SetCounts {
    fn of(rs: &ReplicaSet) -> SetCounts {
        SetCounts {
            replicas: replicas_of(rs),
            available: available_of(rs),
        }
    }
}

/// How many replicas the new ReplicaSet may have (upstream NewRSNewReplicas for a rolling
/// update): up to `desired`, as long as all sets together (`total`) stay within
/// `desired + max_surge`.
pub fn new_replica_set_replicas(desired: i32, max_surge: i32, total: i32, new: i32) -> i32 {
    let max_total = desired + max_surge;
    if total >= max_total {
        return new;
    }
    let scale_up = max_total - total;
    new + scale_up.min(desired - new).max(0)
}

/// The size the new ReplicaSet is set to in one step (upstream reconcileNewReplicaSet): down
/// to `desired` if it is above it, else as far up as surge allows.
pub fn new_replica_set_target(desired: i32, max_surge: i32, total: i32, new: i32) -> i32 {
    if new > desired {
        desired
    } else {
        new_replica_set_replicas(desired, max_surge, total, new)
    }
}

/// How many old replicas may go at most in one step (upstream reconcileOldReplicaSets):
/// what exceeds the minimum available, not counting the new set's unavailable pods, which
/// may never become available.
pub fn max_old_scale_down(
    desired: i32,
    max_unavailable: i32,
    total: i32,
    new: Option<SetCounts>,
) -> i32 {
    let min_available = desired - max_unavailable;
    let new_unavailable = new.map_or(0, |n| n.replicas - n.available);
    total - min_available - new_unavailable
}

/// Old sets shrunk by their unavailable replicas, which cost no availability to remove,
/// at most `max_cleanup` in all, oldest first (upstream cleanupUnhealthyReplicas). Returns
/// the new sizes and how many were removed.
pub fn cleanup_unhealthy(old: &[SetCounts], max_cleanup: i32) -> (Vec<i32>, i32) {
    let mut cleaned = 0;
    let sizes = old
        .iter()
        .map(|set| {
            if set.replicas == 0 || set.replicas <= set.available || cleaned >= max_cleanup {
                return set.replicas;
            }
            let down = (set.replicas - set.available).min(max_cleanup - cleaned);
            cleaned += down;
            set.replicas - down
        })
        .collect();
    (sizes, cleaned)
}

/// Old set sizes (`old_replicas`, oldest first) after shrinking them by what the available
/// pods of all sets (`available`) exceed `desired - max_unavailable` by (upstream
/// scaleDownOldReplicaSetsForRollingUpdate).
pub fn scale_down_old_for_rolling_update(
    desired: i32,
    max_unavailable: i32,
    available: i32,
    old_replicas: &[i32],
) -> Vec<i32> {
    let mut budget = (available - (desired - max_unavailable)).max(0);
    old_replicas
        .iter()
        .map(|&replicas| {
            let down = replicas.min(budget).max(0);
            budget -= down;
            replicas - down
        })
        .collect()
}

impl DeploymentController {
    /// How many replicas the new ReplicaSet may have now (upstream NewRSNewReplicas).
    pub(super) fn new_rs_replicas(
        &self,
        d: &Deployment,
        sets: &Sets,
        new: Option<&ReplicaSet>,
    ) -> i32 {
        let want = desired(d);
        if is_recreate(d) {
            return want;
        }
        let (surge, _) = max_surge_and_unavailable(d);
        let total: i32 = sets.all().iter().map(|rs| replicas_of(rs)).sum();
        new_replica_set_replicas(want, surge, total, new.map(replicas_of).unwrap_or(0))
    }

    pub(super) async fn rollout_rolling(
        &self,
        d: &Deployment,
        owned: Vec<ReplicaSet>,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<Action, ControllerError> {
        let mut sets = self.get_all(d, owned, true, pending).await?;
        // Scale the new ReplicaSet up as far as surge allows.
        if let Some(new) = sets.new.clone() {
            let current = replicas_of(&new);
            let (surge, _) = max_surge_and_unavailable(d);
            let total: i32 = sets.all().iter().map(|rs| replicas_of(rs)).sum();
            let target = new_replica_set_target(desired(d), surge, total, current);
            if target != current
                && self
                    .resize(d, &mut sets, &new.name_any(), |_| target)
                    .await?
            {
                return self.sync_status(d, &sets, pending.take()).await;
            }
        }
        if self.scale_down_old(d, &mut sets).await? {
            return self.sync_status(d, &sets, pending.take()).await;
        }
        if self.complete(d, &sets) {
            self.cleanup(d, &sets).await?;
        }
        self.sync_status(d, &sets, pending.take()).await
    }

    /// Upstream reconcileOldReplicaSets: first drop unhealthy old replicas, then scale old
    /// ones down while at least `replicas - maxUnavailable` stay available.
    pub(super) async fn scale_down_old(
        &self,
        d: &Deployment,
        sets: &mut Sets,
    ) -> Result<bool, ControllerError> {
        let old_count: i32 = sets.old.iter().map(replicas_of).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let want = desired(d);
        let (_, unavailable) = max_surge_and_unavailable(d);
        let total: i32 = sets.all().iter().map(|rs| replicas_of(rs)).sum();
        let new = sets.new.as_ref().map(SetCounts::of);
        let max_scaled_down = max_old_scale_down(want, unavailable, total, new);
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let names: Vec<String> = sets.old.iter().map(|rs| rs.name_any()).collect();
        let old: Vec<SetCounts> = sets.old.iter().map(SetCounts::of).collect();
        let (cleaned, _) = cleanup_unhealthy(&old, max_scaled_down);
        let mut changed = self.resize_old(d, sets, &names, &cleaned).await?;
        let available: i32 = sets.all().iter().map(|rs| available_of(rs)).sum();
        let old_replicas: Vec<i32> = sets.old.iter().map(replicas_of).collect();
        let scaled = scale_down_old_for_rolling_update(want, unavailable, available, &old_replicas);
        changed |= self.resize_old(d, sets, &names, &scaled).await?;
        Ok(changed)
    }

    /// Resizes the old sets `names` to `sizes` where they differ; true if any changed.
    async fn resize_old(
        &self,
        d: &Deployment,
        sets: &mut Sets,
        names: &[String],
        sizes: &[i32],
    ) -> Result<bool, ControllerError> {
        let mut changed = false;
        for (name, &size) in names.iter().zip(sizes) {
            let current = sets
                .old
                .iter()
                .find(|rs| &rs.name_any() == name)
                .map(replicas_of);
            if current.is_some_and(|c| c != size) {
                changed |= self.resize(d, sets, name, |_| size).await?;
            }
        }
        Ok(changed)
    }
}

/// Tables from upstream's rolling_test.go and deployment util tests (their values, this
/// code's functions).
#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn rolling(
        replicas: i32,
        surge: Option<IntOrString>,
        unavailable: Option<IntOrString>,
    ) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: surge,
                        max_unavailable: unavailable,
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn int(i: i32) -> Option<IntOrString> {
        Some(IntOrString::Int(i))
    }

    fn percent(p: &str) -> Option<IntOrString> {
        Some(IntOrString::String(p.to_string()))
    }

    #[test]
    fn fenceposts_resolve_percentages_surge_up_unavailable_down() {
        // TestResolveFenceposts: (maxSurge, maxUnavailable, desired) -> (surge, unavailable)
        // The unavailable side is upstream's MaxUnavailable, which the controller uses:
        // ResolveFenceposts' 1 for 0%/0% of 0 is capped at the 0 replicas.
        let cases = [
            ("0%", "0%", 0, (0, 0)),
            ("0%", "0%", 10, (0, 1)),
            ("39%", "39%", 10, (4, 3)),
            ("25%", "25%", 10, (3, 2)),
            ("25%", "25%", 1, (1, 0)),
        ];
        for (surge, unavailable, desired, expected) in cases {
            let d = rolling(desired, percent(surge), percent(unavailable));
            assert_eq!(
                max_surge_and_unavailable(&d),
                expected,
                "{surge}/{unavailable} of {desired}"
            );
        }
        // Both zero would never let a rollout move: one may be unavailable.
        assert_eq!(
            max_surge_and_unavailable(&rolling(3, int(0), int(0))),
            (0, 1)
        );
    }

    #[test]
    fn max_unavailable_is_capped_at_the_replicas() {
        // TestMaxUnavailable (maxSurge 1): (replicas, maxUnavailable) -> maxUnavailable
        let cases = [
            (10, int(5), 5),
            (10, int(10), 10),
            (5, int(10), 5),
            (0, int(10), 0),
            (10, percent("50%"), 5),
            (10, percent("100%"), 10),
            (5, percent("100%"), 5),
        ];
        for (replicas, unavailable, expected) in cases {
            let d = rolling(replicas, int(1), unavailable.clone());
            assert_eq!(
                max_surge_and_unavailable(&d).1,
                expected,
                "{unavailable:?} of {replicas}"
            );
        }
        let mut recreate = rolling(10, int(1), int(5));
        if let Some(strategy) = recreate.spec.as_mut().and_then(|s| s.strategy.as_mut()) {
            strategy.type_ = Some("Recreate".into());
        }
        assert_eq!(max_surge_and_unavailable(&recreate), (0, 0));
    }

    #[test]
    fn new_replica_set_grows_within_surge() {
        // TestNewRSNewReplicas: the other sets hold 5 replicas.
        // (deployment replicas, new set replicas, maxSurge) -> new set replicas
        for (desired, new, surge, expected) in [(1, 5, 1, 5), (6, 2, 10, 6)] {
            assert_eq!(
                new_replica_set_replicas(desired, surge, 5 + new, new),
                expected,
                "desired {desired}, new {new}, surge {surge}"
            );
        }
    }

    #[test]
    fn reconcile_new_replica_set() {
        // TestDeploymentController_reconcileNewReplicaSet (maxUnavailable 0):
        // (deployment replicas, maxSurge, old replicas, new replicas) -> new size if scaled
        let cases = [
            (10, 0, 10, 0, None),
            (10, 2, 10, 0, Some(2)),
            (10, 2, 5, 0, Some(7)),
            (10, 2, 10, 2, None),
            (10, 2, 2, 11, Some(10)),
        ];
        for (desired, surge, old, new, expected) in cases {
            let (surge, _) = max_surge_and_unavailable(&rolling(desired, int(surge), int(0)));
            let target = new_replica_set_target(desired, surge, old + new, new);
            let scaled = (target != new).then_some(target);
            assert_eq!(scaled, expected, "{desired} {surge} {old} {new}");
        }
    }

    /// The old set's size after reconcileOldReplicaSets, or `None` if it is left alone.
    fn reconcile_old(
        desired: i32,
        max_unavailable: i32,
        new: SetCounts,
        old: SetCounts,
    ) -> Option<i32> {
        let (_, unavailable) =
            max_surge_and_unavailable(&rolling(desired, int(0), int(max_unavailable)));
        let total = new.replicas + old.replicas;
        let max_down = max_old_scale_down(desired, unavailable, total, Some(new));
        if max_down <= 0 {
            return None;
        }
        let (cleaned, _) = cleanup_unhealthy(&[old], max_down);
        let sizes = scale_down_old_for_rolling_update(
            desired,
            unavailable,
            new.available + old.available,
            &cleaned,
        );
        (sizes[0] != old.replicas).then_some(sizes[0])
    }

    #[test]
    fn reconcile_old_replica_sets() {
        // TestDeploymentController_reconcileOldReplicaSets (maxSurge 0): (deployment
        // replicas, maxUnavailable, old replicas, new replicas, old ready, new ready) ->
        // old size if scaled
        let cases = [
            (10, 0, 10, 0, 10, 0, Some(9)),
            (10, 2, 10, 0, 10, 0, Some(8)),
            // unhealthy old replicas are cleaned up
            (10, 2, 10, 0, 8, 0, Some(8)),
            // one unhealthy cleaned up and one ready scaled down
            (10, 2, 10, 0, 9, 0, Some(8)),
            // the new set's unavailable pods allow no further step
            (10, 2, 8, 2, 8, 0, None),
        ];
        for (desired, unavailable, old, new, old_ready, new_ready, expected) in cases {
            let old_set = SetCounts {
                replicas: old,
                available: old_ready,
            };
            let new_set = SetCounts {
                replicas: new,
                available: new_ready,
            };
            assert_eq!(
                reconcile_old(desired, unavailable, new_set, old_set),
                expected,
                "{desired} {unavailable} {old} {new} {old_ready} {new_ready}"
            );
        }
    }

    #[test]
    fn cleanup_unhealthy_replicas() {
        // TestDeploymentController_cleanupUnhealthyReplicas:
        // (old replicas, ready, max cleanup) -> cleaned up
        let cases = [(10, 8, 1, 1), (10, 8, 3, 2), (10, 8, 0, 0), (10, 10, 3, 0)];
        for (replicas, available, max_cleanup, expected) in cases {
            let old = SetCounts {
                replicas,
                available,
            };
            let (sizes, cleaned) = cleanup_unhealthy(&[old], max_cleanup);
            assert_eq!(cleaned, expected, "{replicas} {available} {max_cleanup}");
            assert_eq!(sizes, [replicas - expected]);
        }
    }

    #[test]
    fn scale_down_old_replica_sets_for_rolling_update() {
        // TestDeploymentController_scaleDownOldReplicaSetsForRollingUpdate (no new set,
        // maxSurge 0): (deployment replicas, maxUnavailable, ready, old replicas) -> old
        // size if scaled
        let cases = [
            (10, 0, 10, 10, Some(9)),
            (10, 2, 10, 10, Some(8)),
            (10, 2, 8, 10, None),
            (10, 2, 10, 0, None),
            (10, 2, 1, 10, None),
        ];
        for (desired, unavailable, ready, old, expected) in cases {
            let (_, unavailable) =
                max_surge_and_unavailable(&rolling(desired, int(0), int(unavailable)));
            let sizes = scale_down_old_for_rolling_update(desired, unavailable, ready, &[old]);
            assert_eq!(
                (sizes[0] != old).then_some(sizes[0]),
                expected,
                "{desired} {unavailable} {ready} {old}"
            );
        }
    }
}
