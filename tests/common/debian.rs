//! A real distribution for end-to-end tests: Debian bookworm made by `mmdebstrap
//! --variant=minbase` (`scripts/fixtures/debian-image`), cached between runs, offered as a
//! docker-archive, an OCI layout and (optionally) in a registry. Torn down on drop, except
//! for the cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use strata_testkit::ScriptFixture;

pub struct DebianImage {
    /// `docker-archive:` this path: one layer, a config without Env.
    pub docker_archive: PathBuf,
    /// `oci:` this layout, tag [`DebianImage::oci_tag`].
    pub oci_layout: PathBuf,
    pub oci_tag: String,
    /// `HOST:PORT/library/debian:bookworm`, when the image was pushed to a registry.
    pub registry_image: Option<String>,
    fixture: ScriptFixture,
}

impl DebianImage {
    /// The docker-archive and the OCI layout only.
    pub fn local() -> DebianImage {
        DebianImage::create(&["--no-registry"])
    }

    /// Also pushed to the registry at `addr` (`127.0.0.1:PORT`) as `library/debian:bookworm`.
    pub fn pushed_to(addr: &str) -> DebianImage {
        DebianImage::create(&["--registry", addr])
    }

    fn create(args: &[&str]) -> DebianImage {
        let fixture = ScriptFixture::create("debian-image", args).unwrap_or_else(|e| {
            panic!("the Debian image fixture (it needs mmdebstrap: run scripts/setup, and Debian's mirror): {e}")
        });
        let values: HashMap<&str, &str> = fixture.output.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |key: &str| -> String {
            values
                .get(key)
                .unwrap_or_else(|| panic!("debian-image printed no {key}: {:?}", fixture.output))
                .to_string()
        };
        DebianImage {
            docker_archive: PathBuf::from(get("DOCKER_ARCHIVE")),
            oci_layout: PathBuf::from(get("OCI_LAYOUT")),
            oci_tag: get("OCI_TAG"),
            registry_image: values.get("REGISTRY_IMAGE").map(|s| s.to_string()),
            fixture,
        }
    }

    /// The directory to pass to `--allow-local-images` (it holds both local forms).
    pub fn dir(&self) -> &Path {
        self.fixture.dir()
    }

    /// `docker-archive:PATH`, for a spec's `from`.
    pub fn docker_archive_ref(&self) -> String {
        format!("docker-archive:{}", self.docker_archive.display())
    }

    /// `oci:PATH:TAG`, for a spec's `from`.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.oci_layout.display(), self.oci_tag)
    }
}

/// One step of a `--progress json` build: its heading, the output it printed, its result.
#[derive(Debug)]
pub struct JsonStep {
    pub heading: String,
    pub output: String,
    pub id: String,
    pub cached: bool,
    pub seconds: f64,
}

/// The steps of a build's `--progress json` stderr, in order. The heading of a step is the
/// last one before it (a `workdir` has a heading but no step); its output is every `output`
/// event since the previous step.
pub fn json_steps(stderr: &str) -> Vec<JsonStep> {
    let mut steps = Vec::new();
    let mut heading = String::new();
    let mut output = String::new();
    // Log lines (warnings) share stderr with the events: only `{...}` lines are events.
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON event: {line:?}: {e}"));
        let text = event["text"].as_str().unwrap_or_default();
        match event["event"].as_str() {
            Some("heading") => heading = text.to_owned(),
            Some("output") => output.push_str(text),
            Some("step") => steps.push(JsonStep {
                heading: std::mem::take(&mut heading),
                output: std::mem::take(&mut output),
                id: event["id"].as_str().unwrap_or_default().to_owned(),
                cached: event["cached"]
                    .as_bool()
                    .expect("a step event says whether it was cached"),
                seconds: event["seconds"].as_f64().unwrap_or_default(),
            }),
            _ => {}
        }
    }
    steps
}
