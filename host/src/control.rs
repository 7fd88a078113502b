//! The control interface: a Unix socket speaking a small line-based JSON protocol.
//!
//! # Protocol, version 1
//!
//! A client connects to the socket and sends requests, one JSON object per line; the host
//! answers each with one JSON object on one line, in order. A connection may carry any
//! number of requests. Every message carries `"v": 1`; a request with another version gets
//! an error naming the versions this host speaks.
//!
//! ```text
//! -> {"v":1,"op":"call","plugin":"hello","callback":"greet","input":{"name":"Ada"}}
//! <- {"v":1,"ok":true,"outcome":{"plugin":"hello","callback":"greet","generation":1,
//!     "result":{"message":"Hello, Ada!"},"follow_ups":[],"logs":[...],"elapsed_us":12}}
//! -> {"v":1,"op":"list"}
//! <- {"v":1,"ok":true,"files":[{"path":"plugins/libhello.so","plugin":{...}}]}
//! -> {"v":1,"op":"ping"}
//! <- {"v":1,"ok":true,"host":{"version":"0.1.0","pid":4242,"plugins_dir":"/srv/plugins"}}
//! -> {"v":1,"op":"call","plugin":"nope","callback":"x"}
//! <- {"v":1,"ok":false,"error":{"kind":"unknown_plugin","message":"no plugin named nope ..."}}
//! ```
//!
//! A call whose plugin returned an error is still `"ok": true`: the request was served, and
//! the plugin's error is in `outcome.error`. `"ok": false` means the host could not serve the
//! request (unknown plugin, malformed request, oversized message ...).
//!
//! The socket is created with mode 0600 in a directory only the user can enter, and a
//! connection from another user id is refused (peer credentials).
//!
//! # Timeouts
//!
//! Each call has the plugin's `timeout_ms`. A watchdog answers a call that overruns it with
//! a `timeout` error on time, sets the call's cancellation flag (a well-written plugin
//! stops), and counts the call as *stuck* until it returns (`host list` shows it). The
//! plugin's late answer is dropped. The connection answers its next request only after the
//! stuck call returns; other connections, and reloads, are not held up.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::call::{CallError, CallErrorKind, CallOutcome};
use crate::registry::{FileStatus, Host, PluginHandle};

/// The protocol version this host speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// How often the watchdog looks for calls past their timeout.
const WATCHDOG_TICK: Duration = Duration::from_millis(5);

/// A request, as sent on the wire. `plugin`, `callback` and `input` are for `call`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Protocol version.
    pub v: u32,
    /// What to do.
    pub op: Op,
    /// Plugin name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Callback name, `execute` for the entry point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// JSON input; `null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Box<RawValue>>,
}

/// The operations of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Call a plugin's callback.
    Call,
    /// List the plugin files and what they serve.
    List,
    /// Who is there?
    Ping,
}

impl Request {
    fn new(op: Op) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            op,
            plugin: None,
            callback: None,
            input: None,
        }
    }
}

/// A response, as sent on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u32,
    /// Whether the request was served.
    pub ok: bool,
    /// For `call`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<CallOutcome>,
    /// For `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileStatus>>,
    /// For `ping`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostInfo>,
    /// When `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CallError>,
}

/// What a running host says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// The directory it serves plugins from (absolute).
    pub plugins_dir: PathBuf,
}

impl Response {
    fn new() -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            outcome: None,
            files: None,
            host: None,
            error: None,
        }
    }

    fn error(error: CallError) -> Response {
        Response {
            ok: false,
            error: Some(error),
            ..Response::new()
        }
    }
}

/// The default socket path: `$XDG_RUNTIME_DIR/plugin-host/host.sock`, or
/// `/tmp/plugin-host-UID/host.sock` without a runtime directory.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("plugin-host").join("host.sock"),
        None => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir()
                .join(format!("plugin-host-{uid}"))
                .join("host.sock")
        }
    }
}

/// Serves the control protocol for a [`Host`] on a Unix socket until [`ControlServer::stop`].
pub struct ControlServer {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    watchdog: Option<JoinHandle<()>>,
}

struct Shared {
    host: Host,
    info: HostInfo,
    stopping: AtomicBool,
    max_message: usize,
    /// Open connections, with their threads. Taken when a connection opens or closes and by
    /// the watchdog, never on the path of a call.
    connections: Mutex<Connections>,
    next_id: AtomicU64,
}

