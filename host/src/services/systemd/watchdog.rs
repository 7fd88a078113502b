//! The service manager's watchdog and status line: a thread that sends `WATCHDOG=1` every
//! half `WATCHDOG_USEC`, but only while the host's own loops answer (each a [`Probe`]: the
//! control server's and the call pool's tokio runtimes, the directory watcher's thread, the
//! task runner's dispatcher thread), and
//! another that sends a `STATUS=` line when it changes, at most once per [`STATUS_EVERY`].
//!
//! The loops must all answer within half the interval; one that does not withholds the
//! ping, and systemd kills and restarts the host at `WatchdogSec=`. Each probe keeps at most
//! one ping in flight, so a wedged loop never piles up pings.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::notify::Notifier;
use crate::services::ping::Ping;

/// How often the status line is recomputed (and sent, if it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process if
/// `WATCHDOG_PID` says so), halved as sd_watchdog_enabled advises; `None` without one. The
/// variables are removed so that processes this one starts do not inherit them. Call it
/// before any other thread runs: it changes the environment.
pub fn interval_from_env() -> Result<Option<Duration>, String> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let value: u64 =
        usec.trim().parse().ok().filter(|v| *v > 0).ok_or_else(|| {
            format!("WATCHDOG_USEC={usec:?}: not a positive number of microseconds")
        })?;
    if let Some(pid) = pid.filter(|v| !v.is_empty()) {
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("WATCHDOG_PID={pid:?}: not a process id"))?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(value) / 2))
}

/// One of the host's loops, asked whether it still answers.
pub trait Probe: Send {
    /// What it is, for the log line when it does not answer.
    fn name(&self) -> &str;
    /// Whether the loop answered a ping within `within`.
    fn answers_within(&mut self, within: Duration) -> bool;
}

/// A tokio runtime: does a task spawned on it run?
#[derive(Debug)]
pub struct RuntimeProbe {
    name: String,
    handle: tokio::runtime::Handle,
    ping: Ping,
}

impl RuntimeProbe {
    /// Probes the runtime behind `handle`, named `name` in the log.
    pub fn new(name: impl Into<String>, handle: tokio::runtime::Handle) -> RuntimeProbe {
        RuntimeProbe {
            name: name.into(),
            handle,
            ping: Ping::default(),
        }
    }
}

impl RuntimeProbe {
    /// Probes `host`'s call pool: the runtime whose one worker answers calls `timeout` at
    /// their deadline (plugin code runs on its blocking threads, never on the worker).
    pub fn call_pool(host: &crate::registry::Host) -> RuntimeProbe {
        RuntimeProbe::new("the call pool's runtime", host.call_pool_handle())
    }
}

impl Probe for RuntimeProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn answers_within(&mut self, within: Duration) -> bool {
        let handle = &self.handle;
        self.ping.answered(within, |send| {
            // A runtime shut down drops the task, and with it `send`: no answer.
            drop(handle.spawn(async move {
                let _ = send.try_send(());
            }));
            true
        })
    }
}

impl Probe for crate::services::watch::WatcherProbe {
    fn name(&self) -> &str {
        "the plugins directory watcher"
    }

    fn answers_within(&mut self, within: Duration) -> bool {
        self.ping(within)
    }
}

impl Probe for crate::services::tasks::DispatcherProbe {
    fn name(&self) -> &str {
        "the task runner's dispatcher"
    }

    fn answers_within(&mut self, within: Duration) -> bool {
        self.ping(within)
    }
}

