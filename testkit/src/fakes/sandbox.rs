//! [`FakeSandbox`]: a [`Sandbox`] whose steps are scripted rules instead of containers.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use strata_sandbox::{Cancel, LogSink, Outcome, RunConfig, Sandbox, SandboxError};

/// How often a blocked step looks at its gate, its cancel token and its deadline.
const POLL: Duration = Duration::from_millis(2);

type Predicate = Arc<dyn Fn(&RunConfig) -> bool + Send + Sync>;
type Custom = Arc<dyn Fn(&RunConfig, &Path, &dyn LogSink) -> io::Result<()> + Send + Sync>;
type MakeError = Arc<dyn Fn() -> SandboxError + Send + Sync>;

#[derive(Clone)]
enum Matcher {
    Any,
    Exact(String),
    Contains(String),
    When(Predicate),
}

impl Matcher {
    fn matches(&self, config: &RunConfig) -> bool {
        let command = command_of(config);
        match self {
            Matcher::Any => true,
            Matcher::Exact(s) => command == s,
            Matcher::Contains(s) => command.contains(s.as_str()),
            Matcher::When(f) => f(config),
        }
    }
}

#[derive(Clone)]
enum Action {
    Log(Vec<u8>),
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Mkdir(String),
    Remove(String),
    Symlink(String, String),
    Sleep(Duration),
    Wait(Gate),
    Custom(Custom),
}

#[derive(Clone)]
enum End {
    Outcome(Outcome),
    Error(MakeError),
}

/// What a step whose command matches does: its actions in order, then its end (by default
/// `Exited(0)`). Built with the constructors and chained methods:
///
/// ```ignore
/// sandbox.add(Rule::command("make").log("building\n").write("/out/app", "binary").exit(0));
/// sandbox.add(Rule::contains("apt-get").exit(100).times(1));
/// sandbox.add(Rule::command("sleep 1000").block());
/// ```
///
/// Paths are container paths: absolute ones are taken from the rootfs, relative ones from
/// the config's `cwd`; under a mount's target they land in the mount's source (so a step
/// can write into a cache lease), and writing under a read-only mount fails the step. A
/// failing action (an I/O error, a `..` in a path) writes its error to the log and ends the
/// step with `Exited(1)`, like a shell command failing.
#[derive(Clone)]
pub struct Rule {
    matcher: Matcher,
    actions: Vec<Action>,
    end: End,
    times: Option<usize>,
}

impl Rule {
    fn new(matcher: Matcher) -> Rule {
        Rule {
            matcher,
            actions: Vec::new(),
            end: End::Outcome(Outcome::Exited(0)),
            times: None,
        }
    }

    /// Matches every step.
    pub fn any() -> Rule {
        Rule::new(Matcher::Any)
    }

    /// Matches a step whose command (the last argv element) is exactly `command`.
    pub fn command(command: impl Into<String>) -> Rule {
        Rule::new(Matcher::Exact(command.into()))
    }

    /// Matches a step whose command (the last argv element) contains `part`.
    pub fn contains(part: impl Into<String>) -> Rule {
        Rule::new(Matcher::Contains(part.into()))
    }

    /// Matches a step for which `predicate` says true.
    pub fn when(predicate: impl Fn(&RunConfig) -> bool + Send + Sync + 'static) -> Rule {
        Rule::new(Matcher::When(Arc::new(predicate)))
    }

    /// Writes `bytes` to the step's log (subject to the config's `log_limit`).
    pub fn log(mut self, bytes: impl AsRef<[u8]>) -> Rule {
        self.actions.push(Action::Log(bytes.as_ref().to_vec()));
        self
    }

    /// Creates or replaces the file `path` (creating missing directories).
    pub fn write(mut self, path: impl Into<String>, contents: impl AsRef<[u8]>) -> Rule {
        self.actions
            .push(Action::Write(path.into(), contents.as_ref().to_vec()));
        self
    }

