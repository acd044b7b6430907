use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::git::run;

/// The harness's Helm chart repository: a directory served over HTTP with `index.yaml` at
/// its root.
#[derive(Debug)]
pub struct ChartRepository {
    pub(crate) url: String,
    pub(crate) dir: PathBuf,
    pub(crate) helm: PathBuf,
}

impl ChartRepository {
    /// The repository URL, as a HelmRepository's `spec.url` takes it.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of the repository index.
    #[must_use]
    pub fn index_url(&self) -> String {
        format!("{}/index.yaml", self.url)
    }

    /// The directory the server serves.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Packages `chart` with the pinned helm and adds it to the index.
    pub fn publish(&self, chart: &Chart) -> Result<(), Error> {
        let scratch = tempfile::tempdir().map_err(Error::io("making a chart scratch directory"))?;
        let chart_dir = chart.write_to(scratch.path())?;
        self.publish_dir(&chart_dir)
    }

    /// Packages the chart in `chart_dir` (a directory with `Chart.yaml`) with the pinned helm
    /// and adds it to the index, as `e2e/harness/publish-chart.sh` does, but for the harness
    /// this process uses.
    pub fn publish_dir(&self, chart_dir: &Path) -> Result<(), Error> {
        // `helm repo index` rewrites index.yaml from the packages it finds; two publishers
        // indexing at once could each miss the other's package. The lock serializes them across
        // threads and test processes.
        let lock_path = self.dir.with_extension("publish.lock");
        let lock = File::create(&lock_path)
            .map_err(Error::io(format!("opening {}", lock_path.display())))?;
        lock.lock()
            .map_err(Error::io(format!("locking {}", lock_path.display())))?;

        // Helm's own config and cache stay out of the user's home.
        let helm_home = tempfile::tempdir().map_err(Error::io("making a helm home"))?;
        let helm = || {
            let mut command = Command::new(&self.helm);
            command
                .env("HELM_CONFIG_HOME", helm_home.path().join("config"))
                .env("HELM_CACHE_HOME", helm_home.path().join("cache"))
                .env("HELM_DATA_HOME", helm_home.path().join("data"));
            command
        };
        run(helm()
            .arg("package")
            .arg(chart_dir)
            .arg("--destination")
            .arg(&self.dir))?;
        run(helm()
            .args(["repo", "index"])
            .arg(&self.dir)
            .args(["--url", &self.url]))?;
        Ok(())
    }
}

/// A minimal Helm chart: `Chart.yaml`, `values.yaml` and templates. By default one template
/// makes a ConfigMap `<release>-<chart>` whose `data.message` is the value `message`.
#[derive(Debug, Clone)]
pub struct Chart {
    name: String,
    version: String,
    values: String,
    templates: BTreeMap<String, String>,
    files: BTreeMap<String, String>,
}

impl Chart {
    /// A chart `name` at `version` (semver). Charts share one repository across tests: use
    /// [`crate::unique_name`] for `name`.
    #[must_use]
    pub fn new(name: &str, version: &str) -> Self {
        let configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-{{ .Chart.Name }}\ndata:\n  message: {{ .Values.message | quote }}\n  chartVersion: {{ .Chart.Version | quote }}\n";
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            values: "message: hello from weir-e2e\n".to_owned(),
            templates: BTreeMap::from([("configmap.yaml".to_owned(), configmap.to_owned())]),
            files: BTreeMap::new(),
        }
    }

    /// Replaces `values.yaml`.
    #[must_use]
    pub fn values(mut self, yaml: &str) -> Self {
        yaml.clone_into(&mut self.values);
        self
    }

    /// Adds or replaces `templates/<file>`.
    #[must_use]
    pub fn template(mut self, file: &str, content: &str) -> Self {
        self.templates.insert(file.to_owned(), content.to_owned());
        self
    }

    /// Removes `templates/<file>` (such as the default `configmap.yaml`).
    #[must_use]
    pub fn without_template(mut self, file: &str) -> Self {
        self.templates.remove(file);
        self
    }

    /// Adds a file at `path` from the chart's root, such as `values.schema.json` or
    /// `crds/widgets.yaml`.
    #[must_use]
    pub fn file(mut self, path: &str, content: &str) -> Self {
        self.files.insert(path.to_owned(), content.to_owned());
        self
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    #[must_use]
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Writes the chart into `<parent>/<name>/` and returns that directory.
    pub fn write_to(&self, parent: &Path) -> Result<PathBuf, Error> {
        let dir = parent.join(&self.name);
        let templates = dir.join("templates");
        std::fs::create_dir_all(&templates)
            .map_err(Error::io(format!("making {}", templates.display())))?;
        let chart_yaml = format!(
            "apiVersion: v2\nname: {}\nversion: {}\nappVersion: \"{}\"\ntype: application\ndescription: A chart made by a Weir test.\n",
            self.name, self.version, self.version
        );
        let mut files = vec![
            (dir.join("Chart.yaml"), chart_yaml.as_str()),
            (dir.join("values.yaml"), self.values.as_str()),
        ];
        for (file, content) in &self.templates {
            files.push((templates.join(file), content.as_str()));
        }
        for (file, content) in &self.files {
            files.push((dir.join(file), content.as_str()));
        }
        for (path, content) in files {
            // Files may be in directories of their own (`crds/…`).
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(Error::io(format!("making {}", parent.display())))?;
            }
            std::fs::write(&path, content)
                .map_err(Error::io(format!("writing {}", path.display())))?;
        }
        Ok(dir)
    }
}
