//! Events on claims and volumes, through whichever Events API the provisioner may write.
//!
//! kube-runtime's [`Recorder`] writes `events.k8s.io/v1` Events. nfs-subdir-external-
//! provisioner's RBAC grants only core `events` (client-go's recorder writes `core/v1`), so
//! under it the first 403 switches this publisher to `core/v1` Events for good. If those are
//! forbidden too, events are skipped with one warning: they are informative, never needed to
//! provision.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use k8s_openapi::{
    api::core::v1::{Event as CoreEvent, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
};
use kube::{
    Api, Client,
    api::PostParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

const EVENTS_V1: u8 = 0;
const CORE_V1: u8 = 1;

/// Publishes events, falling back from `events.k8s.io/v1` to `core/v1` when the first is
/// forbidden.
#[derive(Clone)]
pub struct Publisher {
    recorder: Recorder,
    client: Client,
    reporter: Reporter,
    api: std::sync::Arc<AtomicU8>,
    warned: std::sync::Arc<AtomicBool>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

impl Publisher {
    /// A publisher reporting as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Publisher {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
            api: std::sync::Arc::new(AtomicU8::new(EVENTS_V1)),
            warned: std::sync::Arc::default(),
        }
    }

    /// Publishes `ev` about `regarding`. A 403 on both APIs is not an error (logged once).
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        if self.api.load(Ordering::Acquire) == EVENTS_V1 {
            match self.recorder.publish(ev, regarding).await {
                Err(e) if is_forbidden(&e) => {
                    tracing::info!(
                        "events.k8s.io Events are forbidden: publishing core/v1 Events instead"
                    );
                    self.api.store(CORE_V1, Ordering::Release);
                }
                other => return other,
            }
        }
        match self.publish_core(ev, regarding).await {
            Err(e) if is_forbidden(&e) => {
                if !self.warned.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        error = %e,
                        "Events are forbidden in both events.k8s.io and core: publishing none"
                    );
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn publish_core(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let event = core_event(ev, regarding, &self.reporter, jiff::Timestamp::now());
        Api::<CoreEvent>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(|_| ())
    }
}

/// The `core/v1` Event for `ev` at `now`, as client-go's recorder fills it.
pub fn core_event(
    ev: &Event,
    regarding: &ObjectReference,
    reporter: &Reporter,
    now: jiff::Timestamp,
) -> CoreEvent {
    let object = regarding
        .name
        .clone()
        .unwrap_or_else(|| reporter.controller.clone());
    let instance = reporter
        .instance
        .clone()
        .unwrap_or_else(|| reporter.controller.clone());
    CoreEvent {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(
                regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
            ),
            ..ObjectMeta::default()
        },
        involved_object: regarding.clone(),
        reason: Some(ev.reason.clone()),
        message: ev.note.clone(),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        action: Some(ev.action.clone()),
        source: Some(EventSource {
            component: Some(reporter.controller.clone()),
            host: None,
        }),
        reporting_component: Some(reporter.controller.clone()),
        reporting_instance: Some(instance),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: None::<MicroTime>,
        count: Some(1),
        ..CoreEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_events_carry_what_the_new_api_would() {
        let ev = Event {
            type_: EventType::Warning,
            reason: "ProvisioningFailed".into(),
            note: Some("no room".into()),
            action: "Provision".into(),
            secondary: None,
        };
        let regarding = ObjectReference {
            kind: Some("PersistentVolumeClaim".into()),
            namespace: Some("monitoring".into()),
            name: Some("data-0".into()),
            uid: Some("u1".into()),
            ..ObjectReference::default()
        };
        let reporter = Reporter {
            controller: "fuseim.pri/ifs".into(),
            instance: Some("pod-a".into()),
        };
        let now: jiff::Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let e = core_event(&ev, &regarding, &reporter, now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("monitoring"));
        assert!(e.metadata.name.as_deref().unwrap().starts_with("data-0."));
        assert_eq!(e.involved_object, regarding);
        assert_eq!(e.reason.as_deref(), Some("ProvisioningFailed"));
        assert_eq!(e.message.as_deref(), Some("no room"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(
            e.source.unwrap().component.as_deref(),
            Some("fuseim.pri/ifs")
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("pod-a"));
        assert_eq!(e.count, Some(1));
        let cluster_scoped = ObjectReference {
            namespace: None,
            ..regarding
        };
        let e = core_event(&ev, &cluster_scoped, &reporter, now);
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
    }
}
