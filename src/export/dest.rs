//! Where an export goes, in skopeo's transport syntax (as `(from ...)` reads images):
//! `oci:DIR[:TAG]`, `docker-archive:FILE[:NAME:TAG]`, `tar:FILE`, `-` (a rootfs tar on
//! stdout) and `docker://HOST/NAME[:TAG]`.

use std::path::PathBuf;

use oci_client::Reference;

use super::ExportError;

/// The tag an `oci:DIR` destination gets when it names none.
pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// An OCI image layout directory; the image is tagged `tag` in its `index.json`.
    Oci { dir: PathBuf, tag: String },
    /// A `docker save` tarball; `name` (`NAME:TAG`) goes into its `RepoTags`.
    DockerArchive { file: PathBuf, name: Option<String> },
    /// A plain tar of the whole rootfs; `None` is stdout.
    Tar { file: Option<PathBuf> },
    /// A push to a registry.
    Registry(Reference),
}

fn bad(dest: &str, reason: impl Into<String>) -> ExportError {
    ExportError::BadDest {
        dest: dest.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `PATH[:REST]` at the first `:` (a path with a colon cannot be named, as in skopeo).
fn split_path<'a>(dest: &str, rest: &'a str) -> Result<(PathBuf, Option<&'a str>), ExportError> {
    let (path, name) = match rest.split_once(':') {
        Some((path, name)) => (path, Some(name)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(bad(dest, "the path is empty"));
    }
    if name == Some("") {
        return Err(bad(dest, "the name after the path is empty"));
    }
    Ok((PathBuf::from(path), name))
}

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl std::str::FromStr for Dest {
    type Err = ExportError;

    fn from_str(dest: &str) -> Result<Dest, ExportError> {
        if dest == "-" {
            return Ok(Dest::Tar { file: None });
        }
        if let Some(rest) = dest.strip_prefix("oci:") {
            let (dir, tag) = split_path(dest, rest)?;
            let tag = tag.unwrap_or(DEFAULT_TAG).to_owned();
            if !valid_tag(&tag) {
                return Err(bad(dest, format!("{tag:?} is not a valid tag")));
            }
            return Ok(Dest::Oci { dir, tag });
        }
        if let Some(rest) = dest.strip_prefix("docker-archive:") {
            let (file, name) = split_path(dest, rest)?;
            if let Some(name) = name {
                name.parse::<Reference>()
                    .map_err(|e| bad(dest, format!("{name:?} is not an image name: {e}")))?;
                if name.contains('@') {
                    return Err(bad(dest, "a docker-archive name is NAME:TAG, without a digest"));
                }
            }
            return Ok(Dest::DockerArchive {
                file,
                name: name.map(str::to_owned),
            });
        }
        if let Some(rest) = dest.strip_prefix("tar:") {
            if rest.is_empty() {
                return Err(bad(dest, "the path is empty"));
            }
            let file = (rest != "-").then(|| PathBuf::from(rest));
            return Ok(Dest::Tar { file });
        }
        if let Some(rest) = dest.strip_prefix("docker://") {
            let reference: Reference = rest
                .parse()
                .map_err(|e: oci_client::ParseError| bad(dest, e.to_string()))?;
            if reference.digest().is_some() {
                return Err(bad(dest, "a push names a tag, not a digest"));
            }
            return Ok(Dest::Registry(reference));
        }
        Err(bad(
            dest,
            "expected oci:DIR[:TAG], docker-archive:FILE[:NAME:TAG], tar:FILE, - or docker://HOST/NAME[:TAG]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Dest {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn transports() {
        assert_eq!(
            parse("oci:/tmp/x:v1"),
            Dest::Oci {
                dir: "/tmp/x".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(
            parse("oci:out"),
            Dest::Oci {
                dir: "out".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(
            parse("docker-archive:/tmp/a.tar:x:y"),
            Dest::DockerArchive {
                file: "/tmp/a.tar".into(),
                name: Some("x:y".into())
            }
        );
        assert_eq!(
            parse("docker-archive:a.tar"),
            Dest::DockerArchive {
                file: "a.tar".into(),
                name: None
            }
        );
        assert_eq!(parse("-"), Dest::Tar { file: None });
        assert_eq!(parse("tar:-"), Dest::Tar { file: None });
        assert_eq!(
            parse("tar:/tmp/r.tar"),
            Dest::Tar {
                file: Some("/tmp/r.tar".into())
            }
        );
        let Dest::Registry(r) = parse("docker://127.0.0.1:5000/x:y") else {
            panic!("not a registry")
        };
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "x");
        assert_eq!(r.tag(), Some("y"));
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "out",
            "oci:",
            "oci::tag",
            "oci:dir:",
            "oci:dir:bad tag",
            "docker-archive:",
            "docker-archive:f:",
            "docker-archive:f:Bad Name",
            "tar:",
            "docker://",
            "docker://127.0.0.1:5000/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "dir:/tmp/x",
        ] {
            assert!(bad.parse::<Dest>().is_err(), "{bad:?} accepted");
        }
    }
}
