//! The DER SubjectPublicKeyInfo of an X.509 certificate, found by walking the outer
//! structure only: Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
//! OPTIONAL, serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... },
//! ... }. The pool fingerprint is the SHA-256 of exactly these bytes.

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed certificate: {0}")]
pub struct DerError(&'static str);

/// One TLV: (tag, whole encoding, contents, what follows).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn tlv(input: &[u8]) -> Result<Tlv<'_>, DerError> {
    let [tag, first, rest @ ..] = input else {
        return Err(DerError("truncated"));
    };
    let (len, rest) = if first & 0x80 == 0 {
        (usize::from(*first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("bad length"));
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(DerError("truncated"));
    }
    let header = input.len() - rest.len();
    Ok((*tag, &input[..header + len], &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;

/// The SubjectPublicKeyInfo (its whole DER encoding) of a DER certificate.
pub fn subject_public_key_info(cert: &[u8]) -> Result<&[u8], DerError> {
    let (tag, _, cert_body, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return Err(DerError("certificate is not a sequence"));
    }
    let (tag, _, mut tbs, _) = tlv(cert_body)?;
    if tag != SEQUENCE {
        return Err(DerError("tbsCertificate is not a sequence"));
    }
    if tbs.first() == Some(&VERSION) {
        tbs = tlv(tbs)?.3;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        tbs = tlv(tbs)?.3;
    }
    let (tag, whole, _, _) = tlv(tbs)?;
    if tag != SEQUENCE {
        return Err(DerError("subjectPublicKeyInfo is not a sequence"));
    }
    Ok(whole)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo: what a `.cap` URI pins.
pub fn fingerprint(cert: &[u8]) -> Result<[u8; 32], DerError> {
    Ok(Sha256::digest(subject_public_key_info(cert)?).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData as _;

    #[test]
    fn finds_the_key_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let spki = subject_public_key_info(cert.der()).unwrap();
        assert_eq!(spki, key.subject_public_key_info().as_slice());
    }

    #[test]
    fn refuses_garbage() {
        assert!(subject_public_key_info(&[]).is_err());
        assert!(subject_public_key_info(&[0x30, 0x05, 0x30]).is_err());
        assert!(subject_public_key_info(&[0x02, 0x01, 0x00]).is_err());
    }
}