/// Open connections by id, each with the thread serving it.
type Connections = HashMap<u64, (Arc<Connection>, JoinHandle<()>)>;

/// One client connection.
struct Connection {
    /// To shut the connection down when the server stops.
    stream: UnixStream,
    /// Responses are written by the connection's thread, or by the watchdog on a timeout.
    writer: Mutex<UnixStream>,
    /// The call running now, if any.
    in_call: Mutex<Option<InCall>>,
    /// The running call's cancellation flag.
    cancelled: AtomicBool,
}

struct InCall {
    plugin: PluginHandle,
    callback: String,
    started: Instant,
    deadline: Instant,
    timed_out: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ControlServer {
    /// Binds the socket at `path` (creating its directory with mode 0700 if needed, and
    /// replacing a stale socket no one answers on) and starts accepting connections.
    /// Requests longer than `max_message` bytes are refused.
    pub fn start(
        host: Host,
        info: HostInfo,
        path: &Path,
        max_message: usize,
    ) -> io::Result<ControlServer> {
        let listener = bind(path)?;
        let shared = Arc::new(Shared {
            host,
            info,
            stopping: AtomicBool::new(false),
            max_message,
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("control-accept".into())
                .spawn(move || accept_loop(listener, shared))?
        };
        let watchdog = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("control-watchdog".into())
                .spawn(move || watchdog(&shared))?
        };
        Ok(ControlServer {
            path: path.to_owned(),
            shared,
            acceptor: Some(acceptor),
            watchdog: Some(watchdog),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting connections, lets every request already read finish and be answered,
    /// closes the connections and removes the socket.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor blocked in accept().
        let _ = UnixStream::connect(&self.path);
        let _ = acceptor.join();
        let _ = std::fs::remove_file(&self.path);
        // No new requests: shut the read side of every connection. A handler in the middle of
        // a call finishes it and writes the response, then reads end-of-file and exits.
        let connections: Vec<_> = lock(&self.shared.connections)
            .drain()
            .map(|(_, c)| c)
            .collect();
        for (connection, _) in &connections {
            let _ = connection.stream.shutdown(std::net::Shutdown::Read);
        }
        for (_, thread) in connections {
            let _ = thread.join();
        }
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another host is already serving on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!("control socket: accept failed: {err}");
                continue;
            }
        };
        if let Err(reason) = check_peer(&stream) {
            tracing::warn!("control socket: refused a connection: {reason}");
            let response = Response::error(CallError::new(CallErrorKind::InvalidRequest, reason));
            let _ = write_line(&stream, &response);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (Ok(reader), Ok(writer)) = (stream.try_clone(), stream.try_clone()) else {
            continue;
        };
        let connection = Arc::new(Connection {
            stream,
            writer: Mutex::new(writer),
            in_call: Mutex::new(None),
            cancelled: AtomicBool::new(false),
        });
        let mut connections = lock(&shared.connections);
        let handler = {
            let (shared, connection) = (shared.clone(), connection.clone());
            std::thread::Builder::new()
                .name(format!("control-{id}"))
                .spawn(move || {
                    // Deregisters (and so closes) the connection however the thread ends.
                    let _registered = Registered(&shared, id);
                    serve_connection(&shared, &connection, reader);
                })
        };
        match handler {
            // Inserted under the lock the handler takes to remove itself, so never stale.
            Ok(thread) => {
                connections.insert(id, (connection, thread));
            }
            Err(err) => tracing::warn!("control socket: cannot start a handler thread: {err}"),
        }
    }
}

/// Removes a connection from the server's table when dropped, even during unwinding.
struct Registered<'a>(&'a Shared, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.0.connections).remove(&self.1);
    }
}

