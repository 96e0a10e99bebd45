//! The worker's life: connect, register, pop jobs while fewer than `capacity` run, keep the
//! disk healthy, and start over (at most once per reconnect interval) whenever the
//! connection or a call fails. A dropped connection cancels the jobs it delivered, so no job
//! runs twice: the scheduler requeues them. SIGTERM/SIGINT cancel running jobs (or, with
//! `drain`, let them finish), report their results, then disconnect.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use strata_sandbox::Cancel;
use tokio::sync::{watch, Semaphore};
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};

use super::bootstrap::NamedBootstrap;
use super::cap_uri::CapUri;
use super::connect::{connect, ConnectError};
use super::job::{JobServer, JobState, Outcome};
use super::ocluster_capnp::{queue, registration, worker};
use super::run::{JobDescr, Runner};
use super::worker_server::WorkerServer;
use crate::catalog::prune::{KeepFree, PruneOptions};

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub uri: CapUri,
    pub capacity: u32,
    /// Prune when the store's free space falls under this percentage.
    pub prune_threshold: Option<f64>,
    /// A node exporter to proxy for `metrics host`.
    pub node_exporter: Option<String>,
    /// At most one connection attempt per interval (OCluster: 10 s).
    pub reconnect_interval: Duration,
    /// On SIGTERM let running jobs finish instead of cancelling them.
    pub drain: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0}")]
    Rpc(#[from] capnp::Error),
    #[error("the connection to the scheduler closed")]
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM / SIGINT.
    Signal,
    /// The scheduler asked for `selfUpdate`: drain and exit for a supervisor to restart us.
    SelfUpdate,
}

/// How the session ended.
enum End {
    Stop(Stop),
}

/// Runs the worker until a signal (or `selfUpdate`); returns why it stopped.
pub fn run(config: Config, runner: Arc<Runner>) -> std::io::Result<Stop> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, main_loop(config, runner))
}

async fn main_loop(config: Config, runner: Arc<Runner>) -> std::io::Result<Stop> {
    let (stop_tx, stop_rx) = watch::channel(None::<Stop>);
    let stop_tx = Rc::new(stop_tx);
    spawn_signal_watch(stop_tx.clone())?;
    let slots = Arc::new(Semaphore::new(config.capacity as usize));
    let stop = loop {
        let started = Instant::now();
        let session_cancel = Cancel::new();
        let result = session(&config, &runner, &slots, &session_cancel, &stop_tx, &stop_rx).await;
        match result {
            Ok(End::Stop(stop)) => break stop,
            Err(e) => tracing::warn!("scheduler session ended: {e}; reconnecting"),
        }
        // The scheduler requeues what it gave us on that connection.
        session_cancel.cancel();
        let wait = config.reconnect_interval.saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            stop = stopped(&stop_rx) => break stop,
        }
    };
    // Wait for the builds of a lost session to stop before exiting.
    let _all = slots.acquire_many(config.capacity).await;
    Ok(stop)
}

fn spawn_signal_watch(stop: Rc<watch::Sender<Option<Stop>>>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::task::spawn_local(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: signal received");
        stop.send_replace(Some(Stop::Signal));
    });
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Prunes (off this thread, builds paused) when free space is under the threshold,
/// inactive for the scheduler meanwhile.
async fn keep_disk_healthy(config: &Config, runner: &Arc<Runner>, queue: &queue::Client) -> Result<(), SessionError> {
    let Some(threshold) = config.prune_threshold else {
        return Ok(());
    };
    let catalog = runner.builder.catalog().clone();
    let usage = {
        let catalog = catalog.clone();
        tokio::task::spawn_blocking(move || catalog.usage()).await
    };
    let free = match usage {
        Ok(Ok(usage)) => usage.free_percent,
        Ok(Err(e)) => {
            tracing::warn!("reading store usage: {e}");
            return Ok(());
        }
        Err(e) => {
            tracing::warn!("reading store usage: {e}");
            return Ok(());
        }
    };
    if free >= threshold {
        return Ok(());
    }
    tracing::info!("{free:.1}% free, under {threshold}%: pruning");
    set_active(queue, false).await?;
    let pruner = runner.clone();
    let report = tokio::task::spawn_blocking(move || {
        let _gate = pruner.prune_gate.write().unwrap_or_else(|p| p.into_inner());
        let options = PruneOptions {
            before_ms: now_ms(),
            keep_free: Some(KeepFree::Percent(threshold)),
            ..PruneOptions::default()
        };
        pruner.builder.catalog().prune(&options, &mut |_| {})
    })
    .await;
    match report {
        Ok(Ok(report)) => {
            tracing::info!("pruned {} items, {} bytes", report.removed.len(), report.bytes_freed);
            runner.metrics.pruned(report.removed.len() as u64, report.bytes_freed);
        }
        Ok(Err(e)) => tracing::warn!("prune failed: {e}"),
        Err(e) => tracing::warn!("prune failed: {e}"),
    }
    set_active(queue, true).await
}

