//! The one place that runs the OCI runtime's command line (`runc`, `crun` or a compatible
//! program), always with strata's own `--root`, capturing its stderr into errors.

use std::ffi::{CString, OsString};
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::SandboxError;

/// Command-line dialects that differ in small ways (how `--log` is spelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// runc and runtimes that copy its CLI (youki, runsc).
    Runc,
    Crun,
}

/// A resolved runtime program and the state root it keeps strata's containers under.
#[derive(Debug, Clone)]
pub struct RuntimeCli {
    /// What the user asked for (`runc`, `crun` or a path), for messages.
    pub requested: String,
    /// The program found on PATH (or the path given), `None` when it is missing.
    pub program: Option<PathBuf>,
    pub flavour: Flavour,
    /// `--root`: where the runtime keeps container state.
    pub root: PathBuf,
    /// Run the runtime in a private mount namespace without the host's cgroup v2 mount: crun
    /// refuses to work at all on a hybrid v1/v2 host whose v2 hierarchy has a controller.
    pub hide_unified_cgroup: bool,
}

/// Directories searched after PATH: runc lives in /usr/sbin on Debian, which a non-login
/// environment may lack.
const EXTRA_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/sbin"];

/// Finds `runtime` (a name searched on PATH, or a path containing `/`).
pub fn resolve_program(runtime: &str) -> Option<PathBuf> {
    if runtime.is_empty() {
        return None;
    }
    if runtime.contains('/') {
        let p = PathBuf::from(runtime);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(runtime))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The dialect of a runtime program, from its file name.
pub fn flavour_of(program: &Path) -> Flavour {
    let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with("crun") {
        Flavour::Crun
    } else {
        Flavour::Runc
    }
}

impl RuntimeCli {
    fn program(&self) -> Result<&Path, SandboxError> {
        self.program
            .as_deref()
            .ok_or_else(|| SandboxError::RuntimeMissing(self.requested.clone()))
    }

    /// The runtime's name for messages.
    pub fn name(&self) -> String {
        match &self.program {
            Some(p) => p.display().to_string(),
            None => self.requested.clone(),
        }
    }

    /// `<runtime> --root ROOT` (plus the cgroup workaround when needed).
    fn base(&self) -> Result<Command, SandboxError> {
        let mut cmd = Command::new(self.program()?);
        cmd.arg("--root").arg(&self.root);
        if self.hide_unified_cgroup {
            hide_unified_cgroup(&mut cmd);
        }
        Ok(cmd)
    }

    /// The program and arguments of `--root ROOT run --detach --pid-file PID_FILE --bundle
    /// BUNDLE ID`, with the runtime's own messages in `log_file` as JSON lines. Started by the
    /// [`crate::shim`] (detached, so the container inherits our output pipe as is).
    pub fn run_args(
        &self,
        id: &str,
        bundle: &Path,
        log_file: &Path,
        pid_file: &Path,
    ) -> Result<(PathBuf, Vec<OsString>), SandboxError> {
        let program = self.program()?.to_path_buf();
        let mut args: Vec<OsString> = vec!["--root".into(), self.root.clone().into()];
        match self.flavour {
            Flavour::Runc => {
                args.push("--log".into());
                args.push(log_file.into());
            }
            Flavour::Crun => {
                let mut arg = OsString::from("--log=file:");
                arg.push(log_file);
                args.push(arg);
            }
        }
        args.extend(
            ["--log-format=json", "run", "--detach", "--pid-file"]
                .iter()
                .map(OsString::from),
        );
        args.push(pid_file.into());
        args.push("--bundle".into());
        args.push(bundle.into());
        args.push(id.into());
        Ok((program, args))
    }

    /// Runs `<runtime> --root ROOT ARGS...`, failing with its stderr when it exits non-zero.
    pub fn call(&self, args: &[&str]) -> Result<Output, SandboxError> {
        let mut cmd = self.base()?;
        cmd.args(args).stdin(Stdio::null());
        let out = cmd.output().map_err(|e| self.spawn_error(e))?;
        if !out.status.success() {
            return Err(SandboxError::Runtime {
                runtime: self.name(),
                stderr: format!(
                    "`{}` exited with {}: {}",
                    args.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(out)
    }

    /// `kill ID KILL`.
    pub fn kill(&self, id: &str) -> Result<(), SandboxError> {
        self.call(&["kill", id, "KILL"]).map(|_| ())
    }

    /// `delete --force ID`: kills what is left and removes the state.
    pub fn delete_force(&self, id: &str) -> Result<(), SandboxError> {
        self.call(&["delete", "--force", id]).map(|_| ())
    }

    /// Whether the runtime still has state for `id` under its root.
    pub fn has_state(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    /// The first line of `<runtime> --version`.
    pub fn version_line(&self) -> Result<String, SandboxError> {
        Ok(self.version_output()?.lines().next().unwrap_or("").trim().to_owned())
    }

    /// All of `<runtime> --version` (runc adds `commit:`, `spec:`, `go:` lines).
    pub fn version_output(&self) -> Result<String, SandboxError> {
        let out = Command::new(self.program()?)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.spawn_error(e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(SandboxError::Runtime {
                runtime: self.name(),
                stderr: format!("--version failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(text.into_owned())
    }

    pub fn spawn_error(&self, e: std::io::Error) -> SandboxError {
        if e.kind() == ErrorKind::NotFound {
            SandboxError::RuntimeMissing(self.requested.clone())
        } else {
            SandboxError::Io {
                context: format!("starting {}", self.name()),
                source: e,
            }
        }
    }
}

/// Makes `cmd` run in a new mount namespace (slave to the host's, so later host mounts still
/// appear) where `/sys/fs/cgroup/unified` is detached. Nothing changes on the host.
fn hide_unified_cgroup(cmd: &mut Command) {
    // Built before fork: the child may only make async-signal-safe calls.
    let (Ok(root), Ok(unified)) = (CString::new("/"), CString::new("/sys/fs/cgroup/unified")) else {
        return;
    };
    // SAFETY: the closure only calls unshare, mount and umount2 with pointers to CStrings that
    // live as long as the closure; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Failing here (already gone) is fine.
            libc::umount2(unified.as_ptr(), libc::MNT_DETACH);
            Ok(())
        });
    }
}

/// A runtime version `major.minor.patch` parsed from a `--version` line such as
/// `runc version 1.1.5+ds1` or `crun version 1.8.1`.
pub fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let word = line
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = word
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("runc version 1.1.5+ds1"), Some((1, 1, 5)));
        assert_eq!(parse_version("crun version 1.8.1"), Some((1, 8, 1)));
        assert_eq!(parse_version("runc version 1.0.0-rc92"), Some((1, 0, 0)));
        assert_eq!(parse_version("youki version 0.3"), Some((0, 3, 0)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn flavours_and_resolution() {
        assert_eq!(flavour_of(Path::new("/usr/bin/crun")), Flavour::Crun);
        assert_eq!(flavour_of(Path::new("runc")), Flavour::Runc);
        assert_eq!(resolve_program("/definitely/not/here"), None);
        assert_eq!(resolve_program("strata-no-such-runtime"), None);
        assert!(resolve_program("sh").is_some());
    }
}
