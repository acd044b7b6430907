//! Writes Weir's CRDs to `crds/` (or the directory given as the first argument): `make crds`.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let dir = std::env::args_os().nth(1).map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("crds")
        },
        PathBuf::from,
    );
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("crdgen: cannot create {}: {error}", dir.display());
        return ExitCode::FAILURE;
    }
    let crds = weir_api::crd::all();
    let index = dir.join("kustomization.yaml");
    if let Err(error) = std::fs::write(&index, weir_api::crd::kustomization_yaml(&crds)) {
        eprintln!("crdgen: cannot write {}: {error}", index.display());
        return ExitCode::FAILURE;
    }
    for crd in crds {
        let path = dir.join(weir_api::crd::file_name(&crd));
        let written = weir_api::crd::to_yaml(&crd)
            .map_err(|e| e.to_string())
            .and_then(|yaml| std::fs::write(&path, yaml).map_err(|e| e.to_string()));
        if let Err(error) = written {
            eprintln!("crdgen: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
