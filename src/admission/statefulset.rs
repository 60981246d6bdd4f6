//! `apps/v1` StatefulSets: turns disk-backed data `emptyDir` volumes into
//! `volumeClaimTemplates` on CREATE. (Decision logic: issue 3.)

use std::borrow::Cow;

use serde::Deserialize;

use super::{Decision, Request, view::ObjectView};
use crate::policy::Policy;

/// `spec.template`.
#[derive(Debug, Default, Deserialize)]
pub struct PodTemplateView<'a> {
    /// `spec.template.spec`.
    #[serde(borrow, default)]
    pub spec: Option<PodSpecView<'a>>,
}

/// `spec.template.spec`: volumes and who mounts them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView<'a> {
    /// Pod volumes.
    #[serde(borrow, default)]
    pub volumes: Option<Vec<VolumeView<'a>>>,
    /// Containers.
    #[serde(borrow, default)]
    pub containers: Option<Vec<ContainerView<'a>>>,
    /// Init containers.
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<ContainerView<'a>>>,
}

/// One pod volume.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView<'a> {
    /// Volume name.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// Set when the volume is an emptyDir.
    #[serde(borrow, default)]
    pub empty_dir: Option<EmptyDirView<'a>>,
}

/// `emptyDir`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirView<'a> {
    /// `Memory` for tmpfs.
    #[serde(borrow, default)]
    pub medium: Option<Cow<'a, str>>,
    /// Size limit.
    #[serde(borrow, default)]
    pub size_limit: Option<Cow<'a, str>>,
}

/// One container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView<'a> {
    /// Container name.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// Its mounts.
    #[serde(borrow, default)]
    pub volume_mounts: Option<Vec<MountView<'a>>>,
}

/// One volume mount.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountView<'a> {
    /// Volume name.
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    /// Mount path.
    #[serde(borrow, default)]
    pub mount_path: Cow<'a, str>,
}

/// Decides for one StatefulSet.
pub fn decide(_req: &Request<'_>, _object: &ObjectView<'_>, policy: &Policy) -> Decision {
    if !policy.targets.stateful_sets {
        return Decision::skipped("policy targets.statefulSets is false");
    }
    Decision::unchanged("StatefulSet storage is not decided yet")
}
