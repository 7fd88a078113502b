//! The client side of the control protocol: a blocking connection to a running host.

use std::io::{self, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::value::RawValue;

use super::protocol::{read_line, HostInfo, Op, Publish, Request, Response};
use crate::registry::{FileStatus, HistoryEntry};
use crate::services::catalogue::PublishedPlugin;
use crate::services::tasks::{Inserted, TaskFilter, TaskId, TaskOptions, TaskRecord, TaskTree};
use crate::types::call::{CallError, CallOutcome};

/// The largest answer a client reads, in bytes: more than any host sends (its answers are
/// bounded by its `max_message_bytes` plus the envelope).
const MAX_RESPONSE: usize = 1 << 30;

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
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: Vec<u8>,
}

/// Why a request through a [`Client`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Connects to the socket at `path`. The process answering there must run as this
    /// user (or root): a socket someone else put in our way is refused.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let writer = UnixStream::connect(path)?;
        let server = super::peer_uid(&writer)?;
        let me = crate::files::private_dir::euid();
        if server != me && server != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the process answering on {} runs as uid {server}, not as this user (uid \
                     {me}) or root: refusing to talk to it",
                    path.display()
                ),
            ));
        }
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
            read_line(&mut self.reader, &mut self.line, MAX_RESPONSE),
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

    /// Starts `plugin` afresh (see [`Host::restart_plugin`](crate::Host::restart_plugin));
    /// returns what the host did, in one line.
    pub fn restart(&mut self, plugin: &str) -> Result<String, ClientError> {
        self.request(&Request {
            plugin: Some(plugin.to_owned()),
            ..Request::new(Op::Restart)
        })?
        .message
        .ok_or_else(|| ClientError::Protocol("response without a message".into()))
    }

    /// The generations `plugin` served, newest first (see
    /// [`Host::history`](crate::Host::history)).
    pub fn history(&mut self, plugin: &str) -> Result<Vec<HistoryEntry>, ClientError> {
        self.request(&Request {
            plugin: Some(plugin.to_owned()),
            ..Request::new(Op::History)
        })?
        .history
        .ok_or_else(|| ClientError::Protocol("response without a history".into()))
    }

    /// Serves an earlier version of `plugin` again (see
    /// [`Host::rollback`](crate::Host::rollback)); returns what the host did, in one line.
    pub fn rollback(&mut self, plugin: &str, to: Option<u64>) -> Result<String, ClientError> {
        self.request(&Request {
            plugin: Some(plugin.to_owned()),
            generation: to,
            ..Request::new(Op::Rollback)
        })?
        .message
        .ok_or_else(|| ClientError::Protocol("response without a message".into()))
    }

    /// Submits a task: `plugin`'s `callback` with JSON `input`, run as `options` say.
    pub fn submit(
        &mut self,
        plugin: &str,
        callback: &str,
        input: &str,
        options: TaskOptions,
    ) -> Result<Inserted, ClientError> {
        self.submit_noted(plugin, callback, input, options)
            .map(|(inserted, _)| inserted)
    }

    /// [`Client::submit`], with the host's note, if it has one (the plugin is not served
    /// now: the task waits for it).
    pub fn submit_noted(
        &mut self,
        plugin: &str,
        callback: &str,
        input: &str,
        options: TaskOptions,
    ) -> Result<(Inserted, Option<String>), ClientError> {
        let input = RawValue::from_string(input.to_owned())
            .map_err(|err| ClientError::Protocol(format!("input is not JSON: {err}")))?;
        let response = self.request(&Request {
            plugin: Some(plugin.to_owned()),
            callback: Some(callback.to_owned()),
            input: Some(input),
            options: Some(options),
            ..Request::new(Op::Submit)
        })?;
        let inserted = response
            .submitted
            .ok_or_else(|| ClientError::Protocol("response without the submitted task".into()))?;
        Ok((inserted, response.message))
    }

    /// The tasks matching `filter`, newest first: up to `filter.limit` of them (one page
    /// when 0), asked for page by page (the host answers at most `list_page_max` at once).
    pub fn tasks(&mut self, filter: TaskFilter) -> Result<Vec<TaskRecord>, ClientError> {
        let wanted = filter.limit;
        let mut filter = filter;
        let mut all: Vec<TaskRecord> = Vec::new();
        loop {
            if wanted > 0 {
                filter.limit = wanted - all.len();
            }
            let (tasks, next) = self.tasks_page(filter.clone())?;
            all.extend(tasks);
            match next {
                Some(next) if wanted > 0 && all.len() < wanted => filter.before = Some(next),
                _ => return Ok(all),
            }
        }
    }

    /// One page of the tasks matching `filter`, newest first, and the cursor to the next
    /// page (for `filter.before`) when more match.
    pub fn tasks_page(
        &mut self,
        filter: TaskFilter,
    ) -> Result<(Vec<TaskRecord>, Option<TaskId>), ClientError> {
        let response = self.request(&Request {
            filter: Some(filter),
            ..Request::new(Op::Tasks)
        })?;
        let tasks = response
            .tasks
            .ok_or_else(|| ClientError::Protocol("response without tasks".into()))?;
        Ok((tasks, response.next))
    }

    /// Task `id` and the follow-ups under it.
    pub fn task(&mut self, id: TaskId) -> Result<TaskTree, ClientError> {
        self.request(&Request {
            task: Some(id),
            ..Request::new(Op::Task)
        })?
        .task
        .ok_or_else(|| ClientError::Protocol("response without a task".into()))
    }

    /// Cancels task `id`; returns what the host did, in one line.
    pub fn cancel(&mut self, id: TaskId) -> Result<String, ClientError> {
        self.task_message(Op::Cancel, id)
    }

    /// Queues task `id`, which ended, again; returns what the host did, in one line.
    pub fn retry(&mut self, id: TaskId) -> Result<String, ClientError> {
        self.task_message(Op::Retry, id)
    }

    fn task_message(&mut self, op: Op, id: TaskId) -> Result<String, ClientError> {
        self.request(&Request {
            task: Some(id),
            ..Request::new(op)
        })?
        .message
        .ok_or_else(|| ClientError::Protocol("response without a message".into()))
    }

    /// Asks the host who it is.
    pub fn ping(&mut self) -> Result<HostInfo, ClientError> {
        self.request(&Request::new(Op::Ping))?
            .host
            .ok_or_else(|| ClientError::Protocol("response without host info".into()))
    }

    /// Publishes a plugin file to the fleet's catalogue; returns the host's one-line answer
    /// and the plugin as published.
    pub fn publish(&mut self, publish: Publish) -> Result<(String, PublishedPlugin), ClientError> {
        let response = self.request(&Request {
            publish: Some(publish),
            ..Request::new(Op::Publish)
        })?;
        let plugin = response
            .published
            .and_then(|mut p| p.pop())
            .ok_or_else(|| ClientError::Protocol("response without the plugin".into()))?;
        Ok((response.message.unwrap_or_default(), plugin))
    }

    /// Removes `plugin` from the catalogue, and so from every host of the fleet.
    pub fn unpublish(&mut self, plugin: &str) -> Result<String, ClientError> {
        self.request(&Request {
            plugin: Some(plugin.to_owned()),
            ..Request::new(Op::Unpublish)
        })?
        .message
        .ok_or_else(|| ClientError::Protocol("response without a message".into()))
    }

    /// What the catalogue holds, with each host's state.
    pub fn published(&mut self) -> Result<Vec<PublishedPlugin>, ClientError> {
        self.request(&Request::new(Op::Published))?
            .published
            .ok_or_else(|| ClientError::Protocol("response without the catalogue".into()))
    }
}
