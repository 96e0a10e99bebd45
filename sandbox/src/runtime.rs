//! The OCI runtime backend: runs each step under runc or crun in a bundle of its own.
//!
//! Per step: a bundle `<bundle parent>/strata-<owner>-<n>` (mode 0700) holding `config.json`,
//! `hosts`, the runtime's own log and a private tmpfs with the secrets; the container id is the
//! bundle's name; the runtime keeps its state under `<state dir>/<runtime name>` (`--root`), so
//! strata can find and remove its own containers. stdin is /dev/null; stdout and stderr share
//! one pipe, copied to the [`LogSink`] as it arrives.
//!
//! The runtime is started as `run --detach` by a small forked [`crate::shim`] that is a child
//! subreaper: in the foreground runc copies stdout and stderr through two pipes of its own and
//! loses their order, while a detached container inherits our one pipe as is. The shim waits
//! for the container's init process and reports its real exit status (a signal is a signal,
//! not 128+N). The runtime's own errors go to its `--log` file (JSON lines), which tells a
//! runtime failure (the config refused, the command not found) from the step's non-zero exit.
//!
//! Invariant: [`OciSandbox::run`] returns only after the container is gone (killed, waited
//! for, deleted) and the bundle removed, whatever happened; a [`StepGuard`] does it on every
//! path, including an error or a panic unwinding.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cleanup::{SandboxDirs, StepGuard};
use crate::config::Network;
use crate::host::{hybrid_with_v2_controllers, HostFacts};
use crate::oci_config::{build_spec, to_json, BundleFiles};
use crate::output::{pump, PumpReport};
use crate::runtime_cli::{flavour_of, parse_version, resolve_program, Flavour, RuntimeCli};
use crate::secrets::{Placeholders, SecretDir};
use crate::shim::{self, Shim, ShimCommand, ShimEvent};
use crate::{Cancel, LogSink, Outcome, RunConfig, Sandbox, SandboxError};

/// How often the supervisor looks at the cancel token (cancellation latency).
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// After this long of `runtime kill` not taking, the step's process is killed directly.
const KILL_ESCALATION: Duration = Duration::from_secs(30);

/// Where and with what an [`OciSandbox`] runs steps.
#[derive(Debug, Clone)]
pub struct OciSandboxOptions {
    /// `runc`, `crun`, or a path to a compatible runtime.
    pub runtime: String,
    /// The store's `state/sandbox/` directory.
    pub state_dir: PathBuf,
    /// The store's per-process owner tag (in the runtime's id charset `[A-Za-z0-9_.+-]`;
    /// anything else is replaced by `_`).
    pub owner_tag: String,
    /// Where per-step bundle directories are made.
    pub bundle_parent: PathBuf,
}

impl OciSandboxOptions {
    /// Options with the default runtime (`runc`).
    pub fn new(state_dir: impl Into<PathBuf>, owner_tag: &str, bundle_parent: impl Into<PathBuf>) -> Self {
        OciSandboxOptions {
            runtime: "runc".to_owned(),
            state_dir: state_dir.into(),
            owner_tag: owner_tag.to_owned(),
            bundle_parent: bundle_parent.into(),
        }
    }
}

/// What [`OciSandbox::probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// The program that answered.
    pub program: PathBuf,
    /// Its `--version` first line, e.g. `runc version 1.1.5+ds1`.
    pub line: String,
    pub version: (u32, u32, u32),
}

/// Oldest versions known to work: runc 1.0 (seccomp `errnoRet`, needed by `--fast-sync`;
/// older runc turns it into EPERM), crun 1.0.
fn minimum_version(flavour: Flavour, program: &Path) -> Option<(u32, u32, u32)> {
    match flavour {
        Flavour::Crun => Some((1, 0, 0)),
        Flavour::Runc if is_runc(program) => Some((1, 0, 0)),
        Flavour::Runc => None,
    }
}

fn is_runc(program: &Path) -> bool {
    let name = program.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("runc")
}

