//! The `Worker` capability given to the scheduler at registration: metrics (the worker's own
//! in Prometheus text, or a proxied node exporter), additional metrics (none configured:
//! `notReported`) and `selfUpdate` (drain, then exit for a supervisor to restart; it never
//! returns success).

use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::watch;

use super::metrics::{self, StoreGauges};
use super::ocluster_capnp::worker;
use super::run::Runner;
use super::session::Stop;

pub struct WorkerServer {
    runner: Arc<Runner>,
    node_exporter: Option<String>,
    stop: Rc<watch::Sender<Option<Stop>>>,
}

impl WorkerServer {
    pub fn new(runner: Arc<Runner>, node_exporter: Option<String>, stop: Rc<watch::Sender<Option<Stop>>>) -> Self {
        WorkerServer {
            runner,
            node_exporter,
            stop,
        }
    }

    async fn store_gauges(&self) -> Option<StoreGauges> {
        let catalog = self.runner.builder.catalog().clone();
        let usage = tokio::task::spawn_blocking(move || catalog.usage()).await.ok()?.ok()?;
        Some(StoreGauges {
            items: usage.items as u64,
            item_bytes: usage.item_bytes,
            total_bytes: usage.total_bytes,
            free_bytes: usage.free_bytes,
        })
    }
}

impl worker::Server for WorkerServer {
    async fn metrics(
        self: Rc<Self>,
        params: worker::MetricsParams,
        mut results: worker::MetricsResults,
    ) -> Result<(), capnp::Error> {
        let (content_type, data) = match params.get()?.get_source()? {
            worker::MetricsSource::Agent => {
                let store = self.store_gauges().await;
                (metrics::CONTENT_TYPE.to_owned(), self.runner.metrics.render(store))
            }
            worker::MetricsSource::Host => {
                let url = self
                    .node_exporter
                    .as_deref()
                    .ok_or_else(|| capnp::Error::failed(metrics::HostMetricsError::NotConfigured.to_string()))?;
                metrics::fetch_http(url)
                    .await
                    .map_err(|e| capnp::Error::failed(e.to_string()))?
            }
        };
        let mut out = results.get();
        out.set_content_type(&content_type[..]);
        out.set_data(&data[..]);
        Ok(())
    }

    async fn additional_metric(
        self: Rc<Self>,
        _: worker::AdditionalMetricParams,
        mut results: worker::AdditionalMetricResults,
    ) -> Result<(), capnp::Error> {
        results.get().init_metric().set_not_reported(());
        Ok(())
    }

    async fn self_update(
        self: Rc<Self>,
        _: worker::SelfUpdateParams,
        _: worker::SelfUpdateResults,
    ) -> Result<(), capnp::Error> {
        tracing::info!("selfUpdate: draining, then exiting for the supervisor to restart strata");
        self.stop.send_replace(Some(Stop::SelfUpdate));
        // The answer is the disconnection when the process exits.
        std::future::pending::<()>().await;
        Err(capnp::Error::disconnected("worker restarting".into()))
    }
}