async fn set_active(queue: &queue::Client, active: bool) -> Result<(), SessionError> {
    let mut req = queue.set_active_request();
    req.get().set_active(active);
    req.send().promise.await?;
    Ok(())
}

async fn session(
    config: &Config,
    runner: &Arc<Runner>,
    slots: &Arc<Semaphore>,
    session_cancel: &Cancel,
    stop_tx: &Rc<watch::Sender<Option<Stop>>>,
    stop_rx: &watch::Receiver<Option<Stop>>,
) -> Result<End, SessionError> {
    let stream = tokio::select! {
        s = connect(&config.uri) => s?,
        stop = stopped(stop_rx) => return Ok(End::Stop(stop)),
    };
    let (read, write) = tokio::io::split(stream);
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(64 * 1024 * 1024));
    let network = twoparty::VatNetwork::new(read.compat(), write.compat_write(), Side::Client, options);
    let mut rpc = RpcSystem::new(Box::new(NamedBootstrap::new(network, &config.uri.service_id)), None);
    let registration: registration::Client = rpc.bootstrap(Side::Server);
    let disconnector = rpc.get_disconnector();
    let mut rpc_task = tokio::task::spawn_local(rpc);

    let worker: worker::Client = capnp_rpc::new_client(WorkerServer::new(
        runner.clone(),
        config.node_exporter.clone(),
        stop_tx.clone(),
    ));
    let mut req = registration.register_request();
    req.get().set_name(&runner.name[..]);
    req.get().set_worker(worker);
    req.get()
        .set_capacity(i32::try_from(config.capacity).unwrap_or(i32::MAX));
    let queue = tokio::select! {
        r = req.send().promise => r?.get()?.get_queue()?,
        _ = &mut rpc_task => return Err(SessionError::Disconnected),
        stop = stopped(stop_rx) => return Ok(End::Stop(stop)),
    };
    tracing::info!(
        "registered with the scheduler at {} as {:?}",
        config.uri.address,
        runner.name
    );

    let stop = loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Err(SessionError::Disconnected),
            },
            _ = &mut rpc_task => return Err(SessionError::Disconnected),
            stop = stopped(stop_rx) => break stop,
        };
        keep_disk_healthy(config, runner, &queue).await?;
        let state = JobState::new(session_cancel.child());
        let mut req = queue.pop_request();
        req.get().set_job(capnp_rpc::new_client(JobServer::new(state.clone())));
        let response = tokio::select! {
            r = req.send().promise => r?,
            _ = &mut rpc_task => return Err(SessionError::Disconnected),
            stop = stopped(stop_rx) => break stop,
        };
        let descr = match response.get().and_then(|r| r.get_descr()).and_then(JobDescr::read) {
            Ok(descr) => descr,
            Err(e) => {
                state
                    .log
                    .write_str(&format!("Uncaught exception: reading the job: {e}\n"));
                state.finish(Outcome::Internal);
                continue;
            }
        };
        let job_runner = runner.clone();
        let job_state = state.clone();
        let spawned = std::thread::Builder::new()
            .name("job".into())
            .spawn(move || job_runner.run(&descr, &job_state));
        if let Err(e) = spawned {
            state
                .log
                .write_str(&format!("Uncaught exception: starting the job: {e}\n"));
            state.finish(Outcome::Internal);
        }
        // The slot frees once the job ended and the scheduler has its result.
        tokio::task::spawn_local(async move {
            state.wait().await;
            state.wait_reported().await;
            drop(permit);
        });
    };
    // Stopping: cancel (or, draining, stop taking work and let them finish), wait for the
    // running jobs so their results reach the scheduler, then hang up.
    if config.drain || stop == Stop::SelfUpdate {
        let _ = set_active(&queue, false).await;
    } else {
        session_cancel.cancel();
    }
    tokio::select! {
        _ = slots.acquire_many(config.capacity) => {}
        _ = &mut rpc_task => {}
    }
    // Let the last results go out before hanging up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(queue);
    let _ = tokio::time::timeout(Duration::from_secs(5), disconnector).await;
    Ok(End::Stop(stop))
}

/// Resolves when a stop is asked for.
async fn stopped(stop_rx: &watch::Receiver<Option<Stop>>) -> Stop {
    let mut rx = stop_rx.clone();
    let stop = rx
        .wait_for(Option::is_some)
        .await
        .map(|stop| stop.unwrap_or(Stop::Signal));
    match stop {
        Ok(stop) => stop,
        // The sender lives as long as the worker: never in practice.
        Err(_) => std::future::pending().await,
    }
}
