//! The `host` binary: parses the command line, sets up logging, runs one subcommand, and
//! turns its error into one line on stderr and an exit status that says what kind of
//! failure it was (see `exit`).

mod admin;
mod catalogue;
mod cli;
mod commands;
mod exit;
mod fleet;
mod new;
mod serve;
mod service;
mod tasks;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use host::config::LogFormat;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

/// What one-shot commands log unless `RUST_LOG` says otherwise: warnings, but not the
/// plugin's own records (they are part of the outcome, printed by `--json`).
const ONE_SHOT_LOG: &str = "warn,plugin=off";

fn main() -> ExitCode {
    // A worker process for an isolated plugin (started by `host serve`, never by hand).
    if std::env::args_os().nth(1).as_deref() == Some(host::isolation::WORKER_ARG.as_ref()) {
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(std::io::stderr)
            .init();
        return host::isolation::worker_main();
    }
    let cli = Cli::parse();
    // `serve` sets up its own logging, from host.toml.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(ONE_SHOT_LOG, LogFormat::Text);
    }
    let result = match cli.command {
        Command::Call(args) => commands::call(args),
        Command::List(args) => commands::list(args),
        Command::Check(args) => commands::check(args),
        Command::New(args) => new::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Restart(args) => admin::restart(args),
        Command::History(args) => admin::history(args),
        Command::Rollback(args) => admin::rollback(args),
        Command::Submit(args) => tasks::submit(args),
        Command::Tasks(args) => tasks::list(args),
        Command::Task(args) => tasks::show(args),
        Command::Cancel(args) => tasks::cancel(args),
        Command::Retry(args) => tasks::retry(args),
        Command::Service(args) => service::run(args),
        Command::Publish(args) => catalogue::publish(args),
        Command::Unpublish(args) => catalogue::unpublish(args),
        Command::Published(args) => catalogue::published(args),
        Command::Fleet(args) => fleet::list(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // One line: the chain of contexts, outermost first.
            eprintln!("error: {err:#}");
            exit::code_for(&err)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_filter`).
pub(crate) fn init_logging(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
