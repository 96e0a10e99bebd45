//! Builds of the same step in one process run once (OBuilder's `Db_store` semantics).
//!
//! The first client of an id starts a worker thread; later clients attach: they replay the
//! step's log from the start and then follow it live, and get the same result. A step is
//! cancelled only when every client attached to it has cancelled; a new client of a step
//! that is still cancelling waits for it to finish, then starts afresh.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use strata_sandbox::Cancel;
use strata_stores::StepId;

use super::error::BuildError;
use super::log::StepLog;
use super::progress::StepResult;

/// How a shared step ended, as every client sees it.
pub type Shared = Result<StepResult, BuildError>;

#[derive(Default)]
struct FlightState {
    users: usize,
    log: Option<Arc<StepLog>>,
    result: Option<Shared>,
}

pub struct Flight {
    state: Mutex<FlightState>,
    changed: Condvar,
    /// Fires when the last client cancels: the worker stops the step.
    pub cancel: Cancel,
}

impl Flight {
    fn lock(&self) -> MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker publishes the step's live log.
    pub fn set_log(&self, log: Arc<StepLog>) {
        self.lock().log = Some(log);
        self.changed.notify_all();
    }

    fn finish(&self, result: Shared) {
        self.lock().result = Some(result);
        self.changed.notify_all();
    }

    fn result_copy(result: &Shared) -> Shared {
        match result {
            Ok(r) => Ok(*r),
            Err(e) => Err(e.share()),
        }
    }

