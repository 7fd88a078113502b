//! `host service unit`: prints the systemd units for this host (see `host::systemd`), with
//! the absolute path of the running binary and the `host serve` arguments given.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use host::config::HostConfig;
use host::systemd::{service_unit, socket_unit, UnitOptions};

use crate::cli::{ServiceArgs, ServiceCommand, UnitArgs};
use crate::exit::{Failure, USAGE};

pub fn run(args: ServiceArgs) -> Result<ExitCode> {
    match args.command {
        ServiceCommand::Unit(args) => unit(args),
    }
}

fn unit(args: UnitArgs) -> Result<ExitCode> {
    let binary = std::env::current_exe().context("finding the path of this host binary")?;
    let binary = std::fs::canonicalize(&binary).unwrap_or(binary);
    let config_path = crate::cli::config_path(args.config.clone())
        .map(|p| absolute(&p))
        .transpose()?;
    let config = match &config_path {
        Some(path) => HostConfig::load(path)?,
        None => HostConfig::default(),
    };
    if let Some(format) = &args.log_format {
        if !matches!(format.as_str(), "text" | "json") {
            return Err(Failure::new(
                USAGE,
                format!("--log-format {format:?}: expected text or json"),
            )
            .into());
        }
    }
    let watchdog = humantime::parse_duration(&args.watchdog)
        .ok()
        .filter(|d| *d >= Duration::from_secs(1))
        .ok_or_else(|| {
            Failure::new(
                USAGE,
                format!(
                    "--watchdog {:?}: expected a duration of at least 1s (`30s`, `2m`)",
                    args.watchdog
                ),
            )
        })?;
    // Paths in host.toml are relative to the file's directory, as `host serve` reads them.
    let config_dir = config_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let from_config = |p: &Option<PathBuf>| p.as_ref().map(|p| config_dir.join(p));
    let plugins = args
        .plugins
        .or_else(|| from_config(&config.plugins_dir))
        .unwrap_or_else(|| PathBuf::from("plugins"));
    let socket = args
        .socket
        .or_else(|| from_config(&config.socket))
        .unwrap_or_else(|| {
            if args.user {
                host::control::default_socket_path()
            } else {
                PathBuf::from("/run/plugin-host/host.sock")
            }
        });
    let socket = absolute(&socket)?;
    let state_dir = args
        .state_dir
        .or_else(|| from_config(&config.state_dir))
        .unwrap_or_else(|| {
            if args.user {
                let default = host::control::default_socket_path();
                let own = (socket != default).then_some(socket.as_path());
                host::state_dir::default_state_dir(own)
            } else {
                PathBuf::from("/var/lib/plugin-host")
            }
        });
    let mut options = UnitOptions::new(binary, absolute(&plugins)?, socket, absolute(&state_dir)?);
    options.config = config_path;
    options.log_format = args.log_format;
    options.watchdog = watchdog;
    options.shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
    options.user = args.user;
    options.http = args.http.or_else(|| config.http.listen.clone());
    if args.socket_unit {
        print!("{}", socket_unit(&options));
    } else {
        print!("{}", service_unit(&options));
    }
    Ok(ExitCode::SUCCESS)
}

/// `path` made absolute against the working directory (symlinks resolved where it exists).
fn absolute(path: &Path) -> Result<PathBuf> {
    if let Ok(real) = std::fs::canonicalize(path) {
        return Ok(real);
    }
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
