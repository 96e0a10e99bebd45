//! `scripts/install` and `scripts/uninstall` (root): what they put where under a temporary
//! prefix, that the installed prune jobs work as written — the `ExecStart=` lines parsed from the
//! installed service and the command parsed from the installed cron file, run as systemd and cron
//! would run them against a real store — and that uninstall leaves nothing but the store behind.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{stderr, stdout, Backend, Env};

/// The test binary stands in for the release build (`--binary`), so no release build is needed.
fn run_script(script: &str, prefix: &Path, extra: &[&str]) -> Output {
    let out = Command::new(common::repo().join("scripts").join(script))
        .arg("--prefix")
        .arg(prefix)
        .args(extra)
        .output()
        .expect("running the script");
    assert!(
        out.status.success(),
        "scripts/{script} --prefix {} {extra:?} failed ({}):\n{}{}",
        prefix.display(),
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

fn install(prefix: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--binary", env!("CARGO_BIN_EXE_strata")];
    args.extend_from_slice(extra);
    run_script("install", prefix, &args)
}

fn uninstall(prefix: &Path) -> Output {
    run_script("uninstall", prefix, &[])
}

fn temp_prefix() -> tempfile::TempDir {
    assert!(
        strata_testkit::is_root(),
        "install tests need root (files owned by root)"
    );
    tempfile::Builder::new()
        .prefix("strata-install-")
        .tempdir()
        .expect("temp dir")
}

/// Every path under `root` (relative), with its mode and, for files, its content.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading a directory") {
            let path = entry.expect("directory entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                stack.push(path);
                found.insert(rel, (mode, None));
            } else {
                found.insert(rel, (mode, Some(std::fs::read(&path).expect("reading a file"))));
            }
        }
    }
    found
}

