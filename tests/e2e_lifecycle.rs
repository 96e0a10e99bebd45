//! prune, clean, delete, healthcheck and the inspection commands, end to end.

mod common;

use common::{count, stderr, stdout, Backend, Env};

fn ids(env: &Env) -> Vec<String> {
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

/// Builds a 3-item chain (base, run, run) and returns the last id.
fn chain(env: &Env, tag: &str) -> String {
    let ctx = env.context("ctx");
    let spec = env.spec(
        &format!("{tag}.spec"),
        &format!(r#"((from busybox) (run (shell "echo {tag} > /a")) (run (shell "echo {tag} > /b")))"#),
    );
    env.build_ok(&spec, &ctx, &[]).0
}

fn prune_cases(backend: Backend) {
    let env = Env::new(backend);
    let last = chain(&env, "one");
    assert_eq!(ids(&env).len(), 3);

    // An old cutoff removes nothing.
    let out = env.strata(&["prune", "--before", "2000-01-01T00:00:00Z"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids(&env).len(), 3);

    // --dry-run changes nothing but says what would go, leaves first.
    let out = env.strata(&["prune", "--older-than", "0s", "--dry-run"]);
    assert!(
        stdout(&out).contains(&format!("Would remove {last}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(ids(&env).len(), 3);

    // --limit holds; leaves go first.
    let out = env.strata(&["prune", "--older-than", "0s", "--limit", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("Removing {last}")), "{}", stdout(&out));
    assert_eq!(ids(&env).len(), 2);

    // Then parents, down to nothing.
    let out = env.strata(&["prune", "--older-than", "0s", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"].as_array().unwrap().len(), 2, "{report}");
    assert!(ids(&env).is_empty());
    env.verify_clean();

    // delete removes descendants, children first.
    let last = chain(&env, "two");
    let all = ids(&env);
    let base = all.iter().find(|id| **id != last).unwrap().clone();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&env.strata(&["ls", "--json"]).stdout).unwrap();
    let root = rows.iter().find(|r| r["parent"].is_null()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = env.strata(&["delete", &root]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(count(&text, "Removing "), 3, "{text}");
    assert!(
        text.find(&last).unwrap() < text.find(&format!("Removing {root}")).unwrap(),
        "children first: {text}"
    );
    assert!(ids(&env).is_empty(), "{base}");
    env.verify_clean();
}

#[test]
fn prune_on_btrfs() {
    prune_cases(Backend::Btrfs);
}

#[test]
fn prune_on_overlayfs() {
    prune_cases(Backend::Overlayfs);
}

#[test]
fn prune_on_zfs() {
    prune_cases(Backend::Zfs);
}

/// A prune during a build of the same chain spares what that build uses, and the build succeeds.
#[test]
fn prune_during_build_spares_its_chain() {
    let env = Env::new(Backend::Btrfs);
    let ctx = env.context("ctx");
    chain(&env, "warm");
    let spec = env.spec(
        "long.spec",
        r#"((from busybox) (run (shell "echo warm > /a")) (run (shell "sleep 3; echo long > /c")))"#,
    );
    let child = env
        .command(&[
            "build",
            "-f",
            spec.to_str().unwrap(),
            ctx.to_str().unwrap(),
            "--progress",
            "plain",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // Two prunes at once, while the build runs.
    let p1 = env.command(&["prune", "--older-than", "0s"]).output();
    let p2 = env.strata(&["prune", "--older-than", "0s"]);
    assert!(p1.unwrap().status.success());
    assert!(p2.status.success(), "{}", stderr(&p2));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "build during prune failed: {}", stderr(&out));
    env.verify_clean();
}

#[test]
fn healthcheck_good_and_bad() {
    let env = Env::new(Backend::Overlayfs);
    let out = env.strata(&["healthcheck"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("Healthcheck passed"), "{}", stdout(&out));
    // It leaves nothing but the base behind.
    assert_eq!(ids(&env).len(), 1);

    let out = env.strata(&["healthcheck", "--runtime", "/nonexistent/runc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("unhealthy"), "{}", stdout(&out));

    let out = env.strata(&["healthcheck", "--base", "no-such-image-here:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("base image") && stdout(&out).contains("unhealthy"),
        "{}",
        stdout(&out)
    );

    let out = env.strata(&["healthcheck", "--json", "--min-free", "100"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healthy"], false, "{report}");
    env.verify_clean();
}

#[test]
fn inspection_commands() {
    let env = Env::new(Backend::Overlayfs);
    let last = chain(&env, "look");
    let out = env.strata(&["info", &last]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("(run (shell \"echo look > /b\"))"),
        "{}",
        stdout(&out)
    );
    let out = env.strata(&["log", &last]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.strata(&["du", "--json"]);
    let du: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(du["items"], 3, "{du}");
    let out = env.strata(&["info", "0000"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `--keep-free` on a small btrfs: prune stops as soon as the target is met, oldest leaves
/// first, and removes nothing when the target already holds.
#[test]
fn keep_free_stops_at_the_target() {
    let env = Env::with_options(Backend::Btrfs, None, &["400M"]);
    let ctx = env.context("ctx");
    // Five leaves of 24 MiB each on one base, built (and so last used) in order.
    let mut leaves = Vec::new();
    for i in 0..5 {
        let spec = env.spec(
            &format!("fill{i}.spec"),
            &format!(r#"((from busybox) (run (shell "head -c 25165824 /dev/urandom > /blob{i}; sync")))"#),
        );
        leaves.push(env.build_ok(&spec, &ctx, &[]).0);
    }
    assert_eq!(ids(&env).len(), 6);
    let du = |env: &Env| -> (u64, u64) {
        let out = env.strata(&["du", "--json"]);
        let du: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (du["free_bytes"].as_u64().unwrap(), du["total_bytes"].as_u64().unwrap())
    };
    let (free, _) = du(&env);

    // Already met: nothing goes.
    let out = env.strata(&["prune", "--keep-free", &format!("{}", free / 2), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"].as_array().unwrap().len(), 0, "{report}");

    // About two leaves' worth more than is free now: two or three leaves go, not all five,
    // the oldest first.
    let want = free + 40 * 1024 * 1024;
    let out = env.strata(&["prune", "--keep-free", &want.to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed = report["removed"].as_array().unwrap().len();
    assert!((2..=3).contains(&removed), "{report}");
    assert!(
        report["stopped"].as_str().unwrap().starts_with("target met"),
        "{report}"
    );
    let gone: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let oldest: Vec<&str> = leaves.iter().take(removed).map(String::as_str).collect();
    assert_eq!(gone, oldest, "least recently used first");
    let left = ids(&env).len();
    assert_eq!(left, 6 - removed, "{report}");
    env.verify_clean();
}

/// The prune commands shipped for cron (`scripts/cron/strata-prune`) and systemd
/// (`scripts/systemd/strata-prune.service`), run exactly as written (with the test binary for
/// `strata` and the test store for `--store`/`STRATA_STORE`), after their own unescaping of
/// `%`: they must parse and succeed.
#[test]
fn shipped_prune_commands_run() {
    let env = Env::new(Backend::Overlayfs);
    chain(&env, "cron");
    let repo = common::repo();
    let cron = std::fs::read_to_string(repo.join("scripts/cron/strata-prune")).unwrap();
    // The first line that is neither a comment nor an environment setting (`PATH=...`).
    let line = cron
        .lines()
        .find(|l| {
            let l = l.trim();
            let setting = l.split_whitespace().next().is_some_and(|w| w.contains('='));
            !l.starts_with('#') && !l.is_empty() && !setting
        })
        .expect("a crontab line");
    // Five time fields and the user, then the command; cron turns "\%" into "%".
    let command = line
        .split_whitespace()
        .skip(6)
        .collect::<Vec<_>>()
        .join(" ")
        .replace("\\%", "%");
    let mut commands: Vec<String> = command.split("&&").map(|c| c.trim().to_owned()).collect();
    let service = std::fs::read_to_string(repo.join("scripts/systemd/strata-prune.service")).unwrap();
    commands.extend(
        service
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .map(|c| c.replace("%%", "%")),
    );
    assert!(commands.len() >= 4, "{commands:?}");
    for command in &commands {
        let mut words: Vec<&str> = command.split_whitespace().collect();
        assert!(words[0].ends_with("strata"), "{command}");
        words.remove(0);
        if let Some(i) = words.iter().position(|w| *w == "--store") {
            words.drain(i..i + 2);
        }
        let out = env.strata(&words);
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{command}: -q prints nothing");
    }
    // The 7-day cutoff keeps what was just built; verify is clean.
    assert_eq!(ids(&env).len(), 3);
    env.verify_clean();
}