/// Answers calls that overran their timeout, until the server stops.
fn watchdog(shared: &Shared) {
    while !shared.stopping.load(Ordering::Relaxed) {
        std::thread::sleep(WATCHDOG_TICK);
        let now = Instant::now();
        let connections: Vec<Arc<Connection>> = lock(&shared.connections)
            .values()
            .map(|(c, _)| c.clone())
            .collect();
        for connection in connections {
            let mut in_call = lock(&connection.in_call);
            let Some(call) = in_call
                .as_mut()
                .filter(|c| !c.timed_out && c.deadline <= now)
            else {
                continue;
            };
            call.timed_out = true;
            connection.cancelled.store(true, Ordering::Relaxed);
            call.plugin.mark_stuck(true);
            let mut error = timeout_error(&call.plugin, &call.callback);
            error
                .message
                .push_str("; it was told to cancel and counts as stuck until it returns");
            let meta = call.plugin.metadata();
            tracing::warn!(plugin = %meta.name, generation = call.plugin.generation(), "call timed out: `{}`", call.callback);
            drop(in_call);
            let _ = write_response(&connection, &Response::error(error));
        }
    }
}

/// Refuses peers running as another user.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`, as
    // getsockopt(SO_PEERCRED) requires; the descriptor is owned by `stream` and open.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot read peer credentials: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid != me {
        return Err(format!("peer uid {} is not this host's uid {me}", cred.uid));
    }
    Ok(())
}

fn serve_connection(shared: &Shared, connection: &Connection, stream: UnixStream) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line, shared.max_message) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) => {
                let response = Response::error(CallError::new(
                    CallErrorKind::InvalidRequest,
                    err.to_string(),
                ));
                let _ = write_response(connection, &response);
                return;
            }
        }
        // `None`: the watchdog already answered (the call timed out).
        if let Some(response) = handle_request(shared, connection, &line) {
            if write_response(connection, &response).is_err() {
                return;
            }
        }
    }
}

/// Reads one `\n`-terminated line of at most `limit` bytes into `buf`. Returns 0 at end of
/// input; an oversized line is an error (the connection cannot be resynchronised).
pub(crate) fn read_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<usize> {
    let n = reader.take(limit as u64 + 1).read_until(b'\n', buf)?;
    if n > limit || (n == limit + 1 && buf.last() != Some(&b'\n')) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than the limit of {limit} bytes"),
        ));
    }
    Ok(n)
}

/// Decodes and checks one request line: valid JSON of the protocol, a version this host
/// speaks, and for a call, valid plugin and callback names.
pub fn decode_request(line: &[u8]) -> Result<Request, CallError> {
    let invalid = |message: String| CallError::new(CallErrorKind::InvalidRequest, message);
    let request: Request =
        serde_json::from_slice(line).map_err(|err| invalid(format!("malformed request: {err}")))?;
    if request.v != PROTOCOL_VERSION {
        return Err(invalid(format!(
            "protocol version {} is not supported; this host speaks {PROTOCOL_VERSION}",
            request.v
        )));
    }
    if request.op == Op::Call {
        let (Some(plugin), Some(callback)) = (&request.plugin, &request.callback) else {
            return Err(invalid("a call needs `plugin` and `callback`".into()));
        };
        for (what, name) in [("plugin", plugin), ("callback", callback)] {
            if !plugin_api::is_valid_name(name) {
                let shown: String = name.chars().take(80).collect();
                return Err(invalid(format!(
                    "invalid {what} name {shown:?}: 1 to 64 characters of [A-Za-z0-9_.-]"
                )));
            }
        }
    }
    Ok(request)
}

/// Serves one request line; `None` when the watchdog already answered (a timed-out call).
fn handle_request(shared: &Shared, connection: &Connection, line: &[u8]) -> Option<Response> {
    let request = match decode_request(line) {
        Ok(request) => request,
        Err(err) => return Some(Response::error(err)),
    };
    Some(match request.op {
        Op::Call if shared.stopping.load(Ordering::Relaxed) => Response::error(CallError::new(
            CallErrorKind::ShuttingDown,
            "the host is shutting down",
        )),
        Op::Call => {
            let plugin = request.plugin.as_deref().unwrap_or_default();
            let callback = request.callback.as_deref().unwrap_or_default();
            let input = request.input.as_deref().map_or("null", RawValue::get);
            return call(shared, connection, plugin, callback, input);
        }
        Op::List => Response {
            files: Some(shared.host.status()),
            ..Response::new()
        },
        Op::Ping => Response {
            host: Some(shared.info.clone()),
            ..Response::new()
        },
    })
}

