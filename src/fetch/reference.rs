//! What a `(from IMAGE)` string names: a registry image (Docker's reference rules), a local
//! OCI layout directory (`oci:PATH[:TAG]`) or a `docker save` tarball
//! (`docker-archive:PATH[:NAME:TAG]`).
//!
//! The store keys a base image by the string exactly as written; this module only decides
//! where to get it from.

use std::path::PathBuf;

pub use oci_client::Reference;

use super::FetchError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `busybox`, `docker.io/library/busybox:latest`, `127.0.0.1:5000/x@sha256:...`.
    Registry(Reference),
    /// `oci:PATH:TAG`, or `oci:PATH` when the layout holds a single image.
    OciLayout { path: PathBuf, tag: Option<String> },
    /// `docker-archive:PATH`, or `docker-archive:PATH:NAME:TAG` to pick one of several.
    DockerArchive { path: PathBuf, image: Option<String> },
}

pub const OCI_PREFIX: &str = "oci:";
pub const DOCKER_ARCHIVE_PREFIX: &str = "docker-archive:";

fn invalid(reference: &str, reason: impl Into<String>) -> FetchError {
    FetchError::InvalidReference {
        reference: reference.to_owned(),
        reason: reason.into(),
    }
}

/// Splits `PATH[:REST]` at the first `:` (paths with a colon cannot be named, as in skopeo).
fn split_path(reference: &str, rest: &str) -> Result<(PathBuf, Option<String>), FetchError> {
    let (path, name) = match rest.split_once(':') {
        Some((path, name)) => (path, Some(name.to_owned())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(reference, "the path is empty"));
    }
    if name.as_deref() == Some("") {
        return Err(invalid(reference, "the name after the path is empty"));
    }
    Ok((PathBuf::from(path), name))
}

/// Parses an image string.
pub fn parse_source(image: &str) -> Result<ImageSource, FetchError> {
    if let Some(rest) = image.strip_prefix(OCI_PREFIX) {
        let (path, tag) = split_path(image, rest)?;
        return Ok(ImageSource::OciLayout { path, tag });
    }
    if let Some(rest) = image.strip_prefix(DOCKER_ARCHIVE_PREFIX) {
        let (path, image_name) = split_path(image, rest)?;
        return Ok(ImageSource::DockerArchive {
            path,
            image: image_name,
        });
    }
    parse_registry_reference(image).map(ImageSource::Registry)
}

/// Docker's rules: a first component with a `.` or `:` or equal to `localhost` is a
/// registry host, otherwise the image is on Docker Hub (`docker.io`), where one-component
/// names live under `library/`; no tag and no digest means `:latest`.
pub fn parse_registry_reference(image: &str) -> Result<Reference, FetchError> {
    if image.trim() != image || image.is_empty() {
        return Err(invalid(image, "empty or surrounded by whitespace"));
    }
    let reference: Reference = image
        .parse()
        .map_err(|e: oci_client::ParseError| invalid(image, e.to_string()))?;
    if let Some(digest) = reference.digest() {
        super::digest::sha256_hex_of(digest).map_err(|e| invalid(image, e))?;
    }
    Ok(reference)
}

/// The registry name a user writes for Docker Hub, whatever alias they used.
pub fn normalize_registry(registry: &str) -> String {
    let lower = registry.trim_end_matches('/').to_ascii_lowercase();
    match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        _ => lower,
    }
}

/// True for hosts that never leave the machine: 127.0.0.0/8, ::1 and localhost, with or
/// without a port.
pub fn is_loopback_host(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host_port.matches(':').count() > 1 {
        // A bare IPv6 address without a port.
        host_port
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(s: &str) -> String {
        parse_registry_reference(s).unwrap().whole()
    }

    #[test]
    fn docker_hub_short_names() {
        assert_eq!(whole("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(whole("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(whole("ocaml/opam:debian"), "docker.io/ocaml/opam:debian");
        assert_eq!(whole("docker.io/busybox"), "docker.io/library/busybox:latest");
    }

    #[test]
    fn registry_hosts_and_ports() {
        let r = parse_registry_reference("127.0.0.1:5000/library/busybox:latest").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("latest"));
        let r = parse_registry_reference("localhost/foo").unwrap();
        assert_eq!(r.registry(), "localhost");
        assert_eq!(r.repository(), "foo");
        let r = parse_registry_reference("quay.io/a/b/c:v1").unwrap();
        assert_eq!((r.registry(), r.repository()), ("quay.io", "a/b/c"));
    }

    #[test]
    fn digests_are_kept_and_checked() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = parse_registry_reference(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.tag(), None);
        let r = parse_registry_reference(&format!("busybox:1@{d}")).unwrap();
        assert_eq!((r.tag(), r.digest()), (Some("1"), Some(d.as_str())));
        assert!(parse_registry_reference("busybox@sha256:1234").is_err());
    }

    #[test]
    fn bad_references() {
        for bad in ["", "Busybox", "busybox:", " busybox", "a b", "busybox:tag:extra"] {
            assert!(
                matches!(parse_registry_reference(bad), Err(FetchError::InvalidReference { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn offline_sources() {
        assert_eq!(
            parse_source("oci:/tmp/img:latest").unwrap(),
            ImageSource::OciLayout {
                path: "/tmp/img".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            parse_source("oci:rel/dir").unwrap(),
            ImageSource::OciLayout {
                path: "rel/dir".into(),
                tag: None
            }
        );
        assert_eq!(
            parse_source("docker-archive:/x/b.tar:busybox:latest").unwrap(),
            ImageSource::DockerArchive {
                path: "/x/b.tar".into(),
                image: Some("busybox:latest".into())
            }
        );
        assert!(parse_source("oci:").is_err());
        assert!(parse_source("oci:/p:").is_err());
        assert!(matches!(parse_source("busybox").unwrap(), ImageSource::Registry(_)));
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:80",
            "LOCALHOST",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["10.0.0.1:5000", "docker.io", "localhost.example.com", "[::2]:1"] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert_eq!(normalize_registry("index.docker.io"), "docker.io");
        assert_eq!(normalize_registry("Quay.io"), "quay.io");
    }
}
