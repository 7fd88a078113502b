//! The control protocol's messages: requests, responses, and the rules for reading them.

use std::io::{self, BufRead, Read};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::registry::{FileStatus, HistoryEntry};
use crate::services::catalogue::PublishedPlugin;
use crate::services::tasks::{Inserted, TaskFilter, TaskId, TaskOptions, TaskRecord, TaskTree};
use crate::types::call::{CallError, CallErrorKind, CallOutcome};

/// The protocol version this host speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A request, as sent on the wire. `plugin`, `callback` and `input` are for `call` and
/// `submit` (with `options`); `restart`, `history` and `rollback` name a `plugin`;
/// `generation` is for `rollback`; `task` is for `task`, `cancel` and `retry`; `filter` for
/// `tasks`.
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
    /// For `rollback`: the generation to serve again (default: the newest kept version
    /// other than what serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// For `submit`: how to run the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<TaskOptions>,
    /// For `task`, `cancel` and `retry`: the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskId>,
    /// For `tasks`: which ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TaskFilter>,
    /// For `publish`: the file and how to roll it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Publish>,
}

/// What `publish` publishes: a file the host reads itself (the client sends its absolute
/// path, never its bytes: the host reads it bounded by `[catalogue] max_plugin_bytes`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// The plugin file (absolute).
    pub path: PathBuf,
    /// The name to publish it under; must be the one the plugin declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How many hosts load it first (0: every host at once).
    #[serde(default)]
    pub canary: u32,
    /// Who publishes it, `user@hostname`.
    pub publisher: String,
}

/// The operations of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// Call a plugin's callback.
    Call,
    /// List the plugin files and what they serve.
    List,
    /// Who is there?
    Ping,
    /// Start a plugin afresh: a new worker process (lifting a quarantine) for an isolated
    /// plugin, a new generation for an in-process one. Needs `plugin`.
    Restart,
    /// The generations a plugin served, newest first. Needs `plugin`.
    History,
    /// Serve an earlier version of a plugin again, until its file changes. Needs `plugin`;
    /// `generation` chooses which.
    Rollback,
    /// Submit a task: `plugin`, `callback`, `input`, `options`.
    Submit,
    /// List tasks (`filter`).
    Tasks,
    /// One task and the follow-ups under it (`task`).
    Task,
    /// Cancel a task (`task`).
    Cancel,
    /// Queue a task that ended again (`task`).
    Retry,
    /// Publish a plugin file to the fleet's catalogue (`publish`).
    Publish,
    /// Remove a plugin from the catalogue, and so from every host (`plugin`).
    Unpublish,
    /// What the catalogue holds, with each host's state.
    Published,
}

impl Request {
    /// A request for `op` with no arguments.
    pub fn new(op: Op) -> Request {
        Request {
            v: PROTOCOL_VERSION,
            op,
            plugin: None,
            callback: None,
            input: None,
            generation: None,
            options: None,
            task: None,
            filter: None,
            publish: None,
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
    /// For `history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryEntry>>,
    /// For `submit`: what became of the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted: Option<Inserted>,
    /// For `tasks`: one page, newest first (at most `list_page_max`, 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskRecord>>,
    /// For `tasks`: more match; ask again with `filter.before` set to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<TaskId>,
    /// For `task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskTree>,
    /// For `publish` (the plugin published) and `published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Vec<PublishedPlugin>>,
    /// For `restart`, `rollback`, `cancel` and `retry`: what was done, in one line. For
    /// `submit`: a note (its plugin is not served now: the task waits for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
    /// A successful response with nothing in it yet.
    pub fn new() -> Response {
        Response {
            v: PROTOCOL_VERSION,
            ok: true,
            outcome: None,
            files: None,
            host: None,
            history: None,
            submitted: None,
            tasks: None,
            next: None,
            task: None,
            published: None,
            message: None,
            error: None,
        }
    }

    /// A response saying the request could not be served.
    pub fn error(error: CallError) -> Response {
        Response {
            ok: false,
            error: Some(error),
            ..Response::new()
        }
    }

    /// The response as one line of JSON, newline included.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).unwrap_or_else(|err| {
            // Only a bug could make our own types fail to serialise; answer anyway.
            let error = CallError::new(CallErrorKind::Internal, format!("cannot encode: {err}"));
            serde_json::to_vec(&Response::error(error)).unwrap_or_default()
        });
        bytes.push(b'\n');
        bytes
    }
}