/// Runs one call under the watchdog's eye; `None` if the watchdog answered it already.
fn call(
    shared: &Shared,
    connection: &Connection,
    plugin: &str,
    callback: &str,
    input: &str,
) -> Option<Response> {
    let handle = match shared.host.plugin(plugin) {
        Ok(handle) => handle,
        Err(err) => return Some(Response::error(err)),
    };
    let timeout = handle.timeout();
    let started = Instant::now();
    connection.cancelled.store(false, Ordering::Relaxed);
    *lock(&connection.in_call) = Some(InCall {
        plugin: handle.clone(),
        callback: callback.to_owned(),
        started,
        deadline: started + timeout,
        timed_out: false,
    });
    let result = shared.host.call_with_handle(
        &handle,
        callback,
        input,
        &connection.cancelled,
        Some(SystemTime::now() + timeout),
    );
    let in_call = lock(&connection.in_call).take();
    if let Some(call) = in_call.filter(|c| c.timed_out) {
        call.plugin.mark_stuck(false);
        tracing::warn!(
            plugin = %call.plugin.metadata().name,
            generation = call.plugin.generation(),
            "stuck call `{}` returned after {} ms; its answer was dropped",
            call.callback,
            call.started.elapsed().as_millis()
        );
        return None;
    }
    Some(match result {
        // The plugin noticed the deadline itself, a moment before the watchdog did.
        Ok(outcome)
            if started.elapsed() >= timeout
                && outcome
                    .error
                    .as_ref()
                    .is_some_and(|e| e.kind() == plugin_api::ErrorKind::Cancelled) =>
        {
            Response::error(timeout_error(&handle, callback))
        }
        Ok(outcome) => Response {
            outcome: Some(outcome),
            ..Response::new()
        },
        Err(err) => Response::error(err),
    })
}

fn timeout_error(plugin: &PluginHandle, callback: &str) -> CallError {
    let message = format!(
        "plugin {} (generation {}): `{callback}` did not finish within {} ms",
        plugin.metadata().name,
        plugin.generation(),
        plugin.timeout().as_millis()
    );
    CallError::new(CallErrorKind::Timeout, message)
}

fn write_response(connection: &Connection, response: &Response) -> io::Result<()> {
    // The guard lives until the line is written, so two writers never interleave.
    write_line(&lock(&connection.writer), response)
}

/// Writes `response` as one line.
fn write_line(mut stream: &UnixStream, response: &Response) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).map_err(io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)
}

/// A connection to a running host's control socket.
///
/// ```no_run
/// use host::control::{default_socket_path, Client};
///
/// let mut client = Client::connect(&default_socket_path())?;
/// let outcome = client.call("hello", "greet", r#"{"name":"Ada"}"#)?;
/// println!("{}", outcome.result().map_err(|e| e.to_string())?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: Vec<u8>,
}

/// Why a request through a [`Client`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the connection broke.
    #[error("control socket: {0}")]
    Io(io::Error),
    /// The host answered with something that is not a protocol response.
    #[error("control socket: malformed response: {0}")]
    Protocol(String),
    /// The host refused or could not serve the request.
    #[error("{0}")]
    Refused(CallError),
}

