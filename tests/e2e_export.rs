//! `strata export` end to end, on every store: a spec with a few steps (new files, a file of
//! the base deleted, a directory replaced, a symlink, a setuid file, a hard link, a file
//! rewritten with the same size and mtime) exported to an OCI layout (checked with skopeo),
//! a docker-archive (loaded by podman), a registry (pulled back by skopeo) and a rootfs tar;
//! then built on again from the OCI layout, and the tree compared with the original.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{final_id, stderr, stdout, Backend, Env};

const SPEC: &str = r#"((from busybox)
 (workdir /app)
 (env GREETING "hello world")
 (run (shell "echo one > one.txt && mkdir -p sub/deep && echo two > sub/deep/two.txt && mkdir old && echo x > old/a && echo y > old/b"))
 (run (shell "rm /etc/group && rm -rf old && mkdir old && echo new > old/c"))
 (run (shell "ln -s /app/one.txt link && cp /bin/busybox suid && chmod 4755 suid && echo hl > hard1 && ln hard1 hard2"))
 (run (shell "touch -d @1000000 same.txt && printf AAAA > same.txt && touch -d @1000000 same.txt"))
 (run (shell "printf BBBB > same.txt && touch -d @1000000 same.txt"))
 (user (uid 1000) (gid 1000))
 (run (shell "id -u > /tmp/uid.txt")))"#;

/// The base image plus six run steps.
const LAYERS: usize = 7;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

fn export(env: &Env, id: &str, dest: &str, extra: &[&str]) -> String {
    let mut args = vec!["export", id, dest];
    args.extend_from_slice(extra);
    let out = env.strata(&args);
    assert!(out.status.success(), "export {dest}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn skopeo_json(args: &[&str]) -> serde_json::Value {
    let out = run(Command::new("skopeo").args(args));
    serde_json::from_slice(&out.stdout).expect("skopeo prints JSON")
}

/// What the tree walk compares of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// File bytes, or a symlink's target.
    data: Vec<u8>,
}

fn walk(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn visit(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let (kind, data) = if ft.is_dir() {
                ("dir", Vec::new())
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", target.into_os_string().into_encoded_bytes())
            } else if ft.is_file() {
                ("file", std::fs::read(&path).unwrap())
            } else if ft.is_fifo() {
                ("fifo", Vec::new())
            } else {
                ("device", meta.rdev().to_le_bytes().to_vec())
            };
            let rel = path.strip_prefix(root).unwrap().to_owned();
            out.insert(
                rel,
                Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    data,
                },
            );
            if ft.is_dir() {
                visit(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    visit(root, root, &mut out);
    out
}

/// The tree of an item, through `strata mount`.
fn item_tree(env: &Env, id: &str, name: &str) -> BTreeMap<PathBuf, Node> {
    let dir = env.work.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let dir_s = dir.to_str().unwrap();
    let out = env.strata(&["mount", id, dir_s]);
    assert!(out.status.success(), "mount: {}", stderr(&out));
    let tree = walk(&dir);
    let out = env.strata(&["umount", dir_s]);
    assert!(out.status.success(), "umount: {}", stderr(&out));
    tree
}

fn assert_same_trees(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) {
    for (path, node) in a {
        match b.get(path) {
            None => panic!("{} is missing after the round trip", path.display()),
            Some(other) => assert_eq!(node, other, "{} differs after the round trip", path.display()),
        }
    }
    for path in b.keys() {
        assert!(a.contains_key(path), "{} appeared in the round trip", path.display());
    }
}

/// Every file of every layer blob of an OCI layout, by digest.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let path = entry.unwrap().path();
        out.insert(
            path.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read(&path).unwrap(),
        );
    }
    out.insert("index.json".into(), std::fs::read(dir.join("index.json")).unwrap());
    out
}

/// The entry names of a (gzip or plain) layer blob.
fn layer_names(bytes: &[u8]) -> Vec<String> {
    let mut data = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut data).unwrap();
    } else {
        data = bytes.to_vec();
    }
    let mut archive = tar::Archive::new(data.as_slice());
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn layer_blobs(dir: &Path, tag: &str) -> Vec<Vec<u8>> {
    let image = skopeo_json(&["inspect", &format!("oci:{}:{tag}", dir.display())]);
    image["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let hex = d.as_str().unwrap().trim_start_matches("sha256:");
            std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()
        })
        .collect()
}