/// The first upstream runc release without CVE-2024-21626 ("Leaky Vessels": runc leaked a
/// descriptor of the host's cgroup directory into the container, so a step whose working
/// directory is `/proc/self/fd/N` starts outside its root filesystem, with the host's `/`).
pub const RUNC_CVE_2024_21626_FIXED: (u32, u32, u32) = (1, 1, 12);

/// Distribution builds of older runc that carry the fix: (upstream version as the package
/// spells it, the first fixed package version). Debian prints the package version on the
/// `commit:` line of `runc --version` (`commit: 1.1.5+ds1-1+deb12u1`); DSA-5615-1 fixed
/// bookworm in `1.1.5+ds1-1+deb12u1` and bullseye in `1.0.0~rc93+ds1-5+deb11u3`.
pub const PATCHED_DISTRIBUTION_BUILDS: [(&str, &str); 2] = [
    ("1.1.5+ds1", "1.1.5+ds1-1+deb12u1"),
    ("1.0.0~rc93+ds1", "1.0.0~rc93+ds1-5+deb11u3"),
];

/// Whether a runc of `version`, whose `--version` printed `output` and whose package (when
/// the package manager owns the program) is `package_version`, carries the CVE-2024-21626 fix.
/// `Err` says why not.
pub fn cve_2024_21626_verdict(
    version: (u32, u32, u32),
    output: &str,
    package_version: Option<&str>,
) -> Result<(), String> {
    if version >= RUNC_CVE_2024_21626_FIXED {
        return Ok(());
    }
    let commit = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("commit:"))
        .map(str::trim);
    let candidates = commit.into_iter().chain(package_version);
    for build in candidates {
        for (upstream, fixed) in PATCHED_DISTRIBUTION_BUILDS {
            let same_upstream = build
                .rsplit_once('-')
                .is_some_and(|(u, _)| u.rsplit_once(':').map_or(u, |(_, u)| u) == upstream);
            if same_upstream && debian_version_cmp(build, fixed) != std::cmp::Ordering::Less {
                return Ok(());
            }
        }
    }
    let (a, b, c) = RUNC_CVE_2024_21626_FIXED;
    Err(format!(
        "it is vulnerable to CVE-2024-21626 (a step can escape to the host): runc before {a}.{b}.{c}, \
         and not a distribution build known to carry the fix (build {}); install runc {a}.{b}.{c} or \
         newer, or your distribution's fixed package, or use --runtime crun",
        commit.or(package_version).unwrap_or("unknown")
    ))
}

/// Compares two Debian package versions (`[epoch:]upstream[-revision]`) as dpkg does.
pub fn debian_version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    fn part(a: &str, b: &str) -> std::cmp::Ordering {
        let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
        while !a.is_empty() || !b.is_empty() {
            // The non-digit prefixes, character by character.
            while a.first().is_some_and(|c| !c.is_ascii_digit()) || b.first().is_some_and(|c| !c.is_ascii_digit()) {
                let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
                let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
                let ord = order(ca).cmp(&order(cb));
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
                if ca.is_some() {
                    a = &a[1..];
                }
                if cb.is_some() {
                    b = &b[1..];
                }
            }
            // Then the digit runs, as numbers.
            let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let na = std::str::from_utf8(&a[..da])
                .ok()
                .and_then(|s| s.parse::<u128>().ok())
                .unwrap_or(0);
            let nb = std::str::from_utf8(&b[..db])
                .ok()
                .and_then(|s| s.parse::<u128>().ok())
                .unwrap_or(0);
            if na != nb {
                return na.cmp(&nb);
            }
            a = &a[da..];
            b = &b[db..];
        }
        std::cmp::Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua, ub)).then_with(|| part(ra, rb))
}

/// The version of the package that owns `program`, when dpkg owns it (`dpkg-query -S`, then
/// `dpkg-query -W`); `None` elsewhere.
fn package_version(program: &Path) -> Option<String> {
    let path = program.canonicalize().ok()?;
    let owner = std::process::Command::new("dpkg-query")
        .arg("-S")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&owner.stdout);
    let package = text.lines().next()?.split_once(':')?.0.trim().to_owned();
    if package.is_empty() || package.contains([',', ' ']) {
        return None;
    }
    let version = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", &package])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&version.stdout).trim().to_owned()).filter(|v| !v.is_empty())
}

