//! The tasks: submit (202), list (paged), one task with its follow-ups as a tree, cancel
//! and retry with a reason (kept as a note on the task, shown with it), and its events (SSE). The store's
//! work runs on blocking threads.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::events::{self, resume_after, Feed, TaskEvent};
use super::limits::read_json;
use super::routes_plugins::blocking;
use super::server::AppState;
use crate::services::tasks::schedule::{parse_duration, parse_time};
use crate::services::tasks::{NewTask, TaskFilter, TaskId, TaskOptions, TaskStatus, Tasks};

fn tasks(state: &AppState) -> Result<Tasks, ApiError> {
    state.tasks.clone().map_err(|reason| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            format!("tasks are unavailable: {reason}"),
        )
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The body of `POST /v1/tasks`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Submit {
    plugin: String,
    callback: String,
    #[serde(default)]
    input: Option<Box<serde_json::value::RawValue>>,
    key: Option<String>,
    priority: Option<i64>,
    /// When to run it: RFC 3339, `+5m`, `now`, or Unix seconds.
    at: Option<String>,
    /// Skip it if its key succeeded this recently (`1h`).
    age: Option<String>,
    max_attempts: Option<u32>,
}

pub(super) async fn submit(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let submit: Submit = read_json(&state.settings, body).await?;
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    let tasks = tasks(&state)?;
    let now = now_ms();
    let not_before = submit
        .at
        .as_deref()
        .map(|at| parse_time(at, now))
        .transpose()
        .map_err(|err| ApiError::invalid(format!("at: {}", err.0)))?;
    let age = submit
        .age
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|err| ApiError::invalid(format!("age: {}", err.0)))?;
    let options = TaskOptions {
        key: submit.key,
        priority: submit.priority.unwrap_or(0),
        max_attempts: submit.max_attempts,
        not_before_unix_ms: not_before,
        age_ms: age.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ..TaskOptions::default()
    };
    let input = submit.input.as_ref().map_or("null", |i| i.get());
    let mut task = NewTask::new(&submit.plugin, &submit.callback, input);
    task.options = options;
    let plugin = task.plugin.clone();
    let (submitted, note) = blocking(move || {
        let submitted = tasks.submit(task)?;
        Ok((submitted, tasks.waiting_note(&plugin)))
    })
    .await?;
    let body = json!({ "id": submitted.id(), "submitted": submitted, "message": note });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The query of `GET /v1/tasks`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    plugin: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
    cursor: Option<TaskId>,
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let tasks = tasks(&state)?;
    let mut filter = TaskFilter::default();
    filter.status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        Some(name) => Some(TaskStatus::parse(name).ok_or_else(|| {
            ApiError::invalid(format!(
                "status {name:?}: one of queued, running, success, failed, bad, skipped, \
                 refused, cancelled"
            ))
        })?),
        None => None,
    };
    filter.plugin = query.plugin.filter(|p| !p.is_empty());
    filter.since_unix_ms = query
        .since
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|since| parse_time(since, now_ms()))
        .transpose()
        .map_err(|err| ApiError::invalid(format!("since: {}", err.0)))?;
    filter.limit = query.limit.unwrap_or(50);
    filter.before = query.cursor;
    let page = blocking(move || tasks.list(&filter)).await?;
    Ok(Json(json!({ "tasks": page.tasks, "next": page.next })))
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<TaskId>,
) -> Result<Json<Value>, ApiError> {
    let tasks = tasks(&state)?;
    let (tree, notes) = blocking(move || Ok((tasks.task(id)?, tasks.notes(id)?))).await?;
    Ok(Json(json!({ "task": tree, "notes": notes })))
}

/// The body of a cancel or a retry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Reason {
    reason: Option<String>,
}

pub(super) async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<TaskId>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    change(state, id, body, false).await
}

pub(super) async fn retry(
    State(state): State<Arc<AppState>>,
    Path(id): Path<TaskId>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    change(state, id, body, true).await
}

async fn change(
    state: Arc<AppState>,
    id: TaskId,
    body: Body,
    retry: bool,
) -> Result<Json<Value>, ApiError> {
    let Reason { reason } = read_json(&state.settings, body).await?;
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    let tasks = tasks(&state)?;
    let message = blocking(move || {
        if retry {
            tasks.retry_because(id, reason.as_deref())
        } else {
            tasks.cancel_because(id, reason.as_deref())
        }
    })
    .await?;
    Ok(Json(json!({ "message": message })))
}

/// `GET /v1/tasks/{id}/events`: see [`events`](super::events).
pub(super) async fn events(
    State(state): State<Arc<AppState>>,
    Path(id): Path<TaskId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tasks = tasks(&state)?;
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "{} event streams are open, the limit (http.max_sse_streams)",
                state.settings.max_sse_streams
            ),
        )
    })?;
    // A task that does not exist is a 404, not an empty stream.
    let probe = tasks.clone();
    let Some((record, live)) = blocking(move || events::read(&probe, id, None)).await? else {
        return Err(ApiError::not_found(format!("no task {id}")));
    };
    let feed = state.feeds.watch(id);
    // Up to date before the stream reads it (a task retried since its feed ended is
    // active again). A feed whose poller runs is, and a read that may be older than the
    // poller's would take it back.
    if !feed.is_polling() {
        feed.update(live.as_ref(), &record);
    }
    let newest = feed.subscribe(&tasks);
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let after = resume_after(last, &feed);
    let stream = Stream {
        feed,
        newest,
        after,
        pending: Default::default(),
        done: false,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(stream, next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct Stream {
    feed: Arc<Feed>,
    newest: tokio::sync::watch::Receiver<u64>,
    after: u64,
    pending: std::collections::VecDeque<TaskEvent>,
    done: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

async fn next_event(mut stream: Stream) -> Option<(Result<Event, Infallible>, Stream)> {
    loop {
        if let Some(event) = stream.pending.pop_front() {
            stream.after = event.seq;
            let sse = Event::default()
                .id(format!("{}-{}", stream.feed.epoch, event.seq))
                .event(event.name)
                .data(event.data);
            return Some((Ok(sse), stream));
        }
        if stream.done {
            return None;
        }
        stream.newest.borrow_and_update();
        let (events, ended) = stream.feed.after(stream.after);
        if !events.is_empty() || ended {
            stream.pending.extend(events);
            stream.done = ended;
            continue;
        }
        if stream.newest.changed().await.is_err() {
            return None;
        }
    }
}
