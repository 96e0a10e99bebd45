//! Checks of a spec against the operator's policy, before anything runs: `build` refuses what
//! they find (exit 2, `FILE:LINE:COL: error: ...`), `check` warns about what every build would
//! refuse (it accepts every spec OBuilder accepts).
//!
//! - A working directory under `/proc`, `/sys` or `/dev`: `(workdir /proc/self/fd/N)` is how
//!   CVE-2024-21626 reaches a descriptor runc leaked; no real build needs one.
//! - `(network host)` when the operator passed `--no-host-network`.
//! - What OBuilder's parser accepts but no strata build runs (OBuilder's own build fails on
//!   the first two; its Docker backend passes other networks to Docker): a network other than
//!   `host` (`(network "nat")` in its Windows example), several sources copied to a destination
//!   not ending in `/`, an empty `(src)`. `check`, `fmt` and `dockerfile` take these, as OBuilder
//!   does; the spec parser no longer refuses them.

use std::path::{Component, Path};

use crate::spec::{Copy, Op, Span, Spec, SpecError};

/// What the operator forbids beyond the spec language.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// `--no-host-network`: refuse `(network host)`.
    pub no_host_network: bool,
}

/// One thing a spec does that the policy refuses, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub span: Span,
    pub message: String,
}

impl Finding {
    /// As a spec error of `file` (`FILE:LINE:COL: error: MESSAGE`).
    pub fn error(&self, file: &Path) -> SpecError {
        SpecError {
            file: file.to_path_buf(),
            span: self.span,
            message: self.message.clone(),
        }
    }

    /// `FILE:LINE:COL: warning: MESSAGE`.
    pub fn warning(&self, file: &Path) -> String {
        format!(
            "{}:{}:{}: warning: {}",
            file.display(),
            self.span.line,
            self.span.col,
            self.message
        )
    }
}

/// The pseudo-filesystems a step's working directory may not be in.
pub const FORBIDDEN_WORKDIRS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// `path` with `.` and `..` resolved lexically (`..` at the root stays at the root, as the
/// kernel does).
pub fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str().unwrap_or("")),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// The forbidden filesystem `workdir` is in, if any.
pub fn forbidden_workdir(workdir: &str) -> Option<&'static str> {
    let path = normalise(workdir);
    FORBIDDEN_WORKDIRS
        .into_iter()
        .find(|dir| path == *dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/')))
}

/// Every `(workdir ...)` of `spec` and its stages that puts later steps under `/proc`, `/sys`
/// or `/dev` (relative paths are joined onto the previous workdir, as the build does).
pub fn workdir_findings(spec: &Spec) -> Vec<Finding> {
    let mut found = Vec::new();
    collect_workdirs(spec, &mut found);
    found
}

fn collect_workdirs(spec: &Spec, found: &mut Vec<Finding>) {
    for stage in &spec.stages {
        collect_workdirs(&stage.spec, found);
    }
    let mut workdir = "/".to_owned();
    for item in &spec.ops {
        if let Op::Workdir(path) = &item.op {
            workdir = super::copy::join_workdir(&workdir, path);
            if let Some(dir) = forbidden_workdir(&workdir) {
                found.push(Finding {
                    span: item.span,
                    message: format!(
                        "workdir {workdir:?} is under {dir}: a step's working directory may not be in \
                         /proc, /sys or /dev"
                    ),
                });
            }
        }
    }
}

/// Every `(run ... (network host))` of `spec` and its stages.
pub fn host_network_findings(spec: &Spec) -> Vec<Finding> {
    let mut found = Vec::new();
    collect_host_network(spec, &mut found);
    found
}

fn collect_host_network(spec: &Spec, found: &mut Vec<Finding>) {
    for stage in &spec.stages {
        collect_host_network(&stage.spec, found);
    }
    for item in &spec.ops {
        if let Op::Run(run) = &item.op {
            if run.network.iter().any(|n| n == "host") {
                found.push(Finding {
                    span: item.span,
                    message: "(network host) is refused here: the operator passed --no-host-network".to_owned(),
                });
            }
        }
    }
}