/// The version in a runtime's `--version` output, if it is recent enough and, for runc, not
/// vulnerable to CVE-2024-21626. `package` looks up the package version of the program (only
/// asked when the `--version` output does not settle it).
fn check_version(
    name: &str,
    flavour: Flavour,
    program: &Path,
    output: &str,
    package: &dyn Fn(&Path) -> Option<String>,
) -> Result<(u32, u32, u32), SandboxError> {
    let line = output.lines().next().unwrap_or("").trim();
    let version = parse_version(line).ok_or_else(|| SandboxError::Runtime {
        runtime: name.to_owned(),
        stderr: format!("cannot read a version from --version output {line:?}"),
    })?;
    let shown = format!("{}.{}.{}", version.0, version.1, version.2);
    if let Some(minimum) = minimum_version(flavour, program) {
        if version < minimum {
            return Err(SandboxError::RuntimeTooOld {
                runtime: name.to_owned(),
                version: shown,
                minimum: format!("{}.{}.{}", minimum.0, minimum.1, minimum.2),
            });
        }
    }
    if flavour == Flavour::Runc && is_runc(program) {
        let verdict = cve_2024_21626_verdict(version, output, None).or_else(|e| {
            package(program).map_or(Err(e.clone()), |v| {
                cve_2024_21626_verdict(version, output, Some(&v)).map_err(|_| e)
            })
        });
        if let Err(reason) = verdict {
            return Err(SandboxError::RuntimeVulnerable {
                runtime: name.to_owned(),
                version: shown,
                reason,
            });
        }
    }
    Ok(version)
}

/// The first component of every step's cgroup path (relative to strata's own cgroup).
pub const CGROUP_PARENT: &str = "strata";
/// The file in the sandbox's state directory that holds the store's id.
pub const STORE_ID_FILE: &str = "store-id";

/// The store's id: 16 random hex digits made on first use and kept in
/// `<state dir>/store-id`, so that the cgroups of one store's containers can be told from
/// another's on the same host. Several processes opening a new store agree on one id: each
/// writes a candidate under a private name and links it into place; the first link wins.
pub fn store_id(state_dir: &Path) -> Result<String, SandboxError> {
    let path = state_dir.join(STORE_ID_FILE);
    let read = |path: &Path| -> Result<Option<String>, SandboxError> {
        match fs::read_to_string(path) {
            Ok(text) => {
                let id = text.trim();
                if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Some(id.to_owned()))
                } else {
                    Err(io_error(
                        format!("{}: not a store id: {id:?}", path.display()),
                        std::io::ErrorKind::InvalidData.into(),
                    ))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("reading {}", path.display()), e)),
        }
    };
    if let Some(id) = read(&path)? {
        return Ok(id);
    }
    let mut random = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(|e| io_error("reading /dev/urandom".to_owned(), e))?;
    let candidate: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let private = state_dir.join(format!(".{STORE_ID_FILE}.{}.{candidate}", std::process::id()));
    fs::write(&private, format!("{candidate}\n")).map_err(|e| io_error(format!("writing {}", private.display()), e))?;
    let linked = fs::hard_link(&private, &path);
    let _ = fs::remove_file(&private);
    match linked {
        Ok(()) => Ok(candidate),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(&path)?.ok_or_else(|| io_error(format!("reading {}", path.display()), e))
        }
        Err(e) => Err(io_error(format!("creating {}", path.display()), e)),
    }
}

/// Runs steps under an OCI runtime. See the module documentation.
#[derive(Debug)]
pub struct OciSandbox {
    cli: RuntimeCli,
    owner_tag: String,
    /// This store's id (see [`store_id`]): its containers' cgroups are
    /// `strata/<store id>/<container>`, below the cgroup strata runs in.
    store_id: String,
    bundle_parent: PathBuf,
    facts: HostFacts,
    /// Set once [`OciSandbox::probe`] accepted the runtime.
    version_checked: std::sync::OnceLock<()>,
}

