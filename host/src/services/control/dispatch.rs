//! Answering one request: [`handle`] decodes a request line and serves it, running
//! anything that blocks (plugin code, listings, histories, the task store) off the
//! runtime's threads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::catalogue_ops::catalogue_op;
use super::connection::units_for;
use super::protocol::{decode_request, Op, Response};
use super::server::Shared;
use super::task_listing::{self, Answer};
use super::task_ops::task_op;
use crate::registry::CallRequest;
use crate::types::call::{CallError, CallErrorKind};

/// Serves one request line.
pub(super) async fn handle(shared: &Arc<Shared>, line: &[u8]) -> Answer {
    let request = match decode_request(line) {
        Ok(request) => request,
        Err(err) => return Response::error(err).into(),
    };
    if let (Op::Tasks, Ok(tasks)) = (request.op, &shared.tasks) {
        let pool = task_listing::Pool {
            buffers: shared.buffers.clone(),
            units_for,
            wait: Duration::from_millis(shared.limits.write_timeout_ms),
        };
        let filter = request.filter.unwrap_or_default();
        return task_listing::answer(tasks.clone(), filter, pool).await;
    }
    let response = match request.op {
        Op::Call if shared.shutting_down.load(Ordering::Relaxed) => Response::error(
            CallError::new(CallErrorKind::ShuttingDown, "the host is shutting down"),
        ),
        Op::Call => {
            let input: Box<str> = request.input.unwrap_or_else(null).into();
            let call = CallRequest::new(
                request.plugin.unwrap_or_default(),
                request.callback.unwrap_or_default(),
                input,
            );
            match shared.host.invoke_async(call).await {
                Ok(outcome) => Response {
                    outcome: Some(outcome),
                    ..Response::new()
                },
                Err(err) => Response::error(err),
            }
        }
        // A listing may compute SHA-256s left for later: not on the runtime's threads.
        Op::List => {
            let host = shared.host.clone();
            match tokio::task::spawn_blocking(move || host.status()).await {
                Ok(files) => Response {
                    files: Some(files),
                    ..Response::new()
                },
                Err(_) => Response::error(CallError::new(
                    CallErrorKind::Internal,
                    "the listing's thread ended without an answer",
                )),
            }
        }
        Op::Ping => Response {
            host: Some(shared.info.clone()),
            ..Response::new()
        },
        Op::Submit | Op::Tasks | Op::Task | Op::Cancel | Op::Retry => {
            task_op(shared, request).await
        }
        Op::Publish | Op::Unpublish | Op::Published => catalogue_op(shared, request).await,
        Op::Restart | Op::Rollback if shared.shutting_down.load(Ordering::Relaxed) => {
            Response::error(CallError::new(
                CallErrorKind::ShuttingDown,
                "the host is shutting down",
            ))
        }
        // Starting a worker or an init runs plugin code, and a history may compute SHA-256s:
        // never on the runtime's threads.
        Op::Restart | Op::Rollback | Op::History => {
            let (host, plugin) = (shared.host.clone(), request.plugin.unwrap_or_default());
            let (op, generation) = (request.op, request.generation);
            blocking(move || match op {
                Op::History => host.history(&plugin).map(|history| Response {
                    history: Some(history),
                    ..Response::new()
                }),
                Op::Rollback => host.rollback(&plugin, generation).map(message),
                _ => host.restart_plugin(&plugin).map(message),
            })
            .await
        }
    };
    response.into()
}

/// Runs `serve` on a blocking thread (it runs plugin code or does I/O), never on the
/// runtime's threads.
pub(super) async fn blocking(
    serve: impl FnOnce() -> Result<Response, CallError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(serve).await {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => Response::error(err),
        Err(_) => Response::error(CallError::new(
            CallErrorKind::Internal,
            "the request's thread ended without an answer",
        )),
    }
}

pub(super) fn message(message: String) -> Response {
    Response {
        message: Some(message),
        ..Response::new()
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
}
