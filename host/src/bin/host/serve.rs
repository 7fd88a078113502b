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
//!
//! Under systemd (see `host::systemd`): sockets passed by socket activation are served
//! instead of binding; `READY=1` goes out once the control socket serves and the plugins
//! present at start are loaded, `RELOADING=1`/`READY=1` around a reload of host.toml,
//! `STOPPING=1` when shutdown begins, and `WATCHDOG=1` only while the host's loops answer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use host::catalogue::Catalogue;
use host::config::{HostConfig, LogFormat};
use host::control::{default_socket_path, ControlServer, ControlSocket, HostInfo};
use host::http::{HttpServer, TokenSource, Tokens, TOKEN_ENV};
use host::isolation::IsolationOptions;
use host::postgres::database_url;
use host::state_dir::{default_state_dir, StateDir};
use host::systemd::{Activated, Notifier, RuntimeProbe, Watchdog, WatchdogOptions};
use host::tasks::{PgStore, SqliteStore, Tasks};
use host::tasks::{TaskFilter, TaskStatus};
use host::watch::{ConfigReload, Watcher};
use host::{CopiesDir, Host, HostOptions, LoadOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::ServeArgs;
use crate::exit::{Failure, OTHER, USAGE};

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    // First, while this is the only thread (they change the environment): what the service
    // manager handed over, taken out of the environment so that workers do not inherit it.
    let usage = |err: &dyn std::fmt::Display| Failure::new(USAGE, err.to_string());
    let activated = Activated::from_env().map_err(|err| usage(&err))?;
    let notifier = Arc::new(Notifier::from_env_taken().map_err(|err| usage(&err))?);
    let watchdog_interval = host::systemd::interval_from_env().map_err(|err| usage(&err))?;
    let log_format = args
        .log_format
        .as_deref()
        .map(parse_log_format)
        .transpose()?;
    let config_path = crate::cli::config_path(args.config.clone());
    let config = match &config_path {
        Some(path) => HostConfig::load(path)?,
        None => HostConfig::default(),
    };
    crate::init_logging("info", log_format.unwrap_or(config.log_format));
    if let Some(ignored) = &activated.ignored {
        tracing::warn!("socket activation: {ignored}");
    }
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
    // A control socket passed by the service manager is served as it is (systemd owns its
    // file); otherwise the host binds its own.
    let passed = activated
        .control
        .map(ControlSocket::adopt)
        .transpose()
        .map_err(|err| Failure::new(USAGE, format!("socket activation: {err}")))?;
    let socket = match &passed {
        Some(passed) => passed.path().to_owned(),
        None => args
            .socket
            .or_else(|| config.socket.as_ref().map(|s| config_dir.join(s)))
            .unwrap_or_else(default_socket_path),
    };
    let limits = config.server_limits();

    // Before anything is loaded or opened: this host's state directory, and its socket. A
    // host that is refused either has touched nothing of the one that holds them.
    // A host in a fleet keeps its id there, tasks or not.
    let in_fleet = database_url(config.tasks.database.as_deref()).is_ok_and(|url| url.is_some());
    let state = if config.tasks.enabled || in_fleet {
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
    let listener = match passed {
        Some(passed) => {
            tracing::info!(
                "serving the control socket passed by the service manager: {}",
                socket.display()
            );
            passed
        }
        None => ControlSocket::bind(&socket)
            .with_context(|| format!("control socket {}", socket.display()))?,
    };
    // The HTTP listener: the one the service manager passed (`http`), else bound here,
    // before anything is loaded, so that a port in use refuses the host at once.
    let http_listen = args.http.clone().or_else(|| config.http.listen.clone());
    let http_listener = match activated.http {
        Some(passed) => {
            if let Some(asked) = &http_listen {
                tracing::info!("http: serving the socket the service manager passed, not {asked}");
            }
            Some(passed)
        }
        None => http_listen
            .as_deref()
            .map(host::http::bind)
            .transpose()
            .map_err(|err| Failure::new(USAGE, err.to_string()))?,
    };
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
    let observer = notifier.is_enabled().then(|| {
        let notifier = notifier.clone();
        Arc::new(move |reload| match reload {
            ConfigReload::Started => notifier.reloading(),
            _ => notifier.ready(),
        }) as host::watch::ReloadObserver
    });
    let watcher = Watcher::start_observed(host.clone(), &dir, config_path.as_deref(), observer)
        .with_context(|| format!("watching {}", dir.display()))?;
    let info = HostInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        plugins_dir: dir.clone(),
    };
    let fleet = crate::fleet::join(&host, &config.tasks, state.as_ref())?;
    let tasks = start_tasks(&host, &config, state.as_ref(), fleet.as_ref());
    let server = ControlServer::serve(listener, host.clone(), info, limits, tasks.clone())
        .with_context(|| format!("control socket {}", socket.display()))?;
    let catalogue = fleet
        .as_ref()
        .map(|fleet| start_catalogue(&host, &config, &dir, fleet));
    if let Some(catalogue) = &catalogue {
        server.attach_catalogue(catalogue.clone());
    }
    let http = match http_listener {
        Some(listener) => Some(start_http(
            listener,
            &server,
            &host,
            tasks.clone(),
            &config,
            &config_dir,
            state.as_ref(),
        )?),
        None => None,
    };
    if let (Some(http), Some(fleet)) = (&http, &fleet) {
        http.attach_fleet(fleet.database.clone(), config.tasks.lease_ms);
    }
    tracing::info!(
        plugins = host.plugin_names().len(),
        "serving {} on {}",
        dir.display(),
        socket.display()
    );
    // Ready: the control socket and the HTTP API (where configured) serve, and the plugins
    // present at start are loaded (`Watcher::start` returns after).
    notifier.ready();
    let probes = [
        server
            .runtime_handle()
            .map(|h| Box::new(RuntimeProbe::new("the control socket's runtime", h)) as _),
        Some(Box::new(RuntimeProbe::call_pool(&host)) as _),
        Some(Box::new(watcher.probe()) as _),
        // The dispatcher waits on its store: on SQLite (a local file) a dispatcher that does
        // not answer is wedged; on a fleet's PostgreSQL it may be riding out an outage, which
        // a restart would not mend (direct calls are served meanwhile).
        tasks
            .as_ref()
            .ok()
            .filter(|_| fleet.is_none())
            .map(|tasks| Box::new(tasks.probe()) as _),
    ];
    let watchdog = Watchdog::start(
        notifier.clone(),
        WatchdogOptions::new(
            watchdog_interval,
            probes.into_iter().flatten().collect(),
            status_line(host.clone(), tasks.clone()),
        ),
    )
    .context("starting the watchdog thread")?;

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    let grace = Duration::from_millis(config.shutdown_timeout_ms);
    let deadline = Instant::now() + grace;
    // New calls are refused from here on: before the line that says so, which a client (or
    // a test) may act on.
    server.begin_shutdown();
    if let Some(http) = &http {
        http.begin_shutdown();
    }
    notifier.stopping();
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
    watchdog.stop();
    if let Some(catalogue) = &catalogue {
        catalogue.stop();
    }
    watcher.stop();
    if let Ok(tasks) = &tasks {
        if !tasks.stop(deadline.saturating_duration_since(Instant::now())) {
            tracing::warn!("task calls still running at shutdown run again at the next start");
        }
    }
    if let Some(http) = &http {
        http.wait_idle(deadline);
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

/// `--log-format`: `text` or `json`.
fn parse_log_format(value: &str) -> Result<LogFormat> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(Failure::new(
            USAGE,
            format!("--log-format {other:?}: expected text or json"),
        )
        .into()),
    }
}

