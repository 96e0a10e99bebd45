//! The fetcher against real registries: the `registry` fixture (docker-registry on
//! 127.0.0.1 with a busybox image built from busybox-static), and a tiny fake registry
//! in this file serving crafted bad answers (wrong digest, truncated blob, HTTP 500).
//! Also the offline sources: an OCI layout and a docker-archive tarball.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use strata::fetch::digest::sha256_digest;
use strata::fetch::{FetchError, FetchOptions, Fetcher, ImageConfig, ImageFetcher, Platform};
use strata::sandbox::{Cancel, LogSink};
use strata_testkit::registry::{BusyboxImage, LocalRegistry};

#[derive(Default)]
struct Log(Mutex<Vec<u8>>);

impl LogSink for Log {
    fn write(&self, bytes: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(bytes);
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn fetch_with(options: FetchOptions, image: &str) -> (tempfile::TempDir, Result<ImageConfig, FetchError>, String) {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let log = Log::default();
    // The layouts and archives of these tests live in temporary directories.
    let options = options.allow_local_images(&[std::env::temp_dir()]).unwrap();
    let result = ImageFetcher::new(options).fetch(image, &rootfs, &log, &Cancel::new());
    (dir, result, log.text())
}

fn fetch(image: &str) -> (tempfile::TempDir, Result<ImageConfig, FetchError>, String) {
    fetch_with(FetchOptions::default(), image)
}

/// The busybox rootfs works: the binary runs and the applets are symlinks to it.
fn assert_busybox(root: &Path) {
    let rootfs = root.join("rootfs");
    let out = Command::new(rootfs.join("bin/busybox"))
        .arg("echo")
        .arg("hi")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(std::fs::read_to_string(rootfs.join("etc/passwd"))
        .unwrap()
        .starts_with("root:"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(rootfs.join("tmp")).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
}

fn assert_busybox_env(config: &ImageConfig) {
    assert_eq!(
        config.env,
        vec![(
            "PATH".to_owned(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()
        )]
    );
}

#[test]
fn pull_by_tag_then_by_digest() {
    let registry = LocalRegistry::start().unwrap();
    let (dir, result, log) = fetch(&registry.busybox());
    let config = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_busybox(dir.path());
    assert_busybox_env(&config);
    assert_eq!(config.resolved.as_deref(), Some(registry.busybox().as_str()));
    let digest = config.digest.clone().unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(log.contains("layer 1/1"), "{log}");
    assert!(log.contains("done"), "{log}");

    let by_digest = format!("{}/library/busybox@{digest}", registry.addr());
    let (dir, result, log) = fetch(&by_digest);
    let config2 = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_busybox(dir.path());
    assert_eq!(config2.digest.as_deref(), Some(digest.as_str()));

    // A digest the registry does not have is an error, not a fallback to the tag.
    let missing = format!("{}/library/busybox@sha256:{}", registry.addr(), "0".repeat(64));
    let (_dir, result, _) = fetch(&missing);
    assert!(matches!(result, Err(FetchError::Unavailable { .. })), "{result:?}");
}

#[test]
fn pull_through_a_mirror() {
    let registry = LocalRegistry::start().unwrap();
    let options = FetchOptions {
        mirrors: vec![("docker.io".to_owned(), format!("http://{}", registry.addr()))],
        ..FetchOptions::default()
    };
    let (dir, result, log) = fetch_with(options.clone(), "busybox");
    let config = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_busybox(dir.path());
    assert_eq!(config.resolved.as_deref(), Some("docker.io/library/busybox:latest"));
    assert!(log.contains("(mirror)"), "{log}");

    // The CLI's parser builds the same options from the environment variable.
    std::env::set_var(
        "STRATA_REGISTRY_MIRROR",
        format!("docker.io=http://{}", registry.addr()),
    );
    let parsed = FetchOptions::from_cli(&[], &[]).unwrap();
    std::env::remove_var("STRATA_REGISTRY_MIRROR");
    assert_eq!(parsed.mirrors, options.mirrors);
    let (dir, result, log) = fetch_with(parsed, "docker.io/library/busybox:latest");
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_busybox(dir.path());
}

// ---------------------------------------------------------------------------------------
// Crafted images: an OCI layout writer small enough to read.

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, name, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn write_blob(layout: &Path, bytes: &[u8]) -> serde_json::Value {
    let digest = sha256_digest(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
    serde_json::json!({"digest": digest, "size": bytes.len()})
}

fn descriptor(media_type: &str, mut d: serde_json::Value) -> serde_json::Value {
    d["mediaType"] = media_type.into();
    d
}

/// One single-layer image for `arch` whose /arch file names it; returns its manifest descriptor.
fn write_arch_image(layout: &Path, arch: &str) -> serde_json::Value {
    let layer = tar_gz(&[("arch", arch.as_bytes())]);
    let plain = {
        let mut d = flate2::read::GzDecoder::new(&layer[..]);
        let mut v = Vec::new();
        d.read_to_end(&mut v).unwrap();
        v
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": [format!("ARCH={arch}")]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&plain)]},
    });
    let config = write_blob(layout, config.to_string().as_bytes());
    let layer = write_blob(layout, &layer);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    });
    let mut d = descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        write_blob(layout, manifest.to_string().as_bytes()),
    );
    d["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
    d
}

/// An OCI layout whose tag `multi` is an index of a linux/arm64 and a linux/amd64 image.
fn write_multi_platform_layout(layout: &Path) {
    std::fs::create_dir_all(layout).unwrap();
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let arm = write_arch_image(layout, "arm64");
    let amd = write_arch_image(layout, "amd64");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm, amd],
    });
    let mut top = descriptor(
        "application/vnd.oci.image.index.v1+json",
        write_blob(layout, index.to_string().as_bytes()),
    );
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "multi"});
    let outer = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(layout.join("index.json"), outer.to_string()).unwrap();
}

