//! The one-shot commands: `call`, `list` and `check`, against a running host or a directory.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use host::config::HostConfig;
use host::config::Isolation;
use host::control::{Client, ClientError};
use host::isolation::IsolationOptions;
use host::isolation::WorkerStatus;
use host::Pinned;
use host::{
    inspect, CallOutcome, CallRequest, CopiesDir, FileStatus, Host, HostOptions, LoadOptions,
    PanicStrategy, RetiredState,
};

use crate::cli::{CallArgs, CheckArgs, ListArgs, Target};
use crate::exit::{Failure, NOT_FOUND, PLUGIN_ERROR, USAGE};

/// A connection to the running host that serves `target`, if one answers.
///
/// With a socket named (`--socket`, or `socket` in host.toml), that host must answer
/// (unless `--plugins` is also given). With `--plugins DIR`, the running host is used only
/// if it serves that same directory.
fn running_host(target: &Target) -> Result<Option<Client>> {
    let (path, named) = target.host.resolve()?;
    let mut client = match Client::connect(&path) {
        Ok(client) => client,
        Err(err) if named && target.plugins.is_none() => {
            return Err(Failure::new(
                NOT_FOUND,
                format!("no host answers on {}: {err}", path.display()),
            )
            .into());
        }
        Err(_) => return Ok(None),
    };
    let Some(dir) = &target.plugins else {
        return Ok(Some(client));
    };
    let info = client
        .ping()
        .with_context(|| format!("talking to the host on {}", path.display()))?;
    let same_dir = fs::canonicalize(dir).is_ok_and(|dir| dir == info.plugins_dir);
    Ok(same_dir.then_some(client))
}

/// The directory for a one-shot load, or an error saying what to pass.
fn plugins_dir(target: &Target) -> Result<&Path> {
    match &target.plugins {
        Some(dir) => Ok(dir),
        None => Err(Failure::new(
            NOT_FOUND,
            format!(
                "no running host answers on {} and no --plugins DIR was given",
                target.host.resolve()?.0.display()
            ),
        )
        .into()),
    }
}

/// A host for one-shot loads, with its private copies in `copies` (removed when the command
/// returns, even if a call it gave up on still holds the host).
fn one_shot_host(target: &Target, isolate_all: bool, copies: &CopiesDir) -> Result<Host> {
    let config = match target.host.config_path() {
        Some(path) => HostConfig::load(&path)?,
        None => HostConfig::default(),
    };
    Ok(Host::new(HostOptions {
        load: LoadOptions {
            copy_dir: Some(copies.path().to_owned()),
            ..load_options(target.allow_insecure_permissions)
        },
        plugins: config.plugins,
        max_message_bytes: config.max_message_bytes,
        max_log_bytes_per_call: config.max_log_bytes_per_call,
        max_call_threads: config.max_call_threads,
        isolation: IsolationOptions {
            isolate_all,
            ..IsolationOptions::default()
        },
    })?)
}

fn load_options(allow_insecure_permissions: bool) -> LoadOptions {
    LoadOptions {
        allow_insecure_permissions,
        ..LoadOptions::default()
    }
}

pub fn call(args: CallArgs) -> Result<ExitCode> {
    let input = read_input(&args)?;
    let outcome = match running_host(&args.target)? {
        Some(mut client) => match client.call(&args.plugin, &args.callback, &input) {
            Ok(outcome) => outcome,
            Err(ClientError::Refused(err)) => return Err(err.into()),
            Err(err) => return Err(err).context("calling the running host"),
        },
        None => {
            let dir = plugins_dir(&args.target)?;
            let copies = CopiesDir::create().context("creating the private copy directory")?;
            let host = one_shot_host(&args.target, args.isolated, &copies)?;
            let file = find_plugin(dir, &args.plugin)?;
            host.load_file(&file)?;
            // On the host's call pool: answered `timeout` at the plugin's deadline (the
            // process then exits, ending a stuck call with it).
            host.invoke(CallRequest::new(&*args.plugin, &*args.callback, input))?
        }
    };
    print_outcome(&outcome, args.json)
}

fn read_input(args: &CallArgs) -> Result<String> {
    let (input, source) = match (&args.input, &args.input_file) {
        (Some(input), _) => (input.clone(), "--input".to_owned()),
        (None, Some(path)) if path == Path::new("-") => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the input from stdin")?;
            (input, "stdin".to_owned())
        }
        (None, Some(path)) => {
            let input =
                fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            (input, path.display().to_string())
        }
        (None, None) => return Ok("null".to_owned()),
    };
    if let Err(err) = serde_json::from_str::<&serde_json::value::RawValue>(&input) {
        return Err(Failure::new(
            USAGE,
            format!("the input from {source} is not valid JSON: {err}"),
        )
        .into());
    }
    Ok(input)
}

