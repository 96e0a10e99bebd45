//! Pulling from an OCI/Docker registry with `oci-client`.
//!
//! The manifest (and the index before it, if any) is verified by the client against the
//! digest in the reference when there is one; the config is verified here; each layer is
//! streamed through a bounded channel into the unpacker, which verifies size and digest
//! as it reads (see `unpack::unpack_layer_with`), so download and unpack overlap. A layer
//! whose bytes do not match its digest fails the fetch; the caller discards the rootfs.

use std::future::Future;
use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use strata_sandbox::{Cancel, LogSink};

use super::digest::{sha256_hex_of, verify_bytes};
use super::image::{check_layer_media_type, offered_platforms, parse_config, select_platform};
use super::mirror::{endpoint_for, Endpoint};
use super::progress::{line, short_digest, LayerProgress};
use super::unpack::{unpack_layer_with, ByteBudget, LayerCheck, UnpackStats};
use super::{auth, unavailable, FetchError, FetchOptions, ImageConfig};

/// Chunks in flight between the download and the unpacker.
const CHANNEL_DEPTH: usize = 64;
const MAX_CONFIG_BYTES: usize = 16 << 20;
const CANCEL_POLL: Duration = Duration::from_millis(100);

const CONFIG_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// The reference as sent over the wire: same repository, tag and digest, but the host the
/// pull really goes to (a mirror, or Docker Hub's API host).
fn network_reference(reference: &Reference, endpoint: &Endpoint) -> Reference {
    let host = endpoint.host.clone();
    let repository = reference.repository().to_owned();
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(host, repository, tag.to_owned(), digest.to_owned())
        }
        (None, Some(digest)) => Reference::with_digest(host, repository, digest.to_owned()),
        (tag, None) => Reference::with_tag(host, repository, tag.unwrap_or("latest").to_owned()),
    }
}

fn registry_auth(options: &FetchOptions, host: &str, log: &dyn LogSink) -> RegistryAuth {
    let Some(config) = options.docker_config.clone().or_else(auth::default_docker_config) else {
        return RegistryAuth::Anonymous;
    };
    match auth::credentials_for(&config, host) {
        Ok(Some((user, password))) => {
            line(log, &format!("using credentials for {host} from {}", config.display()));
            RegistryAuth::Basic(user, password)
        }
        Ok(None) => RegistryAuth::Anonymous,
        Err(e) => {
            line(log, &format!("warning: ignoring docker credentials: {e}"));
            RegistryAuth::Anonymous
        }
    }
}

/// Runs `fut` until it finishes or `cancel` fires.
async fn cancellable<F: Future>(cancel: &Cancel, image: &str, fut: F) -> Result<F::Output, FetchError> {
    tokio::pin!(fut);
    loop {
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled(image.to_owned()));
        }
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep(CANCEL_POLL) => {}
        }
    }
}

