//! Making a container's image present: the pull policy decides whether to pull, failed
//! pulls back off per container and image, and credentials come from the pod's
//! imagePullSecrets.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use rkube_cri::ImageInfo;
use rkube_runtime::EventType;

use super::PodWorker;
use crate::images;
use crate::status::Waiting;

impl PodWorker {
    /// The image to create `container` from, or why the container waits (and when to
    /// look again, if a backoff says so).
    pub(super) async fn ensure_image(
        &mut self,
        pod: &Pod,
        container: &Container,
    ) -> Result<ImageInfo, (Waiting, Option<Duration>)> {
        let image = container.image.clone().unwrap_or_default();
        let images = self.node.runtime.images.clone();
        let policy = images::pull_policy(container);
        let present = images.image_status(&image).await.ok().flatten();
        let name = container.name.as_str();
        match (policy.as_str(), present) {
            ("Never", Some(info)) => return Ok(info),
            ("Never", None) => {
                let message =
                    format!("Container image {image:?} is not present with pull policy of Never");
                self.warn_once(
                    pod,
                    Some(name),
                    format!("neverpull:{name}"),
                    "ErrImageNeverPull",
                    message.clone(),
                );
                return Err((Waiting::new("ErrImageNeverPull", message), None));
            }
            ("IfNotPresent", Some(info)) => {
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Normal,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok(info);
            }
            _ => {}
        }
        let key = format!("{name}/{image}");
        if let Some(remaining) = self.pull_backoff.remaining(&key, Instant::now()) {
            let message = format!("Back-off pulling image {image:?}");
            self.warn_once(
                pod,
                Some(name),
                format!("pullbackoff:{key}:{:?}", self.pull_backoff.delay(&key)),
                "BackOff",
                message.clone(),
            );
            return Err((Waiting::new("ImagePullBackOff", message), Some(remaining)));
        }
        self.node.event(
            pod,
            Some(name),
            EventType::Normal,
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let auth = self.pull_auth(pod, &image).await;
        let started = Instant::now();
        match images.pull(&image, auth.as_ref()).await {
            Ok(info) => {
                self.pull_backoff.reset(&key);
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Normal,
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Ok(info)
            }
            Err(e) => {
                self.pull_backoff.record_retry(&key, Instant::now());
                let message = e.to_string();
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image {image:?}: {message}"),
                );
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Warning,
                    "Failed",
                    "Error: ErrImagePull",
                );
                // Half-way through the backoff the reason turns into ImagePullBackOff.
                let retry = self
                    .pull_backoff
                    .remaining(&key, Instant::now())
                    .map(|d| d / 2);
                Err((Waiting::new("ErrImagePull", message), retry))
            }
        }
    }

    async fn pull_auth(&self, pod: &Pod, image: &str) -> Option<rkube_cri::RegistryAuth> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.node.client.clone(), &namespace);
        let mut secrets = Vec::new();
        for reference in pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            if let Ok(Some(secret)) = api.get_opt(&reference.name).await {
                secrets.push(secret);
            }
        }
        images::auth_for(image, &secrets)
    }
}
