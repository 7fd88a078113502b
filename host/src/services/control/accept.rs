//! Accepting connections: the accept loop, which checks who is connecting and how many are
//! open before it hands a connection on, and the throttle on what it logs.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::connection::serve_connection;
use super::protocol::Response;
use super::server::{Phase, Shared};
use crate::types::call::{CallError, CallErrorKind};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Logs a repeated problem at most once a second, with a count of what was not logged.
#[derive(Default)]
pub(super) struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub(super) fn warn(&mut self, message: impl std::fmt::Display) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now - last < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            tracing::warn!(
                "control socket: {message} ({} more like it in the last second)",
                self.suppressed
            );
        } else {
            tracing::warn!("control socket: {message}");
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

pub(super) async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut errors = Throttle::default();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = phase.wait_for(|p| *p >= Phase::ShuttingDown) => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(err) => {
                // Out of descriptors (EMFILE) and the like: retrying at once would spin.
                errors.warn(format_args!(
                    "accept failed: {err}; retrying in {} ms",
                    backoff.as_millis()
                ));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match super::peer_uid(&stream) {
            Ok(uid) if uid == crate::files::private_dir::euid() => {}
            Ok(uid) => {
                let reason = format!(
                    "peer uid {uid} is not this host's uid {}",
                    crate::files::private_dir::euid()
                );
                refuse(&shared, &stream, CallErrorKind::InvalidRequest, reason);
                continue;
            }
            Err(err) => {
                let reason = format!("cannot read peer credentials: {err}");
                refuse(&shared, &stream, CallErrorKind::InvalidRequest, reason);
                continue;
            }
        }
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            let reason = format!(
                "the host has {} connections open, its limit (max_connections); try again later",
                shared.limits.max_connections
            );
            refuse(&shared, &stream, CallErrorKind::Busy, reason);
            continue;
        };
        tokio::spawn(serve_connection(
            shared.clone(),
            stream,
            phase.clone(),
            permit,
        ));
    }
}

/// Tells a client in one line why its connection is refused, without waiting for it, and
/// closes the connection.
fn refuse(shared: &Shared, stream: &UnixStream, kind: CallErrorKind, reason: String) {
    lock(&shared.refused).warn(format_args!("refused a connection: {reason}"));
    let line = Response::error(CallError::new(kind, reason)).to_line();
    let _ = stream.try_write(&line);
}