pub(crate) fn fetch(
    options: &FetchOptions,
    reference: &Reference,
    image: &str,
    rootfs: &Path,
    log: &dyn LogSink,
    cancel: &Cancel,
) -> Result<ImageConfig, FetchError> {
    let endpoint = endpoint_for(reference, &options.mirrors, &options.insecure_registries)?;
    let net_ref = network_reference(reference, &endpoint);
    let mirrored = endpoint.host != reference.resolve_registry();
    let scheme = if endpoint.http { "http" } else { "https" };
    let via = if mirrored { " (mirror)" } else { "" };
    line(
        log,
        &format!("pulling {} from {scheme}://{}{via}", reference.whole(), endpoint.host),
    );

    let auth_host = if mirrored {
        endpoint.host.clone()
    } else {
        reference.registry().to_owned()
    };
    let auth = registry_auth(options, &auth_host, log);
    let client_config = ClientConfig {
        protocol: if endpoint.http {
            ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    let client = Client::try_from(client_config)
        .map_err(|e| unavailable(image, format!("cannot set up the HTTP client: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FetchError::Io {
            context: "starting the registry client's runtime".to_owned(),
            source: e,
        })?;

    let pull = Pull {
        client: &client,
        auth: &auth,
        net_ref: &net_ref,
        image,
        cancel,
        base_url: format!("{scheme}://{}/v2/", endpoint.host),
        host: &endpoint.host,
    };
    let (manifest, resolved_digest) = runtime.block_on(pull.manifest(options, log))?;
    if !CONFIG_MEDIA_TYPES.contains(&manifest.config.media_type.as_str()) {
        return Err(unavailable(
            image,
            format!(
                "not a container image (config media type {:?})",
                manifest.config.media_type
            ),
        ));
    }
    let config_bytes = runtime.block_on(pull.config(&manifest))?;
    let config = parse_config(&config_bytes, image)?;
    if let (Some(os), Some(arch)) = (&config.os, &config.architecture) {
        let want = &options.platform;
        if *os != want.os || *arch != want.architecture {
            line(log, &format!("warning: image is {os}/{arch}, this host is {want}"));
        }
    }

    let total = manifest.layers.len();
    let mut used = 0u64;
    for (index, layer) in manifest.layers.iter().enumerate() {
        check_layer_media_type(&layer.media_type).map_err(|e| unavailable(image, e))?;
        sha256_hex_of(&layer.digest).map_err(|e| unavailable(image, e))?;
        let size = u64::try_from(layer.size).ok();
        let mut progress = LayerProgress::start(log, index, total, &layer.digest, size);
        let check = LayerCheck {
            digest: Some(layer.digest.clone()),
            size,
            diff_id: None,
            budget: ByteBudget::new(options.max_image_bytes, used),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_DEPTH);
        let (download, unpacked) = std::thread::scope(|scope| {
            let check = &check;
            let unpacker =
                scope.spawn(move || unpack_layer_with(ChannelReader::new(rx), rootfs, check, image, Some(cancel)));
            let download = runtime.block_on(pull.layer(&layer.digest, size, tx, &mut progress));
            let unpacked = unpacker
                .join()
                .unwrap_or_else(|_| Err(unavailable(image, "the layer unpacker panicked")));
            (download, unpacked)
        });
        let stats = combine(download, unpacked)?;
        used = used.saturating_add(stats.charged);
        progress.finish(&stats);
    }
    line(log, &format!("pulled {} ({resolved_digest})", reference.whole()));
    Ok(ImageConfig {
        env: config.env,
        workdir: config.workdir,
        user: config.user,
        digest: Some(resolved_digest),
        resolved: Some(reference.whole()),
    })
}

/// Why a registry could not be reached, from an error's source chain (oci-client wraps
/// reqwest, which wraps hyper's connector, which wraps the `io::Error` or the TLS error):
/// `None` when the request reached the registry (its answer is the error to report).
fn unreachable_cause(error: &(dyn std::error::Error + 'static), url: &str, host: &str) -> Option<String> {
    let mut kinds = Vec::new();
    let mut messages = Vec::new();
    let mut tls = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            kinds.push(io.kind());
            tls |= io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
        }
        tls |= e.is::<rustls::Error>();
        messages.push(e.to_string());
        cause = e.source();
    }
    let innermost = messages.last().cloned().unwrap_or_default();
    let said = |needle: &str| messages.iter().any(|m| m.contains(needle));
    if kinds.contains(&io::ErrorKind::ConnectionRefused) || said("Connection refused") {
        return Some(format!("connection refused to {url} (is the registry running?)"));
    }
    if said("failed to lookup address") || said("dns error") {
        return Some(format!(
            "cannot resolve {host} for {url}: the DNS lookup failed ({innermost})"
        ));
    }
    let tls = tls
        || [
            "tls",
            "TLS",
            "certificate",
            "handshake",
            "InvalidContentType",
            "corrupt message",
        ]
        .iter()
        .any(|needle| said(needle));
    if tls {
        let name = host.split(':').next().unwrap_or(host);
        return Some(format!(
            "TLS handshake with {url} failed ({innermost}); if the registry speaks plain HTTP, \
             give its mirror as http://{host} or pass --insecure-registry {name}"
        ));
    }
    if kinds.contains(&io::ErrorKind::TimedOut) || said("timed out") {
        return Some(format!("timed out connecting to {url} ({innermost})"));
    }
    if kinds.contains(&io::ErrorKind::ConnectionReset) {
        return Some(format!("the connection to {url} was reset ({innermost})"));
    }
    None
}

/// Which failure explains a layer best: a cancellation, then the image's size cap, then a
/// failed digest or size check (the unpacker's `Unavailable`), then the transfer, then the
/// unpacker.
fn combine(
    download: Result<(), FetchError>,
    unpacked: Result<UnpackStats, FetchError>,
) -> Result<UnpackStats, FetchError> {
    match (download, unpacked) {
        (Err(e @ FetchError::Cancelled(_)), _) | (_, Err(e @ FetchError::Cancelled(_))) => Err(e),
        (_, Err(e @ FetchError::TooLarge { .. })) => Err(e),
        (_, Err(e @ FetchError::Unavailable { .. })) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), unpacked) => unpacked,
    }
}