impl From<io::Error> for ClientError {
    fn from(err: io::Error) -> Self {
        ClientError::Io(err)
    }
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let writer = UnixStream::connect(path)?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Client {
            reader,
            writer,
            line: Vec::new(),
        })
    }

    fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        let mut bytes =
            serde_json::to_vec(request).map_err(|err| ClientError::Protocol(err.to_string()))?;
        bytes.push(b'\n');
        // A host that refuses the connection answers and closes at once, maybe before this
        // write: read its answer even when the write failed.
        let written = self.writer.write_all(&bytes);
        self.line.clear();
        match (
            read_line(&mut self.reader, &mut self.line, usize::MAX - 1),
            written,
        ) {
            (Ok(0) | Err(_), Err(err)) | (Err(err), Ok(())) => return Err(ClientError::Io(err)),
            (Ok(0), Ok(())) => {
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the host closed the connection",
                )))
            }
            (Ok(_), _) => {}
        }
        let response: Response = serde_json::from_slice(&self.line)
            .map_err(|err| ClientError::Protocol(err.to_string()))?;
        match response.error {
            Some(err) if !response.ok => Err(ClientError::Refused(err)),
            _ => Ok(response),
        }
    }

    /// Gives up waiting for an answer after `timeout` (`None`: wait as long as it takes).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(timeout)
    }

    /// Calls `plugin`'s `callback` with JSON `input`.
    pub fn call(
        &mut self,
        plugin: &str,
        callback: &str,
        input: &str,
    ) -> Result<CallOutcome, ClientError> {
        let input = RawValue::from_string(input.to_owned())
            .map_err(|err| ClientError::Protocol(format!("input is not JSON: {err}")))?;
        let response = self.request(&Request {
            plugin: Some(plugin.to_owned()),
            callback: Some(callback.to_owned()),
            input: Some(input),
            ..Request::new(Op::Call)
        })?;
        response
            .outcome
            .ok_or_else(|| ClientError::Protocol("response without an outcome".into()))
    }

    /// Lists the host's plugin files.
    pub fn list(&mut self) -> Result<Vec<FileStatus>, ClientError> {
        self.request(&Request::new(Op::List))?
            .files
            .ok_or_else(|| ClientError::Protocol("response without files".into()))
    }

    /// Asks the host who it is.
    pub fn ping(&mut self) -> Result<HostInfo, ClientError> {
        self.request(&Request::new(Op::Ping))?
            .host
            .ok_or_else(|| ClientError::Protocol("response without host info".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_line_enforces_the_limit() {
        let mut buf = Vec::new();
        let mut input = io::Cursor::new(b"12345\n123456789\n".to_vec());
        assert_eq!(read_line(&mut input, &mut buf, 8).unwrap(), 6);
        buf.clear();
        let err = read_line(&mut input, &mut buf, 8).unwrap_err();
        assert!(err.to_string().contains("limit of 8 bytes"));
    }

    #[test]
    fn bad_requests_get_one_line_errors() {
        let cases: [(&[u8], &str); 6] = [
            (b"garbage", "malformed request"),
            (
                br#"{"v":2,"op":"ping"}"#,
                "protocol version 2 is not supported",
            ),
            (
                br#"{"v":1,"op":"call","plugin":"../etc","callback":"x"}"#,
                "invalid plugin name",
            ),
            (
                br#"{"v":1,"op":"call","plugin":"hello","callback":"a/b"}"#,
                "invalid callback name",
            ),
            (
                br#"{"v":1,"op":"call","plugin":"hello"}"#,
                "needs `plugin` and `callback`",
            ),
            (br#"{"v":1,"op":"ping","extra":1}"#, "unknown field `extra`"),
        ];
        for (line, expected) in cases {
            let err = decode_request(line).unwrap_err();
            assert_eq!(err.kind, CallErrorKind::InvalidRequest);
            assert!(err.message.contains(expected), "{line:?}: {err}");
            assert!(!err.message.contains('\n'), "{err}");
        }
        let long = format!(
            r#"{{"v":1,"op":"call","plugin":"{}","callback":"x"}}"#,
            "p".repeat(65)
        );
        assert!(decode_request(long.as_bytes())
            .unwrap_err()
            .message
            .contains("invalid plugin name"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            #[test]
            fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode_request(&bytes);
            }

            #[test]
            fn never_panics_on_json_shaped_lines(
                v in 0u32..3,
                op in "(call|list|ping|[a-z]{0,6})",
                plugin in "[A-Za-z0-9_./-]{0,70}",
                callback in "[A-Za-z0-9_./-]{0,70}",
                input in "(null|1|\\{\\}|\\[|\"[a-z]*\")",
            ) {
                let line = format!(
                    r#"{{"v":{v},"op":"{op}","plugin":"{plugin}","callback":"{callback}","input":{input}}}"#
                );
                if let Ok(request) = decode_request(line.as_bytes()) {
                    prop_assert_eq!(request.v, PROTOCOL_VERSION);
                    if request.op == Op::Call {
                        prop_assert!(plugin_api::is_valid_name(&plugin) && plugin_api::is_valid_name(&callback));
                    }
                }
            }
        }
    }

    #[test]
    fn requests_round_trip_and_input_stays_raw() {
        let line =
            r#"{"v":1,"op":"call","plugin":"hello","callback":"greet","input":{"name": "Ada"}}"#;
        let request: Request = serde_json::from_str(line).unwrap();
        assert_eq!(request.op, Op::Call);
        assert_eq!(request.input.unwrap().get(), r#"{"name": "Ada"}"#);
        let err = serde_json::from_str::<Request>(r#"{"v":1,"op":"explode"}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `explode`"),
            "{err}"
        );
    }
}
