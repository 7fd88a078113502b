//! `fetch`: a plugin that owns a tokio runtime, the pattern for any runtime or pool.
//!
//! * `get {"port": 8080, "path": "/"}` makes a plain HTTP/1.0 GET to `127.0.0.1:port` with
//!   tokio's `TcpStream` and answers `{"status": 200, "body": "...", "generation": N}`.
//!
//! `init` builds the runtime (one worker thread) and starts, with `ctx.spawn`, the one
//! thread that enters it (`block_on`). A call hands its request to that thread through a
//! mutex and a condition variable and waits for the answer: the host's call threads never
//! enter the runtime, because entering it registers a thread-local destructor of this
//! library on the entering thread, which would keep the library in memory after unload for
//! as long as that host thread lives. When the host retires this version, the thread sees
//! the stop token and ends, and [`Plugin::stop`] takes the runtime and shuts it down with
//! `shutdown_timeout`, which ends and joins its threads, before the host closes the library.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use plugin_api::{export_plugin, Callbacks, Context, InitContext, Plugin, PluginError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The plugin: its runtime, until `stop` takes it, and the mailbox of the thread that
/// enters it.
pub struct Fetch {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    mailbox: Arc<Mailbox>,
}

type Answer = Result<(u16, String), String>;

/// One request and the place its answer goes.
struct Job {
    get: Get,
    answer: Arc<(Mutex<Option<Answer>>, Condvar)>,
}

#[derive(Default)]
struct Mailbox {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `get` asks for.
#[derive(Debug, Deserialize)]
pub struct Get {
    port: u16,
    #[serde(default = "root")]
    path: String,
}

fn root() -> String {
    "/".into()
}

/// What `get` answers.
#[derive(Debug, Serialize)]
pub struct Response {
    status: u16,
    body: String,
    generation: u64,
}

impl Plugin for Fetch {
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    fn init(ctx: &InitContext<'_>) -> Result<Self, PluginError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fetch-rt")
            .enable_all()
            .build()
            .map_err(|err| PluginError::failed(format!("cannot build a tokio runtime: {err}")))?;
        let mailbox = Arc::new(Mailbox::default());
        let (jobs, handle) = (mailbox.clone(), runtime.handle().clone());
        ctx.spawn("fetch-requests", move |stop| {
            while !stop.is_stopped() {
                let job = {
                    let queue = lock(&jobs.jobs);
                    let (mut queue, _) = jobs
                        .ready
                        .wait_timeout_while(queue, Duration::from_millis(50), |q| {
                            q.is_empty() && !stop.is_stopped()
                        })
                        .unwrap_or_else(PoisonError::into_inner);
                    queue.pop_front()
                };
                let Some(job) = job else { continue };
                let answer = handle
                    .block_on(async {
                        tokio::time::timeout(
                            Duration::from_secs(10),
                            request(job.get.port, &job.get.path),
                        )
                        .await
                    })
                    .map_err(|_| "no answer within 10 s".to_owned())
                    .and_then(|r| r.map_err(|err| err.to_string()));
                *lock(&job.answer.0) = Some(answer);
                job.answer.1.notify_all();
            }
        })?;
        Ok(Fetch {
            runtime: Mutex::new(Some(runtime)),
            mailbox,
        })
    }

    fn execute(&self, _: &Context<'_>, _: serde_json::Value) -> Result<Self::Output, PluginError> {
        Ok(serde_json::json!({"plugin": "fetch", "callbacks": ["get"]}))
    }

    fn callbacks(callbacks: &mut Callbacks<Self>) {
        callbacks.add("get", Fetch::get);
    }

    fn stop(&self) {
        // The stop token is set before `stop` runs: wake the request thread so that it sees
        // it now rather than at its next poll (under the queue's lock, so that the wake-up
        // cannot fall between its check of the token and its wait).
        drop(lock(&self.mailbox.jobs));
        self.mailbox.ready.notify_all();
        let runtime = lock(&self.runtime).take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Fetch {
    fn get(&self, ctx: &Context<'_>, get: Get) -> Result<Response, PluginError> {
        let answer = Arc::new((Mutex::new(None), Condvar::new()));
        lock(&self.mailbox.jobs).push_back(Job {
            get,
            answer: answer.clone(),
        });
        self.mailbox.ready.notify_one();
        let done = answer
            .1
            .wait_timeout_while(lock(&answer.0), Duration::from_secs(15), |a| a.is_none())
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .take();
        let (status, body) = done
            .ok_or_else(|| PluginError::failed("fetch: no answer within 15 s"))?
            .map_err(|err| PluginError::failed(format!("fetch: {err}")))?;
        Ok(Response {
            status,
            body,
            generation: ctx.generation(),
        })
    }
}

async fn request(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

export_plugin!(Fetch);
