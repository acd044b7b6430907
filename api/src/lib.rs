//! Weir's API: custom resource types that speak Flux's API, condition helpers and durations.
//!
//! Types only, and pure helpers over them: nothing here talks to a cluster.

pub mod condition;
pub mod control;
pub mod crd;
pub mod duration;
pub mod helm_chart;
pub mod helm_release;
pub mod helm_repository;
pub mod history;
pub mod image;
pub mod kustomize;
pub mod manifest;
pub mod meta;
pub mod source;
pub mod status;

pub use condition::{Condition, ConditionStatus, KStatus, Outcome, reasons, types};
pub use duration::{DurationError, GoDuration};
pub use helm_chart::{HelmChart, HelmChartSpec, HelmChartStatus};
pub use helm_release::{HelmRelease, HelmReleaseSpec, HelmReleaseStatus};
pub use helm_repository::{
    HelmRepository, HelmRepositorySpec, HelmRepositoryStatus, HelmRepositoryType,
};
pub use image::{
    ImagePolicy, ImagePolicySpec, ImagePolicyStatus, ImageRef, ImageRepository,
    ImageRepositorySpec, ImageRepositoryStatus, ImageUpdateAutomation, ImageUpdateAutomationSpec,
    ImageUpdateAutomationStatus,
};
pub use kustomize::{Kustomization, KustomizationSpec, KustomizationStatus};
pub use meta::{
    Artifact, CrossNamespaceSourceReference, LocalObjectReference,
    RECONCILE_REQUESTED_AT_ANNOTATION, SourceKind,
};
pub use source::{
    GitProvider, GitRepository, GitRepositoryInclude, GitRepositoryRef, GitRepositorySpec,
    GitRepositoryStatus,
};
