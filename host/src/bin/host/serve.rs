//! `host serve`: load a plugins directory, keep it in step with the disk, and answer on the
//! control socket until SIGINT or SIGTERM.
//!
//! Shutdown has a deadline: on the first signal the host stops accepting connections,
//! answers new calls with a `shutting_down` error, and lets the calls in flight finish for up
//! to `shutdown_timeout_ms`. If some are still running then, it names them and exits with a
//! failure status. A second signal ends the process at once.
//!
//! Start-up takes what this host must own before it touches anything: its state directory
//! (a lock another host would hold) and its control socket (bound, served later). A host
//! refused either loads no plugin, opens no database and starts no schedule.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use host::config::HostConfig;
use host::control::{default_socket_path, ControlServer, ControlSocket, HostInfo};
use host::isolation::IsolationOptions;
use host::postgres::HostRow;
use host::state_dir::{default_state_dir, StateDir};
use host::tasks::{PgStore, SqliteStore, Tasks};
use host::watch::Watcher;
use host::{CopiesDir, Host, HostOptions, LoadOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::ServeArgs;
use crate::exit::{Failure, OTHER, USAGE};

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let config_path = crate::cli::config_path(args.config.clone());
    let config = match &config_path {
        Some(path) => HostConfig::load(path)?,
        None => HostConfig::default(),
    };
    crate::init_logging("info", config.log_format);
    // Paths in host.toml are relative to the file's directory.
    let config_dir = config_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dir = args
        .plugins
        .or_else(|| config.plugins_dir.as_ref().map(|d| config_dir.join(d)))
        .unwrap_or_else(|| PathBuf::from("plugins"));
    let dir = fs::canonicalize(&dir)
        .with_context(|| format!("plugins directory {}", dir.display()))
        .map_err(|err| Failure::new(USAGE, format!("{err:#}")))?;
    if !dir.is_dir() {
        return Err(Failure::new(
            USAGE,
            format!("plugins directory {} is not a directory", dir.display()),
        )
        .into());
    }
    let socket = args
        .socket
        .or_else(|| config.socket.as_ref().map(|s| config_dir.join(s)))
        .unwrap_or_else(default_socket_path);
    let limits = config.server_limits();

    // Before anything is loaded or opened: this host's state directory, and its socket. A
    // host that is refused either has touched nothing of the one that holds them.
    let state = if config.tasks.enabled {
        let state_dir = args
            .state_dir
            .or_else(|| config.state_dir.as_ref().map(|d| config_dir.join(d)))
            .unwrap_or_else(|| {
                let own = (socket != default_socket_path()).then_some(socket.as_path());
                default_state_dir(own)
            });
        Some(StateDir::lock(&state_dir)?)
    } else {
        None
    };
    let listener = ControlSocket::bind(&socket)
        .with_context(|| format!("control socket {}", socket.display()))?;
    raise_descriptor_limit(limits.max_connections);

    // Before anything else, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    // This host's private copies, removed on every way out of this function (and by the
    // next host to start, if this one is killed).
    let copies = match &args.copy_dir {
        Some(_) => None,
        None => Some(Arc::new(
            CopiesDir::create().context("creating the private copy directory")?,
        )),
    };
    let _remove_copies = RemoveOnReturn(copies.clone());
    let host = Host::new(HostOptions {
        load: LoadOptions {
            copy_dir: args
                .copy_dir
                .or_else(|| copies.as_ref().map(|c| c.path().to_owned())),
            allow_insecure_permissions: args.allow_insecure_permissions,
        },
        plugins: config.plugins.clone(),
        max_message_bytes: config.max_message_bytes,
        max_log_bytes_per_call: config.max_log_bytes_per_call,
        max_call_threads: config.max_call_threads,
        isolation: IsolationOptions {
            isolate_all: args.isolate_all,
            ..IsolationOptions::default()
        },
    })?;
    let watcher = Watcher::start(host.clone(), &dir, config_path.as_deref())
        .with_context(|| format!("watching {}", dir.display()))?;
    let info = HostInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        plugins_dir: dir.clone(),
    };
    let fleet = crate::fleet::join(&host, &config.tasks)?;
    let tasks = start_tasks(&host, &config, state.as_ref(), fleet.as_ref());
    let server = ControlServer::serve(listener, host.clone(), info, limits, tasks.clone())
        .with_context(|| format!("control socket {}", socket.display()))?;
    tracing::info!(
        plugins = host.plugin_names().len(),
        "serving {} on {}",
        dir.display(),
        socket.display()
    );

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let grace = Duration::from_millis(config.shutdown_timeout_ms);
    let deadline = Instant::now() + grace;
    // New calls are refused from here on: before the line that says so, which a client (or
    // a test) may act on.
    server.begin_shutdown();
    tracing::info!(
        "received signal {signal}: finishing calls in flight (for up to {} ms), then unloading",
        grace.as_millis()
    );
    let copies_at_exit = copies.clone();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::error!("received signal {signal} again: exiting at once");
            if let Some(copies) = copies_at_exit {
                copies.remove();
            }
            std::process::exit(128 + signal);
        }
    });
    watcher.stop();
    if let Ok(tasks) = &tasks {
        if !tasks.stop(deadline.saturating_duration_since(Instant::now())) {
            tracing::warn!("task calls still running at shutdown run again at the next start");
        }
    }
    let running = server.wait_idle(deadline);
    if !running.is_empty() {
        let names: Vec<String> = running.iter().map(ToString::to_string).collect();
        tracing::error!(
            "shutdown_timeout_ms ({} ms) passed with {} calls still running: {}; exiting \
             without unloading",
            grace.as_millis(),
            running.len(),
            names.join("; ")
        );
        server.stop();
        return Ok(ExitCode::from(OTHER));
    }
    server.stop();
    if !host.unload_all(deadline.saturating_duration_since(Instant::now())) {
        tracing::error!(
            "shutdown_timeout_ms ({} ms) passed before every plugin was unloaded",
            grace.as_millis()
        );
        return Ok(ExitCode::from(OTHER));
    }
    drop(fleet);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Opens the task database in the state directory this host holds and starts running
