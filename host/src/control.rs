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

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::call::{CallError, CallErrorKind, CallOutcome};
use crate::registry::{FileStatus, Host};

/// The protocol version this host speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Default limit on the size of one request or response line: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

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
}

struct Shared {
    host: Host,
    info: HostInfo,
    stopping: AtomicBool,
    max_message: usize,
    /// Open connections: a handle on each socket (to shut it down) and its thread.
    connections: Mutex<HashMap<u64, (UnixStream, JoinHandle<()>)>>,
    next_id: AtomicU64,
}

impl ControlServer {
    /// Binds the socket at `path` (creating its directory with mode 0700 if needed, and
    /// replacing a stale socket no one answers on) and starts accepting connections.
    pub fn start(host: Host, info: HostInfo, path: &Path) -> io::Result<ControlServer> {
        let listener = bind(path)?;
        let shared = Arc::new(Shared {
            host,
            info,
            stopping: AtomicBool::new(false),
            max_message: DEFAULT_MAX_MESSAGE,
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("control-accept".into())
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(ControlServer {
            path: path.to_owned(),
            shared,
            acceptor: Some(acceptor),
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
        let connections: Vec<_> = {
            let mut map = self
                .shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.drain().map(|(_, connection)| connection).collect()
        };
        for (stream, _) in &connections {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        for (_, thread) in connections {
            let _ = thread.join();
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
            let _ = write_response(
                &stream,
                &Response::error(CallError::new(CallErrorKind::InvalidRequest, reason)),
            );
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let mut connections = shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let handler = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("control-{id}"))
                .spawn(move || {
                    serve_connection(&shared, stream);
                    let mut connections = shared
                        .connections
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    connections.remove(&id);
                })
        };
        match handler {
            Ok(handle) => {
                // Inserted under the lock the handler takes to remove itself, so never stale.
                connections.insert(id, (registered, handle));
            }
            Err(err) => tracing::warn!("control socket: cannot start a handler thread: {err}"),
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

fn serve_connection(shared: &Shared, stream: UnixStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
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
                let _ = write_response(&write_half, &response);
                return;
            }
        }
        let response = handle_request(shared, &line);
        if write_response(&write_half, &response).is_err() {
            return;
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

fn handle_request(shared: &Shared, line: &[u8]) -> Response {
    let request: Request = match serde_json::from_slice(line) {
        Ok(request) => request,
        Err(err) => {
            return Response::error(CallError::new(
                CallErrorKind::InvalidRequest,
                format!("malformed request: {err}"),
            ))
        }
    };
    if request.v != PROTOCOL_VERSION {
        return Response::error(CallError::new(
            CallErrorKind::InvalidRequest,
            format!(
                "protocol version {} is not supported; this host speaks {PROTOCOL_VERSION}",
                request.v
            ),
        ));
    }
    match request.op {
        Op::Call => {
            let (plugin, callback) = match (&request.plugin, &request.callback) {
                (Some(plugin), Some(callback)) => (plugin, callback),
                _ => {
                    return Response::error(CallError::new(
                        CallErrorKind::InvalidRequest,
                        "a call needs `plugin` and `callback`",
                    ))
                }
            };
            for (what, name) in [("plugin", plugin), ("callback", callback)] {
                if !plugin_api::is_valid_name(name) {
                    return Response::error(CallError::new(
                        CallErrorKind::InvalidRequest,
                        format!(
                            "invalid {what} name {name:?}: 1 to 64 characters of [A-Za-z0-9_.-]"
                        ),
                    ));
                }
            }
            if shared.stopping.load(Ordering::Relaxed) {
                return Response::error(CallError::new(
                    CallErrorKind::ShuttingDown,
                    "the host is shutting down",
                ));
            }
            let input = request.input.as_deref().map_or("null", RawValue::get);
            match shared.host.call(plugin, callback, input) {
                Ok(outcome) => Response {
                    outcome: Some(outcome),
                    ..Response::new()
                },
                Err(err) => Response::error(err),
            }
        }
        Op::List => Response {
            files: Some(shared.host.status()),
            ..Response::new()
        },
        Op::Ping => Response {
            host: Some(shared.info.clone()),
            ..Response::new()
        },
    }
}

fn write_response(mut stream: &UnixStream, response: &Response) -> io::Result<()> {
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
    Io(#[from] io::Error),
    /// The host answered with something that is not a protocol response.
    #[error("control socket: malformed response: {0}")]
    Protocol(String),
    /// The host refused or could not serve the request.
    #[error("{0}")]
    Refused(CallError),
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
        self.writer.write_all(&bytes)?;
        self.line.clear();
        if read_line(&mut self.reader, &mut self.line, usize::MAX - 1)? == 0 {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the host closed the connection",
            )));
        }
        let response: Response = serde_json::from_slice(&self.line)
            .map_err(|err| ClientError::Protocol(err.to_string()))?;
        match response.error {
            Some(err) if !response.ok => Err(ClientError::Refused(err)),
            _ => Ok(response),
        }
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
