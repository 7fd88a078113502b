//! Command-line interface: the clap definitions of every subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Hot-loads native plugins and serves their callbacks.
#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    about,
    propagate_version = true,
    after_help = crate::exit::HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Call a plugin's callback and print its JSON result.
    ///
    /// Talks to the running host (`host serve`) when one answers on the socket, so the
    /// hot-loaded version serves the call; otherwise loads the plugin from --plugins DIR for
    /// this one call. The callback name `execute` runs the plugin's entry point.
    Call(CallArgs),
    /// List plugins: those of a running host (with generation, load time, calls served and
    /// the last load error), or every plugin file in --plugins DIR.
    List(ListArgs),
    /// Check one plugin file: load it, verify its ABI and metadata, print the metadata.
    /// Does not run the plugin's init.
    Check(CheckArgs),
    /// Create a new plugin crate that builds with a plain `cargo build --release`.
    New(NewArgs),
    /// Serve plugins from a directory, reloading them when their files change.
    Serve(ServeArgs),
    /// Start a plugin of the running host afresh: a new worker process for an isolated
    /// plugin (lifting a quarantine), a new generation for an in-process one.
    Restart(RestartArgs),
    /// List the generations a plugin of the running host served, newest first: version,
    /// SHA-256, when each was loaded and retired, its calls and errors, how it ended, and
    /// whether its copy is kept to roll back to.
    History(HistoryArgs),
    /// Serve an earlier version of a plugin of the running host again, until its file
    /// changes: the one it replaced, or generation N (`--to N`, see `host history`).
    Rollback(RollbackArgs),
    /// Submit a task to the running host: a call it runs (now, or at --at), retries on
    /// failure, and records. Prints the task's id.
    Submit(SubmitArgs),
    /// List the running host's tasks, newest first.
    Tasks(TasksArgs),
    /// Show one task of the running host: result, error, logs, and the follow-ups under it
    /// as a tree.
    Task(TaskArgs),
    /// Cancel a task: a queued one at once, a running one's call is told to cancel.
    Cancel(TaskIdArgs),
    /// Queue a task that ended (failed, bad, cancelled, success ...) again.
    Retry(TaskIdArgs),
    /// Run the host as a service: `host service unit` prints a systemd unit for it.
    Service(ServiceArgs),
    /// Publish a plugin file to the fleet's catalogue: the running host checks it as a load
    /// would (without running its init) and stores it; every host of the fleet loads it.
    Publish(PublishArgs),
    /// Remove a plugin from the fleet's catalogue: every host removes its file.
    Unpublish(UnpublishArgs),
    /// List the fleet's catalogue: each plugin, its rollout, and what each host made of it.
    Published(PublishedArgs),
    /// List the hosts of the fleet on the PostgreSQL database (`[tasks] database` of
    /// --config, or $HOST_DATABASE_URL, or --database), alive or gone by heartbeat.
    Fleet(FleetArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Print a systemd unit running `host serve` with these arguments: Type=notify with a
    /// watchdog, this binary's absolute path, the hardening the host tolerates. With
    /// --socket-unit, the matching .socket unit instead (socket activation).
    Unit(UnitArgs),
}

