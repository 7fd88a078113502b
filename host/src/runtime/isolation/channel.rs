//! The channel between the host and a worker process: one Unix stream socket, carrying
//! length-prefixed JSON frames both ways.
//!
//! A frame is a 4-byte little-endian length and that many bytes of JSON. The host sends
//! [`ToWorker`] frames, the worker answers with [`FromWorker`] frames. Calls carry an id, so
//! that many calls can be in flight on one channel and their answers come back in any order.
//! A frame may not exceed the limit both sides were given ([`frame_limit`]: what a legal
//! answer can take once encoded); the worker never sends a bigger one (an answer that would
//! be becomes an error saying so), so a bigger length prefix, or a frame that does not
//! decode, means the other side is broken: the host kills that worker (a crash naming why).

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::sandbox::Applied;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::runtime::handover::PreviousState;
use crate::runtime::loader::{LoadErrorKind, Metadata};
use crate::types::call::{CallError, CallOutcome, MAX_ERROR_MESSAGE};
use crate::types::settings::PluginSettings;
use plugin_api::LogRecord;

/// Room for a frame's envelope (ids, names, the outcome's fields) beyond its message.
pub(crate) const ENVELOPE_BYTES: usize = 64 * 1024;

/// How many bytes one byte of text may take escaped in JSON (a control character: `\u0001`).
const ESCAPED: usize = 6;

/// The largest frame either side accepts, for the host's `max_message_bytes` and
/// `max_log_bytes_per_call`: the largest legal answer, counted as it is encoded. Its result
/// (and a request's input) travels as the JSON it is, within `max_message`; but the text of
/// its log records (within `max_log_bytes`) and of its error (within [`MAX_ERROR_MESSAGE`])
/// is escaped, up to six-fold.
pub(crate) fn frame_limit(max_message: usize, max_log_bytes: usize) -> usize {
    max_log_bytes
        .saturating_add(MAX_ERROR_MESSAGE)
        .saturating_mul(ESCAPED)
        .saturating_add(max_message)
        .saturating_add(ENVELOPE_BYTES)
}

/// What the worker is to load: the first frame the host sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadRequest {
    /// The private copy to open (the host staged and checked it).
    pub(crate) copy: PathBuf,
    /// The plugin file it was copied from, for messages.
    pub(crate) source: PathBuf,
    /// The generation number the host gave this version.
    pub(crate) generation: u64,
    /// The plugin's settings (its configuration for `init` among them).
    pub(crate) settings: PluginSettings,
    /// The host's `max_message_bytes`.
    pub(crate) max_message_bytes: usize,
    /// The host's `max_log_bytes_per_call`.
    pub(crate) max_log_bytes_per_call: usize,
    /// The host's time-stamp counter rate, so that the worker need not calibrate its own.
    #[serde(default)]
    pub(crate) tsc_per_us: Option<f64>,
    /// The state the version this one replaces handed over, for `init`.
    #[serde(default)]
    pub(crate) previous: Option<PreviousState>,
}

/// A frame from the host to a worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// Load and start the plugin; sent once, first.
    Load(Box<LoadRequest>),
    /// Run a call.
    Call {
        id: u64,
        callback: String,
        input: Box<RawValue>,
        /// The call's deadline, in milliseconds since the Unix epoch (0: none).
        deadline_unix_ms: u64,
        /// No other call of the host's is in flight on this worker: the worker may run it
        /// on the thread that read it (the host rings the doorbell for anything that
        /// comes meanwhile).
        #[serde(default)]
        alone: bool,
        /// The caller wants the call's log records as the plugin writes them: the worker
        /// sends each as a [`FromWorker::Log`] frame before the answer, within
        /// `max_log_bytes_per_call`.
        #[serde(default)]
        live: bool,
    },
    /// The caller of call `id` gave up: tell the plugin to cancel it.
    Cancel { id: u64 },
    /// No call is running and none will come: drop the plugin and exit.
    Shutdown,
    /// The host holds the listener the worker announced (`FromWorker::Listener`) and serves
    /// it: the worker closes its own and goes on loading.
    Supervised,
}

