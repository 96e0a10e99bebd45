//! Store specs, in OBuilder's syntax: `btrfs:/path`, `zfs:POOL`, `zfs:/PREFIX/POOL`,
//! `rsync:/path`, `xfs:/path`, `overlayfs:/path`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::StoreError;

/// `--rsync-mode`, accepted for OBuilder compatibility (`copy`, `hardlink`,
/// `hardlink_unsafe`). strata's copy store always copies (hard links between items would let
/// one step's in-place edit change another's result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsyncMode {
    #[default]
    Copy,
    Hardlink,
    HardlinkUnsafe,
}

impl FromStr for RsyncMode {
    type Err = String;

    /// OBuilder's spellings, and `hardlink-unsafe` as well.
    fn from_str(text: &str) -> Result<RsyncMode, String> {
        match text {
            "copy" => Ok(RsyncMode::Copy),
            "hardlink" => Ok(RsyncMode::Hardlink),
            "hardlink_unsafe" | "hardlink-unsafe" => Ok(RsyncMode::HardlinkUnsafe),
            other => Err(format!(
                "unknown rsync mode {other:?}: expected copy, hardlink or hardlink_unsafe"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Btrfs(PathBuf),
    /// `pool` is the pool (or dataset) name; `mount_prefix` is where the pool is mounted
    /// (`/` by default, so pool `tank` lives at `/tank`).
    Zfs {
        pool: String,
        mount_prefix: PathBuf,
    },
    Rsync {
        path: PathBuf,
        mode: RsyncMode,
    },
    Xfs(PathBuf),
    Overlayfs(PathBuf),
}

const EXPECTED: &str = "expected btrfs:/PATH, zfs:POOL, zfs:/PREFIX/POOL, rsync:/PATH, xfs:/PATH or overlayfs:/PATH";

impl StoreSpec {
    /// The directory the store lives in (for ZFS, the pool's mount point).
    pub fn path(&self) -> PathBuf {
        match self {
            StoreSpec::Btrfs(p) | StoreSpec::Xfs(p) | StoreSpec::Overlayfs(p) => p.clone(),
            StoreSpec::Rsync { path, .. } => path.clone(),
            StoreSpec::Zfs { pool, mount_prefix } => mount_prefix.join(pool),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StoreSpec::Btrfs(_) => "btrfs",
            StoreSpec::Zfs { .. } => "zfs",
            StoreSpec::Rsync { .. } => "rsync",
            StoreSpec::Xfs(_) => "xfs",
            StoreSpec::Overlayfs(_) => "overlayfs",
        }
    }

    pub fn with_rsync_mode(self, mode: RsyncMode) -> StoreSpec {
        match self {
            StoreSpec::Rsync { path, .. } => StoreSpec::Rsync { path, mode },
            other => other,
        }
    }
}

fn absolute(spec: &str, rest: &str) -> Result<PathBuf, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidSpec {
        spec: spec.to_owned(),
        reason: reason.to_owned(),
    };
    if rest.is_empty() {
        return Err(invalid("the path is empty"));
    }
    if rest.contains('\0') {
        return Err(invalid("the path contains a NUL byte"));
    }
    let path = Path::new(rest);
    if !path.is_absolute() {
        return Err(invalid("the path must be absolute"));
    }
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(invalid("the path must not contain `..`"));
    }
    Ok(path.to_path_buf())
}

fn zfs_pool_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
        && !name.split('/').any(|c| c.is_empty() || c == "." || c == "..")
}

impl FromStr for StoreSpec {
    type Err = StoreError;

