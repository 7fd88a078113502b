//! A call's log records as the plugin writes them (plugin ABI 1.5): where they go
//! ([`LogSink`]), and the per-call bound on what is forwarded there ([`LiveLog`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use plugin_api::abi::FfiLogRecord;
use plugin_api::LogRecord;

use crate::types::call::RECORD_OVERHEAD;

/// Where a call's log records go while it runs, each as the plugin writes it: give one to
/// `CallRequest::live_logs` (`host::CallRequest`). Called on the host's call
/// thread (or, for an isolated plugin, the thread reading its worker's channel), in the
/// order the plugin wrote them; it should return quickly. A panic in it is caught, and that
/// record is lost for it.
///
/// Only plugins built against plugin ABI 1.5 or later send records live; an older plugin's
/// records come only with the call's outcome. The records sent are bounded like the
/// outcome's: past `max_log_bytes_per_call`, nothing more is sent. Every record sent also
/// comes with the outcome (unless the outcome's own, smaller, bounds cut it).
///
/// ```
/// use host::LogSink;
///
/// let sink = LogSink::new(|record| println!("live: {}", record.message));
/// # let _ = sink;
/// ```
#[derive(Clone)]
pub struct LogSink(Arc<dyn Fn(&LogRecord) + Send + Sync>);

impl LogSink {
    /// A sink that calls `f` with each record.
    pub fn new(f: impl Fn(&LogRecord) + Send + Sync + 'static) -> LogSink {
        LogSink(Arc::new(f))
    }

    /// Hands `record` to the sink; a panic in it is caught.
    fn send(&self, record: &LogRecord) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (self.0)(record))) {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        }
    }
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink").finish_non_exhaustive()
    }
}

/// One call's records on their way to its [`LogSink`], within the call's log budget
/// (`max_log_bytes_per_call`), counted as [`Budget::logs`](crate::types::call::Budget::logs)
/// counts the outcome's: the records sent are a prefix of the call's, and once one does not
/// fit, no later one is sent.
#[derive(Debug)]
pub(crate) struct LiveLog {
    sink: LogSink,
    left: AtomicUsize,
    full: AtomicBool,
}

impl LiveLog {
    /// Sends at most `max_log_bytes` (as the log budget counts them) to `sink`.
    pub(crate) fn new(sink: LogSink, max_log_bytes: usize) -> LiveLog {
        LiveLog {
            sink,
            left: AtomicUsize::new(max_log_bytes),
            full: AtomicBool::new(false),
        }
    }

    /// Whether a record of `message_len` bytes still fits: its cost is then spent.
    fn fits(&self, message_len: usize) -> bool {
        if self.full.load(Ordering::Acquire) {
            return false;
        }
        let cost = message_len.saturating_add(RECORD_OVERHEAD);
        let spent = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(cost)
            });
        if spent.is_err() {
            self.full.store(true, Ordering::Release);
        }
        spent.is_ok()
    }

    /// Sends `record` if it fits (see [`LiveLog::fits`]); whether it was sent.
    pub(crate) fn send(&self, record: &LogRecord) -> bool {
        let fits = self.fits(record.message.len());
        if fits {
            self.sink.send(record);
        }
        fits
    }

    /// [`LiveLog::send`] for a record still in the plugin's library: copied only if it
    /// fits.
    pub(crate) fn send_ffi(&self, record: &FfiLogRecord) {
        if self.fits(record.message.len()) {
            self.sink.send(&LogRecord::from(record));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn records_are_sent_until_the_first_that_does_not_fit_and_none_after_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let sink = LogSink::new(move |r| into.lock().unwrap().push(r.message.clone()));
        let live = LiveLog::new(sink, 2 * (10 + RECORD_OVERHEAD));
        let record = |message: &str| LogRecord {
            level: plugin_api::Level::Info,
            message: message.to_owned(),
            unix_ms: 1,
        };
        assert!(live.send(&record("0123456789")));
        assert!(!live.send(&record("this one is too long for what is left")));
        assert!(!live.send(&record("short")), "a prefix only");
        assert_eq!(*seen.lock().unwrap(), ["0123456789"]);
    }

    #[test]
    fn a_sink_that_panics_loses_its_record_and_nothing_else() {
        let sink = LogSink::new(|_| panic!("sink failed"));
        let live = LiveLog::new(sink, 1000);
        let record = LogRecord {
            level: plugin_api::Level::Info,
            message: "x".to_owned(),
            unix_ms: 1,
        };
        assert!(live.send(&record));
        assert!(live.send(&record));
    }
}
