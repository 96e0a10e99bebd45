//! Step ids: the `v1` scheme (default) and the `obuilder` compatibility scheme.
//!
//! A step id is the lowercase hex SHA-256 of an encoding of the step's parent id, its operation
//! and the context that affects it. The scheme is chosen per store and never mixed:
//! - [`IdScheme::Obuilder`] reproduces OBuilder's ids byte for byte (sexplib machine records,
//!   reference §2 and Appendix A), flaws included: secret values are hashed, file modes and the
//!   exec bit are not.
//! - [`IdScheme::V1`] is a versioned, domain-separated, length-prefixed encoding (see `v1.rs`)
//!   that hashes file modes, symlink targets, and secret ids and targets but never their values.

pub mod manifest;
mod obuilder;
mod v1;

use std::fmt;
use std::str::FromStr;

use strata_stores::StepId;

use crate::spec::ast::User;
pub use manifest::{compute_manifest, CopyOp, Manifest, ManifestError};

/// How a store computes step ids; recorded in the store at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdScheme {
    #[default]
    V1,
    Obuilder,
}

impl IdScheme {
    /// The shell prefix a `run` uses before any `(shell ...)` op. Ids depend on it.
    /// `v1` uses `/bin/sh -c` (busybox and Alpine have no bash); `obuilder` keeps OBuilder's.
    pub fn default_shell(self) -> Vec<String> {
        let shell: &[&str] = match self {
            IdScheme::V1 => &["/bin/sh", "-c"],
            IdScheme::Obuilder => &["/usr/bin/env", "bash", "-c"],
        };
        shell.iter().map(|s| s.to_string()).collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IdScheme::V1 => "v1",
            IdScheme::Obuilder => "obuilder",
        }
    }
}

impl fmt::Display for IdScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown id scheme {0:?} (expected \"v1\" or \"obuilder\")")]
pub struct UnknownIdScheme(pub String);

impl FromStr for IdScheme {
    type Err = UnknownIdScheme;
    fn from_str(s: &str) -> Result<Self, UnknownIdScheme> {
        match s {
            "v1" => Ok(IdScheme::V1),
            "obuilder" => Ok(IdScheme::Obuilder),
            _ => Err(UnknownIdScheme(s.to_owned())),
        }
    }
}

/// A secret mounted into a `run` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKey<'a> {
    pub id: &'a str,
    pub target: &'a str,
    /// The secret's content. Hashed only by the `obuilder` scheme (as OBuilder does).
    pub value: &'a [u8],
}

/// Everything a `run` step's id depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKey<'a> {
    pub parent: &'a StepId,
    /// The workdir string as joined by `workdir` ops (unnormalised).
    pub workdir: &'a str,
    pub user: &'a User,
    /// The environment in context order (later `env` ops first).
    pub env: &'a [(String, String)],
    pub cmd: &'a str,
    pub shell: &'a [String],
    pub network: &'a [String],
    /// Secrets in spec order.
    pub secrets: &'a [SecretKey<'a>],
}

/// The id of a `(from IMAGE)` base, keyed by the reference exactly as written.
/// `obuilder`: SHA-256 of the string itself.
pub fn base_id(scheme: IdScheme, image: &str) -> StepId {
    match scheme {
        IdScheme::V1 => v1::base_id(image),
        IdScheme::Obuilder => obuilder::base_id(image),
    }
}

/// The id of a `run` step.
pub fn run_id(scheme: IdScheme, key: &RunKey<'_>) -> StepId {
    match scheme {
        IdScheme::V1 => v1::run_id(key),
        IdScheme::Obuilder => obuilder::run_id(key),
    }
}

/// The id of a `copy` step written by `user` on top of `parent`. `op` carries the manifests of
/// the sources and the workdir-joined destination (see [`CopyOp::new`]).
pub fn copy_id(scheme: IdScheme, parent: &StepId, user: &User, op: &CopyOp) -> StepId {
    match scheme {
        IdScheme::V1 => v1::copy_id(parent, user, op),
        IdScheme::Obuilder => obuilder::copy_id(parent, user, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_names_round_trip() {
        for scheme in [IdScheme::V1, IdScheme::Obuilder] {
            assert_eq!(scheme.to_string().parse::<IdScheme>().unwrap(), scheme);
        }
        assert_eq!(IdScheme::default(), IdScheme::V1);
        assert!("V1".parse::<IdScheme>().is_err());
        assert_eq!(IdScheme::V1.default_shell(), ["/bin/sh", "-c"]);
        assert_eq!(IdScheme::Obuilder.default_shell(), ["/usr/bin/env", "bash", "-c"]);
    }

    fn exec_manifest(mode: u32) -> CopyOp {
        let item = Manifest::File {
            path: "run.sh".into(),
            sha256: "ab".repeat(32),
            mode,
        };
        CopyOp::new(vec![item], "/usr/local/bin/run.sh".into()).unwrap()
    }

    #[test]
    fn exec_bit_changes_v1_id_but_not_obuilder_id() {
        let parent = base_id(IdScheme::V1, "alpine");
        let (plain, exec) = (exec_manifest(0o644), exec_manifest(0o755));
        assert_ne!(
            copy_id(IdScheme::V1, &parent, &User::ROOT, &plain),
            copy_id(IdScheme::V1, &parent, &User::ROOT, &exec)
        );
        assert_eq!(
            copy_id(IdScheme::Obuilder, &parent, &User::ROOT, &plain),
            copy_id(IdScheme::Obuilder, &parent, &User::ROOT, &exec)
        );
    }

    #[test]
    fn schemes_never_agree() {
        assert_ne!(base_id(IdScheme::V1, "busybox"), base_id(IdScheme::Obuilder, "busybox"));
    }
}