/// A frame from a worker to the host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FromWorker {
    /// Its sandbox has `net = "loopback"`: descriptor `fd` of the worker is the listener of
    /// its notify filter, for the host to take (`pidfd_getfd`) and serve before the plugin
    /// is opened. The worker waits for `ToWorker::Supervised`.
    Listener { fd: i32 },
    /// The plugin is loaded and its `init` succeeded.
    Ready {
        metadata: Metadata,
        /// What `init` logged.
        logs: Vec<LogRecord>,
        /// The sandbox it runs in, if its settings have one.
        #[serde(default)]
        sandbox: Option<Applied>,
    },
    /// The plugin could not be loaded or started; the worker exits after sending this.
    Refused {
        kind: LoadErrorKind,
        message: String,
        detail: Option<String>,
        /// What `init` logged, if it ran.
        logs: Vec<LogRecord>,
    },
    /// Call `id`, still running, logged `record` (sent only for a call asked `live`).
    Log { id: u64, record: LogRecord },
    /// Call `id` is done.
    Done {
        id: u64,
        result: Result<CallOutcome, CallError>,
    },
}

/// Writes `frame` to `stream` in one piece.
pub(crate) fn write_frame(stream: &UnixStream, frame: &impl Serialize) -> io::Result<()> {
    write_encoded(stream, &encode(frame)?)
}

/// `frame` as it goes on the channel: its length, then its JSON.
pub(crate) fn encode(frame: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; 4];
    serde_json::to_writer(&mut bytes, frame).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len() - 4)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    Ok(bytes)
}

/// The length of the frame `encoded` holds (without its 4-byte prefix).
pub(crate) fn frame_len(encoded: &[u8]) -> usize {
    encoded.len().saturating_sub(4)
}

/// Writes a frame made by [`encode`].
pub(crate) fn write_encoded(mut stream: &UnixStream, encoded: &[u8]) -> io::Result<()> {
    stream.write_all(encoded)
}

/// How long a reader polls the channel before it sleeps in `read`. A sleeping reader is
/// woken by the kernel, and on a virtual machine a wake-up on another CPU costs tens of
/// microseconds: an answer that comes within this time is taken without one. Bounded, so
/// an idle channel costs nothing after it.
pub(crate) const SPIN: Duration = Duration::from_micros(50);

/// Reads frames from a stream, keeping a partial frame across reads that time out, so that
/// a reader may give up waiting without losing its place.
#[derive(Debug)]
pub(crate) struct FrameReader {
    stream: UnixStream,
    buf: Vec<u8>,
    limit: usize,
    /// The read timeout set on the socket, to set it only when it changes.
    timeout: Option<Duration>,
}

impl FrameReader {
    /// Reads frames of at most `limit` bytes from `stream`.
    pub(crate) fn new(stream: UnixStream, limit: usize) -> FrameReader {
        FrameReader {
            stream,
            buf: Vec::new(),
            limit,
            timeout: None,
        }
    }

    /// Accepts frames of at most `limit` bytes from now on.
    pub(crate) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// The next frame. `Ok(None)`: `deadline` passed first (the partial frame is kept).
    /// An error of kind `UnexpectedEof`: the other side closed the channel.
    pub(crate) fn next<T: for<'de> Deserialize<'de>>(
        &mut self,
        deadline: Option<Instant>,
    ) -> io::Result<Option<T>> {
        self.next_within(deadline, Duration::ZERO)
    }

    /// [`FrameReader::next`], polling for up to [`SPIN`] before sleeping: for a frame
    /// expected within microseconds, when no other work of ours needs the CPU (a reader
    /// that spins while calls run would take their CPU on a small machine).
    pub(crate) fn next_soon<T: for<'de> Deserialize<'de>>(
        &mut self,
        deadline: Option<Instant>,
    ) -> io::Result<Option<T>> {
        self.next_within(deadline, SPIN)
    }

