//! An independent check for what a strata store leaves behind: processes, containers, cgroups,
//! bundles and mounts that must not exist when no build runs on the store.
//!
//! This module deliberately shares no code with strata (testkit does not depend on the strata
//! crates): it re-derives from the outside where strata keeps things, so a bug in strata's own
//! bookkeeping cannot hide a leftover from the check. What it knows about a store `R` (for ZFS,
//! the pool's mount point):
//!
//! - the runtimes' state lives under `R/state/sandbox/runc` and `R/state/sandbox/crun` (their
//!   `--root`), one subdirectory per container;
//! - bundles are the entries of `R/state/bundles`;
//! - each step's container has the relative cgroups path `strata/<store-id>/<container-id>`,
//!   `<store-id>` being the content of `R/state/sandbox/store-id`; "relative" means nested
//!   under strata's own cgroup, which differs per hierarchy, so every mounted cgroup and cgroup2
//!   hierarchy is searched for directories ending in `strata/<store-id>`;
//! - a step's shim keeps its bundle directory as working directory (even once deleted), and a
//!   step's processes have a rootfs under `R/result-tmp/*/rootfs` as their root; a container's
//!   root reads as `/` through `/proc/PID/root` (another mount namespace), so roots are also
//!   compared by device and inode;
//! - temporary mounts live under `R/result-tmp`, `R/cache-tmp` and `R/state`. The directories
//!   themselves may be mount points (ZFS datasets), and an overlayfs store keeps read-only views
//!   mounted under `R/result/<id>/rootfs`: neither is a leftover.
//!
//! [`scan`] never fails: what it cannot read it cannot attribute, and a runtime whose `list`
//! fails is itself reported, so that a broken check shows up as a finding rather than as a
//! clean result.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How deep below a hierarchy's mount point a `strata/<store-id>` directory is looked for.
pub const CGROUP_SEARCH_DEPTH: usize = 8;

/// The OCI runtimes whose state directories strata uses, by the runtime's command name.
pub const RUNTIMES: [&str; 2] = ["runc", "crun"];

/// What kind of thing was left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A live process attributed to the store (by cgroup, working directory or root).
    Process,
    /// A container known to a runtime's state directory under the store.
    Container,
    /// A cgroup below `strata/<store-id>` in some hierarchy.
    Cgroup,
    /// An entry of `R/state/bundles`.
    Bundle,
    /// A mount below `R/result-tmp`, `R/cache-tmp` or `R/state`.
    Mount,
}

impl Kind {
    /// The lower-case name printed by `store-leftovers` (`process`, `container`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Process => "process",
            Kind::Container => "container",
            Kind::Cgroup => "cgroup",
            Kind::Bundle => "bundle",
            Kind::Mount => "mount",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing that belongs to a store and should not exist when no build runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leftover {
    pub kind: Kind,
    /// For a human: what it is and why it is attributed to the store.
    pub detail: String,
}

impl Leftover {
    fn new(kind: Kind, detail: impl Into<String>) -> Leftover {
        Leftover {
            kind,
            detail: detail.into(),
        }
    }

    /// `{"kind":"process","detail":"..."}`, one line.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"kind\":{},\"detail\":{}}}",
            json_string(self.kind.name()),
            json_string(&self.detail)
        )
    }
}

impl fmt::Display for Leftover {
    /// `KIND<TAB>detail`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\t{}", self.kind, self.detail)
    }
}

/// Everything that belongs to the store at `store_root` and should not exist when no build is
/// running on it, in the order processes, containers, cgroups, bundles, mounts. Empty means
/// clean. The calling process itself is never reported.
pub fn scan(store_root: &Path) -> Vec<Leftover> {
    // Paths from the kernel (mountinfo, /proc/PID/cwd) are canonical.
    let root = fs::canonicalize(store_root).unwrap_or_else(|_| store_root.to_path_buf());
    let mounts = read_mountinfo();
    let mut found = Vec::new();
    let cgroups = scan_cgroups(&root, &mounts);
    found.extend(scan_processes(&root, &cgroups.processes));
    found.extend(scan_containers(&root));
    found.extend(cgroups.leftovers);
    found.extend(scan_bundles(&root));
    found.extend(scan_mounts(&root, &mounts));
    found.sort_by_key(|l| l.kind);
    found
}

