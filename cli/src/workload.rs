//! The workloads `weir lock` and `weir release` act on: named as kubectl names them
//! (`deploy/web`, `sts/db`, …), read from the cluster with the user's kubeconfig, and the
//! command's future run to an exit code.

use std::process::ExitCode;

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::CronJob,
    core::v1::ObjectReference,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
};
use weir_api::HelmRelease;

use crate::get::BoxError;

/// A workload kind, as `kind/name` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    HelmRelease,
}

impl Kind {
    /// The workload kinds (every kind but HelmRelease).
    pub(crate) const WORKLOADS: &[Self] = &[
        Self::Deployment,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::CronJob,
    ];
    /// The workload kinds and HelmRelease.
    pub(crate) const ALL: &[Self] = &[
        Self::Deployment,
        Self::StatefulSet,
        Self::DaemonSet,
        Self::CronJob,
        Self::HelmRelease,
    ];

    /// The kind of `word` (kubectl's names, plurals and short names), case-insensitively.
    fn parse(word: &str) -> Option<Self> {
        Some(match word.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => Self::Deployment,
            "statefulset" | "statefulsets" | "sts" => Self::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => Self::DaemonSet,
            "cronjob" | "cronjobs" | "cj" => Self::CronJob,
            "helmrelease" | "helmreleases" | "hr" => Self::HelmRelease,
            _ => return None,
        })
    }

    /// `deployment (deploy)`, as the usage names the kind.
    fn usage(self) -> &'static str {
        match self {
            Self::Deployment => "deployment (deploy)",
            Self::StatefulSet => "statefulset (sts)",
            Self::DaemonSet => "daemonset (ds)",
            Self::CronJob => "cronjob (cj)",
            Self::HelmRelease => "helmrelease (hr)",
        }
    }

    pub(crate) fn resource(self) -> ApiResource {
        match self {
            Self::Deployment => ApiResource::erase::<Deployment>(&()),
            Self::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Self::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
            Self::CronJob => ApiResource::erase::<CronJob>(&()),
            Self::HelmRelease => ApiResource::erase::<HelmRelease>(&()),
        }
    }
}

/// `kind/name` split and checked, its kind one of `kinds`. The error is the usage; with
/// `refused` (`"locked"`), a kind not among `kinds` is first said to be one that cannot be
/// `refused`.
pub(crate) fn parse_workload(
    text: &str,
    kinds: &[Kind],
    refused: Option<&str>,
) -> Result<(Kind, String), String> {
    let usage = usage(kinds);
    let (kind, name) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?}: {usage}"))?;
    let Some(parsed) = Kind::parse(kind).filter(|k| kinds.contains(k)) else {
        return Err(match refused {
            Some(verb) => format!("{text:?}: {kind:?} cannot be {verb}: {usage}"),
            None => format!("{text:?}: {usage}"),
        });
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("{text:?}: {usage}"));
    }
    Ok((parsed, name.to_owned()))
}

/// `expected <kind>/<name> with kind deployment (deploy), …, daemonset (ds) or cronjob (cj)`.
fn usage(kinds: &[Kind]) -> String {
    let names: Vec<&str> = kinds.iter().map(|k| k.usage()).collect();
    let list = match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    format!("expected <kind>/<name> with kind {list}")
}

/// The live workload `name` of `kind` in `namespace`, and its API; `title` names it in errors.
pub(crate) async fn fetch(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    title: &str,
) -> Result<(Api<DynamicObject>, DynamicObject), BoxError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &kind.resource());
    let object = api
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read {title}: {e}"))?
        .ok_or_else(|| format!("{title} not found"))?;
    Ok((api, object))
}

/// The live `object` of `kind`, as an Event's object.
pub(crate) fn reference(kind: Kind, object: &DynamicObject) -> ObjectReference {
    let resource = kind.resource();
    ObjectReference {
        api_version: Some(resource.api_version),
        kind: Some(resource.kind),
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        uid: object.metadata.uid.clone(),
        resource_version: object.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// Runs `future` to its end: exit 0 when it did what was asked, 1 when it failed (the error
/// printed).
pub(crate) fn block_on(future: impl Future<Output = Result<(), BoxError>>) -> ExitCode {
    let Some(runtime) = crate::common::runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("✗ {}", weir_runtime::chain(&*error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_named_as_kubectl_names_them() {
        // What `weir lock` accepts.
        let lock = |text| parse_workload(text, Kind::ALL, Some("locked"));
        assert_eq!(lock("deploy/web"), Ok((Kind::Deployment, "web".to_owned())));
        assert_eq!(
            lock("StatefulSet/db"),
            Ok((Kind::StatefulSet, "db".to_owned()))
        );
        assert_eq!(lock("ds/agent").map(|w| w.0), Ok(Kind::DaemonSet));
        assert_eq!(lock("cj/backup").map(|w| w.0), Ok(Kind::CronJob));
        assert_eq!(lock("hr/podinfo").map(|w| w.0), Ok(Kind::HelmRelease));
        for bad in ["web", "deploy/", "configmap/x", "deploy/a/b", ""] {
            assert!(lock(bad).is_err(), "{bad}");
        }
        let message = lock("pod/x").unwrap_err();
        assert!(message.contains("\"pod\" cannot be locked"), "{message}");

        // What `weir release` accepts: no HelmRelease.
        let release = |text| parse_workload(text, Kind::WORKLOADS, None);
        assert_eq!(
            release("deploy/web"),
            Ok((Kind::Deployment, "web".to_owned()))
        );
        assert_eq!(
            release("StatefulSets/db"),
            Ok((Kind::StatefulSet, "db".to_owned()))
        );
        assert_eq!(release("ds/x").map(|w| w.0), Ok(Kind::DaemonSet));
        assert_eq!(release("cj/x").map(|w| w.0), Ok(Kind::CronJob));
        for bad in ["web", "deploy/", "pod/web", "hr/web", "deploy/a/b"] {
            assert!(release(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_usage_lists_the_kinds_accepted() {
        assert_eq!(
            parse_workload("web", Kind::WORKLOADS, None).unwrap_err(),
            "\"web\": expected <kind>/<name> with kind deployment (deploy), statefulset (sts), \
             daemonset (ds) or cronjob (cj)"
        );
        assert_eq!(
            parse_workload("pod/x", Kind::ALL, Some("locked")).unwrap_err(),
            "\"pod/x\": \"pod\" cannot be locked: expected <kind>/<name> with kind deployment \
             (deploy), statefulset (sts), daemonset (ds), cronjob (cj) or helmrelease (hr)"
        );
        assert_eq!(
            parse_workload("pod/x", Kind::WORKLOADS, None).unwrap_err(),
            "\"pod/x\": expected <kind>/<name> with kind deployment (deploy), statefulset \
             (sts), daemonset (ds) or cronjob (cj)"
        );
    }
}
