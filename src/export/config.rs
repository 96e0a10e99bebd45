//! The image config and manifest of an export: the build's environment, working directory
//! and user, one history entry per step (its op), the layers' diff ids, and a fixed
//! creation time, so the same item always gives the same bytes.

use serde::Serialize;

use super::layer::Times;
use crate::catalog::export_view::StepContext;
use crate::fetch::image::Platform;
use crate::fetch::ImageConfig;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// What the exported image runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSettings {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

impl RunSettings {
    /// The context the item's last run or copy step recorded; without one (a bare base, or
    /// items built before strata recorded contexts), the base image's own settings.
    pub fn new(image: &ImageConfig, context: Option<&StepContext>) -> RunSettings {
        match context {
            Some(c) => RunSettings {
                env: c.env.clone(),
                workdir: Some(c.workdir.clone()),
                user: Some(format!("{}:{}", c.uid, c.gid)),
            },
            None => RunSettings {
                env: image.env.clone(),
                workdir: image.workdir.clone(),
                user: image.user.clone(),
            },
        }
    }
}

/// One step of the image's history.
#[derive(Debug, Clone)]
pub struct Step {
    pub op: String,
    /// False for steps folded into a later layer (`--squash`).
    pub has_layer: bool,
}

/// A blob as a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    config: RunConfigJson,
    rootfs: RootfsJson<'a>,
    history: Vec<HistoryJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfigJson {
    env: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Serialize)]
struct RootfsJson<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: &'a [String],
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    created: &'a str,
    created_by: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    empty_layer: bool,
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
}

/// RFC 3339 (UTC, whole seconds) of a Unix time.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The image config's bytes.
pub fn config_json(settings: &RunSettings, steps: &[Step], diff_ids: &[String], times: Times) -> Vec<u8> {
    let created = rfc3339(times.epoch);
    let platform = Platform::host();
    let config = ConfigJson {
        created: &created,
        architecture: &platform.architecture,
        os: &platform.os,
        config: RunConfigJson {
            env: settings.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            working_dir: settings.workdir.clone(),
            user: settings.user.clone(),
        },
        rootfs: RootfsJson {
            kind: "layers",
            diff_ids,
        },
        history: steps
            .iter()
            .map(|s| HistoryJson {
                created: &created,
                created_by: &s.op,
                empty_layer: !s.has_layer,
            })
            .collect(),
    };
    // Serialising plain strings and vectors cannot fail.
    serde_json::to_vec(&config).unwrap_or_default()
}

/// The OCI manifest's bytes.
pub fn manifest_json(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        config,
        layers,
    };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn config_is_stable() {
        let settings = RunSettings {
            env: vec![("A".into(), "1".into())],
            workdir: Some("/app".into()),
            user: Some("1000:1000".into()),
        };
        let steps = vec![
            Step {
                op: "(from busybox)".into(),
                has_layer: false,
            },
            Step {
                op: "(run (shell true))".into(),
                has_layer: true,
            },
        ];
        let times = Times { epoch: 0, keep: false };
        let a = config_json(&settings, &steps, &["sha256:x".into()], times);
        assert_eq!(a, config_json(&settings, &steps, &["sha256:x".into()], times));
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["config"]["Env"][0], "A=1");
        assert_eq!(v["config"]["WorkingDir"], "/app");
        assert_eq!(v["config"]["User"], "1000:1000");
        assert_eq!(v["history"][0]["empty_layer"], true);
        assert!(v["history"][1].get("empty_layer").is_none());
        assert_eq!(v["created"], "1970-01-01T00:00:00Z");
    }
}
