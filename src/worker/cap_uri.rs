//! The pool's `.cap` URI: `capnp://sha-256:FINGERPRINT@HOST:PORT/SERVICE-ID`.
//!
//! FINGERPRINT is the unpadded base64url SHA-256 of the scheduler key's DER
//! SubjectPublicKeyInfo; SERVICE-ID is the unpadded base64url of the raw service id bytes
//! (32 arbitrary bytes for an OCluster pool; NULs possible). `capnp://insecure@HOST:PORT/ID`
//! is plain TCP; an address without a port (`capnp://insecure@/run/sock/ID`) is a Unix socket.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Where the scheduler listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// How the connection is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// TLS, pinned to the SHA-256 of the server key's SubjectPublicKeyInfo.
    Sha256([u8; 32]),
    /// Plain TCP (`insecure@`).
    Insecure,
}

/// A parsed sturdy ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapUri {
    pub auth: Auth,
    pub address: Address,
    /// The raw service id sent in the bootstrap message.
    pub service_id: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapUriError {
    #[error("not a capnp:// URI")]
    Scheme,
    #[error("missing '@' between the authentication and the address")]
    NoAuth,
    #[error("unsupported authentication {0:?} (expected sha-256:FINGERPRINT or insecure)")]
    AuthKind(String),
    #[error("bad fingerprint: {0}")]
    Fingerprint(String),
    #[error("bad address {0:?}")]
    Address(String),
    #[error("bad service id: {0}")]
    ServiceId(String),
}

impl CapUri {
    /// Reads a `.cap` file (the URI and a newline; surrounding white space is ignored).
    pub fn read(path: &Path) -> Result<CapUri, ReadError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReadError::Io(path.to_owned(), e))?;
        text.trim().parse().map_err(|e| ReadError::Parse(path.to_owned(), e))
    }

    /// The fingerprint in URI form (unpadded base64url).
    pub fn encode_fingerprint(digest: &[u8; 32]) -> String {
        URL_SAFE_NO_PAD.encode(digest)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, CapUriError),
}

impl std::str::FromStr for CapUri {
    type Err = CapUriError;

    fn from_str(s: &str) -> Result<CapUri, CapUriError> {
        let rest = s.strip_prefix("capnp://").ok_or(CapUriError::Scheme)?;
        let (auth, rest) = rest.split_once('@').ok_or(CapUriError::NoAuth)?;
        let auth = parse_auth(auth)?;
        // The service id is the last path segment; what comes before it is the address.
        let (address, id) = rest
            .rsplit_once('/')
            .ok_or_else(|| CapUriError::Address(rest.to_owned()))?;
        let service_id = URL_SAFE_NO_PAD
            .decode(id)
            .map_err(|e| CapUriError::ServiceId(format!("{id:?}: {e}")))?;
        let address = if address.starts_with('/') {
            Address::Unix(PathBuf::from(address))
        } else {
            parse_tcp(address)?
        };
        Ok(CapUri {
            auth,
            address,
            service_id,
        })
    }
}

fn parse_auth(auth: &str) -> Result<Auth, CapUriError> {
    if auth == "insecure" {
        return Ok(Auth::Insecure);
    }
    let Some(fp) = auth.strip_prefix("sha-256:") else {
        return Err(CapUriError::AuthKind(auth.to_owned()));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(fp)
        .map_err(|e| CapUriError::Fingerprint(format!("{fp:?}: {e}")))?;
    let digest: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| CapUriError::Fingerprint(format!("{} bytes, expected 32", b.len())))?;
    Ok(Auth::Sha256(digest))
}

fn parse_tcp(address: &str) -> Result<Address, CapUriError> {
    let bad = || CapUriError::Address(address.to_owned());
    let (host, port) = if let Some(v6) = address.strip_prefix('[') {
        let (host, port) = v6.split_once("]:").ok_or_else(bad)?;
        (host, port)
    } else {
        address.rsplit_once(':').ok_or_else(bad)?
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = port.parse().map_err(|_| bad())?;
    Ok(Address::Tcp {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_uri_with_binary_id() {
        let fp = [7u8; 32];
        let id = [0x61u8, 0x00, 0x62, 0xff];
        let uri = format!(
            "capnp://sha-256:{}@sched.example.org:9000/{}",
            CapUri::encode_fingerprint(&fp),
            URL_SAFE_NO_PAD.encode(id)
        );
        assert_eq!(CapUri::encode_fingerprint(&fp).len(), 43);
        let parsed: CapUri = uri.parse().unwrap();
        assert_eq!(parsed.auth, Auth::Sha256(fp));
        assert_eq!(
            parsed.address,
            Address::Tcp {
                host: "sched.example.org".into(),
                port: 9000
            }
        );
        assert_eq!(parsed.service_id, id);
    }

    #[test]
    fn url_safe_alphabet_and_no_padding() {
        // 0xfb 0xff encode to "-_8" in base64url: '+' and '/' would be the standard alphabet.
        let uri: CapUri = "capnp://insecure@127.0.0.1:1/-_8".parse().unwrap();
        assert_eq!(uri.service_id, [0xfb, 0xff]);
        assert!("capnp://insecure@127.0.0.1:1/-_8=".parse::<CapUri>().is_err());
        assert!("capnp://insecure@127.0.0.1:1/+/8".parse::<CapUri>().is_err());
    }

    #[test]
    fn insecure_unix_and_ipv6() {
        let uri: CapUri = "capnp://insecure@/run/sched/sock/YWJj".parse().unwrap();
        assert_eq!(uri.auth, Auth::Insecure);
        assert_eq!(uri.address, Address::Unix("/run/sched/sock".into()));
        assert_eq!(uri.service_id, b"abc");
        let uri: CapUri = "capnp://insecure@[::1]:7000/YWJj".parse().unwrap();
        assert_eq!(uri.address.to_string(), "[::1]:7000");
    }

    #[test]
    fn refusals() {
        assert_eq!("http://x".parse::<CapUri>(), Err(CapUriError::Scheme));
        assert_eq!("capnp://x:1/YQ".parse::<CapUri>(), Err(CapUriError::NoAuth));
        assert!(matches!(
            "capnp://md5:x@h:1/YQ".parse::<CapUri>(),
            Err(CapUriError::AuthKind(_))
        ));
        assert!(matches!(
            "capnp://sha-256:YWJj@h:1/YQ".parse::<CapUri>(),
            Err(CapUriError::Fingerprint(_))
        ));
        assert!(matches!(
            "capnp://insecure@h/YQ".parse::<CapUri>(),
            Err(CapUriError::Address(_))
        ));
        assert!(matches!(
            "capnp://insecure@h:x/YQ".parse::<CapUri>(),
            Err(CapUriError::Address(_))
        ));
    }
}