/// The store's id (`R/state/sandbox/store-id`, trimmed), if a container was ever made.
pub fn store_id(store_root: &Path) -> Option<String> {
    let text = fs::read_to_string(store_root.join("state/sandbox/store-id")).ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// One line of `/proc/self/mountinfo`: the mount point and the filesystem type and source.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// The per-superblock options (for cgroup v1: the controllers, e.g. `rw,pids`).
    pub super_options: String,
}

/// The mounts of this process's mount namespace (empty if unreadable).
pub fn read_mountinfo() -> Vec<MountEntry> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let mut after = after.split(' ');
    let fstype = after.next()?.to_owned();
    let source = unescape_mountinfo(after.next().unwrap_or(""));
    let super_options = after.next().unwrap_or("").to_owned();
    Some(MountEntry {
        mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
        fstype,
        source,
        super_options,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes.get(i + 1..i + 4).unwrap_or_default();
        if bytes[i] == b'\\' && digits.len() == 3 && digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(value as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `path` lies strictly below `dir` (component-wise, not as a string prefix).
fn strictly_under(path: &Path, dir: &Path) -> bool {
    path != dir && path.starts_with(dir)
}

/// What the cgroup search found: leftover cgroups, and the processes in them (pid -> cgroup).
struct CgroupScan {
    leftovers: Vec<Leftover>,
    processes: BTreeMap<u32, PathBuf>,
}

/// Finds `strata/<store-id>` directories in every cgroup and cgroup2 hierarchy; each child of
/// one is a leftover cgroup, and so is the directory itself when it holds processes.
fn scan_cgroups(root: &Path, mounts: &[MountEntry]) -> CgroupScan {
    let mut scan = CgroupScan {
        leftovers: Vec::new(),
        processes: BTreeMap::new(),
    };
    let Some(id) = store_id(root) else {
        return scan;
    };
    let mut seen = HashSet::new();
    for mount in mounts {
        if (mount.fstype != "cgroup" && mount.fstype != "cgroup2") || !seen.insert(mount.mount_point.clone()) {
            continue;
        }
        let mut parents = Vec::new();
        find_store_cgroups(&mount.mount_point, &id, 0, &mut parents);
        for parent in parents {
            let direct = cgroup_procs(&parent);
            if !direct.is_empty() {
                scan.leftovers.push(Leftover::new(
                    Kind::Cgroup,
                    format!("{} holds processes {}", parent.display(), pid_list(&direct)),
                ));
                for pid in direct {
                    scan.processes.insert(pid, parent.clone());
                }
            }
            for child in subdirectories(&parent) {
                let mut pids = BTreeMap::new();
                collect_procs(&child, 0, &mut pids);
                let detail = if pids.is_empty() {
                    format!("{} (no processes)", child.display())
                } else {
                    let list: Vec<u32> = pids.keys().copied().collect();
                    format!("{} (processes {})", child.display(), pid_list(&list))
                };
                scan.leftovers.push(Leftover::new(Kind::Cgroup, detail));
                scan.processes.extend(pids);
            }
        }
    }
    scan
}

/// Every `strata/<store_id>` directory in every mounted cgroup and cgroup2 hierarchy (each
/// hierarchy searched once, at most [`CGROUP_SEARCH_DEPTH`] levels deep).
pub fn store_cgroup_dirs(store_id: &str) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut dirs = Vec::new();
    for mount in read_mountinfo() {
        if (mount.fstype == "cgroup" || mount.fstype == "cgroup2") && seen.insert(mount.mount_point.clone()) {
            find_store_cgroups(&mount.mount_point, store_id, 0, &mut dirs);
        }
    }
    dirs
}

/// Appends to `out` every directory at most [`CGROUP_SEARCH_DEPTH`] levels below `dir` whose
/// path ends in `strata/<id>`.
fn find_store_cgroups(dir: &Path, id: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let is_store_dir = dir.file_name().is_some_and(|n| n == id)
        && dir.parent().and_then(Path::file_name).is_some_and(|n| n == "strata");
    if is_store_dir {
        out.push(dir.to_path_buf());
        return;
    }
    if depth >= CGROUP_SEARCH_DEPTH {
        return;
    }
    for child in subdirectories(dir) {
        find_store_cgroups(&child, id, depth + 1, out);
    }
}

/// The real subdirectories of `dir` (symlinks not followed), sorted; empty if unreadable.
fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// The pids listed in `cgroup/cgroup.procs`.
fn cgroup_procs(cgroup: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The processes in `cgroup` and in every cgroup below it (bounded depth), pid -> cgroup.
fn collect_procs(cgroup: &Path, depth: usize, out: &mut BTreeMap<u32, PathBuf>) {
    for pid in cgroup_procs(cgroup) {
        out.insert(pid, cgroup.to_path_buf());
    }
    if depth < CGROUP_SEARCH_DEPTH {
        for child in subdirectories(cgroup) {
            collect_procs(&child, depth + 1, out);
        }
    }
}

fn pid_list(pids: &[u32]) -> String {
    pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Every live process (but this one) that is in one of the store's cgroups, works in a
/// directory under the store, or has its root under the store.
fn scan_processes(root: &Path, in_cgroups: &BTreeMap<u32, PathBuf>) -> Vec<Leftover> {
    let me = std::process::id();
    let rootfs_candidates = rootfs_candidates(root);
    let mut pids: BTreeSet<u32> = in_cgroups.keys().copied().collect();
    if let Ok(entries) = fs::read_dir("/proc") {
        pids.extend(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())),
        );
    }
    let mut found = Vec::new();
    for pid in pids {
        if pid == me {
            continue;
        }
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let mut reasons = Vec::new();
        if let Some(cgroup) = in_cgroups.get(&pid) {
            reasons.push(format!("in cgroup {}", cgroup.display()));
        }
        if let Some(cwd) = read_link_undeleted(&proc_dir.join("cwd")) {
            if cwd.starts_with(root) {
                reasons.push(format!("cwd {}", cwd.display()));
            }
        }
        if let Some(proc_root) = read_link_undeleted(&proc_dir.join("root")) {
            if proc_root.starts_with(root) {
                reasons.push(format!("root {}", proc_root.display()));
            }
        }
        if let Ok(meta) = fs::metadata(proc_dir.join("root")) {
            if let Some(rootfs) = rootfs_candidates.get(&(meta.dev(), meta.ino())) {
                reasons.push(format!("root is {} (same device and inode)", rootfs.display()));
            }
        }
        if reasons.is_empty() {
            continue;
        }
        // A process that exited meanwhile is no leftover.
        if !proc_dir.exists() {
            continue;
        }
        found.push(Leftover::new(
            Kind::Process,
            format!("pid {pid} ({}): {}", describe_process(&proc_dir), reasons.join("; ")),
        ));
    }
    found
}

/// `readlink`, with the ` (deleted)` suffix the kernel adds for a removed directory stripped.
fn read_link_undeleted(link: &Path) -> Option<PathBuf> {
    let target = fs::read_link(link).ok()?;
    let text = target.to_string_lossy();
    Some(match text.strip_suffix(" (deleted)") {
        Some(stripped) => PathBuf::from(stripped),
        None => target,
    })
}

/// `comm` and the start of the command line, for a human.
fn describe_process(proc_dir: &Path) -> String {
    let comm = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let mut args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.truncate(6);
    let mut line = args.join(" ");
    if line.len() > 120 {
        let mut cut = 120;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    format!("{} `{line}`", comm.trim())
}

/// (dev, ino) -> path of every directory a step's root could be: `R/result-tmp/*/rootfs` and
/// `R/result/*/rootfs`.
fn rootfs_candidates(root: &Path) -> BTreeMap<(u64, u64), PathBuf> {
    let mut candidates = BTreeMap::new();
    for group in ["result-tmp", "result"] {
        for item in subdirectories(&root.join(group)) {
            let rootfs = item.join("rootfs");
            if let Ok(meta) = fs::metadata(&rootfs) {
                candidates.insert((meta.dev(), meta.ino()), rootfs);
            }
        }
    }
    candidates
}

/// Containers in the runtimes' state directories, by asking each runtime and by listing the
/// directory (a runtime that is not installed is only listed).
fn scan_containers(root: &Path) -> Vec<Leftover> {
    let mut found = Vec::new();
    for runtime in RUNTIMES {
        let dir = root.join("state/sandbox").join(runtime);
        if !dir.exists() {
            continue;
        }
        // id -> how it was found
        let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match Command::new(runtime)
            .arg("--root")
            .arg(&dir)
            .args(["list", "-q"])
            .output()
        {
            Ok(out) if out.status.success() => {
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let id = id.trim();
                    if !id.is_empty() {
                        ids.entry(id.to_owned())
                            .or_default()
                            .push(format!("listed by `{runtime} --root {} list`", dir.display()));
                    }
                }
            }
            Ok(out) => found.push(Leftover::new(
                Kind::Container,
                format!(
                    "`{runtime} --root {} list -q` failed ({}): {}",
                    dir.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => found.push(Leftover::new(
                Kind::Container,
                format!("cannot run `{runtime} --root {} list -q`: {e}", dir.display()),
            )),
        }
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.filter_map(Result::ok) {
                    let path = entry.path();
                    let what = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        let empty = fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false);
                        if empty {
                            format!("empty state directory {}", path.display())
                        } else {
                            format!("state directory {}", path.display())
                        }
                    } else {
                        format!("entry {}", path.display())
                    };
                    ids.entry(entry.file_name().to_string_lossy().into_owned())
                        .or_default()
                        .push(what);
                }
            }
            Err(e) => found.push(Leftover::new(
                Kind::Container,
                format!("cannot list {}: {e}", dir.display()),
            )),
        }
        for (id, how) in ids {
            found.push(Leftover::new(
                Kind::Container,
                format!("{runtime} container {id}: {}", how.join("; ")),
            ));
        }
    }
    found
}

/// Every entry of `R/state/bundles`.
fn scan_bundles(root: &Path) -> Vec<Leftover> {
    let dir = root.join("state/bundles");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Leftover::new(Kind::Bundle, format!("bundle {}", p.display())))
        .collect()
}