    /// Appends to the file `path` (creating it and missing directories).
    pub fn append(mut self, path: impl Into<String>, contents: impl AsRef<[u8]>) -> Rule {
        self.actions
            .push(Action::Append(path.into(), contents.as_ref().to_vec()));
        self
    }

    /// Creates the directory `path` and its missing parents.
    pub fn mkdir(mut self, path: impl Into<String>) -> Rule {
        self.actions.push(Action::Mkdir(path.into()));
        self
    }

    /// Removes the file or tree `path` (a missing one is fine, as with `rm -rf`).
    pub fn remove(mut self, path: impl Into<String>) -> Rule {
        self.actions.push(Action::Remove(path.into()));
        self
    }

    /// Creates the symlink `path` pointing at `target` (taken as is).
    pub fn symlink(mut self, target: impl Into<String>, path: impl Into<String>) -> Rule {
        self.actions.push(Action::Symlink(target.into(), path.into()));
        self
    }

    /// Sleeps; cancellation and the config's timeout end the step early, as they would a
    /// real process.
    pub fn sleep(mut self, duration: Duration) -> Rule {
        self.actions.push(Action::Sleep(duration));
        self
    }

    /// Blocks until `gate` is opened (then goes on with the next action), the step is
    /// cancelled (it ends `Cancelled`) or its timeout passes (it ends `TimedOut`).
    pub fn wait(mut self, gate: &Gate) -> Rule {
        self.actions.push(Action::Wait(gate.clone()));
        self
    }

    /// Blocks until the step is cancelled or times out (a gate nobody opens).
    pub fn block(self) -> Rule {
        self.wait(&Gate::new())
    }

    /// Runs `f(config, rootfs, log)` as an action; an error fails the step like a failing
    /// command. For checks on the rootfs the step sees, or effects the others do not cover.
    pub fn run(
        mut self,
        f: impl Fn(&RunConfig, &Path, &dyn LogSink) -> io::Result<()> + Send + Sync + 'static,
    ) -> Rule {
        self.actions.push(Action::Custom(Arc::new(f)));
        self
    }

    /// Ends the step with exit status `code` (the default is 0).
    pub fn exit(self, code: i32) -> Rule {
        self.outcome(Outcome::Exited(code))
    }

    /// Ends the step with `outcome` (`Signaled(9)`, `TimedOut`, ...), after the actions.
    pub fn outcome(mut self, outcome: Outcome) -> Rule {
        self.end = End::Outcome(outcome);
        self
    }

    /// Makes [`Sandbox::run`] return `error()` after the actions (a sandbox failure, not a
    /// failing command).
    pub fn error(mut self, error: impl Fn() -> SandboxError + Send + Sync + 'static) -> Rule {
        self.end = End::Error(Arc::new(error));
        self
    }

    /// Applies to the next `n` matching steps only; then the rule is skipped.
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }
}