fn print_outcome(outcome: &CallOutcome, json: bool) -> Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut stdout, outcome)?;
        writeln!(stdout)?;
    }
    match outcome.result() {
        Ok(result) => {
            if !json {
                writeln!(stdout, "{}", result.get())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            // One line, whatever the plugin put in its message.
            eprintln!(
                "error: plugin {} (generation {}), `{}`: {} [{}]",
                outcome.plugin,
                outcome.generation,
                outcome.callback,
                err.message().replace(['\r', '\n'], " "),
                err.kind()
            );
            Ok(ExitCode::from(PLUGIN_ERROR))
        }
    }
}

/// Plugin files in `dir`, sorted.
fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>> {
    host::watch::plugin_files(dir)
        .with_context(|| format!("reading the plugins directory {}", dir.display()))
}

/// The file in `dir` that declares plugin `name`, found without loading any: plugins record
/// their name in an ELF note, read straight from the file. A plugin built before the note
/// existed is matched by its file name (`libNAME.so` or `NAME.so`).
fn find_plugin(dir: &Path, name: &str) -> Result<PathBuf> {
    let named_like = |path: &PathBuf| {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let stem = stem.strip_prefix("lib").unwrap_or(stem);
        stem.replace('-', "_") == name.replace('-', "_")
    };
    let mut unnamed = Vec::new();
    for file in plugin_files(dir)? {
        match host::loader::declared_name(&file) {
            Ok(Some(declared)) if declared == name => return Ok(file),
            Ok(Some(_)) => {}
            Ok(None) if named_like(&file) => unnamed.push(file),
            Ok(None) | Err(_) => {}
        }
    }
    match unnamed.into_iter().next() {
        Some(file) => Ok(file),
        None => Err(Failure::new(
            NOT_FOUND,
            format!("no plugin named {name} in {}", dir.display()),
        )
        .into()),
    }
}

pub fn list(args: ListArgs) -> Result<ExitCode> {
    let client = running_host(&args.target)?;
    let running = client.is_some();
    let files: Vec<FileStatus> = match client {
        Some(mut client) => client
            .list()
            .context("listing the running host's plugins")?,
        None => {
            let dir = plugins_dir(&args.target)?;
            let copies = CopiesDir::create().context("creating the private copy directory")?;
            let options = LoadOptions {
                copy_dir: Some(copies.path().to_owned()),
                ..load_options(args.target.allow_insecure_permissions)
            };
            plugin_files(dir)?
                .into_iter()
                .map(|path| {
                    let (metadata, last_error) = match inspect(&path, &options) {
                        Ok(meta) => (Some(meta), None),
                        Err(err) => (None, Some(err.message().to_owned())),
                    };
                    FileStatus {
                        path,
                        metadata,
                        serving: None,
                        last_error,
                        retired: Vec::new(),
                        pinned: None,
                        stuck_inits: 0,
                        removed: false,
                    }
                })
                .collect()
        }
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &files)?;
        writeln!(stdout)?;
    } else {
        write_table(&mut stdout, &files, running)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_table(out: &mut impl Write, files: &[FileStatus], running: bool) -> Result<()> {
    let mut rows = vec![[
        "FILE".to_owned(),
        "PLUGIN".to_owned(),
        "VERSION".to_owned(),
        "GEN".to_owned(),
        "LOADED".to_owned(),
        "CALLS".to_owned(),
        "CALLBACKS / STATUS".to_owned(),
    ]];
    for file in files {
        let name = file.path.file_name().map_or_else(
            || file.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let dash = || "-".to_owned();
        let (gen, loaded, calls) = match &file.serving {
            Some(serving) => (
                serving.generation.to_string(),
                age(serving.loaded_at_unix_ms),
                serving.calls.to_string(),
            ),
            None => (dash(), dash(), dash()),
        };
        let (plugin, version, callbacks) = match &file.metadata {
            Some(meta) => (
                meta.name.clone(),
                meta.version.clone(),
                std::iter::once("execute")
                    .chain(meta.callbacks.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => (dash(), dash(), String::new()),
        };
        let mut notes = Vec::new();
        if let Some(worker) = file.serving.as_ref().and_then(|s| s.worker.as_ref()) {
            notes.push(worker_note(worker));
        }
        if file
            .metadata
            .as_ref()
            .is_some_and(|m| m.panic == PanicStrategy::Abort)
        {
            notes.push("built with panic = \"abort\"".to_owned());
        }
        if let Some(pinned) = &file.pinned {
            let isolated = file
                .serving
                .as_ref()
                .is_some_and(|s| s.isolation == Isolation::Process);
            notes.push(pinned_note(pinned, isolated));
        }
        if let Some(stuck) = file.serving.as_ref().map(|s| s.stuck).filter(|n| *n > 0) {
            notes.push(format!("{stuck} stuck"));
        }
        for retired in &file.retired {
            let generation = retired.generation;
            notes.push(match &retired.state {
                RetiredState::Draining { in_flight, stuck } if *stuck > 0 => {
                    format!("generation {generation}: {in_flight} calls draining, {stuck} stuck")
                }
                RetiredState::Draining { in_flight, .. } => {
                    format!("generation {generation}: {in_flight} calls draining")
                }
                RetiredState::Standby { until_unix_ms } => format!(
                    "generation {generation}: on standby to roll back to, for {}",
                    until(*until_unix_ms)
                ),
                RetiredState::Unloading => format!("generation {generation}: unloading"),
                RetiredState::StillMapped => match retired.mapped_bytes {
                    Some(bytes) => format!(
                        "generation {generation}: still mapped after unload, {}",
                        human_bytes(bytes)
                    ),
                    None => format!("generation {generation}: still mapped after unload"),
                },
                _ => format!("generation {generation}: retired"),
            });
        }
        if file.stuck_inits > 0 {
            notes.push(format!("{} init stuck", file.stuck_inits));
        }
        if file.removed {
            notes.push("file removed".to_owned());
        } else if running && file.serving.is_none() && file.last_error.is_none() {
            notes.push("disabled".to_owned());
        }
        let mut status = callbacks;
        if !notes.is_empty() {
            let sep = if status.is_empty() { "" } else { " " };
            status.push_str(&format!("{sep}({})", notes.join("; ")));
        }
        if let Some(err) = &file.last_error {
            let sep = if status.is_empty() { "" } else { "; " };
            status.push_str(&format!("{sep}error: {err}"));
        }
        rows.push([name, plugin, version, gen, loaded, calls, status]);
    }
    write_rows(out, &rows)
}

/// Writes a table: every column but the last padded to its widest cell.
pub(crate) fn write_rows<const N: usize>(out: &mut impl Write, rows: &[[String; N]]) -> Result<()> {
    let widths: Vec<usize> = (0..N - 1)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            write!(out, "{cell:width$}  ")?;
        }
        writeln!(out, "{}", row[N - 1])?;
    }
    Ok(())
}

/// A plugin's pinned versions, as one note: `2 versions pinned in memory, 1.4 MiB, max 3`,
/// and past the limit, why it runs in a worker process (or its reloads are refused).
fn pinned_note(pinned: &Pinned, isolated: bool) -> String {
    let versions = if pinned.versions == 1 {
        "1 version".to_owned()
    } else {
        format!("{} versions", pinned.versions)
    };
    let mut note = format!(
        "{versions} pinned in memory, {}, max {}",
        human_bytes(pinned.bytes),
        pinned.max
    );
    if pinned.limit_reached.is_some() {
        note.push_str(match isolated {
            true => ", limit reached: runs in a worker process",
            false => ", limit reached: reloads refused",
        });
    }
    note
}

/// `bytes` for people: `1.4 MiB`, `812 KiB`.
fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", bytes.div_ceil(1 << 10))
    }
}

