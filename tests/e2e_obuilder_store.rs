//! Coming from OBuilder (issue 16, items 5 and 6): strata pointed at a store OBuilder made
//! adopts it (its database is backed up, then migrated in one transaction, and its results
//! are served from cache under `--id-scheme obuilder`); OBuilder's `--rsync-mode` values and
//! store specs are taken or refused with a message that says what to do; a malformed
//! `--store` is a usage error (exit 2) naming the value; an unreachable registry names the
//! cause and the URL.
//!
//! Each regression test is named after the bug it pins and says in its comment how it failed
//! on the code before the fix.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{stderr, stdout, Backend, Env};

/// The binary alone, with no store or registry from the caller's environment.
fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env_remove("STRATA_STORE")
        .env_remove("STRATA_REGISTRY_MIRROR")
        .env_remove("STRATA_LOG")
        .output()
        .expect("running strata")
}

// ---- `--store` and `--rsync-mode` (item 6) ----

/// Failed before the fix: a malformed `--store` exited 3 (environment), as if the store
/// were broken, instead of 2 (usage).
#[test]
fn malformed_store_spec_exited_3_not_2() {
    for bad in ["nonsense", "btrfs:", "zfs:", "btrfs:relative/path", "nfs:/x"] {
        let out = strata(&["ls", "--store", bad]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "--store {bad:?}: {err}");
        assert!(
            err.contains(&format!("{bad:?}")) || err.contains(bad),
            "names the value {bad:?}: {err}"
        );
        assert!(err.contains("btrfs:/PATH"), "says what is expected: {err}");
    }
    // The same from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["ls"])
        .env("STRATA_STORE", "btrfs:")
        .output()
        .expect("running strata");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Failed before the fix: `docker:/PATH` (OBuilder's docker store) was "unknown store type"
/// with exit 3, and said nothing of what to use instead.
#[test]
fn docker_store_was_not_explained() {
    let out = strata(&["ls", "--store", "docker:/var/lib/obuilder"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("docker:/var/lib/obuilder"), "names the spec: {err}");
    assert!(err.contains("Docker"), "says it is OBuilder's docker store: {err}");
    assert!(err.contains("overlayfs:/"), "says what to use instead: {err}");
}

/// Failed before the fix: OBuilder spells the mode `hardlink_unsafe`; clap only took
/// `hardlink-unsafe` and exited 2 ("invalid value").
#[test]
fn rsync_mode_hardlink_unsafe_was_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("rsync:{}/store", dir.path().display());
    for mode in ["copy", "hardlink", "hardlink_unsafe", "hardlink-unsafe"] {
        let out = strata(&["ls", "--store", &store, "--rsync-mode", mode]);
        assert!(out.status.success(), "--rsync-mode {mode}: {}", stderr(&out));
    }
    let out = strata(&["ls", "--store", &store, "--rsync-mode", "reflink"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

// ---- an unreachable registry (item 6) ----

/// `strata build` of `((from busybox))` into a fresh rsync store with Docker Hub mirrored to
/// `mirror`; returns the output.
fn build_from_mirror(mirror: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = dir.path().join("spec");
    std::fs::write(&spec, "((from busybox))").expect("writing spec");
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).expect("context");
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["build", "-f"])
        .arg(&spec)
        .arg(&ctx)
        .args(["--progress", "plain"])
        .env("STRATA_STORE", format!("rsync:{}/store", dir.path().display()))
        .env("STRATA_REGISTRY_MIRROR", format!("docker.io={mirror}"))
        .env_remove("STRATA_LOG")
        .output()
        .expect("running strata")
}

fn unused_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    port
}

/// The error line strata printed (the last line of stderr).
fn error_line(out: &Output) -> String {
    stderr(out)
        .lines()
        .rev()
        .find(|l| l.starts_with("strata: error:"))
        .unwrap_or_default()
        .to_owned()
}

/// Failed before the fix: the message was oci-client's "error sending request" without the
/// cause (the refused connection) or a hint.
#[test]
fn unreachable_registry_said_no_cause() {
    if !strata_testkit::is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let port = unused_loopback_port();
    let out = build_from_mirror(&format!("http://127.0.0.1:{port}"));
    let line = error_line(&out);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(line.contains("connection refused"), "names the cause: {line}");
    assert!(
        line.contains(&format!("http://127.0.0.1:{port}/v2/")),
        "names the URL: {line}"
    );
    assert!(line.contains("is the registry running?"), "{line}");
}

/// Failed before the fix: a host that does not resolve was reported without saying that
/// the DNS lookup failed.
#[test]
fn unresolvable_registry_said_no_cause() {
    if !strata_testkit::is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    // `.invalid` never resolves (RFC 2606): no network needed.
    let out = build_from_mirror("https://registry.strata.invalid");
    let line = error_line(&out);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(line.contains("cannot resolve"), "names the cause: {line}");
    assert!(line.contains("registry.strata.invalid"), "names the host: {line}");
    assert!(
        line.contains("https://registry.strata.invalid/v2/"),
        "names the URL: {line}"
    );
}

/// Failed before the fix: HTTPS to a plain-HTTP registry failed with no word of TLS.
#[test]
fn tls_failure_said_no_cause() {
    if !strata_testkit::is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    // A plain HTTP server: whatever comes, it answers 404 in clear text.
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a port");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let out = build_from_mirror(&format!("https://127.0.0.1:{port}"));
    let line = error_line(&out);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(line.contains("TLS"), "names the cause: {line}");
    assert!(
        line.contains(&format!("https://127.0.0.1:{port}/v2/")),
        "names the URL: {line}"
    );
    assert!(line.contains("http://"), "suggests plain HTTP: {line}");
}

// ---- adopting an OBuilder store (item 5) ----

const SPEC: &str =
    r#"((from busybox) (shell /bin/sh -c) (run (shell "echo adopted > /adopted")) (run (shell "cat /adopted")))"#;

/// OBuilder's `((env ((K V) ...)))`, every atom quoted (sexplib reads both forms).
fn obuilder_env_file(env: &[(String, String)]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let pairs: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("({} {})", quote(k), quote(v)))
        .collect();
    format!("((env ({})))", pairs.join(" "))
}

/// The `(id, parent)` chain of a build's final id in a strata store, root first.
fn chain(env: &Env, final_id: &str) -> Vec<(String, Option<String>)> {
    let out = env.strata(&["ls", "--json"]);
    assert!(out.status.success(), "ls: {}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ls --json");
    let mut chain = Vec::new();
    let mut next = Some(final_id.to_owned());
    while let Some(id) = next {
        let row = rows
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not listed"));
        let parent = row["parent"].as_str().map(str::to_owned);
        chain.push((id, parent.clone()));
        next = parent;
    }
    chain.reverse();
    chain
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("running cp");
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

/// Makes an rsync store at `root` as OBuilder leaves one: `result/<id>/{rootfs,log}` (plus
/// `env` for the base), `state/db/db.sqlite` with OBuilder's `builds` table (WAL mode, as
/// OBuilder opens it) and nothing of strata's.
fn obuilder_store(env: &Env, chain: &[(String, Option<String>)], root: &Path) {
    let source = env.store_root();
    for dir in ["result", "result-tmp", "cache", "cache-tmp", "state/db"] {
        std::fs::create_dir_all(root.join(dir)).expect("store dirs");
    }
    for (id, parent) in chain {
        let item = root.join("result").join(id);
        std::fs::create_dir(&item).expect("item dir");
        copy_tree(&source.join("result").join(id).join("rootfs"), &item);
        std::fs::write(item.join("log"), "from OBuilder\n").expect("log");
        if parent.is_none() {
            let config: serde_json::Value = serde_json::from_slice(
                &std::fs::read(source.join("result").join(id).join("image.json")).expect("image.json"),
            )
            .expect("image.json is JSON");
            let pairs: Vec<(String, String)> = config["env"]
                .as_array()
                .expect("env")
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().expect("key").to_owned(),
                        p[1].as_str().expect("value").to_owned(),
                    )
                })
                .collect();
            std::fs::write(item.join("env"), obuilder_env_file(&pairs)).expect("env");
        }
    }
    let db = rusqlite::Connection::open(root.join("state/db/db.sqlite")).expect("opening sqlite");
    db.pragma_update(None, "journal_mode", "WAL").expect("wal");
    db.execute_batch(
        "CREATE TABLE builds (
           id       TEXT PRIMARY KEY,
           created  DATETIME NOT NULL,
           used     DATETIME NOT NULL,
           rc       INTEGER NOT NULL,
           parent   TEXT,
           FOREIGN KEY (parent) REFERENCES builds (id) ON DELETE RESTRICT
         );
         CREATE INDEX IF NOT EXISTS lru ON builds (rc, used);",
    )
    .expect("OBuilder's schema");
    for (n, (id, parent)) in chain.iter().enumerate() {
        let rc = if n + 1 < chain.len() { 1 } else { 0 };
        db.execute(
            "INSERT INTO builds (id, created, used, rc, parent) VALUES (?1, '2024-03-01 10:00:00', '2024-03-02 11:30:15', ?2, ?3)",
            rusqlite::params![id, rc, parent],
        )
        .expect("row");
    }
}

