//! The Recreate strategy: every old pod is gone before a new one starts.

use super::*;

impl DeploymentController {
    pub(super) async fn rollout_recreate(
        &self,
        d: &Deployment,
        owned: Vec<ReplicaSet>,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<Action, ControllerError> {
        let mut sets = self.get_all(d, owned, false, pending).await?;
        let mut scaled = false;
        for name in sets
            .old
            .iter()
            .filter(|rs| replicas_of(rs) > 0)
            .map(|rs| rs.name_any())
            .collect::<Vec<_>>()
        {
            scaled |= self.resize(d, &mut sets, &name, |_| 0).await?;
        }
        if scaled {
            return self.sync_status(d, &sets, pending.take()).await;
        }
        // Recreate: no new pod starts while an old one still runs.
        if sets.old.iter().any(|rs| status_replicas(rs) > 0) {
            return self.sync_status(d, &sets, pending.take()).await;
        }
        if sets.new.is_none() {
            let owned = sets.old.clone();
            sets = self.get_all(d, owned, true, pending).await?;
        }
        if let Some(new) = sets.new.clone() {
            let want = desired(d);
            if replicas_of(&new) != want {
                self.resize(d, &mut sets, &new.name_any(), |_| want).await?;
            }
        }
        if self.complete(d, &sets) {
            self.cleanup(d, &sets).await?;
        }
        self.sync_status(d, &sets, pending.take()).await
    }
}
