//! Attacks through what a spec names as its base image, through a step's rootfs after it ran,
//! and through `exclude` (issue 15, items 2, 3, 5 and 6), each tried through the real binary
//! against a real store (root: mounts, runc).
//!
//! Every test here failed on the code before its fix (d726ff4, the commit before issue 15's
//! fetch work); each test's comment says how. To see it again, point the tests at a binary
//! built from that commit: `STRATA_SECURITY_BIN=/path/to/old/strata cargo test --test
//! security fetch::`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{final_id, stderr, stdout, Backend, Env};
use sha2::{Digest, Sha256};

/// The binary under test (`STRATA_SECURITY_BIN` to try an older one).
fn strata(env: &Env, args: &[&str]) -> Command {
    let bin = std::env::var("STRATA_SECURITY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_strata").to_owned());
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("STRATA_STORE", &env.store)
        .env("STRATA_REGISTRY_MIRROR", format!("docker.io=http://{}", env.registry))
        .env_remove("STRATA_LOG");
    cmd
}

fn build(env: &Env, spec: &Path, context: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "build",
        "-f",
        spec.to_str().unwrap(),
        context.to_str().unwrap(),
        "--progress",
        "plain",
    ];
    args.extend_from_slice(extra);
    strata(env, &args).output().unwrap()
}

fn all_output(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// A private (0700) directory outside everything the tests allow.
fn private_dir(env: &Env, name: &str) -> PathBuf {
    let dir = env.work.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Asserts that no run of `window` bytes of `secret` appears in the output.
fn assert_never_echoed(out: &Output, secret: &[u8], window: usize) {
    let text = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
    for chunk in secret.windows(window) {
        if chunk.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        assert!(
            !text.windows(window).any(|w| w == chunk),
            "the output quotes {:?} of the file:\n{}",
            String::from_utf8_lossy(chunk),
            all_output(out)
        );
    }
}

fn marker() -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("{:?}{}", std::time::SystemTime::now(), std::process::id()));
    format!("STRATAMARKER{}", &hex(&hasher.finalize())[..24])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A `docker save` archive of one image made of `layer` (an uncompressed tar).
fn docker_archive(path: &Path, layer: &[u8]) {
    let diff_id = sha256_hex(layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    })
    .to_string();
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["test:latest"],
        "Layers": ["layer.tar"],
    }])
    .to_string();
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in [
        ("manifest.json", manifest.as_bytes()),
        (config_name.as_str(), config.as_bytes()),
        ("layer.tar", layer),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        builder.append_data(&mut h, name, data).unwrap();
    }
    builder.finish().unwrap();
}

/// A spec that only fetches `image` (and runs nothing).
fn from_only(env: &Env, name: &str, image: &str) -> PathBuf {
    env.spec(name, &format!("((from {:?}))\n", image))
}

