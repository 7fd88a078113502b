//! A `tasks` answer, made off the runtime's threads and paid for before it is made: the
//! page is read from the store on a blocking thread (one page, at most `list_page_max`
//! tasks: the store is held for that page only), its encoded size is counted without
//! allocating, that many bytes are taken from the shared buffer pool (waiting for room up
//! to `write_timeout_ms`), and only then is the line allocated and written, on the same
//! blocking thread.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::protocol::Response;
use crate::services::tasks::{TaskFilter, Tasks};
use crate::types::call::{CallError, CallErrorKind};

/// What a connection writes back: a response to encode, or a line already encoded (and
/// paid for in the buffer pool: `held`).
pub(super) enum Answer {
    Response(Box<Response>),
    Encoded {
        line: Vec<u8>,
        _held: Option<OwnedSemaphorePermit>,
    },
}

impl From<Response> for Answer {
    fn from(response: Response) -> Answer {
        Answer::Response(Box::new(response))
    }
}

/// The pool, its units and how long an answer may wait for room.
pub(super) struct Pool {
    pub(super) buffers: Arc<Semaphore>,
    pub(super) units_for: fn(usize) -> usize,
    pub(super) wait: Duration,
}

/// Answers `tasks` with one page of the tasks matching `filter`.
pub(super) async fn answer(tasks: Tasks, filter: TaskFilter, pool: Pool) -> Answer {
    let runtime = tokio::runtime::Handle::current();
    let made = tokio::task::spawn_blocking(move || {
        let page = match tasks.list(&filter) {
            Ok(page) => page,
            Err(err) => return Answer::from(Response::error(err)),
        };
        let response = Response {
            tasks: Some(page.tasks),
            next: page.next,
            ..Response::new()
        };
        encode(&runtime, &response, &pool)
    })
    .await;
    made.unwrap_or_else(|_| {
        Answer::from(Response::error(CallError::new(
            CallErrorKind::Internal,
            "the listing's thread ended without an answer",
        )))
    })
}

/// `response` as a line, its bytes taken from the pool first (on a blocking thread).
fn encode(runtime: &tokio::runtime::Handle, response: &Response, pool: &Pool) -> Answer {
    let mut counted = Counter(0);
    if serde_json::to_writer(&mut counted, response).is_err() {
        // Only a bug could make our own types fail to serialise: say so, as to_line does.
        return Answer::from(Response::error(CallError::new(
            CallErrorKind::Internal,
            "cannot encode the task listing",
        )));
    }
    let len = counted.0 + 1;
    let units = (pool.units_for)(len);
    let held = if units > 0 {
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        let acquired = runtime.block_on(tokio::time::timeout(
            pool.wait,
            pool.buffers.clone().acquire_many_owned(units),
        ));
        match acquired {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                return Answer::from(Response::error(CallError::new(
                    CallErrorKind::Busy,
                    format!(
                        "no room for a task listing of {len} bytes in the shared buffers \
                         (max_buffered_bytes); try again later, or ask for fewer (--limit)"
                    ),
                )))
            }
        }
    } else {
        None
    };
    let mut line = Vec::with_capacity(len);
    if serde_json::to_writer(&mut line, response).is_err() {
        return Answer::from(Response::error(CallError::new(
            CallErrorKind::Internal,
            "cannot encode the task listing",
        )));
    }
    line.push(b'\n');
    Answer::Encoded { line, _held: held }
}

/// Counts the bytes written to it.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