impl Default for Response {
    fn default() -> Self {
        Response::new()
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
        return Err(too_large(limit));
    }
    Ok(n)
}

pub(crate) fn too_large(limit: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("message larger than the limit of {limit} bytes"),
    )
}

/// Decodes and checks one request line: valid JSON of the protocol, a version this host
/// speaks, and for a call, valid plugin and callback names.
pub fn decode_request(line: &[u8]) -> Result<Request, CallError> {
    let invalid = |message: String| CallError::new(CallErrorKind::InvalidRequest, message);
    let request: Request = serde_json::from_slice(line).map_err(|err| {
        invalid(format!(
            "malformed request: {}",
            crate::types::call::cut(&err.to_string(), 200)
        ))
    })?;
    if request.v != PROTOCOL_VERSION {
        return Err(invalid(format!(
            "protocol version {} is not supported; this host speaks {PROTOCOL_VERSION}",
            request.v
        )));
    }
    let op = match request.op {
        Op::Restart => Some("restart"),
        Op::History => Some("history"),
        Op::Rollback => Some("rollback"),
        Op::Unpublish => Some("unpublish"),
        Op::Call
        | Op::List
        | Op::Ping
        | Op::Submit
        | Op::Tasks
        | Op::Task
        | Op::Cancel
        | Op::Retry
        | Op::Publish
        | Op::Published => None,
    };
    if let Some(op) = op {
        match &request.plugin {
            Some(plugin) if plugin_api::is_valid_name(plugin) => {}
            Some(_) => return Err(invalid(format!("invalid plugin name for {op}"))),
            None => return Err(invalid(format!("a {op} needs `plugin`"))),
        }
    }
    if request.op == Op::Publish {
        match &request.publish {
            None => return Err(invalid("a publish needs `publish`, the file".into())),
            Some(publish) if !publish.path.is_absolute() => {
                return Err(invalid("a publish needs the file's absolute path".into()))
            }
            Some(Publish {
                name: Some(name), ..
            }) if !plugin_api::is_valid_name(name) => {
                return Err(invalid(
                    "invalid plugin name for publish: 1 to 64 characters of [A-Za-z0-9_.-]".into(),
                ))
            }
            Some(_) => {}
        }
    }
    if matches!(request.op, Op::Task | Op::Cancel | Op::Retry) && request.task.is_none() {
        return Err(invalid("this request needs `task`, a task id".into()));
    }
    if matches!(request.op, Op::Call | Op::Submit) {
        let (Some(plugin), Some(callback)) = (&request.plugin, &request.callback) else {
            return Err(invalid(format!(
                "a {} needs `plugin` and `callback`",
                if request.op == Op::Call {
                    "call"
                } else {
                    "submit"
                }
            )));
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
    fn a_publish_needs_an_absolute_path_and_a_valid_name() {
        let err = |line: &str| decode_request(line.as_bytes()).unwrap_err().message;
        assert!(err(r#"{"v":1,"op":"publish"}"#).contains("needs `publish`"));
        assert!(
            err(r#"{"v":1,"op":"publish","publish":{"path":"lib.so","publisher":"a@b"}}"#)
                .contains("absolute path")
        );
        assert!(err(
            r#"{"v":1,"op":"publish","publish":{"path":"/p/lib.so","name":"a/b","publisher":"a@b"}}"#
        )
        .contains("invalid plugin name for publish"));
        assert!(err(r#"{"v":1,"op":"unpublish"}"#).contains("unpublish needs `plugin`"));
        let ok = decode_request(
            br#"{"v":1,"op":"publish","publish":{"path":"/p/lib.so","canary":2,"publisher":"a@b"}}"#,
        )
        .unwrap();
        assert_eq!(ok.publish.unwrap().canary, 2);
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