    fn next_within<T: for<'de> Deserialize<'de>>(
        &mut self,
        deadline: Option<Instant>,
        spin: Duration,
    ) -> io::Result<Option<T>> {
        let spin_until = Instant::now() + spin;
        loop {
            if let Some(frame) = self.take()? {
                return Ok(Some(frame));
            }
            if Instant::now() < spin_until && deadline.is_none_or(|d| Instant::now() < d) {
                if self.read_ready()? {
                    continue;
                }
                std::hint::spin_loop();
                continue;
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(None),
                },
            };
            // A timeout rounded down to zero would mean "none" to the socket.
            let timeout = timeout.map(|t| t.max(Duration::from_micros(1)));
            if timeout != self.timeout {
                self.stream.set_read_timeout(timeout)?;
                self.timeout = timeout;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the channel was closed",
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Reads what is there without waiting; whether anything was.
    fn read_ready(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        // SAFETY: the descriptor is owned by `self.stream`; `chunk` is valid for its length.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the channel was closed",
            )),
            n if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n as usize]);
                Ok(true)
            }
            _ => match io::Error::last_os_error() {
                err if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
                {
                    Ok(false)
                }
                err => Err(err),
            },
        }
    }

    /// A whole frame from the buffer, if one is there.
    fn take<T: for<'de> Deserialize<'de>>(&mut self) -> io::Result<Option<T>> {
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes, over the limit of {}", self.limit),
            ));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let frame = serde_json::from_slice(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        if self.buf.capacity() > 1 << 20 && self.buf.len() < 1 << 16 {
            self.buf.shrink_to(1 << 16);
        }
        frame.map(Some).map_err(|err| {
            io::Error::new(io::ErrorKind::InvalidData, format!("a bad frame: {err}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_in_order_and_a_timeout_keeps_a_partial_frame() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(b, 1024);
        write_frame(&a, &ToWorker::Cancel { id: 7 }).unwrap();
        write_frame(&a, &ToWorker::Shutdown).unwrap();
        assert!(matches!(
            reader.next::<ToWorker>(None).unwrap(),
            Some(ToWorker::Cancel { id: 7 })
        ));
        assert!(matches!(
            reader.next::<ToWorker>(None).unwrap(),
            Some(ToWorker::Shutdown)
        ));
        // Half a frame, then a timeout: the half is kept for the next read.
        let mut bytes = Vec::new();
        let json = br#"{"cancel":{"id":9}}"#;
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(json);
        (&a).write_all(&bytes[..10]).unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(reader.next::<ToWorker>(Some(soon)).unwrap().is_none());
        (&a).write_all(&bytes[10..]).unwrap();
        assert!(matches!(
            reader.next::<ToWorker>(None).unwrap(),
            Some(ToWorker::Cancel { id: 9 })
        ));
        drop(a);
        let err = reader.next::<ToWorker>(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_limit_holds_a_legal_answer_escaped() {
        let (max_message, max_logs) = (1_000_000, 100_000);
        let limit = frame_limit(max_message, max_logs);
        let outcome = CallOutcome {
            plugin: crate::types::call::Name::new("p"),
            callback: crate::types::call::Name::new("c"),
            generation: 1,
            result: Some(crate::types::call::Json::from_text(&format!(
                "\"{}\"",
                "\\u0001".repeat((max_message - max_logs) / 6)
            ))),
            error: None,
            follow_ups: Vec::new(),
            logs: vec![plugin_api::LogRecord {
                level: plugin_api::Level::Info,
                message: "\u{1}".repeat(max_logs),
                unix_ms: 1,
            }],
            elapsed_us: 1,
        };
        let frame = encode(&FromWorker::Done {
            id: u64::MAX,
            result: Ok(outcome),
        })
        .unwrap();
        assert!(frame_len(&frame) > max_message + ENVELOPE_BYTES);
        assert!(
            frame_len(&frame) <= limit,
            "{} > {limit}",
            frame_len(&frame)
        );
    }

    #[test]
    fn an_oversized_frame_ends_the_channel() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut reader = FrameReader::new(b, 8);
        write_frame(&a, &ToWorker::Cancel { id: 1 }).unwrap();
        let err = reader.next::<ToWorker>(None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the limit of 8"), "{err}");
    }
}
