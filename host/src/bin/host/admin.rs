//! The commands that act on the running host's plugins: `restart`, `history` and
//! `rollback`. Each needs a host that answers on the control socket.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use host::control::{Client, ClientError};
use host::HistoryEntry;

use crate::cli::{HistoryArgs, HostSocket, RestartArgs, RollbackArgs};
use crate::commands::{age, write_rows};
use crate::exit::{Failure, NOT_FOUND};

/// A connection to the host on `socket` (`--socket`, the socket of `--config` or of
/// `$HOST_CONFIG`, or the default socket), or an error saying none answers.
pub(crate) fn connect(socket: HostSocket) -> Result<Client> {
    let (path, _) = socket.resolve()?;
    Client::connect(&path).map_err(|err| {
        Failure::new(
            NOT_FOUND,
            format!("no host answers on {}: {err}", path.display()),
        )
        .into()
    })
}

/// The host's answer, or its refusal as the error (it names what was wrong), or what went
/// wrong talking to it, `doing` what.
pub(crate) fn answer<T>(result: Result<T, ClientError>, doing: &'static str) -> Result<T> {
    match result {
        Ok(answer) => Ok(answer),
        Err(ClientError::Refused(err)) => Err(err.into()),
        Err(err) => Err(err).context(doing),
    }
}

pub fn restart(args: RestartArgs) -> Result<ExitCode> {
    let mut client = connect(args.socket)?;
    let message = answer(
        client.restart(&args.plugin),
        "asking the running host to restart the plugin",
    )?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(args: RollbackArgs) -> Result<ExitCode> {
    let mut client = connect(args.socket)?;
    let message = answer(
        client.rollback(&args.plugin, args.to),
        "asking the running host to roll the plugin back",
    )?;
    println!("{message}");
    Ok(ExitCode::SUCCESS)
}

pub fn history(args: HistoryArgs) -> Result<ExitCode> {
    let mut client = connect(args.socket)?;
    let history = answer(
        client.history(&args.plugin),
        "asking the running host for the plugin's history",
    )?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &history)?;
        writeln!(stdout)?;
    } else {
        write_history(&mut stdout, &history)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_history(out: &mut impl Write, history: &[HistoryEntry]) -> Result<()> {
    let header = [
        "GEN", "VERSION", "SHA256", "LOADED", "RETIRED", "CALLS", "ERRORS", "ENDED",
    ];
    let mut rows = vec![header.map(str::to_owned)];
    for entry in history {
        let dash = || "-".to_owned();
        let mut ended = entry
            .ended
            .map_or_else(|| "serving".to_owned(), |e| e.as_str().to_owned());
        if let Some(of) = entry.rollback_of {
            ended.push_str(&format!(" (a rollback to generation {of})"));
        }
        if entry.kept {
            ended.push_str(", copy kept");
        }
        rows.push([
            entry.generation.to_string(),
            entry.version.clone(),
            entry
                .sha256
                .as_deref()
                .map_or_else(dash, |s| s.chars().take(12).collect()),
            age(entry.loaded_at_unix_ms),
            entry.retired_at_unix_ms.map_or_else(dash, age),
            entry.calls.to_string(),
            entry.errors.to_string(),
            ended,
        ]);
    }
    write_rows(out, &rows)
}
