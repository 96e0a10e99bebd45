//! The OCI runtime `config.json` for one step, built with the `oci-spec` crate.
//!
//! [`build_spec`] is a pure function of the step's [`RunConfig`], the bundle's files and the
//! [`HostFacts`], so every part of the config (including cgroup v2, which these hosts cannot run)
//! is unit-tested here. Every field that matters is set explicitly: oci-spec's builders fall back
//! to its own defaults (a cgroup namespace, ambient capabilities, `youki` as hostname) otherwise.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};

use crate::config::{Network, RunConfig, Seccomp};
use crate::host::{CgroupMode, HostFacts};
use crate::seccomp;
use crate::SandboxError;

/// The OCI runtime spec version we write (what runc 1.1 and crun 1.8 implement).
pub const OCI_VERSION: &str = "1.0.2";

/// OBuilder's capability set: Docker's default without `CAP_NET_RAW` (raw sockets: ARP and
/// ICMP spoofing on the host's network under `(network host)`) and `CAP_NET_BIND_SERVICE`
/// (listening on the host's ports below 1024). Without CHOWN `chown` fails, without
/// SETUID/SETGID `su` and package managers dropping privileges fail.
pub const DEFAULT_CAPABILITIES: [Capability; 12] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// runc's default masked paths (`runc spec`).
pub const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// runc's default read-only paths (`runc spec`).
pub const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The sync family that `fast_sync` turns into successful no-ops.
pub const SYNC_SYSCALLS: [&str; 6] = ["sync", "fsync", "fdatasync", "syncfs", "msync", "sync_file_range"];

/// The soft RLIMIT_NOFILE of a step (the kernel's default; some old tools loop over every fd).
pub const NOFILE_SOFT: u64 = 1024;

/// The CFS period used to express `cpus` as a quota.
pub const CPU_PERIOD_US: u64 = 100_000;

/// What the bundle provides besides the config itself.
#[derive(Debug, Clone)]
pub struct BundleFiles<'a> {
    /// The step's root filesystem: absolute, without symlinks (runc refuses anything else).
    pub rootfs: &'a Path,
    /// The `/etc/hosts` to bind read-only.
    pub hosts: &'a Path,
    /// The host's resolv.conf (bound read-only with `Network::Host`).
    pub resolv_conf: &'a Path,
    /// One file per `config.secrets` entry, in the same order, on the private tmpfs.
    pub secrets: &'a [PathBuf],
    /// The container's cgroup, relative to the runtime's own (`strata/<store id>/<container>`),
    /// so the store can find its containers' cgroups; `None` leaves the runtime's default.
    pub cgroups_path: Option<&'a str>,
}

/// The `config.json` for `config` in a bundle laid out as `files` says, on a host like `facts`.
pub fn build_spec(config: &RunConfig, files: &BundleFiles<'_>, facts: &HostFacts) -> Result<Spec, SandboxError> {
    validate(config)?;
    if files.secrets.len() != config.secrets.len() {
        return Err(SandboxError::Config(format!(
            "{} secret files for {} secrets",
            files.secrets.len(),
            config.secrets.len()
        )));
    }

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_owned());
    spec.set_hostname(Some(config.hostname.clone()));
    spec.set_annotations(None);
    spec.set_root(Some(
        RootBuilder::default()
            .path(files.rootfs.to_path_buf())
            .readonly(false)
            .build()
            .map_err(spec_error)?,
    ));
    spec.set_process(Some(process(config, facts)?));
    spec.set_mounts(Some(mounts(config, files)?));
    let mut linux = linux(config, facts)?;
    linux.set_cgroups_path(files.cgroups_path.map(PathBuf::from));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The config as runc reads it: pretty JSON.
pub fn to_json(spec: &Spec) -> Result<String, SandboxError> {
    serde_json::to_string_pretty(spec).map_err(|e| SandboxError::Config(format!("serialising config.json: {e}")))
}

fn spec_error(e: oci_spec::OciSpecError) -> SandboxError {
    SandboxError::Config(format!("building config.json: {e}"))
}