/// Attack: `(from docker-archive:/etc/shadow)`. Before the fix the build failed with the tar
/// reader's error, which quoted the header's name field: the file's first 100 bytes (the
/// planted marker here, root's password hash on a real host). Now the path is refused (it is
/// below no allowed directory) and, even inside an allowed directory, a file that is not a
/// tar archive is reported without any of its bytes.
#[test]
fn docker_archive_of_a_host_file_is_refused_and_never_echoed() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let secret_dir = private_dir(&env, "private");
    let secret = secret_dir.join("shadow");
    let mark = marker();
    // At least a tar block (512 bytes), as a real /etc/shadow is: the tar reader then parses
    // its first 512 bytes as a header.
    let mut content = format!("root:$6${mark}$Zq0w9sPasswordHashMaterial:19700:0:99999:7:::\n");
    for user in 0..20 {
        content.push_str(&format!(
            "user{user}:$6$salt{user}$hash{mark}{user}:19700:0:99999:7:::\n"
        ));
    }
    std::fs::write(&secret, &content).unwrap();

    let spec = from_only(&env, "shadow.spec", &format!("docker-archive:{}", secret.display()));
    let out = build(&env, &spec, &ctx, &[]);
    assert!(!out.status.success(), "{}", all_output(&out));
    assert!(!all_output(&out).contains(&mark), "{}", all_output(&out));
    assert_never_echoed(&out, content.as_bytes(), 8);
    assert!(
        all_output(&out).contains("--allow-local-images"),
        "{}",
        all_output(&out)
    );

    // Allowed by the operator, but not an archive: still never quoted.
    let out = build(
        &env,
        &spec,
        &ctx,
        &["--allow-local-images", secret_dir.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", all_output(&out));
    assert!(
        all_output(&out).contains("not a docker archive"),
        "{}",
        all_output(&out)
    );
    assert!(!all_output(&out).contains(&mark));
    assert_never_echoed(&out, content.as_bytes(), 8);

    // The real file, even with `/` allowed.
    if let Ok(shadow) = std::fs::read("/etc/shadow") {
        let spec = from_only(&env, "etc-shadow.spec", "docker-archive:/etc/shadow");
        for extra in [&[][..], &["--allow-local-images", "/"][..]] {
            let out = build(&env, &spec, &ctx, extra);
            assert!(!out.status.success(), "{}", all_output(&out));
            assert_never_echoed(&out, &shadow, 12);
        }
    }
}

/// Attack: `(from docker-archive:/proc/self/environ)`. Before the fix the tar error quoted
/// strata's own environment (the marker variable sorts first, so it was in the quoted bytes).
/// Now nothing below /proc, /sys or /dev is read, whatever the operator allows, and allowing
/// such a directory is a usage error.
#[test]
fn proc_self_environ_is_refused_and_never_echoed() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let mark = marker();
    let spec = from_only(&env, "environ.spec", "docker-archive:/proc/self/environ");
    for extra in [&[][..], &["--allow-local-images", "/"][..]] {
        let out = strata(
            &env,
            &[
                &["build", "-f", spec.to_str().unwrap(), ctx.to_str().unwrap()][..],
                extra,
            ]
            .concat(),
        )
        .env("AAAA_STRATA_SECURITY_MARKER", &mark)
        .output()
        .unwrap();
        assert!(!out.status.success(), "{}", all_output(&out));
        assert!(!all_output(&out).contains(&mark), "{}", all_output(&out));
        assert!(
            all_output(&out).contains("never read below /proc"),
            "{}",
            all_output(&out)
        );
    }
    for dir in ["/proc", "/proc/self", "/sys", "/dev"] {
        let out = build(&env, &spec, &ctx, &["--allow-local-images", dir]);
        assert_eq!(out.status.code(), Some(2), "{dir}: {}", all_output(&out));
    }
}