/// What is left under `prefix` besides the store directory `var/lib/strata` (kept on purpose,
/// with its contents and its parents).
fn leftovers(prefix: &Path) -> Vec<PathBuf> {
    let kept = [Path::new("var"), Path::new("var/lib"), Path::new("var/lib/strata")];
    tree(prefix)
        .into_keys()
        .filter(|p| !kept.contains(&p.as_path()) && !p.starts_with("var/lib/strata"))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Lines that are not comments or blank.
fn settings(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The `ExecStart=` commands of a unit file, unescaped as systemd does (`%%` is `%`), and its
/// `Environment=` assignments.
fn service_commands(unit: &str) -> (Vec<Vec<String>>, Vec<(String, String)>) {
    let mut commands = Vec::new();
    let mut env = Vec::new();
    for line in settings(unit) {
        if let Some(command) = line.strip_prefix("ExecStart=") {
            assert!(
                !command.contains(['"', '\'', '\\', '$']),
                "ExecStart= with quoting or variables (the test splits on spaces): {command}"
            );
            let unescaped = command.replace("%%", "");
            assert!(!unescaped.contains('%'), "a systemd specifier in {command}");
            commands.push(
                command
                    .replace("%%", "%")
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
            );
        } else if let Some(assignment) = line.strip_prefix("Environment=") {
            let (k, v) = assignment.split_once('=').expect("Environment=NAME=VALUE");
            env.push((k.to_owned(), v.to_owned()));
        }
    }
    (commands, env)
}

/// The environment settings (`NAME=VALUE`) and the one job's command of a cron.d file: the
/// rest of the entry after five time fields and the user, with cron's `\%` unescaped.
fn cron_job(file: &str) -> (Vec<(String, String)>, String) {
    let mut env = Vec::new();
    let mut jobs = Vec::new();
    for line in settings(file) {
        let first = line.split_whitespace().next().unwrap_or_default();
        if let Some((k, v)) = line.split_once('=').filter(|_| first.contains('=')) {
            env.push((k.trim().to_owned(), v.trim().to_owned()));
            continue;
        }
        let mut rest = line;
        for _ in 0..6 {
            rest = rest.trim_start();
            rest = &rest[rest.find(char::is_whitespace).expect("six fields before the command")..];
        }
        jobs.push(rest.trim().to_owned());
    }
    assert_eq!(jobs.len(), 1, "one cron job: {jobs:?}");
    let job = &jobs[0];
    // An unescaped % would end the command (the rest is stdin): none is expected.
    assert!(!job.replace("\\%", "").contains('%'), "unescaped % in {job}");
    (env, job.replace("\\%", "%"))
}

fn ids(env: &Env) -> BTreeSet<String> {
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

fn du(env: &Env) -> (u64, u64) {
    let out = env.strata(&["du", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let du: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (du["free_bytes"].as_u64().unwrap(), du["total_bytes"].as_u64().unwrap())
}

const MIB: u64 = 1024 * 1024;

/// A store where the shipped schedule has work to do: on a 400 MiB btrfs, an old 40 MiB leaf,
/// a small leaf, then a filler leaf (the newest) that leaves 16 MiB less free than the 20% the
/// prune jobs keep free. Pruning the oldest leaf alone meets the target.
struct Seeded {
    env: Env,
    base: BTreeSet<String>,
    old: String,
    small: String,
    filler: String,
}

fn seed() -> Seeded {
    let env = Env::with_options(Backend::Btrfs, None, &["400M"]);
    let ctx = env.context("ctx");
    let build = |name: &str, shell: &str| {
        let spec = env.spec(
            &format!("{name}.spec"),
            &format!(r#"((from busybox) (run (shell "{shell}")))"#),
        );
        env.build_ok(&spec, &ctx, &[]).0
    };
    let old = build("old", &format!("head -c {} /dev/urandom > /old; sync", 40 * MIB));
    let small = build("small", "echo small > /small");
    let (free, total) = du(&env);
    let target = total / 5;
    assert!(free > target, "a fresh 400M store is not 80% free: {free} of {total}");
    let filler_bytes = free - (target - 16 * MIB);
    let filler = build(
        "filler",
        &format!("head -c {filler_bytes} /dev/urandom > /filler; sync"),
    );
    let (free, total) = du(&env);
    assert!(
        free * 5 < total,
        "the filler should leave less than 20% free: {free} of {total}"
    );
    let all = ids(&env);
    let base: BTreeSet<String> = all
        .iter()
        .filter(|id| ![&old, &small, &filler].contains(id))
        .cloned()
        .collect();
    assert!(!base.is_empty(), "the busybox base is an item");
    Seeded {
        env,
        base,
        old,
        small,
        filler,
    }
}

impl Seeded {
    /// After the two prune commands: the oldest leaf went to make 20% free, the newer ones and
    /// the base stayed (the 7-day cutoff spares what was just built).
    fn assert_pruned_as_scheduled(&self, what: &str) {
        let left = ids(&self.env);
        let (free, total) = du(&self.env);
        assert!(
            !left.contains(&self.old),
            "{what}: the oldest leaf is still there: {left:?}"
        );
        let mut expected = self.base.clone();
        expected.extend([self.small.clone(), self.filler.clone()]);
        assert_eq!(left, expected, "{what}: only the oldest leaf goes");
        assert!(free * 5 >= total, "{what}: 20% is free afterwards: {free} of {total}");
        self.env.verify_clean();
    }
}

#[test]
fn install_puts_every_file_under_the_prefix_and_a_second_run_changes_nothing() {
    let dir = temp_prefix();
    let p = dir.path().join("p");
    let out = install(&p, &[]);
    let text = stdout(&out);
    let bin = p.join("bin/strata");
    for (path, mode) in [
        (bin.clone(), 0o755),
        (p.join("share/man/man1/strata.1"), 0o644),
        (p.join("share/bash-completion/completions/strata"), 0o644),
        (p.join("share/zsh/site-functions/_strata"), 0o644),
        (p.join("share/fish/vendor_completions.d/strata.fish"), 0o644),
        (p.join("lib/systemd/system/strata-prune.service"), 0o644),
        (p.join("lib/systemd/system/strata-prune.timer"), 0o644),
        (p.join("etc/cron.d/strata-prune"), 0o644),
    ] {
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{}", path.display());
        assert!(
            text.contains(&path.display().to_string()),
            "install names {}:\n{text}",
            path.display()
        );
    }
    let store_dir = p.join("var/lib/strata");
    let mode = std::fs::metadata(&store_dir)
        .expect("the store directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o700, "the store directory is private");
    assert!(
        text.contains("systemctl"),
        "install says how to enable the timer:\n{text}"
    );

    // The installed binary works and the generated files are what the binary generates.
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success());
    let man = Command::new(&bin).arg("man").output().unwrap();
    assert_eq!(std::fs::read(p.join("share/man/man1/strata.1")).unwrap(), man.stdout);
    let bash = Command::new(&bin).args(["completions", "bash"]).output().unwrap();
    assert_eq!(
        std::fs::read(p.join("share/bash-completion/completions/strata")).unwrap(),
        bash.stdout
    );

    // The jobs name the installed binary and the default store under the prefix, not /usr/local.
    let store = format!("overlayfs:{}", store_dir.display());
    let service = read(&p.join("lib/systemd/system/strata-prune.service"));
    let (commands, env) = service_commands(&service);
    assert_eq!(commands.len(), 2, "{service}");
    for command in &commands {
        assert_eq!(
            Path::new(&command[0]),
            bin,
            "ExecStart= runs the installed binary: {command:?}"
        );
    }
    assert_eq!(env, vec![("STRATA_STORE".to_owned(), store.clone())], "{service}");
    let cron = read(&p.join("etc/cron.d/strata-prune"));
    let (cron_env, job) = cron_job(&cron);
    let path = cron_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .expect("the cron file sets PATH");
    assert!(path.1.starts_with(&format!("{}:", p.join("bin").display())), "{path:?}");
    assert!(cron_env.contains(&("STRATA_STORE".to_owned(), store)), "{cron}");
    assert!(job.starts_with(&format!("{} prune ", bin.display())), "{job}");
    for file in [&service, &cron] {
        for line in settings(file) {
            assert!(!line.contains("/usr/local"), "a default path left in: {line}");
        }
    }

    // Idempotent: a second run reports nothing changed and leaves the tree as it was.
    let before = tree(dir.path());
    let again = stdout(&install(&p, &[]));
    assert!(!again.contains("  installed"), "{again}");
    assert!(again.contains("already installed"), "{again}");
    assert_eq!(tree(dir.path()), before, "a second install changed files");

    // Uninstall leaves only the store; a second uninstall is fine and finds nothing.
    uninstall(&p);
    assert_eq!(leftovers(&p), Vec::<PathBuf>::new(), "left behind after uninstall");
    assert!(store_dir.is_dir(), "uninstall keeps the store");
    let again = stdout(&uninstall(&p));
    assert!(again.contains("nothing of strata's install found"), "{again}");
}

/// The check the test above relies on sees a file uninstall did not remove: a man page put back
/// after uninstall, and its directories, are reported; the store's contents are not.
#[test]
fn leftover_check_reports_a_planted_file() {
    let dir = temp_prefix();
    let p = dir.path().join("p");
    install(&p, &[]);
    uninstall(&p);
    assert_eq!(leftovers(&p), Vec::<PathBuf>::new());
    std::fs::create_dir_all(p.join("share/man/man1")).unwrap();
    std::fs::write(p.join("share/man/man1/strata.1"), "planted").unwrap();
    std::fs::write(p.join("var/lib/strata/item"), "a store's content is kept").unwrap();
    let found = leftovers(&p);
    assert_eq!(
        found,
        ["share", "share/man", "share/man/man1", "share/man/man1/strata.1"]
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>()
    );
}

/// Uninstall keeps a directory install created once something else was put in it.
#[test]
fn uninstall_keeps_a_directory_that_holds_other_files() {
    let dir = temp_prefix();
    let p = dir.path().join("p");
    install(&p, &[]);
    std::fs::write(p.join("bin/other-tool"), "not ours").unwrap();
    let out = stdout(&uninstall(&p));
    assert!(out.contains("kept"), "{out}");
    assert_eq!(
        leftovers(&p),
        vec![PathBuf::from("bin"), PathBuf::from("bin/other-tool")]
    );
}

/// The installed service's `ExecStart=` lines, exactly as written, run one after the other with
/// its `Environment=` and systemd's default PATH (as `Type=oneshot` runs them).
#[test]
fn installed_service_exec_start_lines_prune_the_store() {
    let seeded = seed();
    let dir = temp_prefix();
    let p = dir.path().join("p");
    install(&p, &["--store", &seeded.env.store]);
    let (commands, env) = service_commands(&read(&p.join("lib/systemd/system/strata-prune.service")));
    assert_eq!(env, vec![("STRATA_STORE".to_owned(), seeded.env.store.clone())]);
    for command in &commands {
        let out = Command::new(&command[0])
            .args(&command[1..])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running ExecStart=");
        assert!(out.status.success(), "{command:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{command:?}: -q prints nothing");
        assert_eq!(stderr(&out), "", "{command:?}: -q prints nothing");
    }
    seeded.assert_pruned_as_scheduled("the systemd service");
    uninstall(&p);
}

/// The installed cron file's command, exactly as written, through `sh -c` in cron's default
/// environment plus the settings the file makes.
#[test]
fn installed_crontab_command_prunes_the_store() {
    let seeded = seed();
    let dir = temp_prefix();
    let p = dir.path().join("p");
    install(&p, &["--store", &seeded.env.store]);
    let (env, job) = cron_job(&read(&p.join("etc/cron.d/strata-prune")));
    let shell = env
        .iter()
        .find(|(k, _)| k == "SHELL")
        .map_or("/bin/sh".to_owned(), |(_, v)| v.clone());
    let out = Command::new("env")
        .arg("-i")
        .args(["HOME=/root", "LOGNAME=root", "PATH=/usr/bin:/bin", "SHELL=/bin/sh"])
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(&shell)
        .arg("-c")
        .arg(&job)
        .output()
        .expect("running the cron job");
    assert!(out.status.success(), "{job}: {}", stderr(&out));
    // cron mails any output: a quiet job prints nothing.
    assert_eq!(stdout(&out), "", "{job}");
    assert_eq!(stderr(&out), "", "{job}");
    seeded.assert_pruned_as_scheduled("the cron job");
    uninstall(&p);
}