/// A latch a test opens to let steps waiting on it ([`Rule::wait`]) go on. Clones share it.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate for good: every step waiting on it, and every later one, goes on.
    pub fn open(&self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0 .1.notify_all();
    }

    pub fn is_open(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits up to `timeout` for the gate to open; true if it is open.
    fn wait_timeout(&self, timeout: Duration) -> bool {
        let guard = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .0
             .1
            .wait_timeout_while(guard, timeout, |open| !*open)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// One [`Sandbox::run`], as recorded by [`FakeSandbox::calls`].
#[derive(Debug, Clone)]
pub struct SandboxCall {
    /// The config as given (argv, cwd, env, uid/gid, mounts, secrets, limits, ...).
    pub config: RunConfig,
    pub rootfs: PathBuf,
    /// `None` while the step runs; then its outcome, or the error's message.
    pub result: Option<Result<Outcome, String>>,
    /// Tells runs apart, so a run finishing after [`FakeSandbox::clear_calls`] finds its own.
    seq: u64,
}

impl SandboxCall {
    /// The step's command: the last argv element.
    pub fn command(&self) -> &str {
        command_of(&self.config)
    }

    /// The value of the last `name=...` in the config's env.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.config
            .env
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn command_of(config: &RunConfig) -> &str {
    config.argv.last().map(String::as_str).unwrap_or("")
}

struct ScriptedRule {
    rule: Rule,
    remaining: Option<usize>,
}

#[derive(Default)]
struct Runs {
    calls: Vec<SandboxCall>,
    running: usize,
    max_running: usize,
    next_seq: u64,
}

/// A [`Sandbox`] for unit tests: runs no process and needs no root.
///
/// Each [`Sandbox::run`] picks the newest added [`Rule`] matching the step (so later rules
/// override earlier ones; a rule limited by [`Rule::times`] is skipped once used up), does
/// its actions on the rootfs and the log, and returns its end. No matching rule: `Exited(0)`
/// with no effect. Like the real sandbox, it returns `Cancelled` at once (recording nothing)
/// when the token is already cancelled, writes the real sandbox's messages to the log when
/// a step times out or is cancelled, and honours `log_limit` (bytes past it are dropped,
/// the cap message is written and the step ends `LogLimitExceeded`).
///
/// It records every run ([`FakeSandbox::calls`]) and counts the steps running at once
/// ([`FakeSandbox::max_running`]); tests wait for steps to start with
/// [`FakeSandbox::wait_for_command`] and friends, and release blocked ones with a [`Gate`]
/// or by cancelling.
#[derive(Default)]
pub struct FakeSandbox {
    rules: Mutex<Vec<ScriptedRule>>,
    runs: Mutex<Runs>,
    changed: Condvar,
}

impl FakeSandbox {
    pub fn new() -> FakeSandbox {
        FakeSandbox::default()
    }

    /// Adds a rule; it takes precedence over every rule added before.
    pub fn add(&self, rule: Rule) -> &FakeSandbox {
        let remaining = rule.times;
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ScriptedRule { rule, remaining });
        self
    }

    /// Forgets every rule (steps then exit 0).
    pub fn clear_rules(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn lock_runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every run so far, in the order they started (running ones have `result: None`).
    pub fn calls(&self) -> Vec<SandboxCall> {
        self.lock_runs().calls.clone()
    }

    /// The commands run so far, in the order they started.
    pub fn commands(&self) -> Vec<String> {
        self.lock_runs().calls.iter().map(|c| c.command().to_owned()).collect()
    }

    /// How many runs had exactly this command.
    pub fn runs_of(&self, command: &str) -> usize {
        self.lock_runs().calls.iter().filter(|c| c.command() == command).count()
    }

    /// Forgets the recorded runs and the concurrency peak (running steps still count).
    pub fn clear_calls(&self) {
        let mut runs = self.lock_runs();
        runs.calls.clear();
        runs.max_running = runs.running;
    }

    /// Steps running now.
    pub fn running(&self) -> usize {
        self.lock_runs().running
    }

    /// The most steps that ran at once.
    pub fn max_running(&self) -> usize {
        self.lock_runs().max_running
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Runs) -> bool) -> bool {
        let guard = self.lock_runs();
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |runs| !done(runs))
            .unwrap_or_else(|p| p.into_inner());
        done(&guard)
    }

    /// Waits up to `timeout` until `n` runs have started in all; true if they have.
    pub fn wait_for_calls(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |runs| runs.calls.len() >= n)
    }

    /// Waits up to `timeout` until a run of exactly `command` has started; true if one has.
    pub fn wait_for_command(&self, command: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |runs| runs.calls.iter().any(|c| c.command() == command))
    }

    /// Waits up to `timeout` until at least `n` steps run at once; true if they do.
    pub fn wait_for_running(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |runs| runs.running >= n)
    }

    /// Waits up to `timeout` until no step runs; true if none does.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |runs| runs.running == 0)
    }

    fn pick(&self, config: &RunConfig) -> Option<Rule> {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let found = rules
            .iter_mut()
            .rev()
            .find(|r| r.remaining != Some(0) && r.rule.matcher.matches(config))?;
        if let Some(n) = found.remaining.as_mut() {
            *n -= 1;
        }
        Some(found.rule.clone())
    }
}

