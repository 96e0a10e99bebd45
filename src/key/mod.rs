//! Step ids: the `v1` scheme (default) and the `obuilder` compatibility scheme.
//! (Placeholder until the key module lands: only the scheme type.)

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdScheme {
    #[default]
    V1,
    Obuilder,
}

impl FromStr for IdScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(IdScheme::V1),
            "obuilder" => Ok(IdScheme::Obuilder),
            other => Err(format!("unknown id scheme {other:?} (expected v1 or obuilder)")),
        }
    }
}

impl fmt::Display for IdScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdScheme::V1 => "v1",
            IdScheme::Obuilder => "obuilder",
        })
    }
}
