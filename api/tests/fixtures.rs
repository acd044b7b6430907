//! Every manifest in `tests/fixtures/` is written the way Flux's documentation writes it. Each
//! must parse into Weir's types and serialize back without losing a field; each manifest in
//! `tests/fixtures/invalid/` must be rejected with a message naming the field.

// A test's helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use weir_api::{
    GitRepository, HelmChart, HelmRepository, ImagePolicy, ImageRepository, ImageUpdateAutomation,
    Kustomization, manifest,
};

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// Parses `yaml` as the kind it declares and serializes it back.
fn round_trip(yaml: &str) -> Result<Value, manifest::ManifestError> {
    let raw: Value = serde_yaml_ng::from_str(yaml).unwrap();
    match raw["kind"].as_str() {
        Some("GitRepository") => {
            Ok(serde_json::to_value(manifest::from_yaml::<GitRepository>(yaml)?).unwrap())
        }
        Some("HelmChart") => {
            Ok(serde_json::to_value(manifest::from_yaml::<HelmChart>(yaml)?).unwrap())
        }
        Some("HelmRepository") => {
            Ok(serde_json::to_value(manifest::from_yaml::<HelmRepository>(yaml)?).unwrap())
        }
        Some("Kustomization") => {
            Ok(serde_json::to_value(manifest::from_yaml::<Kustomization>(yaml)?).unwrap())
        }
        Some("ImageRepository") => {
            Ok(serde_json::to_value(manifest::from_yaml::<ImageRepository>(yaml)?).unwrap())
        }
        Some("ImagePolicy") => {
            Ok(serde_json::to_value(manifest::from_yaml::<ImagePolicy>(yaml)?).unwrap())
        }
        Some("ImageUpdateAutomation") => {
            Ok(serde_json::to_value(manifest::from_yaml::<ImageUpdateAutomation>(yaml)?).unwrap())
        }
        other => panic!("fixture of unknown kind {other:?}"),
    }
}

/// Every leaf of `input` must be in `output` with the same value (defaults may be added).
fn assert_contains(input: &Value, output: &Value, path: &str) {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let field = format!("{path}.{k}");
                let other = b.get(k).unwrap_or_else(|| panic!("{field} was lost"));
                assert_contains(v, other, &field);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path} changed length");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_contains(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(input, output, "{path} changed"),
    }
}

#[test]
fn every_fixture_round_trips_without_losing_a_field() {
    for path in fixtures("") {
        let yaml = std::fs::read_to_string(&path).unwrap();
        let input: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let output = round_trip(&yaml).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_contains(
            &input,
            &output,
            &path.file_name().unwrap().to_string_lossy(),
        );
        // And the output reads back as the same object.
        let again = round_trip(&serde_yaml_ng::to_string(&output).unwrap()).unwrap();
        assert_eq!(output, again, "{}", path.display());
    }
}

#[test]
fn invalid_fixtures_are_rejected_naming_the_field() {
    for path in fixtures("invalid") {
        let yaml = std::fs::read_to_string(&path).unwrap();
        let expected = yaml
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let err = round_trip(&yaml).expect_err(&format!("{} was accepted", path.display()));
        assert!(
            err.to_string().contains(expected),
            "{}: error {err:?} does not contain {expected:?}",
            path.display()
        );
    }
}

#[test]
fn defaults_are_fluxs() {
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gitrepository-https-branch.yaml"),
    )
    .unwrap();
    let repo: GitRepository = manifest::from_yaml(&yaml).unwrap();
    assert_eq!(repo.spec.timeout.as_str(), "60s");
    assert!(!repo.spec.suspend);
}

#[test]
fn image_defaults_are_fluxs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let repo: ImageRepository = manifest::from_yaml(
        &std::fs::read_to_string(dir.join("imagerepository-basic.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(repo.spec.exclusion_list, [r"^.*\.sig$"]);
    assert!(!repo.spec.insecure && !repo.spec.suspend);
    assert_eq!(repo.spec.scan_timeout(), repo.spec.interval.as_std());
    let policy: ImagePolicy = manifest::from_yaml(
        &std::fs::read_to_string(dir.join("imagepolicy-filter-numerical.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        policy.spec.digest_reflection_policy,
        weir_api::image::ReflectionPolicy::Never
    );
    let auto: ImageUpdateAutomation = manifest::from_yaml(
        &std::fs::read_to_string(dir.join("imageupdateautomation-basic.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        auto.spec.update.unwrap().strategy,
        weir_api::image::UpdateStrategyName::Setters
    );
}

/// Objects from a newer Flux read as the controllers read them (plain serde, as kube's watches
/// decode): fields Weir does not know are skipped, in spec and status alike. Validating a
/// manifest still names them.
#[test]
fn fields_from_a_newer_flux_are_read_past_by_controllers_and_named_by_validation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (file, kind) in [
        ("kustomization-with-status.yaml", "Kustomization"),
        ("gitrepository-with-status.yaml", "GitRepository"),
        ("imagepolicy-alphabetical-with-status.yaml", "ImagePolicy"),
        ("imagerepository-with-status.yaml", "ImageRepository"),
        ("imageupdateautomation-full.yaml", "ImageUpdateAutomation"),
    ] {
        let mut object: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        assert_eq!(object["kind"], kind);
        object["spec"]["newerField"] = serde_json::json!(true);
        object["status"]["newerStatusField"] = serde_json::json!([{"digest": "sha256:0"}]);
        let read = match kind {
            "Kustomization" => serde_json::from_value::<Kustomization>(object.clone()).err(),
            "GitRepository" => serde_json::from_value::<GitRepository>(object.clone()).err(),
            "ImagePolicy" => serde_json::from_value::<ImagePolicy>(object.clone()).err(),
            "ImageRepository" => serde_json::from_value::<ImageRepository>(object.clone()).err(),
            _ => serde_json::from_value::<ImageUpdateAutomation>(object.clone()).err(),
        };
        assert!(read.is_none(), "{file}: {read:?}");
        let err = round_trip(&serde_yaml_ng::to_string(&object).unwrap())
            .expect_err(&format!("{file}: validation accepted an unknown field"));
        assert!(
            err.to_string().contains("unknown field `newerField`")
                || err.to_string().contains("unknown field `newerStatusField`"),
            "{file}: {err}"
        );
    }
}