/// Marks a run finished even if an action panics.
struct Running<'a> {
    sandbox: &'a FakeSandbox,
    seq: u64,
    result: Option<Result<Outcome, String>>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut runs = self.sandbox.lock_runs();
        runs.running -= 1;
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err("the fake sandbox's rule panicked".to_owned()));
        let seq = self.seq;
        if let Some(call) = runs.calls.iter_mut().rev().find(|c| c.seq == seq) {
            call.result = Some(result);
        }
        self.sandbox.changed.notify_all();
    }
}

/// The log as a step writes it: at most `limit` bytes, then the cap message once.
struct CappedLog<'a> {
    sink: &'a dyn LogSink,
    limit: u64,
    written: u64,
    exceeded: bool,
}

impl CappedLog<'_> {
    /// False once the cap is passed (the step is then killed).
    fn write(&mut self, bytes: &[u8]) -> bool {
        if self.exceeded {
            return false;
        }
        let room = self.limit - self.written;
        if bytes.len() as u64 <= room {
            self.sink.write(bytes);
            self.written += bytes.len() as u64;
            return true;
        }
        // `room < bytes.len()`, so the cast and the slice are in range.
        let keep = room as usize;
        if keep > 0 {
            self.sink.write(&bytes[..keep]);
        }
        self.written += keep as u64;
        self.sink
            .write(strata_sandbox::output::limit_message(self.limit).as_bytes());
        self.exceeded = true;
        false
    }
}

/// How a blocking action ended early.
enum Stop {
    Cancelled,
    TimedOut,
}

/// Waits until `ready()` (checked every [`POLL`] or when `wait` returns true), the token
/// fires or the deadline passes.
fn block(cancel: &Cancel, deadline: Option<Instant>, mut wait: impl FnMut(Duration) -> bool) -> Result<(), Stop> {
    loop {
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let mut slice = POLL;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Stop::TimedOut);
            }
            slice = slice.min(left);
        }
        if wait(slice) {
            return Ok(());
        }
    }
}

/// Where a container path lands on the host: under the mount whose target holds it, else in
/// the rootfs. `Err` for a `..` component or a write under a read-only mount.
fn resolve(config: &RunConfig, rootfs: &Path, path: &str, writing: bool) -> io::Result<PathBuf> {
    let full = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(&config.cwd).join(path)
    };
    let mut parts = Vec::new();
    for component in full.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{path}: the fake sandbox refuses `..` in paths"),
                ))
            }
        }
    }
    let relative: PathBuf = parts.iter().collect();
    let mount = config
        .mounts
        .iter()
        .filter_map(|m| {
            let target: PathBuf = Path::new(&m.target)
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .collect();
            relative
                .strip_prefix(&target)
                .ok()
                .map(|rest| (m, target, rest.to_path_buf()))
        })
        .max_by_key(|(_, target, _)| target.components().count());
    match mount {
        Some((m, _, _)) if writing && m.readonly => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{path}: read-only file system"),
        )),
        Some((m, _, rest)) => Ok(m.source.join(rest)),
        None => Ok(rootfs.join(relative)),
    }
}

fn make_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent),
        None => Ok(()),
    }
}