impl OciSandbox {
    /// Creates the state and bundle directories. A missing runtime is reported by
    /// [`OciSandbox::probe`] and [`Sandbox::run`] (`SandboxError::RuntimeMissing`), not here, so
    /// commands that never run a step work without one.
    pub fn new(options: OciSandboxOptions) -> Result<OciSandbox, SandboxError> {
        let program = resolve_program(&options.runtime);
        let flavour = program.as_deref().map(flavour_of).unwrap_or(Flavour::Runc);
        let runtime_name = program
            .as_deref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .map(crate::names::sanitise_tag)
            .unwrap_or_else(|| "runtime".to_owned());
        // Each runtime's state format is its own: one root per runtime.
        let root = options.state_dir.join(runtime_name);
        for dir in [&root, &options.bundle_parent] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
        }
        let cli = RuntimeCli {
            requested: options.runtime.clone(),
            program,
            flavour,
            root,
            hide_unified_cgroup: flavour == Flavour::Crun && hybrid_with_v2_controllers(),
        };
        let store_id = store_id(&options.state_dir)?;
        Ok(OciSandbox {
            cli,
            owner_tag: crate::names::sanitise_tag(&options.owner_tag),
            store_id,
            bundle_parent: options.bundle_parent,
            facts: HostFacts::detect(),
            version_checked: std::sync::OnceLock::new(),
        })
    }

    /// The runtime's `--root` (where its container state lives).
    pub fn state_root(&self) -> &Path {
        &self.cli.root
    }

    /// Checks that the runtime exists, answers `--version`, is recent enough and not known to be
    /// vulnerable ([`cve_2024_21626_verdict`]). [`Sandbox::run`] does it before the first step.
    pub fn probe(&self) -> Result<RuntimeVersion, SandboxError> {
        let program = self
            .cli
            .program
            .clone()
            .ok_or_else(|| SandboxError::RuntimeMissing(self.cli.requested.clone()))?;
        let output = self.cli.version_output()?;
        let version = check_version(&self.cli.name(), self.cli.flavour, &program, &output, &package_version)?;
        let line = output.lines().next().unwrap_or("").trim().to_owned();
        Ok(RuntimeVersion { program, line, version })
    }

    /// Force-deletes the containers and bundles left by strata processes whose owner tag
    /// `is_alive` reports dead (a crash, `kill -9`). Returns the names removed.
    pub fn cleanup_orphans(&self, is_alive: &dyn Fn(&str) -> bool) -> Result<Vec<String>, SandboxError> {
        let mut names: Vec<String> = self
            .dirs()
            .remove_orphans(is_alive)?
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Where this sandbox keeps runtime state and bundles.
    pub fn dirs(&self) -> SandboxDirs {
        SandboxDirs {
            state: self
                .cli
                .root
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.cli.root.clone()),
            bundles: self.bundle_parent.clone(),
        }
    }

    /// Writes the bundle for one step and returns the guard that owns it.
    fn prepare<'a>(&'a self, config: &RunConfig, rootfs: &Path) -> Result<StepGuard<'a>, SandboxError> {
        let rootfs = rootfs
            .canonicalize()
            .map_err(|e| io_error(format!("rootfs {}", rootfs.display()), e))?;
        let id = crate::names::fresh(&self.owner_tag);
        let bundle = self.bundle_parent.join(&id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&bundle)
            .map_err(|e| io_error(format!("creating bundle {}", bundle.display()), e))?;
        let mut guard = StepGuard::new(&self.cli, id, bundle.clone());

        let hosts = bundle.join("hosts");
        let hosts_text = format!("127.0.0.1 localhost {}\n::1 localhost\n", config.hostname);
        fs::write(&hosts, hosts_text).map_err(|e| io_error(format!("writing {}", hosts.display()), e))?;
        let resolv_conf = if config.network == Network::Host {
            // The host's file may be a symlink (systemd-resolved); bind what it points to.
            Path::new("/etc/resolv.conf")
                .canonicalize()
                .map_err(|e| io_error("host /etc/resolv.conf".to_owned(), e))?
        } else {
            PathBuf::from("/etc/resolv.conf")
        };

        let secrets = SecretDir::create(&bundle, &config.secrets, config.uid, config.gid)?;
        let cgroups_path = format!("{CGROUP_PARENT}/{}/{}", self.store_id, guard.id);
        let spec = {
            let files = BundleFiles {
                rootfs: &rootfs,
                hosts: &hosts,
                resolv_conf: &resolv_conf,
                secrets: secrets.files(),
                cgroups_path: Some(&cgroups_path),
            };
            build_spec(config, &files, &self.facts)?
        };
        guard.secrets = Some(secrets);
        guard.placeholders = Placeholders::record(&rootfs, config.secrets.iter().map(|s| s.target.as_str()));
        let config_path = bundle.join("config.json");
        let mut json = to_json(&spec)?;
        json.push('\n');
        fs::write(&config_path, json).map_err(|e| io_error(format!("writing {}", config_path.display()), e))?;
        Ok(guard)
    }
}