#[derive(Debug, Args)]
pub struct UnitArgs {
    /// A unit for the user's service manager (`systemctl --user`), without the hardening
    /// only the system manager applies.
    #[arg(long)]
    pub user: bool,
    /// Print the .socket unit that passes the control socket (FileDescriptorName=control).
    #[arg(long)]
    pub socket_unit: bool,
    /// Plugins directory [default: plugins_dir of --config, else ./plugins].
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Control socket [default: socket of --config, else /run/plugin-host/host.sock, or
    /// with --user the default `host serve` uses].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// host.toml to pass to `host serve` [env: HOST_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory [default: state_dir of --config, else /var/lib/plugin-host, or with
    /// --user the default `host serve` uses].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// `--log-format` to pass to `host serve` (text or json).
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// WatchdogSec=: a host that stops answering is restarted after this long (`30s`).
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub watchdog: String,
    /// The HTTP API's address, passed as `--http` (and bound by the socket unit too)
    /// [default: [http] listen of --config].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The plugin file.
    pub file: PathBuf,
    /// The name to publish it under [default: the name the plugin declares; another one is
    /// refused].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Load it on N hosts first (the lowest ids among those alive), and on the others only
    /// once every one of them passed probation.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: u32,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct UnpublishArgs {
    /// Plugin name.
    pub plugin: String,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct PublishedArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The fleet's database [default: $HOST_DATABASE_URL, else `[tasks] database` of
    /// --config].
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// host.toml: its `[tasks] database` and `lease_ms` [env: HOST_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON (an array of one object per host, with `"alive": true|false`, and
    /// `"published"`: each plugin of the catalogue, its rollout and why it stopped, and
    /// what this host made of it) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The running host's control socket: `--socket`, or the `socket` of `--config` (or of
/// `$HOST_CONFIG`), or the default.
#[derive(Debug, Clone, Args)]
pub struct HostSocket {
    /// Control socket of the running host [default: socket of --config, else
    /// $XDG_RUNTIME_DIR/plugin-host/host.sock, or $TMPDIR/plugin-host-UID/host.sock (TMPDIR:
    /// /tmp) when XDG_RUNTIME_DIR is unset].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// host.toml: its `socket` is the running host's; a one-shot call or list from --plugins
    /// applies its per-plugin settings [env: HOST_CONFIG].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl HostSocket {
    /// host.toml: `--config`, or `$HOST_CONFIG`.
    pub fn config_path(&self) -> Option<PathBuf> {
        config_path(self.config.clone())
    }

    /// The socket, and whether the user named it (with `--socket` or in host.toml); an
    /// error if the host.toml cannot be used.
    pub fn resolve(&self) -> Result<(PathBuf, bool), host::config::ConfigError> {
        if let Some(socket) = &self.socket {
            return Ok((socket.clone(), true));
        }
        if let Some(path) = self.config_path() {
            let config = host::config::HostConfig::load(&path)?;
            if let Some(socket) = config.socket {
                // Relative to the file's directory, as `host serve` reads it.
                let dir = path.parent().map(PathBuf::from).unwrap_or_default();
                return Ok((dir.join(socket), true));
            }
        }
        Ok((host::control::default_socket_path(), false))
    }
}

/// The host.toml to read: `given`, or `$HOST_CONFIG` when it is set and not empty.
pub fn config_path(given: Option<PathBuf>) -> Option<PathBuf> {
    given.or_else(|| {
        std::env::var_os("HOST_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Plugin name.
    pub plugin: String,
    /// Callback name (`execute` for the entry point).
    pub callback: String,
    /// Input as JSON text [default: null].
    #[arg(long, value_name = "JSON")]
    pub input: Option<String>,
    /// What makes two tasks the same: one with a key queued or running is not queued again
    /// [default: a hash of plugin, callback and input].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Higher runs first among the tasks due [default: 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Not before this time: RFC 3339 (`2026-12-01T03:00:00Z`), `+5m`, or Unix seconds.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Skip it (recorded as skipped) if a task with its key succeeded this recently (`1h`).
    #[arg(long, value_name = "DURATION")]
    pub age: Option<String>,
    /// Attempts before it is failed, the first included [default: the host's setting].
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Delays before each retry, comma-separated (`10s,1m,1h`); the last one repeats.
    #[arg(long, value_name = "DURATIONS")]
    pub retry_delays: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only tasks in this status: queued, running, success, failed, bad, skipped, refused,
    /// cancelled.
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only tasks of this plugin.
    #[arg(long, value_name = "PLUGIN")]
    pub plugin: Option<String>,
    /// Only tasks made since this time: `1h` (ago), RFC 3339, or Unix seconds.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many, newest first.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Task id.
    pub id: i64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    /// Task id.
    pub id: i64,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Plugin name.
    pub plugin: String,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Plugin name.
    pub plugin: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: HostSocket,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Plugin name.
    pub plugin: String,
    /// The generation to serve again [default: the newest kept version other than what
    /// serves].
    #[arg(long, value_name = "GENERATION")]
    pub to: Option<u64>,
    #[command(flatten)]
    pub socket: HostSocket,
}

/// Where to find plugins: a running host, or a directory.
#[derive(Debug, Args)]
pub struct Target {
    /// Directory of plugin files, used when no running host serves it.
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    // The running host's socket, and host.toml (also its per-plugin settings, for one-shot
    // loads from --plugins).
    #[command(flatten)]
    pub host: HostSocket,
    /// Load plugin files even if others could have written them.
    #[arg(long)]
    pub allow_insecure_permissions: bool,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// Plugin name.
    pub plugin: String,
    /// Callback name (`execute` for the entry point).
    pub callback: String,
    /// Input as JSON text [default: null].
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the JSON input from a file (`-` for standard input).
    #[arg(long, value_name = "PATH")]
    pub input_file: Option<PathBuf>,
    /// Print the whole outcome (result or error, follow-ups, logs, timing) as JSON.
    #[arg(long)]
    pub json: bool,
    /// For a one-shot call from --plugins: run the plugin in a worker process.
    #[arg(long)]
    pub isolated: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The plugin file.
    pub file: PathBuf,
    /// Print the metadata as JSON.
    #[arg(long)]
    pub json: bool,
    /// On an ABI error, also print abi_stable's full layout report.
    #[arg(long)]
    pub verbose: bool,
    /// Accept a file others could have written.
    #[arg(long)]
    pub allow_insecure_permissions: bool,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Name of the plugin (and of its crate).
    pub name: String,
    /// Directory to create the crate in; the crate goes into DIR/NAME.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub path: PathBuf,
    /// The plugin-api crate the new crate depends on, by path [default: the plugin-api
    /// directory of the source tree this `host` was built from, if it is still there].
    #[arg(long = "plugin-api", visible_alias = "api-path", value_name = "PATH")]
    pub plugin_api: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory of plugin files to load and watch [default: plugins_dir of --config, or ./plugins].
    #[arg(long, value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// Control socket path [default: socket of --config, else $XDG_RUNTIME_DIR/plugin-host/host.sock,
    /// or $TMPDIR/plugin-host-UID/host.sock (TMPDIR: /tmp) when XDG_RUNTIME_DIR is unset].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// host.toml: plugins dir, socket, log format, per-plugin settings. Watched for changes.
    /// [env: HOST_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where private copies of plugin files are written before loading [default: a new
    /// directory in the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    pub copy_dir: Option<PathBuf>,
    /// Load plugin files even if others could have written them (warn instead).
    #[arg(long)]
    pub allow_insecure_permissions: bool,
    /// Run every plugin in a worker process of its own, whatever host.toml says.
    #[arg(long)]
    pub isolate_all: bool,
    /// Where the host keeps its state (the task database, `tasks.db`), one host at a time
    /// [default: state_dir of --config, else one per socket: $XDG_STATE_HOME/plugin-host
    /// for the default socket, $XDG_STATE_HOME/plugin-host-HASH for another
    /// ($XDG_STATE_HOME: ~/.local/state)].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log lines as `text`, or `json` (one object per line, with plugin, generation, call,
    /// task and worker pid as fields) [default: log_format of --config, else text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Serve the HTTP API on this address (`127.0.0.1:8080`; port 0: one the system picks,
    /// logged) [default: [http] listen of --config; none: no HTTP API].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
}
