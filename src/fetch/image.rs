//! Pieces of an image shared by every source: the platform choice in an index, the
//! image config, and which layer media types strata can unpack.

use oci_client::manifest::ImageIndexEntry;

use super::FetchError;

/// An OS/architecture pair (with an optional variant such as `v8`) as written in indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The machine strata runs on, in Go's GOOS/GOARCH names as registries use them.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }

    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && match (&self.variant, variant) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            }
    }
}

impl Default for Platform {
    fn default() -> Platform {
        Platform::host()
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    /// `OS/ARCH[/VARIANT]`, e.g. `linux/arm64/v8`.
    fn from_str(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts.get(2).filter(|v| !v.is_empty()).map(|v| v.to_string()),
            }),
            _ => Err(format!("platform {s:?} is not OS/ARCH[/VARIANT]")),
        }
    }
}

/// The index entry for `platform`: an exact variant match first, then any entry of the
/// right OS and architecture.
pub fn select_platform<'a>(entries: &'a [ImageIndexEntry], platform: &Platform) -> Option<&'a ImageIndexEntry> {
    let candidates = entries.iter().filter(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| platform.matches(&p.os.to_string(), &p.architecture.to_string(), p.variant.as_deref()))
    });
    let mut first = None;
    for entry in candidates {
        let variant = entry.platform.as_ref().and_then(|p| p.variant.as_deref());
        if platform.variant.is_some() && variant == platform.variant.as_deref() {
            return Some(entry);
        }
        first.get_or_insert(entry);
    }
    first
}

/// The platforms an index offers, for error messages.
pub fn offered_platforms(entries: &[ImageIndexEntry]) -> String {
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| format!("{}/{}", p.os, p.architecture))
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// What strata reads from an image config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedConfig {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub diff_ids: Vec<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawConfig {
    config: Option<RawRunConfig>,
    rootfs: Option<RawRootfs>,
    os: Option<String>,
    architecture: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(serde::Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Parses an image config. Each `Env` entry is split at its first `=`; an entry without
/// one is refused (as OBuilder does).
pub fn parse_config(bytes: &[u8], reference: &str) -> Result<ParsedConfig, FetchError> {
    let unavailable = |reason: String| FetchError::Unavailable {
        reference: reference.to_owned(),
        reason,
    };
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| unavailable(format!("the image config is not valid: {}", json_problem(&e))))?;
    let run = raw.config.unwrap_or(RawRunConfig {
        env: None,
        working_dir: None,
        user: None,
    });
    let mut env = Vec::new();
    for entry in run.env.unwrap_or_default() {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(unavailable(format!(
                "the image config's env entry {entry:?} has no `=`"
            )));
        };
        env.push((key.to_owned(), value.to_owned()));
    }
    Ok(ParsedConfig {
        env,
        workdir: run.working_dir.filter(|w| !w.is_empty()),
        user: run.user.filter(|u| !u.is_empty()),
        diff_ids: raw.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
        os: raw.os,
        architecture: raw.architecture,
    })
}

/// What is wrong with a JSON document, without quoting any of it (serde's messages quote
/// values, and the document may be a host file a spec named): the kind and the position.
pub fn json_problem(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "not of the expected shape",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{kind} (line {}, column {})", e.line(), e.column())
}

/// Accepts the tar layer media types of OCI and Docker; refuses foreign (non-distributable)
/// and unknown ones. Compression is detected from the bytes, not the name.
pub fn check_layer_media_type(media_type: &str) -> Result<(), String> {
    const ACCEPTED: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
    ];
    if ACCEPTED.contains(&media_type) {
        Ok(())
    } else {
        Err(format!("unsupported layer media type {media_type:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> ImageIndexEntry {
        serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1,
            "platform": {"os": os, "architecture": arch, "variant": variant},
        }))
        .unwrap()
    }

    #[test]
    fn picks_the_platform() {
        let entries = vec![
            entry("linux", "arm64", Some("v8"), "a"),
            entry("linux", "amd64", None, "b"),
            entry("windows", "amd64", None, "c"),
        ];
        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(select_platform(&entries, &amd64).unwrap().digest, "b");
        let arm: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(select_platform(&entries, &arm).unwrap().digest, "a");
        let s390: Platform = "linux/s390x".parse().unwrap();
        assert!(select_platform(&entries, &s390).is_none());
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn host_platform_here() {
        #[cfg(target_arch = "x86_64")]
        assert_eq!(Platform::host().to_string(), "linux/amd64");
    }

    #[test]
    fn config_env() {
        let c = parse_config(
            br#"{"config": {"Env": ["PATH=/bin:/usr/bin", "A=b=c"], "WorkingDir": "/w", "User": ""},
                 "rootfs": {"type": "layers", "diff_ids": ["sha256:x"]}, "os": "linux", "architecture": "amd64"}"#,
            "img",
        )
        .unwrap();
        assert_eq!(
            c.env,
            vec![("PATH".into(), "/bin:/usr/bin".into()), ("A".into(), "b=c".into())]
        );
        assert_eq!(c.workdir.as_deref(), Some("/w"));
        assert_eq!(c.user, None);
        assert_eq!(c.diff_ids, vec!["sha256:x".to_owned()]);
        assert!(parse_config(br#"{"config": {"Env": ["NOEQUALS"]}}"#, "img").is_err());
        assert_eq!(parse_config(b"{}", "img").unwrap(), ParsedConfig::default());
    }
}