impl Sandbox for OciSandbox {
    fn run(
        &self,
        config: &RunConfig,
        rootfs: &Path,
        log: &dyn LogSink,
        cancel: &Cancel,
    ) -> Result<Outcome, SandboxError> {
        if cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        // Fail before touching anything when there is no runtime, or one that must not run
        // steps (checked once per sandbox).
        if self.cli.program.is_none() {
            return Err(SandboxError::RuntimeMissing(self.cli.requested.clone()));
        }
        if self.version_checked.get().is_none() {
            let found = self.probe()?;
            tracing::debug!("runtime {} ({})", found.program.display(), found.line);
            let _ = self.version_checked.set(());
        }
        let guard = self.prepare(config, rootfs)?;
        let runtime_log = guard.bundle.join("runtime.log");
        let pid_file = guard.bundle.join("init.pid");
        let (read_end, write_end) = output_pipe()?;
        let (program, args) = self.cli.run_args(&guard.id, &guard.bundle, &runtime_log, &pid_file)?;
        let shim_command = ShimCommand::new(&program, &args, &pid_file, &guard.bundle, self.cli.hide_unified_cgroup)
            .map_err(|e| io_error(format!("preparing {}", self.cli.name()), e))?;
        // The shim takes the write end: from here on only the runtime and the container hold
        // it, so the pipe reaches end-of-file once the container's processes are gone.
        let shim =
            shim::spawn(&shim_command, write_end).map_err(|e| io_error(format!("starting {}", self.cli.name()), e))?;
        let watch = Watch {
            cli: &self.cli,
            id: &guard.id,
            config,
            log,
            cancel,
        };
        let (end, stop, report) = match watch.supervise(shim, fs::File::from(read_end)) {
            Ok(done) => done,
            Err(Failure::Error(e)) => return Err(e),
            Err(Failure::Panic(payload)) => {
                // The container is already dead; the guard cleans up while unwinding.
                std::panic::resume_unwind(payload)
            }
        };
        let outcome = match stop {
            Some(Stop::TimedOut) => {
                log.write(crate::output::timeout_message(config.timeout).as_bytes());
                Outcome::TimedOut
            }
            Some(Stop::Cancelled) => {
                log.write(crate::output::CANCELLED_MESSAGE.as_bytes());
                Outcome::Cancelled
            }
            Some(Stop::LogLimit) => Outcome::LogLimitExceeded,
            // The step ended on its own just as its output passed the cap: still over the cap.
            None if report.limit_exceeded => Outcome::LogLimitExceeded,
            None => self.interpret(end, &runtime_log)?,
        };
        guard.finish()?;
        Ok(outcome)
    }
}

impl OciSandbox {
    /// Turns how the step ended into its outcome, or a runtime error when the runtime itself
    /// failed (refused the config, could not start the process).
    fn interpret(&self, end: StepEnd, runtime_log: &Path) -> Result<Outcome, SandboxError> {
        match end {
            StepEnd::Exited(code) => Ok(Outcome::Exited(code)),
            StepEnd::Signaled(signal) => Ok(Outcome::Signaled(signal)),
            StepEnd::RuntimeFailed(status) => {
                let errors = runtime_errors(runtime_log);
                let stderr = if errors.is_empty() {
                    match shim::decode_status(status) {
                        Ok(code) => format!("`run` exited with status {code} without a message"),
                        Err(signal) => format!("`run` was killed by signal {signal}"),
                    }
                } else {
                    errors.join("; ")
                };
                Err(SandboxError::Runtime {
                    runtime: self.cli.name(),
                    stderr,
                })
            }
        }
    }
}

