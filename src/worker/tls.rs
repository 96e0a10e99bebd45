//! TLS to the scheduler as OCaml's capnp-rpc does it: the server is trusted when the SHA-256
//! of its certificate's SubjectPublicKeyInfo equals the `.cap` fingerprint (no chain,
//! hostname, SNI or validity checks), and the client presents a fresh self-signed certificate
//! (RSA-2048, CN=capnp, X.509 v3 without extensions, so ocaml-tls's keyUsage/EKU checks on
//! client certificates have nothing to refuse). A fresh key per connection: the scheduler
//! indexes connections by client key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::spki;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("generating the client certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Accepts exactly the server whose key has the pinned fingerprint.
#[derive(Debug)]
pub struct PinnedKey {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedKey {
    pub fn new(fingerprint: [u8; 32], provider: Arc<CryptoProvider>) -> PinnedKey {
        PinnedKey { fingerprint, provider }
    }
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = spki::fingerprint(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(FingerprintMismatch(got))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's key is not the one the `.cap` file names.
#[derive(Debug)]
pub struct FingerprintMismatch(pub [u8; 32]);

impl std::fmt::Display for FingerprintMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the scheduler's key fingerprint is sha-256:{}, not the one in the .cap file",
            super::cap_uri::CapUri::encode_fingerprint(&self.0)
        )
    }
}

impl std::error::Error for FingerprintMismatch {}

/// A fresh client certificate and its key: RSA-2048, self-signed, CN=capnp, v3 with no
/// extensions, valid from 1970 to 9999.
pub fn client_certificate() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsSetupError> {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
    let mut params = rcgen::CertificateParams::default();
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, "capnp");
    params.distinguished_name = name;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

/// The client configuration for one connection (a fresh client key each time).
pub fn client_config(fingerprint: [u8; 32]) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (cert, key) = client_certificate()?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedKey::new(fingerprint, provider)))
        .with_client_auth_cert(vec![cert], key)?;
    config.enable_sni = false;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_shape() {
        let (cert, _) = client_certificate().unwrap();
        let der = cert.as_ref();
        // v3: [0] { INTEGER 2 } opens the tbsCertificate.
        let tbs_start = der.windows(5).position(|w| w == [0xa0, 0x03, 0x02, 0x01, 0x02]);
        assert!(tbs_start.is_some(), "not X.509 v3");
        // No extensions at all: no [3] field after the key (and so no keyUsage or EKU OIDs).
        let spki = spki::subject_public_key_info(der).unwrap();
        let after = der
            .windows(spki.len())
            .position(|w| w == spki)
            .map(|at| der[at + spki.len()])
            .unwrap();
        assert_ne!(after, 0xa3, "the certificate has extensions");
        // keyUsage 2.5.29.15 / extKeyUsage 2.5.29.37 OIDs are absent.
        assert!(!der
            .windows(3)
            .any(|w| w == [0x55, 0x1d, 0x0f] || w == [0x55, 0x1d, 0x25]));
        // CN=capnp.
        assert!(der.windows(5).any(|w| w == b"capnp"));
        // A fresh key each time.
        let (other, _) = client_certificate().unwrap();
        assert_ne!(spki::fingerprint(der).unwrap(), spki::fingerprint(&other).unwrap());
    }

    #[test]
    fn pin_accepts_only_its_key() {
        let (cert, _) = client_certificate().unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let good = PinnedKey::new(spki::fingerprint(&cert).unwrap(), provider.clone());
        assert!(good.verify_server_cert(&cert, &[], &name, &[], UnixTime::now()).is_ok());
        let bad = PinnedKey::new([0; 32], provider);
        let err = bad
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = err else {
            panic!("{err}");
        };
        assert!(other.to_string().contains("not the one in the .cap file"), "{other}");
    }
}