/// Attack: `(from oci:/root/private/layout:latest)` imports any image on the host. Before the
/// fix the first build below succeeded. Now a layout below no allowed directory is refused,
/// a symlink from an allowed directory to it is too (paths are canonicalised), and the
/// operator's `--allow-local-images` makes it work.
#[test]
fn oci_layout_in_a_private_dir_outside_the_allowed_dirs_is_refused() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let image = strata_testkit::registry::BusyboxImage::create().unwrap();
    let private = private_dir(&env, "private");
    let layout = private.join("layout");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(image.path())
        .arg(&layout)
        .output()
        .unwrap();
    assert!(cp.status.success());
    let allowed = env.context("allowed");
    std::os::unix::fs::symlink(&layout, allowed.join("link")).unwrap();

    let spec = env.spec(
        "oci.spec",
        &format!(
            "((from \"oci:{}:latest\")\n (run (shell \"echo from-the-layout\")))\n",
            layout.display()
        ),
    );
    let out = build(&env, &spec, &ctx, &[]);
    assert!(
        !out.status.success(),
        "a private layout was imported:\n{}",
        all_output(&out)
    );
    assert!(all_output(&out).contains("refusing image"), "{}", all_output(&out));

    let out = build(&env, &spec, &ctx, &["--allow-local-images", allowed.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", all_output(&out));

    let via_link = env.spec(
        "link.spec",
        &format!("((from \"oci:{}:latest\"))\n", allowed.join("link").display()),
    );
    let out = build(
        &env,
        &via_link,
        &ctx,
        &["--allow-local-images", allowed.to_str().unwrap()],
    );
    assert!(
        !out.status.success(),
        "a symlink led out of the allowed directory:\n{}",
        all_output(&out)
    );

    let out = build(&env, &spec, &ctx, &["--allow-local-images", private.to_str().unwrap()]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(stderr(&out).contains("from-the-layout"));

    // Once imported by an allowed build, the image is cached under the same string: a build
    // without the operator's permission must still be refused (before the fix it reused it).
    let out = build(&env, &spec, &ctx, &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a cached local image served a build without the flag:\n{}",
        all_output(&out)
    );
    assert!(all_output(&out).contains("refusing image"), "{}", all_output(&out));
}

/// Attack: the step replaces the parent of its secret's target with a symlink to a host
/// directory holding an empty directory and an empty file of the placeholders' names. Before
/// the fix strata removed the placeholders by host path after the step, through the symlink:
/// it deleted the host's empty file and then its empty directory. Now they are removed from a
/// descriptor of the rootfs without following any symlink: nothing on the host is touched.
#[test]
fn secret_placeholder_symlink_trick_deletes_nothing_on_the_host() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let host = env.context("host-victim");
    std::fs::create_dir(host.join("d")).unwrap();
    std::fs::write(host.join("d/tok"), "").unwrap();
    let secret = env.work.path().join("token");
    std::fs::write(&secret, "value").unwrap();
    let spec = env.spec(
        "trick.spec",
        &format!(
            "((from busybox)\n (run (secrets (tok (target /run/s/d/tok)))\n      (shell \"cat /run/s/d/tok && mv /run/s /run/s.old && ln -s {} /run/s\")))\n",
            host.display()
        ),
    );
    let out = build(&env, &spec, &ctx, &["--secret", &format!("tok:{}", secret.display())]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(host.join("d/tok").exists(), "strata deleted a host file");
    assert!(host.join("d").is_dir(), "strata deleted a host directory");
}

/// A tar of one 64 MiB sparse file, about 10 KiB (GNU tar's sparse format).
fn sparse_bomb_layer(dir: &Path) -> Vec<u8> {
    let src = dir.join("bomb-src");
    std::fs::create_dir_all(&src).unwrap();
    let file = std::fs::File::create(src.join("bomb")).unwrap();
    file.set_len(64 << 20).unwrap();
    drop(file);
    let layer = dir.join("layer.tar");
    let out = Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&layer)
        .arg("-C")
        .arg(&src)
        .arg("bomb")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(layer).unwrap()
}

/// Attack: a 2 KB-ish layer that unpacks to 64 MiB (a sparse file: the holes are written out
/// as zeros). Before the fix there was no cap at all: this test failed at its first build
/// (`--allow-local-images` and `--max-image-size` did not exist), and the old binary, given the
/// same archive without flags, wrote all 64 MiB of `bomb` into the store. Now a 16 MiB cap
/// stops it, naming the image and the cap, and the default cap (50 GiB) lets it through.
#[test]
fn sparse_layer_bomb_is_stopped_by_the_cap() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    let images = env.context("images");
    let layer = sparse_bomb_layer(&env.context("bomb-work"));
    assert!(layer.len() < 32 << 10, "the layer is {} bytes", layer.len());
    let archive = images.join("bomb.tar");
    docker_archive(&archive, &layer);
    let image = format!("docker-archive:{}", archive.display());
    let spec = from_only(&env, "bomb.spec", &image);
    let allow = ["--allow-local-images", images.to_str().unwrap()];

    let out = build(&env, &spec, &ctx, &[&allow[..], &["--max-image-size", "16M"]].concat());
    assert!(!out.status.success(), "{}", all_output(&out));
    let text = all_output(&out);
    assert!(
        text.contains(&image) && text.contains("16 MiB") && text.contains("--max-image-size"),
        "{text}"
    );

    let out = build(&env, &spec, &ctx, &allow);
    assert!(
        out.status.success(),
        "the default cap is generous: {}",
        all_output(&out)
    );
}