/// Failed before the fix: strata opened OBuilder's database and ran its own schema over it,
/// failing with "table builds already exists" (exit 3); an OBuilder user lost their cache.
#[test]
fn obuilder_store_failed_with_table_builds_already_exists() {
    // Learn the ids and trees an OBuilder-scheme build makes, then lay them out as OBuilder.
    let env = Env::with_scheme(Backend::Rsync, Some("obuilder"));
    let ctx = env.context("ctx");
    let spec = env.spec("adopt.spec", SPEC);
    let (final_id, _) = env.build_ok(&spec, &ctx, &[]);
    let chain = chain(&env, &final_id);
    assert_eq!(chain.len(), 3, "base and two runs: {chain:?}");
    let root: PathBuf = env.work.path().join("obuilder-store");
    obuilder_store(&env, &chain, &root);
    let store = format!("rsync:{}", root.display());
    let at = |args: &[&str]| -> Output {
        env.command(args)
            .env("STRATA_STORE", &store)
            .output()
            .expect("running strata")
    };

    // v1 is refused before anything changes, saying what to pass.
    let out = at(&["ls", "--id-scheme", "v1"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--id-scheme obuilder"), "{}", stderr(&out));
    let backup = root.join("state/db/db.sqlite.obuilder-backup");
    assert!(!backup.exists(), "nothing changed under v1");

    // Built under the obuilder scheme: every step is served from the adopted cache.
    let out = env
        .build_command(&spec, &ctx, &["--progress", "json", "--id-scheme", "obuilder"])
        .env("STRATA_STORE", &store)
        .output()
        .expect("running strata");
    assert!(out.status.success(), "build on the OBuilder store: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), final_id);
    assert!(
        stderr(&out).contains("adopted OBuilder's store database"),
        "says so: {}",
        stderr(&out)
    );
    let steps: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "step")
        .collect();
    assert_eq!(steps.len(), 3, "three steps: {}", stderr(&out));
    for step in &steps {
        assert_eq!(step["cached"], true, "every step from OBuilder's cache: {step}");
    }

    // OBuilder's database is kept, private, as it was.
    let mode = std::fs::metadata(&backup)
        .expect("the backup exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the backup is private");
    let old = rusqlite::Connection::open(&backup).expect("opening the backup");
    let cols: Vec<String> = old
        .prepare("SELECT name FROM pragma_table_info('builds')")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("columns");
    assert_eq!(cols, ["id", "created", "used", "rc", "parent"]);
    let rows: i64 = old
        .query_row("SELECT COUNT(*) FROM builds", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 3);

    // The rows kept their ids, parents and times.
    let out = at(&["ls", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("ls --json");
    assert_eq!(listed.len(), 3);
    let base = listed
        .iter()
        .find(|r| r["id"] == chain[0].0.as_str())
        .expect("the base row");
    // 2024-03-01 10:00:00 UTC.
    assert_eq!(base["created"], 1_709_287_200_000i64);
    let last = listed
        .iter()
        .find(|r| r["id"] == final_id.as_str())
        .expect("the final row");
    assert_eq!(last["parent"], chain[1].0.as_str());

    // Consistent, and the scheme is recorded: later commands need no flag.
    let out = at(&["verify", "--json"]);
    assert!(out.status.success(), "verify: {}\n{}", stdout(&out), stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    let out = env
        .build_command(&spec, &ctx, &[])
        .env("STRATA_STORE", &store)
        .output()
        .expect("running strata");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), final_id);
    assert!(
        !stderr(&out).contains("adopted OBuilder's"),
        "adopted once: {}",
        stderr(&out)
    );
}

/// An OBuilder database strata does not know (a newer OBuilder's extra column) is refused
/// with exit 3, what to do, and nothing changed.
#[test]
fn unknown_obuilder_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("store");
    std::fs::create_dir_all(root.join("state/db")).expect("dirs");
    let db = rusqlite::Connection::open(root.join("state/db/db.sqlite")).expect("sqlite");
    db.execute_batch(
        "CREATE TABLE builds (id TEXT PRIMARY KEY, created DATETIME NOT NULL, used DATETIME NOT NULL,
           rc INTEGER NOT NULL, parent TEXT, platform TEXT);",
    )
    .expect("schema");
    drop(db);
    let out = strata(&["ls", "--store", &format!("rsync:{}", root.display())]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("platform"), "names what it does not know: {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!root.join("state/db/db.sqlite.obuilder-backup").exists());
}