fn round_trip(backend: Backend) {
    let env = Env::new(backend);
    let tag = format!("{backend:?}").to_lowercase();
    let ctx = env.context("ctx");
    let spec = env.spec("export.spec", SPEC);
    let (id, _) = env.build_ok(&spec, &ctx, &[]);
    let original = item_tree(&env, &id, "original");
    assert_eq!(original[Path::new("app/suid")].mode, 0o4755);
    assert_eq!(original[Path::new("app/same.txt")].data, b"BBBB");

    // OCI layout: one layer per step, the build's env, workdir and user.
    let layout = env.work.path().join("layout");
    let oci = format!("oci:{}:{tag}", layout.display());
    let digest = export(&env, &id, &oci, &[]);
    assert!(digest.starts_with("sha256:"), "{digest}");
    let image = skopeo_json(&["inspect", &oci]);
    assert_eq!(image["Digest"], digest.as_str());
    assert_eq!(image["Layers"].as_array().unwrap().len(), LAYERS, "{image}");
    let config = skopeo_json(&["inspect", "--config", &oci]);
    let run_config = &config["config"];
    assert_eq!(run_config["WorkingDir"], "/app", "{config}");
    assert_eq!(run_config["User"], "1000:1000", "{config}");
    let env_list: Vec<&str> = run_config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env_list.contains(&"GREETING=hello world"), "{env_list:?}");
    assert!(env_list.iter().any(|e| e.starts_with("PATH=")), "{env_list:?}");
    assert_eq!(config["history"].as_array().unwrap().len(), LAYERS);
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");

    // The layers hold what each step changed, with whiteouts for what it removed.
    let blobs = layer_blobs(&layout, &tag);
    let names: Vec<Vec<String>> = blobs.iter().map(|b| layer_names(b)).collect();
    assert!(names[0].iter().any(|n| n == "bin/busybox"), "{:?}", names[0]);
    assert!(names[1].iter().any(|n| n == "app/sub/deep/two.txt"), "{:?}", names[1]);
    assert!(names[2].iter().any(|n| n == "etc/.wh.group"), "{:?}", names[2]);
    assert!(names[2].iter().any(|n| n == "app/old/.wh..wh..opq"), "{:?}", names[2]);
    assert!(names[3].iter().any(|n| n == "app/suid"), "{:?}", names[3]);
    assert!(
        names[5].iter().any(|n| n == "app/same.txt"),
        "a rewrite with the same size and mtime was missed: {:?}",
        names[5]
    );
    assert!(!names[5].iter().any(|n| n == "app/one.txt"), "{:?}", names[5]);

    // Reproducible: a second export is byte for byte the same.
    let layout2 = env.work.path().join("layout2");
    let digest2 = export(&env, &id, &format!("oci:{}:{tag}", layout2.display()), &[]);
    assert_eq!(digest, digest2);
    assert_eq!(files(&layout), files(&layout2));

    // --squash: one layer.
    let squashed = format!("oci:{}:squashed", layout.display());
    export(&env, &id, &squashed, &["--squash"]);
    let image = skopeo_json(&["inspect", &squashed]);
    assert_eq!(image["Layers"].as_array().unwrap().len(), 1, "{image}");
    // The layout keeps its first image beside the new one.
    assert_eq!(skopeo_json(&["inspect", &oci])["Digest"], digest.as_str());

    // A rootfs tar on stdout: the whole tree, no whiteouts.
    let out = env.strata(&["export", &id, "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let names = layer_names(&out.stdout);
    assert!(names.iter().any(|n| n == "app/same.txt"));
    assert!(!names.iter().any(|n| n.contains(".wh.")), "{names:?}");
    assert!(!names.iter().any(|n| n == "etc/group"));

    // Built on again from the layout: the same tree.
    let spec2 = env.spec(
        "again.spec",
        &format!(
            "((from {oci}) (run (shell \"cat /app/same.txt /app/old/c && test -u /app/suid && test ! -e /etc/group\")))"
        ),
    );
    let out = env.build(
        &spec2,
        &ctx,
        &["--allow-local-images", env.work.path().to_str().unwrap()],
    );
    assert!(out.status.success(), "build from the export: {}", stderr(&out));
    let again = final_id(&out);
    assert!(stderr(&out).contains("BBBB"), "{}", stderr(&out));
    let info = env.strata(&["info", &again, "--json"]);
    let chain: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let base = chain.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_same_trees(&original, &item_tree(&env, &base, "imported"));

    // docker-archive: podman loads it with the same settings and files.
    let archive = env.work.path().join("image.tar");
    let name = format!("strata-export-test-{tag}:v1");
    let image_id = export(&env, &id, &format!("docker-archive:{}:{name}", archive.display()), &[]);
    let loaded = run(Command::new("podman").args(["load", "-q", "-i", archive.to_str().unwrap()]));
    assert!(stdout(&loaded).contains(&name), "{}", stdout(&loaded));
    let podman_name = format!("localhost/{name}");
    let inspect = run(Command::new("podman").args(["image", "inspect", &podman_name]));
    let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let inspect = &inspect[0];
    let cleanup = || {
        let _ = Command::new("podman").args(["rmi", "-f", &podman_name]).output();
    };
    let checks = std::panic::catch_unwind(|| {
        assert_eq!(format!("sha256:{}", inspect["Id"].as_str().unwrap()), image_id);
        assert_eq!(inspect["Config"]["WorkingDir"], "/app");
        assert_eq!(inspect["Config"]["User"], "1000:1000");
        assert_eq!(inspect["RootFS"]["Layers"].as_array().unwrap().len(), LAYERS);
        let mount = run(Command::new("podman").args(["image", "mount", &podman_name]));
        let root = PathBuf::from(stdout(&mount).trim());
        let same = std::fs::read(root.join("app/same.txt"));
        let group = root.join("etc/group").exists();
        let old = root.join("app/old/a").exists();
        let _ = Command::new("podman").args(["image", "unmount", &podman_name]).output();
        assert_eq!(same.unwrap(), b"BBBB");
        assert!(!group && !old);
    });
    cleanup();
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }

    // A push to the local registry, pulled back: the same manifest as the layout's.
    let remote = format!("docker://{}/export-{tag}:y", env.registry);
    let pushed = export(&env, &id, &remote, &[]);
    assert_eq!(pushed, digest);
    let image = skopeo_json(&["inspect", "--tls-verify=false", &remote]);
    assert_eq!(image["Digest"], digest.as_str());
    assert_eq!(image["Layers"].as_array().unwrap().len(), LAYERS);

    env.verify_clean();
    env.assert_no_leftovers();
}