/// Rejects what the runtime would refuse obscurely or what would break the sandbox's invariants
/// (a `..` in a mount target could point a placeholder at the wrong place).
fn validate(config: &RunConfig) -> Result<(), SandboxError> {
    let bad = |msg: String| Err(SandboxError::Config(msg));
    if config.argv.is_empty() {
        return bad("empty command".to_owned());
    }
    if let Some(arg) = config.argv.iter().find(|a| a.contains('\0')) {
        return bad(format!("argument {arg:?} contains a NUL byte"));
    }
    check_container_path("working directory", &config.cwd)?;
    for (name, value) in &config.env {
        if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
            return bad(format!("invalid environment variable name or value {name:?}"));
        }
    }
    if config.hostname.is_empty() || config.hostname.len() > 64 || config.hostname.contains(['/', '\0', ' ']) {
        return bad(format!("invalid hostname {:?}", config.hostname));
    }
    for m in &config.mounts {
        check_container_path("mount target", &m.target)?;
        if !m.source.is_absolute() {
            return bad(format!("mount source {} is not an absolute path", m.source.display()));
        }
    }
    for s in &config.secrets {
        check_container_path("secret target", &s.target)?;
    }
    if let Some(mem) = config.limits.memory_bytes {
        if mem == 0 || mem > i64::MAX as u64 {
            return bad(format!("invalid memory limit {mem}"));
        }
    }
    if let Some(cpus) = config.limits.cpus {
        if !cpus.is_finite() || cpus <= 0.0 || cpus > 1_000_000.0 {
            return bad(format!("invalid cpu limit {cpus}"));
        }
    }
    if let Some(pids) = config.limits.pids {
        if pids == 0 || pids > i64::MAX as u64 {
            return bad(format!("invalid pids limit {pids}"));
        }
    }
    Ok(())
}

/// A path inside the container: absolute, no `..`, no NUL.
pub fn check_container_path(what: &str, path: &str) -> Result<(), SandboxError> {
    let p = Path::new(path);
    let ok = p.is_absolute() && !path.contains('\0') && !p.components().any(|c| matches!(c, Component::ParentDir));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Config(format!(
            "{what} {path:?} must be an absolute path without '..'"
        )))
    }
}

fn process(config: &RunConfig, facts: &HostFacts) -> Result<oci_spec::runtime::Process, SandboxError> {
    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .inheritable(caps)
        .build()
        .map_err(spec_error)?;
    let mut capabilities = capabilities;
    // The builder's default adds an ambient set; a step gets none (as Docker).
    capabilities.set_ambient(None);
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(NOFILE_SOFT.min(facts.nofile_hard))
        .hard(facts.nofile_hard)
        .build()
        .map_err(spec_error)?;
    ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(config.uid)
                .gid(config.gid)
                .build()
                .map_err(spec_error)?,
        )
        .args(config.argv.clone())
        .env(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>())
        .cwd(PathBuf::from(&config.cwd))
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(config.no_new_privileges)
        .build()
        .map_err(spec_error)
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount, SandboxError> {
    MountBuilder::default()
        .destination(PathBuf::from(destination))
        .typ(typ.to_owned())
        .source(source.to_path_buf())
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()
        .map_err(spec_error)
}

fn mounts(config: &RunConfig, files: &BundleFiles<'_>) -> Result<Vec<Mount>, SandboxError> {
    let mut mounts = vec![
        mount("/proc", "proc", Path::new("proc"), &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount("/etc/hosts", "bind", files.hosts, &["bind", "rprivate", "ro"])?,
    ];
    if config.network == Network::Host {
        mounts.push(mount(
            "/etc/resolv.conf",
            "bind",
            files.resolv_conf,
            &["bind", "rprivate", "ro"],
        )?);
    }
    for (secret, file) in config.secrets.iter().zip(files.secrets) {
        mounts.push(mount(
            &secret.target,
            "bind",
            file,
            &["bind", "rprivate", "ro", "nosuid", "nodev", "noexec"],
        )?);
    }
    for m in &config.mounts {
        // Non-recursive on purpose: a recursive read-only bind would leave the host's submounts
        // below the source writable.
        let mut options = vec!["bind", "rprivate", "nosuid", "nodev"];
        if m.readonly {
            options.push("ro");
        }
        mounts.push(mount(&m.target, "bind", &m.source, &options)?);
    }
    Ok(mounts)
}

fn linux(config: &RunConfig, facts: &HostFacts) -> Result<oci_spec::runtime::Linux, SandboxError> {
    // A cgroup namespace: the step sees its own cgroup as `/`, not the host's hierarchy.
    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ];
    if config.network == Network::None {
        kinds.push(LinuxNamespaceType::Network);
    }
    let namespaces = kinds
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build().map_err(spec_error))
        .collect::<Result<Vec<_>, _>>()?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>())
        .resources(resources(config, facts)?)
        .build()
        .map_err(spec_error)?;
    match (config.seccomp, config.fast_sync) {
        (Seccomp::Default, fast_sync) => linux.set_seccomp(Some(seccomp::default_profile(&facts.arch, fast_sync)?)),
        (Seccomp::Unconfined, true) => linux.set_seccomp(Some(seccomp::fast_sync_only(&facts.arch)?)),
        (Seccomp::Unconfined, false) => linux.set_seccomp(None),
    };
    Ok(linux)
}