/// What the watchdog threads are given.
#[non_exhaustive]
pub struct WatchdogOptions {
    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`); `None`: no watchdog, only
    /// the status line.
    pub interval: Option<Duration>,
    /// The loops that must answer for a ping to be sent.
    pub probes: Vec<Box<dyn Probe>>,
    /// The status line now (`serving 3 plugins, 0 tasks queued`).
    pub status: Box<dyn FnMut() -> String + Send>,
}

impl WatchdogOptions {
    /// Pings every `interval` (none: only the status line) while `probes` answer; the
    /// status line from `status`.
    pub fn new(
        interval: Option<Duration>,
        probes: Vec<Box<dyn Probe>>,
        status: Box<dyn FnMut() -> String + Send>,
    ) -> WatchdogOptions {
        WatchdogOptions {
            interval,
            probes,
            status,
        }
    }
}

impl std::fmt::Debug for WatchdogOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchdogOptions")
            .field("interval", &self.interval)
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The threads sending `WATCHDOG=1` and `STATUS=` (two, so that a slow status query, such
/// as a busy task database, never delays a ping); stopped by [`Watchdog::stop`] or drop.
#[derive(Debug)]
pub struct Watchdog {
    stop: Vec<mpsc::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the thread. It sends nothing if `notifier` is disabled (and then does not
    /// start at all).
    pub fn start(notifier: Arc<Notifier>, options: WatchdogOptions) -> std::io::Result<Watchdog> {
        let mut watchdog = Watchdog {
            stop: Vec::new(),
            threads: Vec::new(),
        };
        if !notifier.is_enabled() {
            return Ok(watchdog);
        }
        let WatchdogOptions {
            interval,
            probes,
            status,
        } = options;
        let (stop, stopped) = mpsc::channel();
        let status_notifier = notifier.clone();
        watchdog.stop.push(stop);
        watchdog.threads.push(
            std::thread::Builder::new()
                .name("sd-status".into())
                .spawn(move || send_status(&status_notifier, status, &stopped))?,
        );
        if let Some(interval) = interval {
            let (stop, stopped) = mpsc::channel();
            watchdog.stop.push(stop);
            watchdog.threads.push(
                std::thread::Builder::new()
                    .name("watchdog".into())
                    .spawn(move || ping(&notifier, interval, probes, &stopped))?,
            );
        }
        Ok(watchdog)
    }

    /// Stops the thread (no more `WATCHDOG=1`: shutdown began) and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Sends `WATCHDOG=1` every `interval` while every probe answers, until told to stop.
fn ping(
    notifier: &Notifier,
    interval: Duration,
    mut probes: Vec<Box<dyn Probe>>,
    stopped: &mpsc::Receiver<()>,
) {
    // All loops must answer within half the interval, so the ping (if any) is sent well
    // before the service manager's deadline.
    let budget = interval / 2;
    let mut next = Instant::now();
    // Which probe failed last, so the log says it once, not at every interval.
    let mut failing: Option<String> = None;
    loop {
        match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            // The sender is dropped (or sent): stop.
            _ => return,
        }
        next += interval;
        let deadline = Instant::now() + budget;
        let mut wedged = None;
        for probe in &mut probes {
            if !probe.answers_within(deadline.saturating_duration_since(Instant::now())) {
                wedged = Some(probe.name().to_owned());
                break;
            }
        }
        match wedged {
            None => {
                notifier.watchdog();
                if let Some(name) = failing.take() {
                    tracing::info!("watchdog: {name} answers again; WATCHDOG=1 resumed");
                }
            }
            Some(name) => {
                if failing.as_deref() != Some(name.as_str()) {
                    tracing::error!(
                        "watchdog: {name} did not answer within {} ms; WATCHDOG=1 withheld \
                         (the service manager restarts the host at WatchdogSec)",
                        budget.as_millis()
                    );
                }
                failing = Some(name);
            }
        }
        // A late round (the process was stopped, say) does not make a burst of pings.
        next = next.max(Instant::now());
    }
}

/// Sends the status line when it changes, looking at most once per [`STATUS_EVERY`].
fn send_status(
    notifier: &Notifier,
    mut status: Box<dyn FnMut() -> String + Send>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut last = String::new();
    loop {
        let now = status();
        if now != last {
            notifier.status(&now);
            last = now;
        }
        match stopped.recv_timeout(STATUS_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_half_of_watchdog_usec_for_this_process() {
        assert_eq!(interval_from(None, None, 1), Ok(None));
        assert_eq!(
            interval_from(Some("400000"), None, 1),
            Ok(Some(Duration::from_millis(200)))
        );
        assert_eq!(
            interval_from(Some("400000"), Some("1"), 1),
            Ok(Some(Duration::from_millis(200)))
        );
        // Another process's watchdog.
        assert_eq!(interval_from(Some("400000"), Some("2"), 1), Ok(None));
        assert_eq!(
            interval_from(Some("soon"), None, 1),
            Err("WATCHDOG_USEC=\"soon\": not a positive number of microseconds".to_owned())
        );
    }

    /// A runtime whose only worker is held by a task answers no ping until it is let go;
    /// the probe keeps one ping in flight meanwhile.
    #[test]
    fn a_wedged_runtime_does_not_answer() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let mut probe = RuntimeProbe::new("the test runtime", runtime.handle().clone());
        assert!(probe.answers_within(Duration::from_secs(10)));

        let (release, held) = mpsc::channel::<()>();
        let (entered, started) = mpsc::channel::<()>();
        // Blocks the runtime's one worker thread, as a wedged loop would.
        runtime.spawn(async move {
            entered.send(()).unwrap();
            let _ = held.recv();
        });
        started.recv().unwrap();
        assert!(!probe.answers_within(Duration::from_millis(50)));
        assert!(!probe.answers_within(Duration::from_millis(50)));
        release.send(()).unwrap();
        assert!(probe.answers_within(Duration::from_secs(10)));
        assert!(probe.answers_within(Duration::from_secs(10)));
        drop(runtime);
        assert!(!probe.answers_within(Duration::from_secs(10)));
    }

    /// The datagrams `socket` receives within `window` (to show that something does not
    /// come), or until the first with a line starting with `until`.
    fn received(
        socket: &std::os::unix::net::UnixDatagram,
        window: Duration,
        until: Option<&str>,
    ) -> Vec<String> {
        let start = Instant::now();
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        while start.elapsed() < window {
            if let Ok(n) = socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = until.is_some_and(|u| message.lines().any(|l| l.starts_with(u)));
                got.push(message);
                if found {
                    break;
                }
            }
        }
        got
    }

    /// The whole watchdog (thread, probe, notifier, a service manager's datagram socket)
    /// with a runtime wedged for real: while its one worker is held, no `WATCHDOG=1` goes
    /// out; once it is let go, the pings resume. (The e2e test that wedged the watcher's
    /// thread with a FIFO host.toml went with that defect: see tests/tests/config_file.rs.)
    #[test]
    fn a_wedged_loop_withholds_watchdog_until_it_answers_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let notifier = Arc::new(Notifier::connect(path.to_str().unwrap()).unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let probe = RuntimeProbe::new("the test runtime", runtime.handle().clone());
        let interval = Duration::from_millis(40);
        let options = WatchdogOptions::new(
            Some(interval),
            vec![Box::new(probe)],
            Box::new(|| "serving".to_owned()),
        );
        let watchdog = Watchdog::start(notifier, options).unwrap();
        let wait = Duration::from_secs(10);
        let pinged = |got: &[String]| got.iter().any(|m| m == "WATCHDOG=1");
        assert!(pinged(&received(&manager, wait, Some("WATCHDOG=1"))));

        let (release, held) = mpsc::channel::<()>();
        let (entered, started) = mpsc::channel::<()>();
        runtime.spawn(async move {
            entered.send(()).unwrap();
            let _ = held.recv();
        });
        started.recv().unwrap();
        // A round that probed before the wedge may still ping: let it pass.
        received(&manager, interval * 3, None);
        let during = received(&manager, interval * 10, None);
        assert!(!pinged(&during), "pinged while wedged: {during:?}");

        release.send(()).unwrap();
        assert!(pinged(&received(&manager, wait, Some("WATCHDOG=1"))));
        watchdog.stop();
    }
}
