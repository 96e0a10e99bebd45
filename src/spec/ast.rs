//! The typed build spec: what a spec file means once read and validated.

use super::sexp::Span;

/// A spec: child stages, a base image, then operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `(build NAME SPEC)` items, in order; each may use the stages before it.
    pub stages: Vec<Stage>,
    /// The image of `(from IMAGE)`, as written.
    pub from: String,
    pub from_span: Span,
    pub ops: Vec<OpItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub span: Span,
    pub spec: Spec,
}

/// An operation and where it was written (for errors at build time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpItem {
    pub op: Op,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Comment(String),
    Workdir(String),
    Shell(Vec<String>),
    Run(Run),
    Copy(Copy),
    User(User),
    Env(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Run {
    pub shell: String,
    pub cache: Vec<Mount>,
    pub network: Vec<String>,
    pub secrets: Vec<Mount>,
}

/// A cache or secret entry: `(ID (target PATH) [(buildkit_options (K V) ...)])`.
/// A secret's target defaults to `/run/secrets/ID` when omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: String,
    pub target: String,
    pub buildkit_options: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub from: CopyFrom,
    pub src: Vec<String>,
    pub dst: String,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFrom {
    Context,
    Build(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    Unix { uid: u32, gid: u32 },
    Name(String),
}

impl User {
    pub const ROOT: User = User::Unix { uid: 0, gid: 0 };
}