/// Every `run` and `copy` of `spec` and its stages that OBuilder reads but strata cannot run
/// under any policy: a network other than `host`, several sources into a destination without
/// a trailing `/`, an empty `(src)`.
pub fn unsupported_findings(spec: &Spec) -> Vec<Finding> {
    let mut found = Vec::new();
    collect_unsupported(spec, &mut found);
    found
}

fn collect_unsupported(spec: &Spec, found: &mut Vec<Finding>) {
    for stage in &spec.stages {
        collect_unsupported(&stage.spec, found);
    }
    for item in &spec.ops {
        let message = match &item.op {
            Op::Run(run) => network_problem(&run.network),
            Op::Copy(copy) => copy_problem(copy),
            _ => None,
        };
        if let Some(message) = message {
            found.push(Finding {
                span: item.span,
                message,
            });
        }
    }
}

/// Why a build cannot give a step the network `names` (`(network NAME...)`), if it cannot.
fn network_problem(names: &[String]) -> Option<String> {
    match names {
        [] => None,
        [one] if one == "host" => None,
        [other] => Some(format!(
            "unsupported network {other:?}: only (network host) is allowed; omit network for an isolated one"
        )),
        several => {
            let quoted: Vec<String> = several.iter().map(|n| format!("{n:?}")).collect();
            Some(format!(
                "unsupported network {}: network takes at most one value, (network host); omit network for an isolated one",
                quoted.join(" ")
            ))
        }
    }
}

/// Why a build cannot do `copy`, if it cannot (OBuilder's build fails on both).
fn copy_problem(copy: &Copy) -> Option<String> {
    if copy.src.is_empty() {
        return Some("(src) is empty: copy needs at least one source".to_owned());
    }
    if copy.src.len() > 1 && !copy.dst.ends_with('/') {
        return Some(format!(
            "copying several sources needs a destination ending in \"/\", found {:?}",
            copy.dst
        ));
    }
    None
}

/// What `build` refuses under `policy`, in spec order. With the default policy, this is what
/// every build refuses (`check` warns about it).
pub fn build_findings(spec: &Spec, policy: &Policy) -> Vec<Finding> {
    let mut found = workdir_findings(spec);
    found.extend(unsupported_findings(spec));
    if policy.no_host_network {
        found.extend(host_network_findings(spec));
    }
    found.sort_by_key(|f| f.span.start);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_spec;

    fn spec(text: &str) -> Spec {
        parse_spec(Path::new("t.spec"), text).unwrap()
    }

    #[test]
    fn workdirs_under_pseudo_filesystems() {
        for bad in [
            "/proc",
            "/proc/self/fd/7",
            "/sys/fs/cgroup",
            "/dev/shm",
            "/tmp/../proc/1",
            "//dev",
        ] {
            assert!(forbidden_workdir(bad).is_some(), "{bad}");
        }
        for good in ["/", "/process", "/src/proc", "/devices", "/system", "/home/dev"] {
            assert_eq!(forbidden_workdir(good), None, "{good}");
        }
        let s = spec("((from busybox)\n (workdir /)\n (workdir proc)\n (workdir self/fd/3))");
        let found = workdir_findings(&s);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].span.line, found[0].span.col), (3, 2));
        assert!(found[1].message.contains("/proc/self/fd/3"), "{}", found[1].message);
        let staged = spec("((build a ((from busybox) (workdir /sys))) (from busybox) (workdir /src))");
        assert_eq!(workdir_findings(&staged).len(), 1);
    }

    #[test]
    fn host_network_only_under_the_policy() {
        let s = spec("((from busybox)\n (run (shell true))\n (run (network host) (shell true)))");
        assert!(build_findings(&s, &Policy::default()).is_empty());
        let found = build_findings(&s, &Policy { no_host_network: true });
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].span.line, found[0].span.col), (3, 2));
        let e = found[0].error(Path::new("t.spec")).to_string();
        assert!(e.starts_with("t.spec:3:2: error: (network host)"), "{e}");
    }
}
