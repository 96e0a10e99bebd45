//! The byte stream to the scheduler: TCP (keepalive on, as OCaml's capnp-rpc sets it) or a
//! Unix socket, wrapped in TLS pinned to the `.cap` fingerprint unless it says `insecure`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use super::cap_uri::{Address, Auth, CapUri};
use super::tls::{self, TlsSetupError};

/// Any bidirectional stream.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Io(String, std::io::Error),
    #[error("TLS handshake with {0}: {1}")]
    Handshake(String, String),
    #[error(transparent)]
    Setup(#[from] TlsSetupError),
    #[error("TLS needs a TCP address, not {0}")]
    TlsOverUnix(String),
}

const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

pub async fn connect(uri: &CapUri) -> Result<Box<dyn Stream>, ConnectError> {
    let addr = uri.address.to_string();
    let io = |e| ConnectError::Io(addr.clone(), e);
    match (&uri.address, &uri.auth) {
        (Address::Unix(path), Auth::Insecure) => Ok(Box::new(UnixStream::connect(path).await.map_err(io)?)),
        (Address::Unix(_), Auth::Sha256(_)) => Err(ConnectError::TlsOverUnix(addr.clone())),
        (Address::Tcp { host, port }, auth) => {
            let tcp = TcpStream::connect((host.as_str(), *port)).await.map_err(io)?;
            let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
            socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive).map_err(io)?;
            tcp.set_nodelay(true).map_err(io)?;
            match auth {
                Auth::Insecure => Ok(Box::new(tcp)),
                Auth::Sha256(fingerprint) => {
                    let config = tls::client_config(*fingerprint)?;
                    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                    // Not checked (the pin is the key), and never sent (SNI is off).
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .or_else(|_| rustls::pki_types::ServerName::try_from("capnp".to_owned()))
                        .map_err(|e| ConnectError::Handshake(addr.clone(), e.to_string()))?;
                    let stream = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| ConnectError::Handshake(addr.clone(), describe(&e)))?;
                    Ok(Box::new(stream))
                }
            }
        }
    }
}

/// A handshake error, with the fingerprint mismatch in words rather than rustls's Debug form.
fn describe(e: &std::io::Error) -> String {
    let pinned = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => Some(other.to_string()),
            _ => None,
        });
    pinned.unwrap_or_else(|| e.to_string())
}