    /// Waits until the log is published or the step ended (or `cancel` fires).
    fn wait_log_or_result(&self, cancel: &Cancel) -> Option<(Option<Arc<StepLog>>, Option<Shared>)> {
        let mut state = self.lock();
        loop {
            if state.log.is_some() || state.result.is_some() {
                let result = state.result.as_ref().map(Self::result_copy);
                return Some((state.log.clone(), result));
            }
            if cancel.is_cancelled() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wait_result(&self, cancel: Option<&Cancel>) -> Option<Shared> {
        let mut state = self.lock();
        loop {
            if let Some(r) = &state.result {
                return Some(Self::result_copy(r));
            }
            if cancel.is_some_and(|c| c.is_cancelled()) {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A client leaves; the step is cancelled when nobody is left. Returns the users left.
    fn leave(&self) -> usize {
        let mut state = self.lock();
        state.users = state.users.saturating_sub(1);
        if state.users == 0 && state.result.is_none() {
            self.cancel.cancel();
        }
        state.users
    }
}

/// One client's place in a flight; leaving twice is impossible, leaving never forgotten.
struct Membership<'a> {
    flight: &'a Flight,
    left: bool,
}

impl Membership<'_> {
    /// Leaves the flight; if nobody is left, the step was cancelled: waits until it ended.
    /// Returns the number of clients left.
    fn leave(&mut self) -> usize {
        if self.left {
            return 0;
        }
        self.left = true;
        let left = self.flight.leave();
        if left == 0 {
            self.flight.wait_result(None);
        }
        left
    }
}

impl Drop for Membership<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// What a client sees while attached to a step.
pub trait Watcher {
    fn note(&self, text: &str);
    /// Live (or replayed) output of the step.
    fn output(&self, bytes: &[u8]);
}

#[derive(Default)]
pub struct InFlight {
    map: Mutex<HashMap<StepId, Arc<Flight>>>,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<StepId, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gets step `id`, starting `work` on a worker thread unless a live build of it exists.
    /// `work` receives the flight (to publish its log and watch its cancel token).
    pub fn get(
        self: &Arc<Self>,
        id: &StepId,
        client_cancel: &Cancel,
        watcher: &dyn Watcher,
        work: impl FnOnce(&Flight) -> Shared + Send + 'static,
    ) -> Shared {
        let mut work = Some(work);
        loop {
            let mut map = self.lock();
            if let Some(flight) = map.get(id).cloned() {
                let mut state = flight.lock();
                if state.users == 0 && state.result.is_none() {
                    drop(state);
                    drop(map);
                    watcher.note("Waiting for previous build to finish cancelling");
                    flight.wait_result(None);
                    // The worker removes the entry right after finishing.
                    while self.lock().get(id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    continue;
                }
                state.users += 1;
                drop(state);
                drop(map);
                return Self::attach(&flight, client_cancel, watcher);
            }
            let flight = Arc::new(Flight {
                state: Mutex::new(FlightState {
                    users: 1,
                    ..FlightState::default()
                }),
                changed: Condvar::new(),
                cancel: Cancel::new(),
            });
            map.insert(id.clone(), flight.clone());
            drop(map);
            let Some(work) = work.take() else {
                return Err(BuildError::Cancelled);
            };
            let this = self.clone();
            let worker_flight = flight.clone();
            let worker_id = id.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("step-{}", &id.as_str()[..12]))
                .spawn(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&worker_flight)))
                        .unwrap_or_else(|_| {
                            Err(BuildError::Shared {
                                kind: super::error::ErrorKind::Environment,
                                message: "internal error: a step worker panicked".to_owned(),
                            })
                        });
                    worker_flight.finish(result);
                    this.lock().remove(&worker_id);
                });
            if let Err(e) = spawned {
                self.lock().remove(id);
                return Err(BuildError::io("starting a step thread", e));
            }
            return Self::attach(&flight, client_cancel, watcher);
        }
    }

    /// Follows the step for one client until it ends or the client cancels. A client that
    /// leaves last (and so cancels the step) returns only once the step has stopped: an
    /// interrupted build must not exit while its step still runs. The same holds when the
    /// watcher panics (a broken output stream): the membership is given up while unwinding.
    fn attach(flight: &Flight, cancel: &Cancel, watcher: &dyn Watcher) -> Shared {
        let mut member = Membership { flight, left: false };
        let cancelled = |member: &mut Membership<'_>| {
            let left = member.leave();
            watcher.note(&format!("User cancelled job (users now = {left})"));
            Err(BuildError::Cancelled)
        };
        let Some((log, _)) = flight.wait_log_or_result(cancel) else {
            return cancelled(&mut member);
        };
        if let Some(log) = log {
            if !log.tail(cancel, &mut |bytes| watcher.output(bytes)) {
                return cancelled(&mut member);
            }
        }
        match flight.wait_result(Some(cancel)) {
            Some(result) => {
                member.leave();
                result
            }
            None => cancelled(&mut member),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Collect(Mutex<Vec<u8>>, Mutex<Vec<String>>);
    impl Collect {
        fn new() -> Collect {
            Collect(Mutex::new(Vec::new()), Mutex::new(Vec::new()))
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }
    impl Watcher for Collect {
        fn note(&self, text: &str) {
            self.1.lock().unwrap().push(text.to_owned());
        }
        fn output(&self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    fn id() -> StepId {
        StepId::from_digest(&[1; 32])
    }

    /// A step that writes "A", waits for `gate`, then writes "B" (or stops when cancelled).
    fn gated_step(
        dir: &std::path::Path,
        gate: Arc<Cancel>,
        runs: Arc<AtomicUsize>,
        outcome: Shared,
    ) -> impl FnOnce(&Flight) -> Shared + Send + 'static {
        let path = dir.join(format!("log{}", runs.load(Ordering::SeqCst)));
        move |flight: &Flight| {
            runs.fetch_add(1, Ordering::SeqCst);
            let log = Arc::new(StepLog::create(&path).unwrap());
            flight.set_log(log.clone());
            log.append(b"A");
            loop {
                if gate.wait_timeout(Duration::from_millis(10)) {
                    break;
                }
                if flight.cancel.is_cancelled() {
                    log.finish();
                    return Err(BuildError::Cancelled);
                }
            }
            log.append(b"B");
            log.finish();
            outcome
        }
    }

    #[test]
    fn concurrent_clients_share_one_run_and_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let inflight = Arc::new(InFlight::default());
        let gate = Arc::new(Cancel::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let first = {
            let (inflight, gate, runs, d) = (inflight.clone(), gate.clone(), runs.clone(), dir.path().to_owned());
            std::thread::spawn(move || {
                let w = Collect::new();
                let r = inflight.get(
                    &id(),
                    &Cancel::new(),
                    &w,
                    gated_step(&d, gate, runs, Ok(StepResult::Saved)),
                );
                (r.is_ok(), w.text())
            })
        };
        while inflight.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(30));
        let second = {
            let (inflight, gate, runs, d) = (inflight.clone(), gate.clone(), runs.clone(), dir.path().to_owned());
            std::thread::spawn(move || {
                let w = Collect::new();
                let r = inflight.get(
                    &id(),
                    &Cancel::new(),
                    &w,
                    gated_step(&d, gate, runs, Ok(StepResult::Saved)),
                );
                (r.is_ok(), w.text())
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        gate.cancel();
        assert_eq!(first.join().unwrap(), (true, "AB".to_owned()));
        assert_eq!(
            second.join().unwrap(),
            (true, "AB".to_owned()),
            "late joiner replays from the start"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failure_reaches_every_client() {
        let dir = tempfile::tempdir().unwrap();
        let inflight = Arc::new(InFlight::default());
        let gate = Arc::new(Cancel::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let fail = || Err(BuildError::Usage("Mock build failure".into()));
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (inflight, gate, runs, d) = (inflight.clone(), gate.clone(), runs.clone(), dir.path().to_owned());
                std::thread::spawn(move || {
                    let w = Collect::new();
                    inflight
                        .get(&id(), &Cancel::new(), &w, gated_step(&d, gate, runs, fail()))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        gate.cancel();
        for c in clients {
            assert_eq!(c.join().unwrap().unwrap_err(), "Mock build failure");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn step_cancelled_only_when_all_clients_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let inflight = Arc::new(InFlight::default());
        let gate = Arc::new(Cancel::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (c1, c2) = (Cancel::new(), Cancel::new());
        let spawn = |c: Cancel, gate: &Arc<Cancel>| {
            let (inflight, gate, runs, d) = (inflight.clone(), gate.clone(), runs.clone(), dir.path().to_owned());
            std::thread::spawn(move || {
                let w = Collect::new();
                inflight
                    .get(&id(), &c, &w, gated_step(&d, gate, runs, Ok(StepResult::Saved)))
                    .map_err(|e| e.to_string())
            })
        };
        let t1 = spawn(c1.clone(), &gate);
        std::thread::sleep(Duration::from_millis(30));
        let t2 = spawn(c2.clone(), &gate);
        std::thread::sleep(Duration::from_millis(30));
        c1.cancel();
        assert_eq!(t1.join().unwrap().unwrap_err(), "cancelled");
        // Cancel 2: the other client still gets the step.
        gate.cancel();
        assert_eq!(t2.join().unwrap().unwrap(), StepResult::Saved);

        // Cancel 3: both cancel, the step itself is cancelled.
        let gate2 = Arc::new(Cancel::new());
        let (c3, c4) = (Cancel::new(), Cancel::new());
        let t3 = spawn(c3.clone(), &gate2);
        std::thread::sleep(Duration::from_millis(30));
        let t4 = spawn(c4.clone(), &gate2);
        std::thread::sleep(Duration::from_millis(30));
        c3.cancel();
        c4.cancel();
        assert!(t3.join().unwrap().is_err());
        assert!(t4.join().unwrap().is_err());
        while !inflight.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// Cancel 1: one client, cancelled during the step: it gets Cancelled and the step's
    /// own cancel token fires.
    #[test]
    fn cancel_single_client_cancels_step() {
        let inflight = Arc::new(InFlight::default());
        let fired = Arc::new(AtomicUsize::new(0));
        let client = Cancel::new();
        let (c, f) = (client.clone(), fired.clone());
        let t = std::thread::spawn({
            let inflight = inflight.clone();
            move || {
                let w = Collect::new();
                inflight
                    .get(&id(), &c, &w, move |flight: &Flight| {
                        while !flight.cancel.wait_timeout(Duration::from_millis(10)) {}
                        f.fetch_add(1, Ordering::SeqCst);
                        Err(BuildError::Cancelled)
                    })
                    .map_err(|e| e.to_string())
            }
        });
        std::thread::sleep(Duration::from_millis(30));
        client.cancel();
        assert_eq!(t.join().unwrap().unwrap_err(), "cancelled");
        while !inflight.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fired.load(Ordering::SeqCst), 1);
    }

    /// Issue 13 (interrupted builds leave running containers): a cancelled client returned at
    /// once while the step's worker was still stopping the container, so strata exited with
    /// the step running. Failed on the old code: `stopped` was still 0 when `get` returned.
    #[test]
    fn interrupted_client_returns_only_after_its_step_stopped() {
        let inflight = Arc::new(InFlight::default());
        let stopped = Arc::new(AtomicUsize::new(0));
        let client = Cancel::new();
        let t = std::thread::spawn({
            let (inflight, client, stopped) = (inflight.clone(), client.clone(), stopped.clone());
            move || {
                let w = Collect::new();
                let worker_stopped = stopped.clone();
                let r = inflight.get(&id(), &client, &w, move |flight: &Flight| {
                    while !flight.cancel.wait_timeout(Duration::from_millis(10)) {}
                    // Stopping the step takes a while (runtime kill, delete).
                    std::thread::sleep(Duration::from_millis(300));
                    worker_stopped.fetch_add(1, Ordering::SeqCst);
                    Err(BuildError::Cancelled)
                });
                (r.is_err(), stopped.load(Ordering::SeqCst))
            }
        });
        std::thread::sleep(Duration::from_millis(30));
        client.cancel();
        assert_eq!(t.join().unwrap(), (true, 1), "returned before the step had stopped");
    }

    /// A watcher that panics (a broken output stream) still leaves the flight, which cancels
    /// the step and waits for it, instead of leaving it running with no client.
    #[test]
    fn panicking_watcher_cancels_and_waits_for_the_step() {
        struct Panicky;
        impl Watcher for Panicky {
            fn note(&self, _: &str) {}
            fn output(&self, _: &[u8]) {
                panic!("output stream broken");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let inflight = Arc::new(InFlight::default());
        let stopped = Arc::new(AtomicUsize::new(0));
        let path = dir.path().join("log");
        let s = stopped.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inflight.get(&id(), &Cancel::new(), &Panicky, move |flight: &Flight| {
                let log = Arc::new(StepLog::create(&path).unwrap());
                flight.set_log(log.clone());
                log.append(b"output");
                while !flight.cancel.wait_timeout(Duration::from_millis(10)) {}
                std::thread::sleep(Duration::from_millis(100));
                log.finish();
                s.fetch_add(1, Ordering::SeqCst);
                Err(BuildError::Cancelled)
            })
        }));
        assert!(r.is_err(), "the panic goes on");
        assert_eq!(stopped.load(Ordering::SeqCst), 1, "the step was left running");
    }

    /// Cancel 4: after a failure, a new request for the same id starts a fresh build.
    #[test]
    fn new_request_after_failure_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let inflight = Arc::new(InFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(Cancel::new());
        open.cancel();
        let w = Collect::new();
        let failed = inflight.get(
            &id(),
            &Cancel::new(),
            &w,
            gated_step(
                dir.path(),
                open.clone(),
                runs.clone(),
                Err(BuildError::Usage("boom".into())),
            ),
        );
        assert!(failed.is_err());
        while !inflight.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let ok = inflight.get(
            &id(),
            &Cancel::new(),
            &w,
            gated_step(dir.path(), open, runs.clone(), Ok(StepResult::Saved)),
        );
        assert_eq!(ok.unwrap(), StepResult::Saved);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// Cancel 5: a request for a step that is still cancelling waits for it, then builds.
    #[test]
    fn request_during_cancelling_waits_then_builds() {
        let dir = tempfile::tempdir().unwrap();
        let inflight = Arc::new(InFlight::default());
        let release = Arc::new(Cancel::new());
        let first = Cancel::new();
        let t1 = {
            let (inflight, release, first) = (inflight.clone(), release.clone(), first.clone());
            std::thread::spawn(move || {
                let w = Collect::new();
                inflight
                    .get(&id(), &first, &w, move |flight: &Flight| {
                        // Cancelling takes a while (the store is slow to discard).
                        while !flight.cancel.wait_timeout(Duration::from_millis(10)) {}
                        while !release.wait_timeout(Duration::from_millis(10)) {}
                        Err(BuildError::Cancelled)
                    })
                    .is_err()
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        // The cancelled client waits for its step to stop (it cannot until `release`), and a
        // new request meanwhile finds the step cancelling.
        first.cancel();
        while inflight.lock().get(&id()).is_some_and(|f| f.lock().users > 0) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t2 = {
            let inflight = inflight.clone();
            let d = dir.path().to_owned();
            std::thread::spawn(move || {
                let w = Collect::new();
                let open = Arc::new(Cancel::new());
                open.cancel();
                let r = inflight.get(
                    &id(),
                    &Cancel::new(),
                    &w,
                    gated_step(&d, open, Arc::new(AtomicUsize::new(0)), Ok(StepResult::Saved)),
                );
                let notes = w.1.lock().unwrap().clone();
                (r.is_ok(), notes)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        release.cancel();
        assert!(t1.join().unwrap());
        let (ok, notes) = t2.join().unwrap();
        assert!(ok);
        assert!(
            notes
                .iter()
                .any(|n| n == "Waiting for previous build to finish cancelling"),
            "{notes:?}"
        );
    }
}
