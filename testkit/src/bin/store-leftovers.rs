//! `store-leftovers [--json] ROOT...`: reports every process, container, cgroup, bundle or mount
//! that belongs to a strata store and should not exist when no build runs on it (see
//! `strata_testkit::leftovers`).
//!
//! Prints one line per leftover, `KIND<TAB>detail` (or one JSON object per line with `--json`),
//! and exits 1 if anything was found. A clean store prints `no leftovers in ROOT` (on stderr with
//! `--json`, so that stdout stays JSON lines) and, if every store is clean, exits 0. A ROOT that
//! is not a store (no `ROOT/state` directory) is an error, exit 2: a mistyped path must not pass
//! as a clean store.

use std::path::PathBuf;
use std::process::ExitCode;

use strata_testkit::leftovers;

const USAGE: &str = "usage: store-leftovers [--json] ROOT...";

fn main() -> ExitCode {
    let mut json = false;
    let mut roots = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.to_str() {
            Some("--json") => json = true,
            Some("-h" | "--help") => {
                println!("{USAGE}\nReports what strata stores left behind (processes, containers, cgroups, bundles, mounts); exits 1 if anything.");
                return ExitCode::SUCCESS;
            }
            Some(flag) if flag.starts_with('-') => {
                eprintln!("store-leftovers: unknown option {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => roots.push(PathBuf::from(arg)),
        }
    }
    if roots.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    if !strata_testkit::is_root() {
        eprintln!("store-leftovers: warning: not root, other users' processes and cgroups may be missed");
    }
    let mut found_any = false;
    for root in &roots {
        if !root.join("state").is_dir() {
            eprintln!(
                "store-leftovers: {} is not a strata store (no state directory)",
                root.display()
            );
            return ExitCode::from(2);
        }
        let found = leftovers::scan(root);
        for leftover in &found {
            if json {
                println!("{}", leftover.to_json());
            } else {
                println!("{leftover}");
            }
        }
        if found.is_empty() {
            if json {
                eprintln!("no leftovers in {}", root.display());
            } else {
                println!("no leftovers in {}", root.display());
            }
        }
        found_any |= !found.is_empty();
    }
    if found_any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
