//! The task operations (`submit`, `tasks`, `task`, `cancel`, `retry`), served with the
//! host's task runner on a blocking thread, or refused when the host runs no tasks. (A
//! `tasks` listing on a host that runs tasks is answered by
//! [`task_listing`](super::task_listing), paid for in the buffer pool.)

use std::sync::Arc;

use super::dispatch::{blocking, message};
use super::protocol::{Op, Response};
use super::server::Shared;
use crate::services::tasks::NewTask;
use crate::types::call::{CallError, CallErrorKind};

/// Serves a task operation, on a blocking thread (the store does I/O).
pub(super) async fn task_op(shared: &Arc<Shared>, request: super::protocol::Request) -> Response {
    let tasks = match &shared.tasks {
        Ok(tasks) => tasks.clone(),
        Err(reason) => {
            return Response::error(CallError::new(
                CallErrorKind::Internal,
                format!("tasks are unavailable: {reason}"),
            ))
        }
    };
    blocking(move || {
        let id = request.task.unwrap_or_default();
        match request.op {
            Op::Submit => {
                let mut task = NewTask::new(
                    request.plugin.as_deref().unwrap_or_default(),
                    request.callback.as_deref().unwrap_or_default(),
                    request.input.as_ref().map_or("null", |i| i.get()),
                );
                task.options = request.options.unwrap_or_default();
                let plugin = task.plugin.clone();
                tasks.submit(task).map(|submitted| Response {
                    submitted: Some(submitted),
                    message: tasks.waiting_note(&plugin),
                    ..Response::new()
                })
            }
            Op::Tasks => tasks
                .list(&request.filter.unwrap_or_default())
                .map(|page| Response {
                    tasks: Some(page.tasks),
                    next: page.next,
                    ..Response::new()
                }),
            Op::Task => tasks.task(id).map(|tree| Response {
                task: Some(tree),
                ..Response::new()
            }),
            Op::Cancel => tasks.cancel(id).map(message),
            _ => tasks.retry(id).map(message),
        }
    })
    .await
}
