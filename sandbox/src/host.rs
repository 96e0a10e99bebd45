//! Facts about the host that shape a container's config: the cgroup layout, the CPU
//! architecture (for seccomp) and the resource limits the runtime may not exceed.
//!
//! Detection is kept apart from config generation so that the generator is a pure function
//! of (`RunConfig`, [`HostFacts`]) and can be unit-tested for hosts we cannot run on (cgroup v2).

use std::path::Path;

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroup v1 controllers (possibly with an empty or near-empty v2 hierarchy beside them).
    V1,
    /// The unified v2 hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// What the config generator needs to know about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub cgroup: CgroupMode,
    /// Whether the v1 memory controller accounts swap (`memory.memsw.limit_in_bytes`): only then
    /// can swap be capped along with memory.
    pub memory_swap_accounting: bool,
    /// `std::env::consts::ARCH` of the host (selects the seccomp architectures).
    pub arch: String,
    /// This process's hard RLIMIT_NOFILE; the runtime cannot raise a limit above it without
    /// CAP_SYS_RESOURCE (runc fails with "error setting rlimits").
    pub nofile_hard: u64,
}

impl HostFacts {
    pub fn detect() -> HostFacts {
        let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            CgroupMode::V2
        } else {
            CgroupMode::V1
        };
        HostFacts {
            cgroup,
            memory_swap_accounting: Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            arch: std::env::consts::ARCH.to_owned(),
            nofile_hard: nofile_hard_limit(),
        }
    }
}

fn nofile_hard_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; it has no other effect.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        // 1024 is the kernel's default and below any hard limit we could have been given.
        return 1024;
    }
    limit.rlim_max
}

/// Whether the host mounts a v2 hierarchy beside v1 with controllers enabled in it: crun (up to
/// at least 1.8) refuses to start any container then ("cgroups in hybrid mode not supported"),
/// even when the container uses no limit. runc copes.
pub fn hybrid_with_v2_controllers() -> bool {
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    match std::fs::read_to_string(unified) {
        Ok(text) => !text.trim().is_empty() && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        Err(_) => false,
    }
}
