//! One connection: reading its requests and writing their answers, in order, with the
//! buffers charged to the shared pool.
//!
//! Answers on one connection keep the order of its requests: a connection reads its next
//! request only after answering the last.
//!
//! Memory is bounded: a request line may not exceed `max_message_bytes`, each connection
//! reads through a stack buffer and holds only the bytes of the request it is reading, and
//! every request or answer buffer over [`FREE_BYTES`] takes its size from one pool of
//! `max_buffered_bytes` shared by all connections (a request that finds the pool empty is
//! refused; an answer waits for room until `write_timeout_ms`).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::dispatch::handle;
use super::protocol::{too_large, Response};
use super::server::{Phase, Shared};
use super::task_listing::Answer;
use crate::types::call::{CallError, CallErrorKind};

/// Bytes of request or answer a connection may hold without drawing on the shared pool.
pub(super) const FREE_BYTES: usize = 64 * 1024;
/// The pool of buffer bytes is counted in units of this many bytes.
pub(super) const UNIT: usize = 1024;

/// Serves one connection until the client closes it, it breaks a limit, or the server
/// closes.
pub(super) async fn serve_connection(
    shared: Arc<Shared>,
    stream: UnixStream,
    mut phase: watch::Receiver<Phase>,
    _connection: OwnedSemaphorePermit,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut request = Request::default();
    loop {
        let line = tokio::select! {
            _ = phase.wait_for(|p| *p == Phase::Closed) => return,
            line = request.read(&shared, &mut reader) => line,
        };
        // Counted until its answer is written (or the connection is gone), for wait_idle.
        let _answering = Answering::new(&shared.answering);
        let response = match line {
            Ok(Some(line)) => handle(&shared, &line).await,
            Ok(None) => return,
            Err(error) => {
                // The connection cannot go on (it cannot be resynchronised, or it broke a
                // limit): say why, then close it.
                let _ = write(&shared, &mut writer, &Response::error(error).into()).await;
                return;
            }
        };
        request.finish();
        if let Err(err) = write(&shared, &mut writer, &response).await {
            tracing::debug!("control socket: closing a connection: {err}");
            return;
        }
    }
}

/// One request being answered, counted in `Shared::answering` while it lives.
struct Answering<'a>(&'a AtomicUsize);

impl<'a> Answering<'a> {
    fn new(count: &'a AtomicUsize) -> Answering<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Answering(count)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The request a connection is reading, and the pool bytes it holds for it.
#[derive(Default)]
struct Request {
    buf: Vec<u8>,
    /// Where the search for the end of the line resumes.
    scanned: usize,
    held: Option<OwnedSemaphorePermit>,
}

impl Request {
    /// Reads until a whole line is there. `Ok(None)`: the client closed the connection (or
    /// it stayed idle past `idle_timeout_ms`).
    async fn read(
        &mut self,
        shared: &Shared,
        reader: &mut OwnedReadHalf,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let limits = &shared.limits;
        let mut first_byte: Option<Instant> = (!self.buf.is_empty()).then(Instant::now);
        loop {
            if let Some(end) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let end = self.scanned + end;
                if end > limits.max_message_bytes {
                    return Err(limit_error(limits.max_message_bytes));
                }
                let rest = self.buf.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                self.scanned = 0;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > limits.max_message_bytes {
                return Err(limit_error(limits.max_message_bytes));
            }
            let wait = match first_byte {
                None => Duration::from_millis(limits.idle_timeout_ms),
                Some(at) => {
                    let limit = Duration::from_millis(limits.request_timeout_ms);
                    match limit.checked_sub(at.elapsed()) {
                        Some(left) => left,
                        None => {
                            return Err(CallError::new(
                                CallErrorKind::InvalidRequest,
                                format!(
                                    "the request did not arrive whole within {} ms \
                                     (request_timeout_ms)",
                                    limits.request_timeout_ms
                                ),
                            ))
                        }
                    }
                }
            };
            match tokio::time::timeout(wait, reader.readable()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(None),
                // Idle for too long: close quietly. A partial request: the next turn says so.
                Err(_) if first_byte.is_none() => return Ok(None),
                Err(_) => continue,
            }
            // Read through the stack, so an idle connection holds no buffer at all.
            let mut chunk = [0u8; 16 * 1024];
            match reader.try_read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => {
                    first_byte.get_or_insert_with(Instant::now);
                    self.reserve(shared, self.buf.len() + n)?;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Makes sure the pool bytes held cover a buffer of `len` bytes.
    fn reserve(&mut self, shared: &Shared, len: usize) -> Result<(), CallError> {
        let needed = units_for(len);
        let held = self.held.as_ref().map_or(0, |p| p.num_permits());
        if needed <= held {
            return Ok(());
        }
        let more = u32::try_from(needed - held).unwrap_or(u32::MAX);
        match shared.buffers.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                Ok(())
            }
            Err(_) => Err(CallError::new(
                CallErrorKind::Busy,
                format!(
                    "the host's request buffers are full ({} bytes in use by all connections, \
                     max_buffered_bytes); try again later",
                    shared.limits.max_buffered_bytes
                ),
            )),
        }
    }

    /// The request has been answered: give back its buffer and pool bytes (what is left is
    /// the start of the next request, if the client sent one already).
    fn finish(&mut self) {
        if self.buf.capacity() > FREE_BYTES {
            self.buf.shrink_to(FREE_BYTES.max(self.buf.len()));
        }
        if units_for(self.buf.len()) == 0 {
            self.held = None;
        }
    }
}

/// Pool units needed for a buffer of `len` bytes (the first [`FREE_BYTES`] are free).
pub(super) fn units_for(len: usize) -> usize {
    len.saturating_sub(FREE_BYTES).div_ceil(UNIT)
}

fn limit_error(limit: usize) -> CallError {
    CallError::new(CallErrorKind::InvalidRequest, too_large(limit).to_string())
}

/// Writes `answer` within `write_timeout_ms`, its buffer counted against the pool (an
/// encoded answer was counted before it was made).
async fn write(shared: &Shared, writer: &mut OwnedWriteHalf, answer: &Answer) -> io::Result<()> {
    let (line, paid) = match answer {
        Answer::Response(response) => (std::borrow::Cow::Owned(response.to_line()), false),
        Answer::Encoded { line, .. } => (std::borrow::Cow::Borrowed(line), true),
    };
    let timeout = Duration::from_millis(shared.limits.write_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let units = if paid { 0 } else { units_for(line.len()) };
    let _held = if units > 0 {
        let units = u32::try_from(units).unwrap_or(u32::MAX);
        match tokio::time::timeout_at(deadline, shared.buffers.clone().acquire_many_owned(units))
            .await
        {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no room for the answer in the shared buffers (max_buffered_bytes)",
                ))
            }
        }
    } else {
        None
    };
    match tokio::time::timeout_at(deadline, writer.write_all(&line)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client did not take its answer within {} ms (write_timeout_ms)",
                shared.limits.write_timeout_ms
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_draw_on_the_pool_only_past_the_free_bytes() {
        assert_eq!(units_for(0), 0);
        assert_eq!(units_for(FREE_BYTES), 0);
        assert_eq!(units_for(FREE_BYTES + 1), 1);
        assert_eq!(units_for(FREE_BYTES + UNIT + 1), 2);
    }
}