struct Pull<'a> {
    client: &'a Client,
    auth: &'a RegistryAuth,
    net_ref: &'a Reference,
    image: &'a str,
    cancel: &'a Cancel,
    /// `scheme://host/v2/`: the registry API the pull talks to, for messages.
    base_url: String,
    /// `host[:port]` of that API.
    host: &'a str,
}

impl Pull<'_> {
    /// A failed request: when the registry could not be reached at all, the cause (refused,
    /// DNS, TLS, timeout) and the URL, instead of the client's "error sending request".
    fn registry_error(&self, what: &str, e: oci_client::errors::OciDistributionError) -> FetchError {
        match unreachable_cause(&e, &self.base_url, self.host) {
            Some(reason) => unavailable(self.image, reason),
            None => unavailable(self.image, format!("{what}: {e}")),
        }
    }

    /// The image manifest for our platform, and the digest the reference resolved to
    /// (the index's when the reference names an index).
    async fn manifest(
        &self,
        options: &FetchOptions,
        log: &dyn LogSink,
    ) -> Result<(OciImageManifest, String), FetchError> {
        let (manifest, digest) = cancellable(
            self.cancel,
            self.image,
            self.client.pull_manifest(self.net_ref, self.auth),
        )
        .await?
        .map_err(|e| self.registry_error("fetching the manifest", e))?;
        match manifest {
            OciManifest::Image(manifest) => {
                line(log, &format!("manifest {digest}"));
                Ok((manifest, digest))
            }
            OciManifest::ImageIndex(index) => {
                let platform = &options.platform;
                let Some(entry) = select_platform(&index.manifests, platform) else {
                    return Err(unavailable(
                        self.image,
                        format!(
                            "the index {digest} has no image for {platform} (it offers {})",
                            offered_platforms(&index.manifests)
                        ),
                    ));
                };
                sha256_hex_of(&entry.digest).map_err(|e| unavailable(self.image, e))?;
                line(log, &format!("index {digest}: {platform} manifest {}", entry.digest));
                // Pulling by digest makes the client verify the manifest against it.
                let by_digest = self.net_ref.clone_with_digest(entry.digest.clone());
                let (manifest, _) = cancellable(
                    self.cancel,
                    self.image,
                    self.client.pull_manifest(&by_digest, self.auth),
                )
                .await?
                .map_err(|e| self.registry_error("fetching the platform manifest", e))?;
                match manifest {
                    OciManifest::Image(manifest) => Ok((manifest, digest)),
                    OciManifest::ImageIndex(_) => Err(unavailable(
                        self.image,
                        format!("index entry {} is another index", entry.digest),
                    )),
                }
            }
        }
    }

    async fn config(&self, manifest: &OciImageManifest) -> Result<Vec<u8>, FetchError> {
        let digest = manifest.config.digest.as_str();
        sha256_hex_of(digest).map_err(|e| unavailable(self.image, e))?;
        let mut stream = cancellable(
            self.cancel,
            self.image,
            self.client.pull_blob_stream(self.net_ref, digest),
        )
        .await?
        .map_err(|e| self.registry_error(&format!("fetching the config {digest}"), e))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = cancellable(self.cancel, self.image, stream.next()).await? {
            // A digest failure reported by the client is re-checked below with our message.
            let Ok(chunk) = chunk else { break };
            if bytes.len() + chunk.len() > MAX_CONFIG_BYTES {
                return Err(unavailable(
                    self.image,
                    format!("the config {digest} is larger than 16 MiB"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        verify_bytes(&bytes, digest).map_err(|e| unavailable(self.image, e))?;
        Ok(bytes)
    }

    /// Streams one blob into `tx`. A transfer error before the expected size is reported
    /// to the unpacker (and returned) as a truncation; after it, the channel is simply
    /// closed so that the unpacker's own digest check names the mismatch.
    async fn layer(
        &self,
        digest: &str,
        size: Option<u64>,
        tx: tokio::sync::mpsc::Sender<Result<Bytes, String>>,
        progress: &mut LayerProgress<'_>,
    ) -> Result<(), FetchError> {
        let mut stream = cancellable(
            self.cancel,
            self.image,
            self.client.pull_blob_stream(self.net_ref, digest),
        )
        .await?
        .map_err(|e| self.registry_error(&format!("fetching layer {}", short_digest(digest)), e))?;
        let mut received: u64 = 0;
        loop {
            match cancellable(self.cancel, self.image, stream.next()).await? {
                None => return Ok(()),
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    progress.advance(chunk.len() as u64);
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The unpacker stopped early; its error is the one to report.
                        return Ok(());
                    }
                }
                Some(Err(e)) => {
                    if size.is_some_and(|s| received >= s) {
                        return Err(unavailable(self.image, format!("blob {digest}: {e}")));
                    }
                    let reason = match size {
                        Some(s) => format!("blob {digest} is truncated: got {received} of {s} bytes ({e})"),
                        None => format!("reading blob {digest}: {e}"),
                    };
                    let _ = tx.send(Err(reason.clone())).await;
                    return Err(unavailable(self.image, reason));
                }
            }
        }
    }
}

/// The blocking end of the download channel.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(reason)) => return Err(io::Error::other(reason)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::reference::parse_registry_reference;

    #[test]
    fn network_reference_swaps_only_the_host() {
        let r = parse_registry_reference("busybox").unwrap();
        let e = Endpoint {
            host: "127.0.0.1:5000".into(),
            http: true,
        };
        assert_eq!(
            network_reference(&r, &e).whole(),
            "127.0.0.1:5000/library/busybox:latest"
        );
        let d = format!("sha256:{}", "0".repeat(64));
        let r = parse_registry_reference(&format!("quay.io/a/b@{d}")).unwrap();
        assert_eq!(network_reference(&r, &e).whole(), format!("127.0.0.1:5000/a/b@{d}"));
    }

    #[derive(Debug)]
    struct Wrapper(&'static str, Box<dyn std::error::Error + Send + Sync>);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.1)
        }
    }

    #[test]
    fn unreachable_causes_are_named_with_the_url() {
        let url = "http://127.0.0.1:5999/v2/";
        let refused = Wrapper(
            "error sending request",
            Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)),
        );
        assert_eq!(
            unreachable_cause(&refused, url, "127.0.0.1:5999").unwrap(),
            "connection refused to http://127.0.0.1:5999/v2/ (is the registry running?)"
        );
        let dns = Wrapper(
            "dns error",
            Box::new(io::Error::other(
                "failed to lookup address information: Name or service not known",
            )),
        );
        let text = unreachable_cause(&dns, "https://r.invalid/v2/", "r.invalid").unwrap();
        assert!(
            text.starts_with("cannot resolve r.invalid for https://r.invalid/v2/"),
            "{text}"
        );
        let tls = Wrapper(
            "error sending request",
            Box::new(io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            )),
        );
        let text = unreachable_cause(&tls, "https://127.0.0.1:5000/v2/", "127.0.0.1:5000").unwrap();
        assert!(
            text.starts_with("TLS handshake with https://127.0.0.1:5000/v2/ failed"),
            "{text}"
        );
        assert!(text.contains("http://127.0.0.1:5000") && text.contains("--insecure-registry 127.0.0.1"));
        let answered = Wrapper("manifest unknown", Box::new(io::Error::other("404")));
        assert_eq!(unreachable_cause(&answered, url, "h"), None);
    }

    #[test]
    fn combine_prefers_cancel_then_checks() {
        let u = || unavailable("i", "u");
        assert!(matches!(
            combine(Err(u()), Err(FetchError::Cancelled("i".into()))),
            Err(FetchError::Cancelled(_))
        ));
        let io = || FetchError::Io {
            context: "c".into(),
            source: io::Error::other("x"),
        };
        assert!(matches!(
            combine(Err(u()), Err(io())),
            Err(FetchError::Unavailable { .. })
        ));
        assert!(matches!(combine(Ok(()), Err(io())), Err(FetchError::Io { .. })));
    }
}
