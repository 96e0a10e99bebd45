//! `strata export`: an item as an image (an OCI layout, a `docker save` archive, a push to a
//! registry) or as a plain rootfs tar.
//!
//! One layer per step: the base item (a fetched image) becomes the first layer, whole; every
//! later step becomes the difference between its rootfs and its parent's ([`diff`]), with
//! OCI whiteouts for deletions. `--squash` makes one layer of the whole rootfs. The image
//! config ([`config`]) carries the environment, working directory and user the item's last
//! step ran with (recorded by the builder in `context.json`), and one history entry per step.
//!
//! Reproducible: entries in name order, numeric owners without names, every mtime set to
//! `SOURCE_DATE_EPOCH` (or 0) unless `--keep-mtimes`, gzip without a name or time, a fixed
//! creation time: exporting the same item twice gives the same digests.
//!
//! The rootfs is untrusted: it is read through [`tree`], which never follows a symlink.
//! Outputs appear whole or not at all (a temporary file or directory renamed into place; an
//! existing OCI layout gets its blobs first and its new `index.json` last).

pub mod config;
pub mod dest;
pub mod diff;
pub mod docker_archive;
pub mod layer;
pub mod oci;
pub mod push;
pub mod rootfs_tar;
pub mod tree;

use std::io::Write;
use std::path::Path;

use strata_sandbox::Cancel;
use strata_stores::{RootfsView, StepId};

use crate::catalog::export_view::{ChainItem, StepContext};
use crate::catalog::{Catalog, CatalogError, Lease, IMAGE_CONFIG};
use crate::fetch::ImageConfig;
use config::{RunSettings, Step};
pub use dest::Dest;
use diff::Sink;
use layer::Times;
use tree::Tree;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The destination is not one strata can write (syntax, or an existing directory that
    /// is not an OCI layout).
    #[error("bad destination {dest:?}: {reason}")]
    BadDest { dest: String, reason: String },
    /// No such item (or one of its ancestors is gone).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Catalog(#[from] CatalogError),
    #[error("{context}: {source}")]
    Read {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Write {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something in the rootfs a layer cannot carry.
    #[error("cannot export: {0}")]
    Unrepresentable(String),
    /// The item's chain does not make an image (its first item is not a base image).
    #[error("{0}")]
    NotAnImage(String),
    #[error("pushing to {reference}: {reason}")]
    Registry { reference: String, reason: String },
}

impl ExportError {
    /// The user's mistake (bad destination, unknown id) rather than the environment's.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ExportError::BadDest { .. } | ExportError::NotFound(_) | ExportError::Catalog(CatalogError::NotFound(_))
        )
    }

    pub(crate) fn write(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExportError {
        let context = context.into();
        move |source| ExportError::Write { context, source }
    }
}

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// One layer: the whole rootfs.
    pub squash: bool,
    /// Keep files' mtimes instead of setting them all to `epoch`.
    pub keep_mtimes: bool,
    /// The time of every entry and of the image's creation (`SOURCE_DATE_EPOCH`, else 0).
    pub epoch: u64,
    /// Hosts that may be pushed to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Docker's `config.json` for push credentials (default: `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json`).
    pub docker_config: Option<std::path::PathBuf>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The manifest's digest (`oci:`, `docker://`).
    pub manifest_digest: Option<String>,
    /// The config's digest: the image id (`oci:`, `docker-archive:`, `docker://`).
    pub image_id: Option<String>,
    pub layers: usize,
}

/// One layer to write: a whole rootfs, or the change from a parent's to a child's.
pub enum LayerSource<'a> {
    Whole(&'a Tree),
    Diff { lower: &'a Tree, upper: &'a Tree },
}

impl LayerSource<'_> {
    pub fn fill(&self, sink: &mut dyn Sink, keep_mtimes: bool) -> Result<(), ExportError> {
        match self {
            LayerSource::Whole(tree) => diff::whole(tree, sink),
            LayerSource::Diff { lower, upper } => diff::diff(lower, upper, keep_mtimes, sink),
        }
    }
}

/// A rootfs view and the tree read from it; the tree's descriptor is closed before the view
/// goes (fields drop in order), so a store can unmount the view.
struct OpenView<'c> {
    tree: Tree,
    _view: Box<dyn RootfsView + 'c>,
}

/// An item ready to export: its chain (leased, so prune leaves it alone), its image settings
/// and history.
pub struct Plan<'c> {
    catalog: &'c Catalog,
    chain: Vec<ChainItem>,
    _leases: Vec<Lease>,
    pub squash: bool,
    pub times: Times,
    pub settings: RunSettings,
}