fn skopeo(registry: &LocalRegistry, args: &[&str]) {
    let out = Command::new("skopeo")
        .args(registry.skopeo_base_args())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn multi_platform_index_picks_the_host_platform() {
    let registry = LocalRegistry::start().unwrap();
    let layout = registry.dir().join("multi");
    write_multi_platform_layout(&layout);
    let dest = format!("docker://{}/multi:latest", registry.addr());
    skopeo(
        &registry,
        &[
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", layout.display()),
            &dest,
        ],
    );
    let image = format!("{}/multi:latest", registry.addr());
    let (dir, result, log) = fetch(&image);
    let config = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        Platform::host().to_string(),
        "linux/amd64",
        "this test assumes an amd64 host"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rootfs/arch")).unwrap(),
        "amd64"
    );
    assert_eq!(config.env, vec![("ARCH".to_owned(), "amd64".to_owned())]);
    assert!(log.contains("index sha256:"), "{log}");

    // Another platform can be asked for.
    let options = FetchOptions {
        platform: "linux/arm64".parse().unwrap(),
        ..FetchOptions::default()
    };
    let (dir, result, log) = fetch_with(options.clone(), &image);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rootfs/arch")).unwrap(),
        "arm64"
    );

    // The same index read straight from the OCI layout.
    let (dir, result, log) = fetch_with(options, &format!("oci:{}:multi", layout.display()));
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rootfs/arch")).unwrap(),
        "arm64"
    );

    // A platform nobody offers is a clear error.
    let options = FetchOptions {
        platform: "linux/s390x".parse().unwrap(),
        ..FetchOptions::default()
    };
    let (_dir, result, _) = fetch_with(options, &image);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("linux/s390x") && err.contains("linux/amd64"), "{err}");
}

#[test]
fn offline_sources_oci_layout_and_docker_archive() {
    let image = BusyboxImage::create().unwrap();
    let layout = image.path();
    for reference in [
        format!("oci:{}:latest", layout.display()),
        format!("oci:{}", layout.display()),
    ] {
        let (dir, result, log) = fetch(&reference);
        let config = result.unwrap_or_else(|e| panic!("{reference}: {e}\n{log}"));
        assert_busybox(dir.path());
        assert_busybox_env(&config);
        assert_eq!(config.resolved.as_deref(), Some(reference.as_str()));
    }
    let (_dir, result, _) = fetch(&format!("oci:{}:nosuchtag", layout.display()));
    assert!(result.unwrap_err().to_string().contains("nosuchtag"));

    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy.json");
    std::fs::write(&policy, r#"{"default": [{"type": "insecureAcceptAnything"}]}"#).unwrap();
    let archive = work.path().join("busybox.tar");
    let out = Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker-archive:{}:busybox:latest", archive.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for reference in [
        format!("docker-archive:{}", archive.display()),
        format!("docker-archive:{}:busybox:latest", archive.display()),
    ] {
        let (dir, result, log) = fetch(&reference);
        let config = result.unwrap_or_else(|e| panic!("{reference}: {e}\n{log}"));
        assert_busybox(dir.path());
        assert_busybox_env(&config);
    }

    // A corrupted layer blob in the layout is refused, naming its digest.
    let manifest_digest = {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        index["manifests"][0]["digest"].as_str().unwrap().to_owned()
    };
    let copy = work.path().join("corrupt");
    let out = Command::new("cp").arg("-a").arg(&layout).arg(&copy).output().unwrap();
    assert!(out.status.success());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            copy.join("blobs/sha256")
                .join(manifest_digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let blob = copy
        .join("blobs/sha256")
        .join(layer_digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let (_dir, result, _) = fetch(&format!("oci:{}:latest", copy.display()));
    match result {
        Err(FetchError::Unavailable { reason, .. }) => {
            assert!(reason.contains(&layer_digest) && reason.contains("corrupt"), "{reason}")
        }
        other => panic!("corrupt layer accepted: {other:?}"),
    }
}

#[test]
fn cancelled_before_start() {
    let cancel = Cancel::new();
    cancel.cancel();
    let dir = tempfile::tempdir().unwrap();
    let result = ImageFetcher::default().fetch("busybox", dir.path(), &Log::default(), &cancel);
    assert!(matches!(result, Err(FetchError::Cancelled(_))), "{result:?}");
}

// ---------------------------------------------------------------------------------------
// A fake registry serving one crafted image, broken in one chosen way.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    WrongDigest,
    TruncatedBlob,
    ServerError,
}

struct FakeRegistry {
    addr: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    layer_digest: String,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Blob {
    digest: String,
    bytes: Vec<u8>,
    content_type: &'static str,
}

fn fake_registry(fault: Fault) -> FakeRegistry {
    let layer = tar_gz(&[
        ("hello", b"hello from the fake registry\n"),
        ("big", &vec![7u8; 200_000]),
    ]);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Env": ["A=b"]}}).to_string();
    let config = config.into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(&layer), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let layer_digest = sha256_digest(&layer);
    let blobs = vec![
        Blob {
            digest: sha256_digest(&manifest),
            bytes: manifest,
            content_type: "application/vnd.oci.image.manifest.v1+json",
        },
        Blob {
            digest: sha256_digest(&config),
            bytes: config,
            content_type: "application/octet-stream",
        },
        Blob {
            digest: layer_digest.clone(),
            bytes: layer,
            content_type: "application/octet-stream",
        },
    ];
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let _ = serve(stream, &blobs, fault);
        }
    });
    FakeRegistry {
        addr,
        stop,
        thread: Some(thread),
        layer_digest,
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    send: usize,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body[..send.min(body.len())])?;
    stream.flush()
}