/// A layer with a directory and a file carrying `trusted.*` and `user.*` xattrs.
fn xattr_layer() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append_pax_extensions([("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    builder.append_data(&mut h, "d/", &[][..]).unwrap();
    builder
        .append_pax_extensions([
            ("SCHILY.xattr.trusted.strata.test", &b"1"[..]),
            ("SCHILY.xattr.user.strata.test", &b"1"[..]),
        ])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(2);
    builder.append_data(&mut h, "d/f", &b"x\n"[..]).unwrap();
    builder.into_inner().unwrap()
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings; a size query with no buffer.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Attack: a layer sets `trusted.overlay.opaque` (overlayfs' own metadata) and another
/// `trusted.*` xattr. Before the fix both were applied to the unpacked files (this test failed
/// at its build, `--allow-local-images` did not exist; the old binary without it left
/// `trusted.overlay.opaque` on `d` and `trusted.strata.test` on `d/f` in the store). Now
/// `trusted.*` xattrs are dropped (and said so in the log); the rootfs is inspected on an
/// rsync store, where it is a plain directory.
#[test]
fn trusted_xattrs_from_layers_are_not_applied() {
    let env = Env::new(Backend::Rsync);
    let ctx = env.context("ctx");
    let images = env.context("images");
    let archive = images.join("xattr.tar");
    docker_archive(&archive, &xattr_layer());
    let spec = from_only(&env, "xattr.spec", &format!("docker-archive:{}", archive.display()));
    let out = build(&env, &spec, &ctx, &["--allow-local-images", images.to_str().unwrap()]);
    assert!(out.status.success(), "{}", all_output(&out));
    let rootfs = env.store_root().join("result").join(final_id(&out)).join("rootfs");
    assert!(rootfs.join("d/f").is_file(), "{}", rootfs.display());
    assert!(!has_xattr(&rootfs.join("d"), "trusted.overlay.opaque"));
    assert!(!has_xattr(&rootfs.join("d/f"), "trusted.strata.test"));
}

/// Attack (on the author's intent): `(exclude sub/secret.txt)` matched nothing (exclude
/// matches basenames) and the file was copied into the image. Before the fix this build
/// succeeded and the step below found the file. Now `build` refuses the entry, with its
/// position (exit 2), before anything runs, and `check` warns; globs likewise; a basename
/// keeps working as in OBuilder.
#[test]
fn exclude_with_a_path_is_refused_never_silently_copied() {
    let env = Env::new(Backend::Overlayfs);
    let ctx = env.context("ctx");
    std::fs::create_dir(ctx.join("sub")).unwrap();
    std::fs::write(ctx.join("sub/secret.txt"), "secret").unwrap();
    std::fs::write(ctx.join("keep"), "kept").unwrap();
    for (name, entry, col) in [("path.spec", "sub/secret.txt", 37), ("glob.spec", "*.txt", 37)] {
        let spec = env.spec(
            name,
            &format!(
                "((from busybox)\n (copy (src .) (dst /ctx/) (exclude {entry}))\n (run (shell \"test ! -e /ctx/sub/secret.txt\")))\n"
            ),
        );
        let out = build(&env, &spec, &ctx, &[]);
        assert_eq!(out.status.code(), Some(2), "{entry}: {}", all_output(&out));
        let position = format!("{}:2:{col}: error:", spec.display());
        assert!(stderr(&out).contains(&position), "{position}\n{}", stderr(&out));

        let out = strata(&env, &["check", spec.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", all_output(&out));
        let warning = format!("{}:2:{col}: warning:", spec.display());
        assert!(stderr(&out).contains(&warning), "{warning}\n{}", stderr(&out));
    }
    let spec = env.spec(
        "basename.spec",
        "((from busybox)\n (copy (src .) (dst /ctx/) (exclude secret.txt))\n (run (shell \"test ! -e /ctx/sub/secret.txt && test -e /ctx/keep\")))\n",
    );
    let out = build(&env, &spec, &ctx, &[]);
    assert!(out.status.success(), "{}", all_output(&out));
}