#[test]
fn round_trip_on_btrfs() {
    round_trip(Backend::Btrfs);
}

#[test]
fn round_trip_on_zfs() {
    round_trip(Backend::Zfs);
}

#[test]
fn round_trip_on_overlayfs() {
    round_trip(Backend::Overlayfs);
}

#[test]
fn round_trip_on_rsync() {
    round_trip(Backend::Rsync);
}

/// Bad destinations and unknown ids are usage errors (2); a destination that cannot be
/// written is the environment's (3); nothing is left half-written.
#[test]
fn errors_and_exit_codes() {
    let env = Env::new(Backend::Overlayfs);
    let spec = env.spec("small.spec", "((from busybox) (run (shell \"echo hi > /hi\")))");
    let (id, _) = env.build_ok(&spec, &env.context("ctx"), &[]);
    let code = |args: &[&str]| env.strata(args).status.code();
    assert_eq!(code(&["export", &id, "nowhere"]), Some(2));
    assert_eq!(code(&["export", &id, "oci:"]), Some(2));
    assert_eq!(code(&["export", &id, "docker://127.0.0.1:1/x@sha256:00"]), Some(2));
    let missing = "0".repeat(64);
    let out = env.strata(&["export", &missing, "-"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    // A directory that is neither empty nor a layout is refused and left alone.
    let busy = env.work.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), "x").unwrap();
    assert_eq!(code(&["export", &id, &format!("oci:{}", busy.display())]), Some(2));
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // No parent directory: the environment's failure, nothing written.
    let deep = env.work.path().join("no/such/dir/image.tar");
    assert_eq!(
        code(&["export", &id, &format!("docker-archive:{}", deep.display())]),
        Some(3)
    );
    // A registry nobody listens on.
    assert_eq!(code(&["export", &id, "docker://127.0.0.1:1/x:y"]), Some(3));
    // No temporary files left beside the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(env.work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".strata-export-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // SOURCE_DATE_EPOCH sets every time.
    let out = env
        .command(&["export", &id, "-"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    for entry in archive.entries().unwrap() {
        assert_eq!(entry.unwrap().header().mtime().unwrap(), 1_700_000_000);
    }
}

/// The rootfs is untrusted: symlinks in it (to a host file, to `/`, a parent swapped for a
/// link) are exported as symlinks, and nothing of the host they point at is read.
#[test]
fn symlinks_in_the_rootfs_are_never_followed() {
    let env = Env::new(Backend::Rsync);
    let host_dir = env.work.path().join("host-secrets");
    std::fs::create_dir_all(&host_dir).unwrap();
    let marker = "STRATA-EXPORT-MARKER-6f1d2";
    std::fs::write(host_dir.join("secret"), marker).unwrap();
    let secret = host_dir.join("secret");
    let spec = env.spec(
        "links.spec",
        &format!(
            "((from busybox) (run (shell \"ln -s {} /leak && ln -s / /hostroot && ln -s {} /dir\")))",
            secret.display(),
            host_dir.display()
        ),
    );
    let (id, _) = env.build_ok(&spec, &env.context("ctx"), &[]);
    let out = env.strata(&["export", &id, "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let archive = env.work.path().join("links.tar");
    export(&env, &id, &format!("docker-archive:{}", archive.display()), &[]);
    let layout = env.work.path().join("links-layout");
    export(&env, &id, &format!("oci:{}:t", layout.display()), &[]);
    let mut outputs = vec![out.stdout.clone(), std::fs::read(&archive).unwrap()];
    for blob in layer_blobs(&layout, "t") {
        let mut data = Vec::new();
        flate2::read::GzDecoder::new(blob.as_slice())
            .read_to_end(&mut data)
            .unwrap();
        outputs.push(data);
    }
    for bytes in &outputs {
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "a host file was read through a symlink"
        );
    }
    let mut tar = tar::Archive::new(out.stdout.as_slice());
    let mut links = BTreeMap::new();
    for entry in tar.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if ["leak", "hostroot", "dir"].contains(&path.as_str()) {
            assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink, "{path}");
            links.insert(path, entry.link_name().unwrap().unwrap().into_owned());
        }
    }
    assert_eq!(links.len(), 3, "{links:?}");
    assert_eq!(links["leak"], secret);
}
