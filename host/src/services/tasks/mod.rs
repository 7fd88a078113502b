//! Tasks: calls the host runs itself, later, again, or on a clock, with a record of each
//! that survives restarts. The seed of this project, pyspider's handler loader, had a
//! scheduler that ran the follow-ups its handlers returned; this is that scheduler.
//!
//! * [`task`]: what a task is (a call with options: key, priority, attempts, retry delays,
//!   not-before time, age) and the states it goes through;
//! * [`store`]: the one narrow interface to where tasks are kept, and [`SqliteStore`], the
//!   embedded SQLite database that keeps them by default;
//! * `service` ([`Tasks`]): the runner as its users see it: submit, list, cancel, retry;
//! * `runner`: takes due tasks, runs them on the host's call path, retries;
//!   `follow_ups`: turns a call's follow-ups into child tasks within limits; `retry`: how
//!   long a failed task waits;
//! * [`schedule`]: when periodic tasks fire (`every`, `cron`), and parsing durations and
//!   times; `zoned_cron`: a cron expression in a time zone across DST changes;
//!   `timetable`: which schedules are active;
//! * [`settings`]: `[tasks]` and `[[schedule]]` in host.toml.
//!
//! ```no_run
//! use std::sync::Arc;
//! use host::tasks::{NewTask, SqliteStore, TaskFilter, Tasks, TaskSettings};
//! use host::{Host, HostOptions};
//!
//! let host = Host::new(HostOptions::default())?;
//! host.load_file("plugins/libhello.so".as_ref())?;
//! let store = Arc::new(SqliteStore::open("state/tasks.db".as_ref())?);
//! let tasks = Tasks::start(host, store, TaskSettings::default(), Vec::new())?;
//! let submitted = tasks.submit(NewTask::new("hello", "greet", r#"{"name":"Ada"}"#))?;
//! println!("task {}", submitted.id());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attempt;
mod dispatcher;
mod follow_ups;
mod input_key;
mod list_statement;
mod live;
mod observe;
mod orphans;
mod postgres;
mod probe;
mod recording;
mod retry;
mod runner;
pub mod schedule;
mod service;
pub mod settings;
mod sqlite;
pub mod store;
pub mod task;
mod timetable;
mod zoned_cron;

pub use live::LiveLogs;
pub use observe::{RunTimes, RUN_TIME_BUCKETS_MS};
pub use postgres::PgStore;
pub use probe::DispatcherProbe;
pub use service::{TaskTree, Tasks};
pub use settings::{ScheduleConfig, TaskSettings};
pub use sqlite::SqliteStore;
pub use store::{Recovered, StoreError, TaskStore};
pub use task::{
    Finish, Insert, Inserted, NewTask, TaskFilter, TaskId, TaskOptions, TaskPage, TaskRecord,
    TaskStatus,
};