/// Mount points strictly below `R/result-tmp`, `R/cache-tmp` or `R/state`.
fn scan_mounts(root: &Path, mounts: &[MountEntry]) -> Vec<Leftover> {
    let temporary = ["result-tmp", "cache-tmp", "state"].map(|d| root.join(d));
    mounts
        .iter()
        .filter(|m| temporary.iter().any(|dir| strictly_under(&m.mount_point, dir)))
        .map(|m| {
            Leftover::new(
                Kind::Mount,
                format!("{} ({} from {})", m.mount_point.display(), m.fstype, m.source),
            )
        })
        .collect()
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_parsed_and_unescaped() {
        let line = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m.fstype, "cgroup2");
        let line = r"99 1 0:50 / /tmp/a\040b rw - tmpfs none rw";
        assert_eq!(parse_mountinfo_line(line).unwrap().mount_point, Path::new("/tmp/a b"));
    }

    #[test]
    fn under_is_by_component_and_strict() {
        let root = Path::new("/s/result-tmp");
        assert!(strictly_under(Path::new("/s/result-tmp/x"), root));
        assert!(!strictly_under(Path::new("/s/result-tmp"), root));
        assert!(!strictly_under(Path::new("/s/result-tmpx/y"), root));
    }

    #[test]
    fn json_lines_escape() {
        let l = Leftover::new(Kind::Mount, "a \"b\"\\\t");
        assert_eq!(l.to_json(), r#"{"kind":"mount","detail":"a \"b\"\\\t"}"#);
        assert_eq!(l.to_string(), "mount\ta \"b\"\\\t");
    }
}
