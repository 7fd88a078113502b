//! `host serve`: load a plugins directory, keep it in step with the disk, and answer on the
//! control socket until SIGINT or SIGTERM.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use host::config::HostConfig;
use host::control::{default_socket_path, ControlServer, HostInfo};
use host::watch::Watcher;
use host::{Host, HostOptions, LoadOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::cli::ServeArgs;

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = match &args.config {
        Some(path) => HostConfig::load(path)?,
        None => HostConfig::default(),
    };
    crate::init_logging("info", config.log_format);
    // Paths in host.toml are relative to the file's directory.
    let config_dir = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dir = args
        .plugins
        .or_else(|| config.plugins_dir.as_ref().map(|d| config_dir.join(d)))
        .unwrap_or_else(|| PathBuf::from("plugins"));
    let dir =
        fs::canonicalize(&dir).with_context(|| format!("plugins directory {}", dir.display()))?;
    anyhow::ensure!(
        dir.is_dir(),
        "plugins directory {} is not a directory",
        dir.display()
    );
    let socket = args
        .socket
        .or_else(|| config.socket.as_ref().map(|s| config_dir.join(s)))
        .unwrap_or_else(default_socket_path);

    // Before anything else, so a signal during start-up is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let host = Host::new(HostOptions {
        load: LoadOptions {
            copy_dir: args.copy_dir,
            allow_insecure_permissions: args.allow_insecure_permissions,
        },
        plugins: config.plugins,
        max_message_bytes: config.max_message_bytes,
    })?;
    let watcher = Watcher::start(host.clone(), &dir, args.config.as_deref())
        .with_context(|| format!("watching {}", dir.display()))?;
    let info = HostInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        plugins_dir: dir.clone(),
    };
    let server = ControlServer::start(host.clone(), info, &socket, config.max_message_bytes)
        .with_context(|| format!("control socket {}", socket.display()))?;
    tracing::info!(
        plugins = host.plugin_names().len(),
        "serving {} on {}",
        dir.display(),
        socket.display()
    );

    let signal = signals.forever().next().unwrap_or(SIGTERM);
    tracing::info!("received signal {signal}: finishing calls in flight, then unloading");
    watcher.stop();
    server.stop();
    host.unload_all();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