/// An isolated generation's worker, as one note: `process, pid 4242, 1 restart, 1 crash`.
fn worker_note(worker: &WorkerStatus) -> String {
    let count = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut note = match worker.pid {
        Some(pid) => format!("process, pid {pid}"),
        None => "process, no worker running".to_owned(),
    };
    if let Some(sandbox) = &worker.sandbox {
        note.push_str(&format!(", sandbox: {sandbox}"));
    }
    if worker.restarts > 0 {
        note.push_str(&format!(
            ", {}",
            count(worker.restarts, "restart", "restarts")
        ));
    }
    if worker.crashes > 0 {
        note.push_str(&format!(", {}", count(worker.crashes, "crash", "crashes")));
    }
    if let Some(reason) = &worker.quarantined {
        note.push_str(&format!(", QUARANTINED: {reason}"));
    } else if let Some(last) = &worker.last_crash {
        note.push_str(&format!(", last crash: {last}"));
    }
    note
}

/// How long until a Unix-epoch millisecond timestamp, as `12s`.
fn until(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{}s", unix_ms.saturating_sub(now).div_ceil(1000))
}

/// How long ago a Unix-epoch millisecond timestamp was, as `42s ago`, `3m ago`, `5h ago`.
pub(crate) fn age(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(unix_ms) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let options = load_options(args.allow_insecure_permissions);
    let meta = match inspect(&args.file, &options) {
        Ok(meta) => meta,
        Err(err) => {
            if args.verbose {
                if let Some(detail) = err.detail() {
                    eprintln!("{detail}");
                }
            }
            return Err(err.into());
        }
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &meta)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}: ok", args.file.display())?;
        writeln!(stdout, "name:        {}", meta.name)?;
        writeln!(stdout, "version:     {}", meta.version)?;
        writeln!(stdout, "description: {}", meta.description)?;
        let callbacks: Vec<&str> = std::iter::once("execute")
            .chain(meta.callbacks.iter().map(String::as_str))
            .collect();
        writeln!(stdout, "callbacks:   {}", callbacks.join(", "))?;
        if !meta.schedules.is_empty() {
            let schedules: Vec<String> = meta
                .schedules
                .iter()
                .map(|s| {
                    format!(
                        "{} every {}",
                        s.callback,
                        host::tasks::schedule::format_duration_ms(s.every_ms)
                    )
                })
                .collect();
            writeln!(stdout, "schedules:   {}", schedules.join(", "))?;
        }
        writeln!(
            stdout,
            "plugin-api:  {} (ABI {})",
            meta.api_version, meta.abi_version
        )?;
        writeln!(stdout, "panic:       {}", meta.panic)?;
    }
    Ok(ExitCode::SUCCESS)
}