/// cgroup limits. v1 uses the structured fields; v2 uses the `unified` map of cgroup v2 files
/// (one source of truth, written by the runtime as given).
fn resources(config: &RunConfig, facts: &HostFacts) -> Result<LinuxResources, SandboxError> {
    // Deny every device, then the runtime adds its default allow-list (null, zero, full,
    // random, urandom, tty, ptmx, pts), as `runc spec` does.
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm".to_owned())
        .build()
        .map_err(spec_error)?;
    let mut builder = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    let limits = &config.limits;
    let quota = limits
        .cpus
        .map(|cpus| ((cpus * CPU_PERIOD_US as f64).round() as i64).max(1000));
    match facts.cgroup {
        CgroupMode::V1 => {
            if let Some(bytes) = limits.memory_bytes {
                let mut memory = LinuxMemoryBuilder::default().limit(bytes as i64);
                if facts.memory_swap_accounting {
                    // memory+swap equal to memory: the step cannot dodge the limit by swapping.
                    memory = memory.swap(bytes as i64);
                }
                builder = builder.memory(memory.build().map_err(spec_error)?);
            }
            if let Some(quota) = quota {
                builder = builder.cpu(
                    LinuxCpuBuilder::default()
                        .quota(quota)
                        .period(CPU_PERIOD_US)
                        .build()
                        .map_err(spec_error)?,
                );
            }
            if let Some(pids) = limits.pids {
                builder = builder.pids(
                    LinuxPidsBuilder::default()
                        .limit(pids as i64)
                        .build()
                        .map_err(spec_error)?,
                );
            }
        }
        CgroupMode::V2 => {
            let mut unified = HashMap::new();
            if let Some(bytes) = limits.memory_bytes {
                unified.insert("memory.max".to_owned(), bytes.to_string());
                unified.insert("memory.swap.max".to_owned(), "0".to_owned());
            }
            if let Some(quota) = quota {
                unified.insert("cpu.max".to_owned(), format!("{quota} {CPU_PERIOD_US}"));
            }
            if let Some(pids) = limits.pids {
                unified.insert("pids.max".to_owned(), pids.to_string());
            }
            if !unified.is_empty() {
                builder = builder.unified(unified);
            }
        }
    }
    builder.build().map_err(spec_error)
}