/// The error messages in a runtime's JSON log (`{"level":"error","msg":...}` lines).
pub fn runtime_errors(log: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal" | "panic")))
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect()
}

fn io_error(context: String, source: std::io::Error) -> SandboxError {
    SandboxError::Io { context, source }
}

/// One pipe for the step's stdout and stderr (close-on-exec; the child gets dups).
fn output_pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_error("creating the output pipe".to_owned(), e.into()))
}

/// Why the supervisor stopped the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Cancelled,
    LogLimit,
}

/// How the step's process (the container's init) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepEnd {
    Exited(i32),
    Signaled(i32),
    /// `run --detach` itself failed (raw wait status): the step never ran.
    RuntimeFailed(i32),
}

enum Event {
    /// The container's init process is running with this pid.
    Started(i32),
    Ended(std::io::Result<StepEnd>),
    LogLimit,
    SinkPanicked,
}

enum Failure {
    Error(SandboxError),
    Panic(Box<dyn std::any::Any + Send>),
}

type Supervised = (StepEnd, Option<Stop>, PumpReport);

/// What the supervisor needs to watch one step.
struct Watch<'a> {
    cli: &'a RuntimeCli,
    id: &'a str,
    config: &'a RunConfig,
    log: &'a dyn LogSink,
    cancel: &'a Cancel,
}