fn file_action(config: &RunConfig, rootfs: &Path, action: &Action) -> io::Result<()> {
    match action {
        Action::Write(path, contents) => {
            let host = resolve(config, rootfs, path, true)?;
            make_parent(&host)?;
            fs::write(host, contents)
        }
        Action::Append(path, contents) => {
            use std::io::Write;
            let host = resolve(config, rootfs, path, true)?;
            make_parent(&host)?;
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(host)?
                .write_all(contents)
        }
        Action::Mkdir(path) => fs::create_dir_all(resolve(config, rootfs, path, true)?),
        Action::Remove(path) => {
            let host = resolve(config, rootfs, path, true)?;
            match fs::symlink_metadata(&host) {
                Ok(meta) if meta.is_dir() => fs::remove_dir_all(host),
                Ok(_) => fs::remove_file(host),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        }
        Action::Symlink(target, path) => {
            let host = resolve(config, rootfs, path, true)?;
            make_parent(&host)?;
            std::os::unix::fs::symlink(target, host)
        }
        Action::Log(_) | Action::Sleep(_) | Action::Wait(_) | Action::Custom(_) => Ok(()),
    }
}

impl FakeSandbox {
    /// Runs `rule` for one step; the outcome, or the sandbox error to return.
    fn play(
        rule: &Rule,
        config: &RunConfig,
        rootfs: &Path,
        log: &dyn LogSink,
        cancel: &Cancel,
    ) -> Result<Outcome, SandboxError> {
        let deadline = config.timeout.map(|t| Instant::now() + t);
        let mut capped = CappedLog {
            sink: log,
            limit: config.log_limit,
            written: 0,
            exceeded: false,
        };
        for action in &rule.actions {
            let stopped = match action {
                Action::Log(bytes) => {
                    if !capped.write(bytes) {
                        return Ok(Outcome::LogLimitExceeded);
                    }
                    Ok(())
                }
                Action::Sleep(duration) => {
                    let until = Instant::now() + *duration;
                    block(cancel, deadline, |slice| {
                        let left = until.saturating_duration_since(Instant::now());
                        std::thread::sleep(slice.min(left));
                        Instant::now() >= until
                    })
                }
                Action::Wait(gate) => block(cancel, deadline, |slice| gate.wait_timeout(slice)),
                Action::Custom(f) => {
                    if let Err(e) = f(config, rootfs, log) {
                        return Ok(failed(&mut capped, &e));
                    }
                    Ok(())
                }
                other => {
                    if let Err(e) = file_action(config, rootfs, other) {
                        return Ok(failed(&mut capped, &e));
                    }
                    Ok(())
                }
            };
            match stopped {
                Ok(()) => {}
                Err(Stop::Cancelled) => {
                    log.write(strata_sandbox::output::CANCELLED_MESSAGE.as_bytes());
                    return Ok(Outcome::Cancelled);
                }
                Err(Stop::TimedOut) => {
                    log.write(strata_sandbox::output::timeout_message(config.timeout).as_bytes());
                    return Ok(Outcome::TimedOut);
                }
            }
        }
        match &rule.end {
            End::Outcome(outcome) => Ok(*outcome),
            End::Error(make) => Err(make()),
        }
    }
}

/// A failing action: its error goes to the log and the step exits 1.
fn failed(log: &mut CappedLog<'_>, error: &io::Error) -> Outcome {
    if log.write(format!("fake sandbox: {error}\n").as_bytes()) {
        Outcome::Exited(1)
    } else {
        Outcome::LogLimitExceeded
    }
}

impl Sandbox for FakeSandbox {
    fn run(
        &self,
        config: &RunConfig,
        rootfs: &Path,
        log: &dyn LogSink,
        cancel: &Cancel,
    ) -> Result<Outcome, SandboxError> {
        if cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        let rule = self.pick(config).unwrap_or_else(Rule::any);
        let mut running = {
            let mut runs = self.lock_runs();
            runs.next_seq += 1;
            let seq = runs.next_seq;
            runs.calls.push(SandboxCall {
                config: config.clone(),
                rootfs: rootfs.to_path_buf(),
                result: None,
                seq,
            });
            runs.running += 1;
            runs.max_running = runs.max_running.max(runs.running);
            self.changed.notify_all();
            Running {
                sandbox: self,
                seq,
                result: None,
            }
        };
        let result = FakeSandbox::play(&rule, config, rootfs, log, cancel);
        running.result = Some(match &result {
            Ok(outcome) => Ok(*outcome),
            Err(e) => Err(e.to_string()),
        });
        result
    }
}

/// A [`LogSink`] keeping everything written to it, for tests.
#[derive(Debug, Default)]
pub struct MemoryLog(Mutex<Vec<u8>>);

impl MemoryLog {
    pub fn new() -> MemoryLog {
        MemoryLog::default()
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The log as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl LogSink for MemoryLog {
    fn write(&self, bytes: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
    }
}
