//! Content digests: parsing `sha256:HEX`, hashing, and a reader that verifies a blob's
//! size and digest as it is consumed.
//!
//! Invariant: a [`VerifyingReader`] never reports a clean end of stream unless exactly the
//! expected number of bytes was read and they hash to the expected digest; on a mismatch
//! its last `read` fails and [`BlobCheck::failure`] says why.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use sha2::{Digest as _, Sha256};
use strata_sandbox::Cancel;

/// Lowercase hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex digits (the only
/// algorithm strata verifies) and returns the hex part.
pub fn sha256_hex_of(digest: &str) -> Result<&str, String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} has no algorithm"));
    };
    if algorithm != "sha256" {
        return Err(format!("digest {digest:?} uses unsupported algorithm {algorithm:?}"));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {digest:?} is not 64 lowercase hex digits"));
    }
    Ok(hex)
}

/// Verifies a blob held in memory (manifests, configs).
pub fn verify_bytes(bytes: &[u8], expected: &str) -> Result<(), String> {
    sha256_hex_of(expected)?;
    let actual = sha256_digest(bytes);
    if actual != expected {
        return Err(format!("blob {expected} has digest {actual}: corrupt or tampered"));
    }
    Ok(())
}

/// Why a verified stream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobFailure {
    Mismatch { expected: String, actual: String },
    Truncated { digest: String, read: u64, expected: u64 },
    TooLong { digest: String, expected: u64 },
    Cancelled,
}

impl std::fmt::Display for BlobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobFailure::Mismatch { expected, actual } => {
                write!(f, "blob {expected} has digest {actual}: corrupt or tampered")
            }
            BlobFailure::Truncated { digest, read, expected } => {
                write!(f, "blob {digest} is truncated: got {read} of {expected} bytes")
            }
            BlobFailure::TooLong { digest, expected } => {
                write!(f, "blob {digest} is longer than its descriptor's {expected} bytes")
            }
            BlobFailure::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// Shared view of a [`VerifyingReader`]'s outcome, readable after the reader was moved
/// into a decompressor.
#[derive(Debug, Clone, Default)]
pub struct BlobCheck {
    inner: Rc<RefCell<Option<BlobFailure>>>,
}

impl BlobCheck {
    pub fn failure(&self) -> Option<BlobFailure> {
        self.inner.borrow().clone()
    }
    fn set(&self, failure: BlobFailure) -> io::Error {
        let err = io::Error::other(failure.to_string());
        *self.inner.borrow_mut() = Some(failure);
        err
    }
}

/// Reads `inner`, hashing as it goes; checks size and digest at end of stream and the
/// cancel token on every read.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    digest: Option<String>,
    size: Option<u64>,
    cancel: Option<Cancel>,
    check: BlobCheck,
}

impl<R: Read> VerifyingReader<R> {
    /// `digest` must already have passed [`sha256_hex_of`]; `size` is the descriptor's.
    pub fn new(inner: R, digest: Option<String>, size: Option<u64>, cancel: Option<Cancel>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            digest,
            size,
            cancel,
            check: BlobCheck::default(),
        }
    }

    pub fn check(&self) -> BlobCheck {
        self.check.clone()
    }

    fn label(&self) -> String {
        self.digest.clone().unwrap_or_else(|| "(unnamed)".to_owned())
    }

    fn finish(&mut self) -> io::Result<()> {
        if let Some(expected) = self.size {
            if self.read < expected {
                return Err(self.check.set(BlobFailure::Truncated {
                    digest: self.label(),
                    read: self.read,
                    expected,
                }));
            }
        }
        if let Some(expected) = &self.digest {
            let actual = format!("sha256:{}", hex(&self.hasher.clone().finalize()));
            if &actual != expected {
                let expected = expected.clone();
                return Err(self.check.set(BlobFailure::Mismatch { expected, actual }));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(self.check.set(BlobFailure::Cancelled));
        }
        if let Some(failure) = self.check.failure() {
            return Err(io::Error::other(failure.to_string()));
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        if let Some(expected) = self.size {
            if self.read > expected {
                let digest = self.label();
                return Err(self.check.set(BlobFailure::TooLong { digest, expected }));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(r: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn good_blob_passes() {
        let data = b"hello world".to_vec();
        let d = sha256_digest(&data);
        let mut r = VerifyingReader::new(&data[..], Some(d), Some(11), None);
        assert_eq!(drain(&mut r).unwrap(), data);
        assert!(r.check().failure().is_none());
    }

    #[test]
    fn wrong_digest_fails_at_end() {
        let data = b"hello world".to_vec();
        let d = sha256_digest(b"other");
        let mut r = VerifyingReader::new(&data[..], Some(d.clone()), None, None);
        let err = drain(&mut r).unwrap_err();
        assert!(err.to_string().contains(&d), "{err}");
        assert!(matches!(r.check().failure(), Some(BlobFailure::Mismatch { .. })));
    }

    #[test]
    fn short_and_long_blobs_fail() {
        let data = b"hello".to_vec();
        let mut r = VerifyingReader::new(&data[..], Some(sha256_digest(&data)), Some(10), None);
        assert!(drain(&mut r).unwrap_err().to_string().contains("truncated"));
        let mut r = VerifyingReader::new(&data[..], Some(sha256_digest(&data)), Some(3), None);
        assert!(drain(&mut r).is_err());
        assert!(matches!(r.check().failure(), Some(BlobFailure::TooLong { .. })));
    }

    #[test]
    fn digest_syntax() {
        assert!(sha256_hex_of(&sha256_digest(b"x")).is_ok());
        assert!(sha256_hex_of("sha512:abcd").is_err());
        assert!(sha256_hex_of("sha256:ABCD").is_err());
        assert!(sha256_hex_of("nocolon").is_err());
    }
}
