//! `docker://HOST/NAME[:TAG]`: a push to a registry with `oci-client`. The layers are
//! written (gzip) to temporary files first, then each blob the registry lacks is streamed
//! up, then the config, then the manifest (the same bytes an `oci:` export writes, so the
//! same digest). Plain HTTP only for loopback hosts and `--insecure-registry` ones;
//! credentials from Docker's `config.json` (see [`crate::fetch::auth`]).

use std::fs::File;
use std::io::{BufWriter, Read};
use std::time::Duration;

use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::config::{self, Descriptor};
use super::oci::gzip_layer;
use super::{ExportError, ExportOptions, Exported, Plan};
use crate::fetch::auth;
use crate::fetch::mirror::http_allowed;

const CHUNK: usize = 4 << 20;

fn failed(reference: &Reference, reason: impl std::fmt::Display) -> ExportError {
    ExportError::Registry {
        reference: reference.whole(),
        reason: reason.to_string(),
    }
}

/// A file as a stream of chunks, for a streaming upload.
fn file_stream(file: File) -> impl futures_util::Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            match file.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some((Err(OciDistributionError::IoError(e)), None)),
            }
        }
        if n == 0 {
            return None;
        }
        buf.truncate(n);
        Some((Ok(Bytes::from(buf)), Some(file)))
    })
}

fn registry_auth(options: &ExportOptions, registry: &str) -> Result<RegistryAuth, String> {
    let Some(path) = options.docker_config.clone().or_else(auth::default_docker_config) else {
        return Ok(RegistryAuth::Anonymous);
    };
    Ok(match auth::credentials_for(&path, registry)? {
        Some((user, password)) => RegistryAuth::Basic(user, password),
        None => RegistryAuth::Anonymous,
    })
}

/// Pushes the plan's image to `reference`.
pub fn push(plan: &Plan<'_>, reference: &Reference, options: &ExportOptions) -> Result<Exported, ExportError> {
    let host = reference.resolve_registry().to_owned();
    let http = http_allowed(&host, &options.insecure_registries);
    let auth = registry_auth(options, reference.registry()).map_err(|e| failed(reference, e))?;

    let dir = tempfile::Builder::new()
        .prefix("strata-export-")
        .tempdir()
        .map_err(ExportError::write("creating a temporary directory"))?;
    let mut layers: Vec<(Descriptor, std::path::PathBuf)> = Vec::with_capacity(plan.layer_count());
    let mut diff_ids = Vec::with_capacity(plan.layer_count());
    plan.layers(|source| {
        let path = dir.path().join(format!("layer-{}", layers.len()));
        let file = File::create(&path).map_err(ExportError::write(format!("creating {}", path.display())))?;
        let (diff_id, out, digest, size) = gzip_layer(&source, plan.times, BufWriter::with_capacity(1 << 20, file))?;
        out.into_inner()
            .map_err(|e| ExportError::write(format!("writing {}", path.display()))(e.into_error()))?;
        diff_ids.push(diff_id);
        let descriptor = Descriptor {
            media_type: config::LAYER_GZIP_MEDIA_TYPE.to_owned(),
            digest,
            size,
        };
        layers.push((descriptor, path));
        Ok(())
    })?;
    let config_bytes = plan.config(&diff_ids);
    let config_desc = Descriptor {
        media_type: config::CONFIG_MEDIA_TYPE.to_owned(),
        digest: crate::fetch::digest::sha256_digest(&config_bytes),
        size: config_bytes.len() as u64,
    };
    let descriptors: Vec<Descriptor> = layers.iter().map(|(d, _)| d.clone()).collect();
    let manifest = config::manifest_json(&config_desc, &descriptors);
    let manifest_digest = crate::fetch::digest::sha256_digest(&manifest);

    let client_config = ClientConfig {
        protocol: if http {
            ClientProtocol::HttpsExcept(vec![host.clone()])
        } else {
            ClientProtocol::Https
        },
        use_monolithic_push: true,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(300)),
        ..ClientConfig::default()
    };
    let client = Client::try_from(client_config)
        .map_err(|e| failed(reference, format!("cannot set up the HTTP client: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExportError::write("starting the registry client's runtime"))?;
    runtime.block_on(async {
        client
            .auth(reference, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| failed(reference, format!("authenticating: {e}")))?;
        for (descriptor, path) in &layers {
            let exists = client
                .blob_exists(reference, &descriptor.digest)
                .await
                .map_err(|e| failed(reference, e))?;
            if exists {
                continue;
            }
            let file = File::open(path).map_err(ExportError::write(format!("reading {}", path.display())))?;
            client
                .push_blob_stream(reference, file_stream(file), &descriptor.digest, Some(descriptor.size))
                .await
                .map_err(|e| failed(reference, format!("uploading layer {}: {e}", descriptor.digest)))?;
        }
        client
            .push_blob(reference, config_bytes.clone(), &config_desc.digest)
            .await
            .map_err(|e| failed(reference, format!("uploading the config: {e}")))?;
        let content_type = config::MANIFEST_MEDIA_TYPE
            .parse()
            .map_err(|e| failed(reference, format!("{e}")))?;
        client
            .push_manifest_raw(reference, manifest.clone(), content_type)
            .await
            .map_err(|e| failed(reference, format!("uploading the manifest: {e}")))?;
        Ok::<(), ExportError>(())
    })?;
    Ok(Exported {
        manifest_digest: Some(manifest_digest),
        image_id: Some(config_desc.digest),
        layers: layers.len(),
    })
}