fn read_image_config(item: &ChainItem) -> Result<ImageConfig, ExportError> {
    let path = item.dir.join(IMAGE_CONFIG);
    let bytes = std::fs::read(&path).map_err(|source| ExportError::Read {
        context: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ExportError::Read {
        context: format!("parsing {}", path.display()),
        source: std::io::Error::other(e),
    })
}

impl<'c> Plan<'c> {
    /// Looks `id` up and leases its chain.
    pub fn open(catalog: &'c Catalog, id: &StepId, squash: bool, times: Times) -> Result<Plan<'c>, ExportError> {
        let chain = catalog.export_chain(id).map_err(|e| match e {
            CatalogError::NotFound(text) => ExportError::NotFound(text),
            e => ExportError::Catalog(e),
        })?;
        let cancel = Cancel::new();
        let mut leases = Vec::with_capacity(chain.len());
        for item in &chain {
            leases.push(catalog.lease(&item.row.id, &cancel)?);
        }
        let Some(base) = chain.first() else {
            return Err(ExportError::NotFound(format!("no item {id} in the store")));
        };
        if !base.dir.join(IMAGE_CONFIG).exists() {
            return Err(ExportError::NotAnImage(format!(
                "{} (the first item of {id}'s chain) is not a base image: it has no {IMAGE_CONFIG}",
                base.row.id
            )));
        }
        let image = read_image_config(base)?;
        let context = chain.iter().rev().find_map(|item| StepContext::read(&item.dir));
        if context.is_none() && chain.len() > 1 {
            tracing::warn!(
                "{id} records no step context (built by an older strata): the image gets the base image's env, workdir and user"
            );
        }
        let settings = RunSettings::new(&image, context.as_ref());
        Ok(Plan {
            catalog,
            chain,
            _leases: leases,
            squash,
            times,
            settings,
        })
    }

    /// The history: one entry per item, with its op.
    pub fn steps(&self) -> Vec<Step> {
        let last = self.chain.len() - 1;
        self.chain
            .iter()
            .enumerate()
            .map(|(i, item)| Step {
                op: item.row.op.clone(),
                has_layer: !self.squash || i == last,
            })
            .collect()
    }

    pub fn layer_count(&self) -> usize {
        if self.squash {
            1
        } else {
            self.chain.len()
        }
    }

    fn view(&self, item: &ChainItem) -> Result<OpenView<'c>, ExportError> {
        let view = self.catalog.rootfs(&item.row.id)?;
        let tree = Tree::open(view.path()).map_err(|source| ExportError::Read {
            context: format!("opening {}", view.path().display()),
            source,
        })?;
        Ok(OpenView { tree, _view: view })
    }

    /// Calls `each` with every layer's source, first layer first.
    pub fn layers(&self, mut each: impl FnMut(LayerSource<'_>) -> Result<(), ExportError>) -> Result<(), ExportError> {
        let last = &self.chain[self.chain.len() - 1];
        if self.squash {
            let open = self.view(last)?;
            return each(LayerSource::Whole(&open.tree));
        }
        let mut previous: Option<OpenView<'c>> = None;
        for item in &self.chain {
            let open = self.view(item)?;
            match &previous {
                None => each(LayerSource::Whole(&open.tree))?,
                Some(lower) => each(LayerSource::Diff {
                    lower: &lower.tree,
                    upper: &open.tree,
                })?,
            }
            previous = Some(open);
        }
        Ok(())
    }

    /// The whole rootfs of the item, as one source.
    pub fn whole(&self, each: impl FnOnce(LayerSource<'_>) -> Result<(), ExportError>) -> Result<(), ExportError> {
        let open = self.view(&self.chain[self.chain.len() - 1])?;
        each(LayerSource::Whole(&open.tree))
    }

    /// The image config for these layers' diff ids.
    pub fn config(&self, diff_ids: &[String]) -> Vec<u8> {
        config::config_json(&self.settings, &self.steps(), diff_ids, self.times)
    }
}

/// Exports `id` to `dest`; a rootfs tar to stdout goes to `stdout`.
pub fn export(
    catalog: &Catalog,
    id: &StepId,
    dest: &Dest,
    options: &ExportOptions,
    stdout: &mut dyn Write,
) -> Result<Exported, ExportError> {
    let times = Times {
        epoch: options.epoch,
        keep: options.keep_mtimes,
    };
    let squash = options.squash || matches!(dest, Dest::Tar { .. });
    let plan = Plan::open(catalog, id, squash, times)?;
    match dest {
        Dest::Oci { dir, tag } => oci::write(&plan, dir, tag),
        Dest::DockerArchive { file, name } => docker_archive::write(&plan, file, name.as_deref()),
        Dest::Tar { file } => rootfs_tar::write(&plan, file.as_deref(), stdout),
        Dest::Registry(reference) => push::push(&plan, reference, options),
    }
}

/// The directory a new file or directory at `path` goes in (its parent, `.` for a bare
/// name); it must exist.
pub(crate) fn parent_dir(path: &Path) -> Result<&Path, ExportError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(ExportError::Write {
            context: format!("writing {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("directory {} does not exist", parent.display()),
            ),
        });
    }
    Ok(parent)
}