/// tasks; if that fails, the host serves direct calls anyway and says why in one line.
fn start_tasks(
    host: &Host,
    config: &HostConfig,
    state: Option<&StateDir>,
    fleet: Option<&crate::fleet::Fleet>,
) -> Result<Tasks, String> {
    let Some(state) = state.filter(|_| config.tasks.enabled) else {
        return Err("[tasks] enabled = false in host.toml".to_owned());
    };
    if let Some(fleet) = fleet {
        // The fleet's store: a database down now is not an error (the runner retries).
        let store = PgStore::new(
            fleet.database.clone(),
            &fleet.membership.row().id,
            config.tasks.lease_ms,
            config.tasks.poll_interval_ms,
        );
        let started = Tasks::start(
            host.clone(),
            Arc::new(store),
            config.tasks.clone(),
            config.schedule.clone(),
        )
        .map_err(|err| err.message);
        match &started {
            Ok(_) => tracing::info!("tasks: {}", fleet.database.url()),
            Err(reason) => {
                tracing::error!("tasks are unavailable, direct calls are served: {reason}")
            }
        }
        return started;
    }
    let db = state.tasks_db();
    // One host owns the file: it is the host of every task that ran.
    let id = HostRow::this_process(env!("CARGO_PKG_VERSION"), 0).hostname;
    let started = SqliteStore::open(&db)
        .map(|store| store.with_host_id(&id))
        .map_err(|err| err.to_string())
        .and_then(|store| {
            Tasks::start(
                host.clone(),
                Arc::new(store),
                config.tasks.clone(),
                config.schedule.clone(),
            )
            .map_err(|err| err.message)
        });
    match &started {
        Ok(_) => tracing::info!("tasks: {}", db.display()),
        Err(reason) => {
            tracing::error!("tasks are unavailable, direct calls are served: {reason}")
        }
    }
    started
}

/// Removes the private copy directory when `run` returns, however it returns: threads
/// that outlive it (calls still running, the reaper) hold the host, so the host's own
/// destructor may never run before the process exits.
struct RemoveOnReturn(Option<Arc<CopiesDir>>);

impl Drop for RemoveOnReturn {
    fn drop(&mut self) {
        if let Some(copies) = &self.0 {
            copies.remove();
        }
    }
}

/// Lets the process open as many descriptors as its hard limit allows (each connection
/// takes one), and warns when that is fewer than `max_connections` needs.
fn raise_descriptor_limit(max_connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit within the hard limit, which only root may
        // exceed; failure leaves the old limit in place.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    // Plugin files, the watcher, the socket, logs: keep some descriptors for the host itself.
    let spare = 64;
    if (limit.rlim_cur as usize) < max_connections + spare {
        tracing::warn!(
            "this process may open {} descriptors, fewer than max_connections ({max_connections}) \
             needs: connections past about {} will be refused",
            limit.rlim_cur,
            (limit.rlim_cur as usize).saturating_sub(spare)
        );
    }
}