    /// Every refusal names the spec and says what is expected.
    fn from_str(spec: &str) -> Result<StoreSpec, StoreError> {
        parse(spec).map_err(|e| match e {
            StoreError::InvalidSpec { spec, reason } if !reason.contains(EXPECTED) => StoreError::InvalidSpec {
                spec,
                reason: format!("{reason}; {EXPECTED}"),
            },
            other => other,
        })
    }
}

fn parse(spec: &str) -> Result<StoreSpec, StoreError> {
    let invalid = |reason: String| StoreError::InvalidSpec {
        spec: spec.to_owned(),
        reason,
    };
    let Some((kind, rest)) = spec.split_once(':') else {
        return Err(invalid(EXPECTED.to_owned()));
    };
    match kind {
        "btrfs" => Ok(StoreSpec::Btrfs(absolute(spec, rest)?)),
        "rsync" => Ok(StoreSpec::Rsync {
            path: absolute(spec, rest)?,
            mode: RsyncMode::Copy,
        }),
        "xfs" => Ok(StoreSpec::Xfs(absolute(spec, rest)?)),
        "overlayfs" => Ok(StoreSpec::Overlayfs(absolute(spec, rest)?)),
        "zfs" => {
            let (mount_prefix, pool) = if rest.starts_with('/') {
                let path = absolute(spec, rest)?;
                let pool = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| invalid("no pool name after the prefix".to_owned()))?
                    .to_owned();
                let prefix = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                (prefix, pool)
            } else {
                (PathBuf::from("/"), rest.to_owned())
            };
            if !zfs_pool_name_ok(&pool) {
                return Err(invalid(format!("{pool:?} is not a valid ZFS pool or dataset name")));
            }
            Ok(StoreSpec::Zfs { pool, mount_prefix })
        }
        "docker" => Err(invalid(format!(
            "OBuilder's docker store (items kept as Docker images) is not supported: strata needs \
                 no Docker; use a directory store instead, e.g. `overlayfs:/var/lib/strata` (any \
                 filesystem) or `btrfs:/PATH`; {EXPECTED}"
        ))),
        "qemu" | "hcs" => Err(invalid(format!(
            "OBuilder's {kind} store is not supported by strata (Linux containers only); {EXPECTED}"
        ))),
        other => Err(invalid(format!("unknown store type {other:?}; {EXPECTED}"))),
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Zfs { pool, mount_prefix } if mount_prefix == Path::new("/") => write!(f, "zfs:{pool}"),
            StoreSpec::Zfs { pool, mount_prefix } => write!(f, "zfs:{}", mount_prefix.join(pool).display()),
            other => write!(f, "{}:{}", other.kind(), other.path().display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_obuilder_syntax() {
        assert_eq!(
            "btrfs:/var/lib/strata".parse::<StoreSpec>().unwrap(),
            StoreSpec::Btrfs("/var/lib/strata".into())
        );
        assert_eq!(
            "zfs:tank".parse::<StoreSpec>().unwrap(),
            StoreSpec::Zfs {
                pool: "tank".into(),
                mount_prefix: "/".into()
            }
        );
        assert_eq!(
            "zfs:/Volumes/tank".parse::<StoreSpec>().unwrap(),
            StoreSpec::Zfs {
                pool: "tank".into(),
                mount_prefix: "/Volumes".into()
            }
        );
        assert_eq!("overlayfs:/x".parse::<StoreSpec>().unwrap().to_string(), "overlayfs:/x");
        assert_eq!(
            "zfs:/Volumes/tank".parse::<StoreSpec>().unwrap().to_string(),
            "zfs:/Volumes/tank"
        );
    }

    #[test]
    fn docker_store_says_what_to_use_instead() {
        let err = "docker:/var/lib/obuilder".parse::<StoreSpec>().unwrap_err().to_string();
        assert!(err.contains("\"docker:/var/lib/obuilder\""), "{err}");
        assert!(err.contains("Docker") && err.contains("overlayfs:/"), "{err}");
    }

    #[test]
    fn rsync_modes_in_obuilder_spelling() {
        for (text, mode) in [
            ("copy", RsyncMode::Copy),
            ("hardlink", RsyncMode::Hardlink),
            ("hardlink_unsafe", RsyncMode::HardlinkUnsafe),
            ("hardlink-unsafe", RsyncMode::HardlinkUnsafe),
        ] {
            assert_eq!(text.parse::<RsyncMode>().unwrap(), mode);
        }
        assert!("reflink".parse::<RsyncMode>().unwrap_err().contains("hardlink_unsafe"));
    }

    #[test]
    fn rejects_bad_specs_with_reason() {
        for bad in [
            "",
            "btrfs",
            "btrfs:",
            "btrfs:relative",
            "nfs:/x",
            "rsync:/a/../b",
            "zfs:",
            "zfs:../x",
            "zfs:/",
            "xfs:/a\0b",
            "docker:/var/lib/obuilder",
            "qemu:/x",
        ] {
            let err = bad.parse::<StoreSpec>().unwrap_err();
            assert!(err.to_string().contains("invalid store spec"), "{bad}: {err}");
        }
    }
}
