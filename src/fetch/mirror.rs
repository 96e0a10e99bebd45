//! Registry mirrors and the HTTP/HTTPS decision.
//!
//! `--registry-mirror REGISTRY=URL` (repeatable) and `STRATA_REGISTRY_MIRROR`
//! (comma-separated, same syntax) redirect every pull from REGISTRY to URL; the image keeps
//! its name. Plain HTTP is used only for loopback hosts (127.0.0.0/8, ::1, localhost) and
//! for hosts listed with `--insecure-registry`; everything else is HTTPS.

use super::reference::{is_loopback_host, normalize_registry, Reference};
use super::FetchError;

pub const MIRROR_ENV: &str = "STRATA_REGISTRY_MIRROR";

fn invalid(value: &str, reason: impl Into<String>) -> FetchError {
    FetchError::InvalidReference {
        reference: value.to_owned(),
        reason: reason.into(),
    }
}

/// A mirror URL reduced to what the registry client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`, as the client puts it in URLs.
    pub host: String,
    /// Plain HTTP (only ever true for a loopback or explicitly insecure host).
    pub http: bool,
}

/// Parses one `REGISTRY=URL` pair. URL is `http://HOST[:PORT]`, `https://HOST[:PORT]` or
/// a bare `HOST[:PORT]` (HTTPS); a path is not supported.
pub fn parse_mirror(value: &str) -> Result<(String, String), FetchError> {
    let Some((registry, url)) = value.split_once('=') else {
        return Err(invalid(value, "a registry mirror is written REGISTRY=URL"));
    };
    let registry = registry.trim();
    let url = url.trim();
    if registry.is_empty() || registry.contains('/') {
        return Err(invalid(
            value,
            "the registry before `=` must be a host name such as docker.io",
        ));
    }
    split_url(url).map_err(|reason| invalid(value, reason))?;
    Ok((normalize_registry(registry), url.trim_end_matches('/').to_owned()))
}

/// `(host, scheme_is_http)` of a mirror URL.
fn split_url(url: &str) -> Result<(String, bool), String> {
    let (http, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else if url.contains("://") {
        return Err(format!("mirror URL {url:?} must use http or https"));
    } else {
        (false, url)
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() {
        return Err(format!("mirror URL {url:?} has no host"));
    }
    if host.contains('/') || host.contains('?') || host.contains('#') || host.contains('@') {
        return Err(format!("mirror URL {url:?} must be just a scheme and a host[:port]"));
    }
    Ok((host.to_ascii_lowercase(), http))
}

/// Every mirror from the command line first, then from `STRATA_REGISTRY_MIRROR` (`env`).
/// Empty items (a trailing comma) are ignored.
pub fn parse_mirrors(args: &[String], env: Option<&str>) -> Result<Vec<(String, String)>, FetchError> {
    let mut mirrors = Vec::new();
    for arg in args {
        mirrors.push(parse_mirror(arg)?);
    }
    if let Some(env) = env {
        for item in env.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            mirrors.push(parse_mirror(item)?);
        }
    }
    Ok(mirrors)
}

/// Whether plain HTTP may be used for `host`.
pub fn http_allowed(host: &str, insecure_registries: &[String]) -> bool {
    is_loopback_host(host)
        || insecure_registries
            .iter()
            .any(|h| normalize_registry(h) == normalize_registry(host))
}

/// Where the pull of `reference` really goes: the first mirror configured for its registry,
/// or the registry itself.
pub fn endpoint_for(
    reference: &Reference,
    mirrors: &[(String, String)],
    insecure_registries: &[String],
) -> Result<Endpoint, FetchError> {
    let registry = normalize_registry(reference.registry());
    if let Some((_, url)) = mirrors.iter().find(|(r, _)| *r == registry) {
        let (host, http) = split_url(url).map_err(|reason| invalid(url, reason))?;
        if http && !http_allowed(&host, insecure_registries) {
            return Err(invalid(
                url,
                format!("mirror {host} is plain HTTP but neither loopback nor an --insecure-registry"),
            ));
        }
        return Ok(Endpoint { host, http });
    }
    let host = reference.resolve_registry().to_owned();
    let http = http_allowed(&host, insecure_registries);
    Ok(Endpoint { host, http })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::reference::parse_registry_reference;

    #[test]
    fn mirror_syntax() {
        assert_eq!(
            parse_mirror("docker.io=http://127.0.0.1:5000/").unwrap(),
            ("docker.io".to_owned(), "http://127.0.0.1:5000".to_owned())
        );
        assert_eq!(parse_mirror("index.docker.io=mirror.example").unwrap().0, "docker.io");
        for bad in [
            "docker.io",
            "=http://x",
            "docker.io=",
            "docker.io=ftp://x",
            "docker.io=http://x/path",
        ] {
            assert!(parse_mirror(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn args_then_env() {
        let m = parse_mirrors(
            &["docker.io=http://127.0.0.1:1".to_owned()],
            Some("docker.io=http://127.0.0.1:2, quay.io=https://q.example,"),
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        let r = parse_registry_reference("busybox").unwrap();
        let e = endpoint_for(&r, &m, &[]).unwrap();
        assert_eq!(
            e,
            Endpoint {
                host: "127.0.0.1:1".into(),
                http: true
            }
        );
        let r = parse_registry_reference("quay.io/a/b").unwrap();
        assert_eq!(endpoint_for(&r, &m, &[]).unwrap().host, "q.example");
    }

    #[test]
    fn http_only_for_loopback_or_insecure() {
        let r = parse_registry_reference("registry.example:5000/x").unwrap();
        assert!(!endpoint_for(&r, &[], &[]).unwrap().http);
        assert!(endpoint_for(&r, &[], &["registry.example:5000".into()]).unwrap().http);
        let r = parse_registry_reference("localhost:5000/x").unwrap();
        assert!(endpoint_for(&r, &[], &[]).unwrap().http);
        let r = parse_registry_reference("busybox").unwrap();
        let e = endpoint_for(&r, &[], &[]).unwrap();
        assert_eq!((e.host.as_str(), e.http), ("index.docker.io", false));
        let m = vec![("docker.io".to_owned(), "http://mirror.example".to_owned())];
        assert!(endpoint_for(&r, &m, &[]).is_err());
        assert!(endpoint_for(&r, &m, &["mirror.example".into()]).unwrap().http);
    }
}