impl Watch<'_> {
    /// Waits for the step while copying its output, and kills the container on timeout,
    /// cancellation, the log cap or a panicking sink. Returns once the step's process has been
    /// reaped and the output pipe is drained.
    fn supervise(&self, shim: Shim, pipe: fs::File) -> Result<Supervised, Failure> {
        let (tx, rx) = mpsc::channel::<Event>();
        let deadline = self.config.timeout.map(|t| Instant::now() + t);
        let limit = self.config.log_limit;
        let log = self.log;
        let shim_pid = shim.pid();
        thread::scope(|scope| {
            let wait_tx = tx.clone();
            scope.spawn(move || wait_for_step(shim, &wait_tx));
            let pump_tx = tx;
            let reader = scope.spawn(move || {
                let limit_tx = pump_tx.clone();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    pump(pipe, log, limit, move || {
                        let _ = limit_tx.send(Event::LogLimit);
                    })
                }));
                if result.is_err() {
                    let _ = pump_tx.send(Event::SinkPanicked);
                }
                result
            });

            let mut stop = None;
            let mut init_pid = None;
            let ended = loop {
                let wait = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()).min(CANCEL_POLL),
                    None => CANCEL_POLL,
                };
                match rx.recv_timeout(wait) {
                    Ok(Event::Started(pid)) => init_pid = Some(pid),
                    Ok(Event::Ended(end)) => break Some(end),
                    Ok(Event::LogLimit) => {
                        stop = Some(Stop::LogLimit);
                        break None;
                    }
                    // The sink panicked: kill the container, then let the panic continue.
                    Ok(Event::SinkPanicked) => break None,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.cancel.is_cancelled() {
                            stop = Some(Stop::Cancelled);
                            break None;
                        }
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            stop = Some(Stop::TimedOut);
                            break None;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        break Some(Err(std::io::Error::other("lost the step's exit status")));
                    }
                }
            };
            let ended = match ended {
                Some(end) => end,
                None => self.kill_until_ended(&rx, init_pid, shim_pid),
            };
            if ended.is_err() {
                // We lost track of the step's process: make sure the container is gone, or the
                // output pipe never reaches end-of-file.
                let _ = self.cli.delete_force(self.id);
            }
            let pumped = reader.join();
            let end = match ended {
                Ok(end) => end,
                // Stopped on purpose and then lost the status (a hung runtime killed): the
                // outcome is the reason it was stopped.
                Err(_) if stop.is_some() => StepEnd::Signaled(Signal::SIGKILL as i32),
                Err(e) => {
                    return Err(Failure::Error(io_error(
                        format!("waiting for container {}", self.id),
                        e,
                    )))
                }
            };
            match pumped {
                Ok(Ok(Ok(report))) => Ok((end, stop, report)),
                Ok(Ok(Err(e))) => Err(Failure::Error(io_error("reading the step's output".to_owned(), e))),
                Ok(Err(payload)) | Err(payload) => Err(Failure::Panic(payload)),
            }
        })
    }

    /// `runtime kill ID KILL` until the step's process is gone: the container may not exist
    /// yet (still being created), so the kill is retried with a growing pause. Should the
    /// runtime not manage within [`KILL_ESCALATION`], the init process (the shim's child: its
    /// pid is not reused before the shim reaps it) and the shim's process group (the shim and a
    /// runtime that hangs) are killed directly; the container is then deleted by force.
    fn kill_until_ended(
        &self,
        rx: &Receiver<Event>,
        mut init_pid: Option<i32>,
        shim_pid: i32,
    ) -> std::io::Result<StepEnd> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let _ = self.cli.kill(self.id);
            if started.elapsed() > KILL_ESCALATION {
                if let Some(pid) = init_pid {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(-shim_pid), Signal::SIGKILL);
            }
            let until = Instant::now() + pause;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(Event::Ended(end)) => return end,
                    Ok(Event::Started(pid)) => init_pid = Some(pid),
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(std::io::Error::other("lost the step's exit status"))
                    }
                }
            }
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// Relays the shim's reports as events until it exits, then reaps it.
fn wait_for_step(mut shim: Shim, tx: &mpsc::Sender<Event>) {
    let end = loop {
        match shim.next_event() {
            Ok(Some(ShimEvent::Started(pid))) => {
                let _ = tx.send(Event::Started(pid));
            }
            Ok(Some(ShimEvent::Ended(status))) => {
                break Ok(match shim::decode_status(status) {
                    Ok(code) => StepEnd::Exited(code),
                    Err(signal) => StepEnd::Signaled(signal),
                })
            }
            Ok(Some(ShimEvent::RuntimeFailed(status))) => break Ok(StepEnd::RuntimeFailed(status)),
            Ok(Some(ShimEvent::Failed(stage, errno))) => {
                break Err(std::io::Error::other(format!(
                    "sandbox shim failed {}: {}",
                    shim::Stage::describe(stage),
                    std::io::Error::from_raw_os_error(errno)
                )))
            }
            Ok(None) => break Err(std::io::Error::other("the sandbox shim exited without a status")),
            Err(e) => break Err(e),
        }
    };
    shim.reap();
    let _ = tx.send(Event::Ended(end));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_errors_are_read_from_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runtime.log");
        fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"meh\"}\nnot json\n{\"msg\":\"boom\",\"level\":\"error\"}\n",
        )
        .unwrap();
        assert_eq!(runtime_errors(&log), ["boom"]);
        assert!(runtime_errors(&dir.path().join("missing")).is_empty());
    }

    fn no_package(_: &Path) -> Option<String> {
        None
    }

    #[test]
    fn versions_are_checked() {
        let runc = Path::new("/usr/sbin/runc");
        let crun = Path::new("/usr/bin/crun");
        let check = |name: &str, flavour, program: &Path, output: &str| {
            check_version(name, flavour, program, output, &no_package)
        };
        assert_eq!(
            check(
                "runc",
                Flavour::Runc,
                runc,
                "runc version 1.1.12\ncommit: v1.1.12-0-g51d5e946\n"
            )
            .unwrap(),
            (1, 1, 12)
        );
        assert!(matches!(
            check("runc", Flavour::Runc, runc, "runc version 0.1.1"),
            Err(SandboxError::RuntimeTooOld { .. })
        ));
        assert!(matches!(
            check("crun", Flavour::Crun, crun, "crun version 0.17"),
            Err(SandboxError::RuntimeTooOld { .. })
        ));
        // crun was never affected by CVE-2024-21626.
        assert!(check("crun", Flavour::Crun, crun, "crun version 1.8.1\ncommit: f8a096be\n").is_ok());
        // No known minimum for other runc-compatible runtimes.
        assert!(check("youki", Flavour::Runc, Path::new("/bin/youki"), "youki version 0.3.0").is_ok());
        assert!(matches!(
            check("runc", Flavour::Runc, runc, "no version here"),
            Err(SandboxError::Runtime { .. })
        ));
    }

    /// Debian 12's runc, exactly as it prints itself: patched, accepted.
    const BOOKWORM: &str =
        "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\ngo: go1.19.8\nlibseccomp: 2.5.4\n";

    #[test]
    fn runc_vulnerable_to_cve_2024_21626_is_refused() {
        let runc = Path::new("/usr/sbin/runc");
        let check = |output: &str| check_version("runc", Flavour::Runc, runc, output, &no_package);
        assert_eq!(check(BOOKWORM).unwrap(), (1, 1, 5));
        assert!(
            check(&BOOKWORM.replace("deb12u1", "deb12u3")).is_ok(),
            "later security updates"
        );
        for vulnerable in [
            "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1\n",
            "runc version 1.1.11\ncommit: v1.1.11-0-g4bccb38c\n",
            "runc version 1.1.5\nspec: 1.0.2-dev\n",
            "runc version 1.0.0~rc93+ds1\ncommit: 1.0.0~rc93+ds1-5+deb11u2\n",
            // A fixed revision of another upstream version does not count.
            "runc version 1.1.4\ncommit: 1.1.4-1+deb12u1\n",
        ] {
            let err = check(vulnerable).unwrap_err();
            assert!(
                matches!(err, SandboxError::RuntimeVulnerable { .. }),
                "{vulnerable}: {err}"
            );
            assert!(err.to_string().contains("CVE-2024-21626"), "{err}");
        }
        assert!(check("runc version 1.0.0~rc93+ds1\ncommit: 1.0.0~rc93+ds1-5+deb11u3\n").is_ok());
        // Without a commit line, the package that owns the program decides.
        let package = |_: &Path| Some("1.1.5+ds1-1+deb12u1".to_owned());
        assert!(check_version("runc", Flavour::Runc, runc, "runc version 1.1.5+ds1\n", &package).is_ok());
        let old = |_: &Path| Some("1.1.5+ds1-1".to_owned());
        assert!(check_version("runc", Flavour::Runc, runc, "runc version 1.1.5+ds1\n", &old).is_err());
    }

    #[test]
    fn debian_versions_compare_as_dpkg() {
        use std::cmp::Ordering::*;
        for (a, b, want) in [
            ("1.1.5+ds1-1+deb12u1", "1.1.5+ds1-1+deb12u1", Equal),
            ("1.1.5+ds1-1+deb12u2", "1.1.5+ds1-1+deb12u1", Greater),
            ("1.1.5+ds1-1+deb12u10", "1.1.5+ds1-1+deb12u9", Greater),
            ("1.1.5+ds1-1", "1.1.5+ds1-1+deb12u1", Less),
            ("1.0.0~rc93+ds1-5", "1.0.0+ds1-5", Less),
            ("1:0.1-1", "9.9-1", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0~", "1.0", Less),
        ] {
            assert_eq!(debian_version_cmp(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn missing_runtime_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = OciSandboxOptions::new(dir.path().join("state"), "1.a", dir.path().join("bundles"));
        options.runtime = "strata-no-such-runtime".into();
        let sandbox = OciSandbox::new(options).unwrap();
        assert!(matches!(sandbox.probe(), Err(SandboxError::RuntimeMissing(_))));
        let config = RunConfig::new(vec!["true".into()]);
        struct Null;
        impl LogSink for Null {
            fn write(&self, _: &[u8]) {}
        }
        let err = sandbox.run(&config, dir.path(), &Null, &Cancel::new()).unwrap_err();
        assert!(matches!(err, SandboxError::RuntimeMissing(_)), "{err}");
    }
}
