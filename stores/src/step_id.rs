//! A validated step id: 64 lowercase hex digits, so it is always safe as a path component.

use std::fmt;
use std::str::FromStr;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StepId(String);

impl StepId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of raw SHA-256 output.
    pub fn from_digest(digest: &[u8]) -> StepId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(digest.len() * 2);
        for b in digest {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        StepId(s)
    }
}

impl FromStr for StepId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(StepId(s.to_owned()))
        } else {
            Err(StoreError::InvalidId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for StepId {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        s.parse()
    }
}

impl From<StepId> for String {
    fn from(id: StepId) -> String {
        id.0
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_64_lowercase_hex() {
        let ok = "9d75f0d7c398df565d7ac04c6819b62d6d8f9560f5eb4672596ecd8f7e96ae91";
        assert_eq!(ok.parse::<StepId>().unwrap().as_str(), ok);
        assert!(ok.to_uppercase().parse::<StepId>().is_err());
        assert!("../etc".parse::<StepId>().is_err());
        assert!(ok[..63].parse::<StepId>().is_err());
    }

    #[test]
    fn formats_digest_as_hex() {
        assert_eq!(StepId::from_digest(&[0u8; 32]).as_str(), "0".repeat(64));
        assert_eq!(&StepId::from_digest(&[0xab; 32]).as_str()[..4], "abab");
    }
}
