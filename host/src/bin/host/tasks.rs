//! The task commands: `submit`, `tasks`, `task`, `cancel` and `retry`. Each talks to the
//! running host, which owns the task database.

use std::io::Write;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use host::control::{Client, ClientError};
use host::tasks::schedule::{format_duration_ms, parse_duration, parse_time};
use host::tasks::{Inserted, TaskFilter, TaskId, TaskOptions, TaskRecord, TaskStatus, TaskTree};

use crate::admin::{answer, connect};
use crate::cli::{SubmitArgs, TaskArgs, TaskIdArgs, TasksArgs};
use crate::commands::{age, write_rows};
use crate::exit::{Failure, USAGE};

fn usage(message: String) -> anyhow::Error {
    Failure::new(USAGE, message).into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

pub fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let input = args.input.unwrap_or_else(|| "null".to_owned());
    if let Err(err) = serde_json::from_str::<serde_json::Value>(&input) {
        return Err(usage(format!("--input is not JSON: {err}")));
    }
    let mut options = TaskOptions::default();
    options.key = args.key;
    options.priority = args.priority.unwrap_or(0);
    options.max_attempts = args.max_attempts;
    if let Some(at) = &args.at {
        options.not_before_unix_ms =
            Some(parse_time(at, now_ms()).map_err(|e| usage(format!("--at: {e}")))?);
    }
    if let Some(age) = &args.age {
        let age = parse_duration(age).map_err(|e| usage(format!("--age: {e}")))?;
        options.age_ms = Some(millis(age));
    }
    if let Some(delays) = &args.retry_delays {
        let delays: Result<Vec<u64>, _> = delays
            .split(',')
            .map(|d| parse_duration(d.trim()).map(millis))
            .collect();
        options.retry_delays_ms = Some(delays.map_err(|e| usage(format!("--retry-delays: {e}")))?);
    }
    let mut client = connect(args.socket)?;
    let (submitted, note) = answer(
        client.submit_noted(&args.plugin, &args.callback, &input, options),
        "submitting the task to the running host",
    )?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    if args.json {
        println!("{}", serde_json::to_string(&submitted)?);
        return Ok(ExitCode::SUCCESS);
    }
    match submitted {
        Inserted::Queued(id) => println!("queued task {id}"),
        Inserted::Duplicate(id) => {
            println!("not queued: task {id}, with the same key, is queued or running")
        }
        Inserted::Skipped(id) => {
            println!("skipped (task {id}): a task with its key succeeded within --age")
        }
        Inserted::Refused(id) => println!("refused (task {id}); see `host task {id}`"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(args: TasksArgs) -> Result<ExitCode> {
    let mut filter = TaskFilter::default();
    filter.status = match args.status.as_deref() {
        None => None,
        Some(name) => Some(TaskStatus::parse(name).ok_or_else(|| {
            let names: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
            usage(format!(
                "--status {name:?}: give one of {}",
                names.join(", ")
            ))
        })?),
    };
    filter.plugin = args.plugin;
    if let Some(since) = &args.since {
        // A bare duration means that long ago.
        let since = match parse_duration(since) {
            Ok(ago) => now_ms().saturating_sub(millis(ago)),
            Err(_) => parse_time(since, now_ms()).map_err(|e| usage(format!("--since: {e}")))?,
        };
        filter.since_unix_ms = Some(since);
    }
    filter.limit = args.limit;
    let mut client = connect(args.socket)?;
    let tasks = answer(
        client.tasks(filter),
        "asking the running host for its tasks",
    )?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &tasks)?;
        writeln!(stdout)?;
        return Ok(ExitCode::SUCCESS);
    }
    let header = [
        "ID", "STATUS", "PLUGIN", "CALLBACK", "ATTEMPTS", "CREATED", "ENDED", "PARENT", "ERROR",
    ];
    let mut rows = vec![header.map(str::to_owned)];
    for task in &tasks {
        let dash = || "-".to_owned();
        rows.push([
            task.id.to_string(),
            status_of(task),
            task.plugin.clone(),
            task.callback.clone(),
            format!("{}/{}", task.attempts, task.max_attempts),
            age(task.created_unix_ms),
            task.finished_unix_ms.map_or_else(dash, age),
            task.parent.map_or_else(dash, |p| p.to_string()),
            task.error
                .as_deref()
                .map_or_else(dash, |e| e.chars().take(80).collect()),
        ]);
    }
    write_rows(&mut stdout, &rows)?;
    Ok(ExitCode::SUCCESS)
}

/// Its status, and for a queued task not yet due, when it is.
fn status_of(task: &TaskRecord) -> String {
    let now = now_ms();
    if task.status == TaskStatus::Queued && task.not_before_unix_ms > now {
        return format!(
            "queued (in {})",
            format_duration_ms(task.not_before_unix_ms - now)
        );
    }
    task.status.to_string()
}

pub fn show(args: TaskArgs) -> Result<ExitCode> {
    let mut client = connect(args.socket)?;
    let tree = answer(client.task(args.id), "asking the running host for the task")?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &tree)?;
        writeln!(stdout)?;
        return Ok(ExitCode::SUCCESS);
    }
    let task = &tree.task;
    writeln!(
        stdout,
        "task {}: {} (attempt {} of {})",
        task.id,
        status_of(task),
        task.attempts,
        task.max_attempts
    )?;
    writeln!(
        stdout,
        "call:      {} {} {}",
        task.plugin, task.callback, task.input
    )?;
    writeln!(stdout, "key:       {}", task.key)?;
    if task.priority != 0 {
        writeln!(stdout, "priority:  {}", task.priority)?;
    }
    writeln!(stdout, "created:   {}", age(task.created_unix_ms))?;
    if let Some(started) = task.started_unix_ms {
        writeln!(stdout, "started:   {}", age(started))?;
    }
    if let Some(ended) = task.finished_unix_ms {
        writeln!(stdout, "ended:     {}", age(ended))?;
    }
    if let Some(parent) = task.parent {
        writeln!(stdout, "parent:    task {parent}")?;
    }
    if let Some(schedule) = &task.schedule {
        writeln!(stdout, "schedule:  {schedule}")?;
    }
    if let Some(generation) = task.generation {
        writeln!(stdout, "generation: {generation}")?;
    }
    if let Some(result) = &task.result {
        writeln!(stdout, "result:    {result}")?;
    }
    if let Some(error) = &task.error {
        writeln!(stdout, "error:     {error}")?;
    }
    if !task.logs.is_empty() {
        writeln!(stdout, "logs:")?;
        for record in &task.logs {
            writeln!(stdout, "  {:?} {}", record.level, record.message)?;
        }
    }
    if !tree.children.is_empty() {
        writeln!(stdout, "follow-ups:")?;
        write_tree(&mut stdout, &tree.children, 1)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_tree(out: &mut impl Write, children: &[TaskTree], depth: usize) -> Result<()> {
    for child in children {
        let task = &child.task;
        let indent = "  ".repeat(depth);
        let detail = task
            .error
            .as_deref()
            .or(task.result.as_deref())
            .map(|d| format!(": {}", d.chars().take(80).collect::<String>()))
            .unwrap_or_default();
        writeln!(
            out,
            "{indent}{} {} {}.{}{detail}",
            task.id,
            status_of(task),
            task.plugin,
            task.callback
        )?;
        write_tree(out, &child.children, depth + 1)?;
    }
    Ok(())
}

pub fn cancel(args: TaskIdArgs) -> Result<ExitCode> {
    say(
        args,
        Client::cancel,
        "asking the running host to cancel the task",
    )
}

pub fn retry(args: TaskIdArgs) -> Result<ExitCode> {
    say(
        args,
        Client::retry,
        "asking the running host to queue the task again",
    )
}

/// Asks the running host to do `what` to task `args.id`, and prints its one-line answer.
fn say(
    args: TaskIdArgs,
    what: fn(&mut Client, TaskId) -> Result<String, ClientError>,
    doing: &'static str,
) -> Result<ExitCode> {
    let mut client = connect(args.socket)?;
    println!("{}", answer(what(&mut client, args.id), doing)?);
    Ok(ExitCode::SUCCESS)
}