/// The seccomp architectures for a Rust `ARCH` name: the native one plus its compat ABIs, so a
/// 32-bit binary cannot sidestep the filter. `None` (key omitted: native only) elsewhere.
pub fn seccomp_architectures(arch: &str) -> Option<Vec<Arch>> {
    match arch {
        "x86_64" => Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]),
        "aarch64" => Some(vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BindMount, SecretMount};
    use serde_json::Value;

    fn facts(cgroup: CgroupMode) -> HostFacts {
        HostFacts {
            cgroup,
            memory_swap_accounting: true,
            arch: "x86_64".to_owned(),
            nofile_hard: 20000,
        }
    }

    fn json(config: &RunConfig, facts: &HostFacts) -> Value {
        let secrets: Vec<PathBuf> = (0..config.secrets.len())
            .map(|i| PathBuf::from(format!("/b/secrets/secret-{i}")))
            .collect();
        let files = BundleFiles {
            rootfs: Path::new("/store/rootfs"),
            hosts: Path::new("/b/hosts"),
            resolv_conf: Path::new("/etc/resolv.conf"),
            secrets: &secrets,
            cgroups_path: None,
        };
        let spec = build_spec(config, &files, facts).unwrap();
        serde_json::from_str(&to_json(&spec).unwrap()).unwrap()
    }

    fn sample() -> RunConfig {
        let mut c = RunConfig::new(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]);
        c.env = vec![("PATH".into(), "/bin".into()), ("A".into(), "x=y".into())];
        c.cwd = "/src".into();
        c.uid = 1000;
        c.gid = 100;
        c
    }

    fn mount_targets(v: &Value) -> Vec<String> {
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn process_section() {
        let v = json(&sample(), &facts(CgroupMode::V1));
        let p = &v["process"];
        assert_eq!(p["terminal"], false);
        assert_eq!(p["args"], serde_json::json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "A=x=y"]));
        assert_eq!(p["cwd"], "/src");
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["user"]["gid"], 100);
        assert_eq!(p["noNewPrivileges"], false, "setuid works in steps, as in OBuilder");
        assert_eq!(
            p["rlimits"],
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 20000}])
        );
        let mut caps: Vec<&str> = p["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        caps.sort();
        assert_eq!(caps.len(), 12);
        assert!(caps.contains(&"CAP_CHOWN") && caps.contains(&"CAP_SETUID") && caps.contains(&"CAP_AUDIT_WRITE"));
        for set in ["bounding", "effective", "permitted", "inheritable"] {
            let set = p["capabilities"][set].as_array().unwrap();
            assert_eq!(set.len(), 12);
            assert!(
                !set.contains(&Value::from("CAP_NET_RAW")),
                "OBuilder grants no raw sockets"
            );
            assert!(
                !set.contains(&Value::from("CAP_NET_BIND_SERVICE")),
                "nor ports below 1024"
            );
            assert!(!set.contains(&Value::from("CAP_SYS_ADMIN")));
        }
        let mut nnp = sample();
        nnp.no_new_privileges = true;
        assert_eq!(json(&nnp, &facts(CgroupMode::V1))["process"]["noNewPrivileges"], true);
        assert!(p["capabilities"].get("ambient").is_none());
        assert_eq!(v["hostname"], "strata");
        assert_eq!(v["root"]["path"], "/store/rootfs");
        assert_eq!(v["root"]["readonly"], false);
    }

    #[test]
    fn rlimit_never_above_the_hard_limit() {
        let mut f = facts(CgroupMode::V1);
        f.nofile_hard = 512;
        let v = json(&sample(), &f);
        assert_eq!(
            v["process"]["rlimits"][0],
            serde_json::json!({"type": "RLIMIT_NOFILE", "soft": 512, "hard": 512})
        );
    }

    #[test]
    fn namespaces_and_network() {
        let v = json(&sample(), &facts(CgroupMode::V1));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "cgroup", "network"]);
        assert!(!mount_targets(&v).contains(&"/etc/resolv.conf".to_owned()));

        let mut host = sample();
        host.network = Network::Host;
        let v = json(&host, &facts(CgroupMode::V1));
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "cgroup"]);
        let resolv = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .unwrap();
        assert_eq!(resolv["source"], "/etc/resolv.conf");
        assert!(resolv["options"].as_array().unwrap().contains(&Value::from("ro")));
    }

    #[test]
    fn standard_mounts_and_masks() {
        let v = json(&sample(), &facts(CgroupMode::V1));
        assert_eq!(
            mount_targets(&v),
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/etc/hosts"
            ]
        );
        let sys = &v["mounts"][5];
        assert!(sys["options"].as_array().unwrap().contains(&Value::from("ro")));
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
        assert_eq!(v["linux"]["readonlyPaths"].as_array().unwrap().len(), 5);
        assert_eq!(
            v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO",
            "the default profile is on"
        );
        let mut c = sample();
        c.seccomp = Seccomp::Unconfined;
        let v = json(&c, &facts(CgroupMode::V1));
        assert!(
            v["linux"].get("seccomp").is_none(),
            "no filter with --seccomp unconfined"
        );
    }

    #[test]
    fn secrets_and_binds() {
        let mut c = sample();
        c.secrets = vec![SecretMount {
            id: "tok".into(),
            value: b"s3cret".to_vec(),
            target: "/run/secrets/tok".into(),
        }];
        c.mounts = vec![
            BindMount {
                source: "/store/cache/c1".into(),
                target: "/root/.cache".into(),
                readonly: false,
            },
            BindMount {
                source: "/opt/tools".into(),
                target: "/tools".into(),
                readonly: true,
            },
        ];
        let v = json(&c, &facts(CgroupMode::V1));
        let text = v.to_string();
        assert!(!text.contains("s3cret"), "secret values never appear in config.json");
        let m = v["mounts"].as_array().unwrap();
        let secret = m.iter().find(|m| m["destination"] == "/run/secrets/tok").unwrap();
        assert_eq!(secret["source"], "/b/secrets/secret-0");
        assert!(secret["options"].as_array().unwrap().contains(&Value::from("ro")));
        let cache = m.iter().find(|m| m["destination"] == "/root/.cache").unwrap();
        assert!(!cache["options"].as_array().unwrap().contains(&Value::from("ro")));
        let tools = m.iter().find(|m| m["destination"] == "/tools").unwrap();
        assert!(tools["options"].as_array().unwrap().contains(&Value::from("ro")));
    }

    #[test]
    fn cgroup_v1_limits() {
        let mut c = sample();
        c.limits.memory_bytes = Some(16 << 20);
        c.limits.cpus = Some(1.5);
        c.limits.pids = Some(64);
        let v = json(&c, &facts(CgroupMode::V1));
        let r = &v["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 16 << 20);
        assert_eq!(r["memory"]["swap"], 16 << 20);
        assert_eq!(r["cpu"]["quota"], 150_000);
        assert_eq!(r["cpu"]["period"], 100_000);
        assert_eq!(r["pids"]["limit"], 64);
        assert_eq!(r["devices"][0], serde_json::json!({"allow": false, "access": "rwm"}));
        assert!(r.get("unified").is_none());

        let mut f = facts(CgroupMode::V1);
        f.memory_swap_accounting = false;
        let v = json(&c, &f);
        assert!(v["linux"]["resources"]["memory"].get("swap").is_none());
    }

    #[test]
    fn cgroup_v2_limits_use_unified() {
        let mut c = sample();
        c.limits.memory_bytes = Some(16 << 20);
        c.limits.cpus = Some(0.5);
        c.limits.pids = Some(64);
        let v = json(&c, &facts(CgroupMode::V2));
        let r = &v["linux"]["resources"];
        assert_eq!(r["unified"]["memory.max"], "16777216");
        assert_eq!(r["unified"]["memory.swap.max"], "0");
        assert_eq!(r["unified"]["cpu.max"], "50000 100000");
        assert_eq!(r["unified"]["pids.max"], "64");
        assert!(r.get("memory").is_none() && r.get("cpu").is_none() && r.get("pids").is_none());
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"cgroup"));

        let v = json(&sample(), &facts(CgroupMode::V2));
        assert!(
            v["linux"]["resources"].get("unified").is_none(),
            "no limits, no unified map"
        );
    }

    #[test]
    fn fast_sync_filter() {
        let mut c = sample();
        c.fast_sync = true;
        let v = json(&c, &facts(CgroupMode::V1));
        let s = &v["linux"]["seccomp"];
        assert_eq!(
            s["defaultAction"], "SCMP_ACT_ERRNO",
            "fast sync keeps the default profile"
        );
        assert_eq!(
            s["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let sync = s["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"].as_array().unwrap().contains(&Value::from("fsync")))
            .unwrap();
        assert_eq!(sync["action"], "SCMP_ACT_ERRNO");
        assert_eq!(sync["errnoRet"], 0);
        assert_eq!(sync["names"].as_array().unwrap().len(), 6);

        c.seccomp = Seccomp::Unconfined;
        let v = json(&c, &facts(CgroupMode::V1));
        let s = &v["linux"]["seccomp"];
        assert_eq!(s["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(s["syscalls"][0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(s["syscalls"][0]["errnoRet"], 0);
        assert_eq!(s["syscalls"][0]["names"].as_array().unwrap().len(), 6);

        let mut f = facts(CgroupMode::V1);
        f.arch = "riscv64".into();
        let v = json(&c, &f);
        assert!(v["linux"]["seccomp"].get("architectures").is_none());
    }

    #[test]
    fn rejects_bad_input() {
        let files = BundleFiles {
            rootfs: Path::new("/r"),
            hosts: Path::new("/h"),
            resolv_conf: Path::new("/etc/resolv.conf"),
            secrets: &[],
            cgroups_path: None,
        };
        let f = facts(CgroupMode::V1);
        let mut c = sample();
        c.cwd = "relative".into();
        assert!(build_spec(&c, &files, &f).is_err());
        let mut c = sample();
        c.env.push(("A=B".into(), "x".into()));
        assert!(build_spec(&c, &files, &f).is_err());
        let mut c = sample();
        c.mounts.push(BindMount {
            source: "/x".into(),
            target: "/a/../../etc".into(),
            readonly: true,
        });
        assert!(build_spec(&c, &files, &f).is_err());
        let mut c = sample();
        c.limits.cpus = Some(f64::NAN);
        assert!(build_spec(&c, &files, &f).is_err());
        assert!(build_spec(&RunConfig::new(vec![]), &files, &f).is_err());
    }
}