fn serve(mut stream: TcpStream, blobs: &[Blob], fault: Fault) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let path = path.split('?').next().unwrap_or("").to_owned();
    if path == "/v2/" {
        return respond(
            &mut stream,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            b"{}",
            usize::MAX,
        );
    }
    if path.contains("/manifests/") {
        if fault == Fault::ServerError {
            return respond(
                &mut stream,
                "500 Internal Server Error",
                &[],
                b"the disk is on fire",
                usize::MAX,
            );
        }
        let m = &blobs[0];
        let headers = [
            ("Content-Type", m.content_type.into()),
            ("Docker-Content-Digest", m.digest.clone()),
        ];
        return respond(&mut stream, "200 OK", &headers, &m.bytes, usize::MAX);
    }
    if let Some(digest) = path.split("/blobs/").nth(1) {
        if let Some(blob) = blobs.iter().find(|b| b.digest == digest) {
            let is_layer = std::ptr::eq(blob, &blobs[2]);
            let mut body = blob.bytes.clone();
            let mut send = usize::MAX;
            if is_layer {
                match fault {
                    Fault::WrongDigest => {
                        let middle = body.len() / 2;
                        body[middle] ^= 0x55;
                    }
                    Fault::TruncatedBlob => send = body.len() / 3,
                    _ => {}
                }
            }
            let headers = [("Content-Type", blob.content_type.into())];
            return respond(&mut stream, "200 OK", &headers, &body, send);
        }
    }
    respond(
        &mut stream,
        "404 Not Found",
        &[("Content-Type", "application/json".into())],
        br#"{"errors":[{"code":"NOT_FOUND","message":"unknown"}]}"#,
        usize::MAX,
    )
}

fn fake_fetch(
    fault: Fault,
) -> (
    FakeRegistry,
    PathBuf,
    tempfile::TempDir,
    Result<ImageConfig, FetchError>,
    String,
) {
    let fake = fake_registry(fault);
    let image = format!("{}/crafted/image:latest", fake.addr);
    let (dir, result, log) = fetch(&image);
    let rootfs = dir.path().join("rootfs");
    (fake, rootfs, dir, result, log)
}

#[test]
fn fake_registry_sanity() {
    let (_fake, rootfs, _dir, result, log) = fake_fetch(Fault::None);
    let config = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(config.env, vec![("A".to_owned(), "b".to_owned())]);
    assert_eq!(
        std::fs::read_to_string(rootfs.join("hello")).unwrap(),
        "hello from the fake registry\n"
    );
}

#[test]
fn wrong_digest_is_refused() {
    let (fake, _rootfs, _dir, result, _) = fake_fetch(Fault::WrongDigest);
    match result {
        Err(FetchError::Unavailable { reason, .. }) => {
            assert!(reason.contains(&fake.layer_digest), "{reason}");
            assert!(reason.contains("corrupt or tampered"), "{reason}");
        }
        other => panic!("a blob with the wrong digest was accepted: {other:?}"),
    }
}

#[test]
fn truncated_blob_is_refused() {
    let (fake, _rootfs, _dir, result, _) = fake_fetch(Fault::TruncatedBlob);
    match result {
        Err(FetchError::Unavailable { reason, .. }) => {
            assert!(reason.contains(&fake.layer_digest), "{reason}");
            assert!(reason.contains("truncated"), "{reason}");
        }
        other => panic!("a truncated blob was accepted: {other:?}"),
    }
}

#[test]
fn server_error_is_reported_clearly() {
    let (_fake, _rootfs, _dir, result, _) = fake_fetch(Fault::ServerError);
    match result {
        Err(e @ FetchError::Unavailable { .. }) => {
            let message = e.to_string();
            assert!(message.contains("500") && message.contains("manifest"), "{message}");
        }
        other => panic!("expected a clear error for HTTP 500: {other:?}"),
    }
}