/// The `STATUS=` line for `systemctl status`: plugins served and tasks queued.
fn status_line(host: Host, tasks: Result<Tasks, String>) -> Box<dyn FnMut() -> String + Send> {
    // Counting stops here: a status line needs no exact figure past it.
    const COUNT_UP_TO: usize = 100;
    Box::new(move || {
        let plugins = host.plugin_names().len();
        let queued = match &tasks {
            Ok(tasks) => {
                let mut filter = TaskFilter::default();
                filter.status = Some(TaskStatus::Queued);
                filter.limit = COUNT_UP_TO;
                match tasks.list(&filter) {
                    Ok(page) if page.next.is_some() => format!(", over {COUNT_UP_TO} tasks queued"),
                    Ok(page) if page.tasks.len() == 1 => ", 1 task queued".to_owned(),
                    Ok(page) => format!(", {} tasks queued", page.tasks.len()),
                    Err(_) => ", tasks unavailable".to_owned(),
                }
            }
            Err(_) => String::new(),
        };
        let noun = if plugins == 1 { "plugin" } else { "plugins" };
        format!("serving {plugins} {noun}{queued}")
    })
}

/// Starts the HTTP API on `listener`, on the control server's runtime, with the token of
/// `HOST_HTTP_TOKEN`, `[http] token_file`, or the state directory's `http-token`.
fn start_http(
    listener: std::net::TcpListener,
    server: &ControlServer,
    host: &Host,
    tasks: Result<Tasks, String>,
    config: &HostConfig,
    config_dir: &Path,
    state: Option<&StateDir>,
) -> Result<HttpServer> {
    let settings = config.http.clone();
    let token_file = settings.token_file.as_ref().map(|f| config_dir.join(f));
    let read_file = settings
        .read_token_file
        .as_ref()
        .map(|f| config_dir.join(f));
    let (tokens, source) = Tokens::load(
        std::env::var(TOKEN_ENV).ok(),
        token_file.as_deref(),
        read_file.as_deref(),
        state.map(StateDir::path),
    )
    .map_err(|err| Failure::new(USAGE, err.to_string()))?;
    match source {
        TokenSource::Environment => tracing::info!("http: the token is {TOKEN_ENV}'s"),
        TokenSource::File(path) => tracing::info!("http: the token is in {}", path.display()),
        TokenSource::Generated(path, true) => {
            tracing::info!("http: made a token in {} (mode 0600)", path.display())
        }
        TokenSource::Generated(path, _) => {
            tracing::info!("http: the token is in {}", path.display())
        }
        _ => {}
    }
    let runtime = server
        .runtime()
        .context("the control server stopped before the HTTP API started")?;
    let http = HttpServer::serve(listener, &runtime, host.clone(), tasks, settings, tokens)
        .context("starting the HTTP API")?;
    http.count_control_connections(server.connection_counter());
    tracing::info!("http: listening on http://{}", http.local_addr());
    Ok(http)
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
    let id = host::postgres::hostname();
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

/// Starts the fleet's plugin catalogue and this host's catalogue agent on the fleet's
/// database.
fn start_catalogue(
    host: &Host,
    config: &HostConfig,
    dir: &Path,
    fleet: &crate::fleet::Fleet,
) -> Catalogue {
    let host_id = fleet.membership.row().id.clone();
    tracing::info!("catalogue: this host is {host_id} in the fleet");
    Catalogue::start(
        host.clone(),
        fleet.database.clone(),
        config.catalogue.clone(),
        dir,
        host_id,
        config.tasks.lease_ms,
    )
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
