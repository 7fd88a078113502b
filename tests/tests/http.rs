//! The HTTP API against a real `host serve --http 127.0.0.1:0` over loopback: every route,
//! the tokens (401, 403), the limits (413, a slow client cut, 504), Server-Sent Events
//! resumed with Last-Event-ID, and /metrics counting calls made through the socket and by
//! the task runner.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{built, fanout, hello_hi, install, plugins_dir, Server, Variant};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "test-token-0123456789";

/// A client of one server's HTTP API.
struct Api {
    base: String,
    agent: ureq::Agent,
}

/// An answer: status, JSON body (`Null` when not JSON), `Retry-After`.
struct Answer {
    status: u16,
    body: Value,
    text: String,
    retry_after: Option<String>,
}

impl Api {
    /// Waits for the server's "http: listening on" line.
    fn of(server: &Server) -> Api {
        Api {
            base: server.http_base(),
            agent: e2e::http_agent(Duration::from_secs(30)),
        }
    }

    fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_owned()
    }

    fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let mut response = response.expect("an HTTP answer");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            text,
            retry_after,
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        Api::answer(request.call())
    }

    fn post(&self, path: &str, token: Option<&str>, body: &str) -> Answer {
        let mut request = self.agent.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        Api::answer(request.send(body))
    }
}

/// `host serve --http 127.0.0.1:0` on `dir` with `config` as host.toml and `env`.
fn serve(dir: &Path, config: &str, env: &[(&str, &str)]) -> (Server, Api) {
    let conf = dir.join("host.toml");
    std::fs::write(&conf, config).expect("write host.toml");
    let conf = conf.display().to_string();
    let args = ["--config", conf.as_str(), "--http", "127.0.0.1:0"];
    let server = Server::start_with_env(dir, &args, env);
    let api = Api::of(&server);
    (server, api)
}

fn kind(answer: &Answer) -> &str {
    answer.body["error"]["kind"].as_str().unwrap_or("")
}

/// Polls task `id` until `done` holds for its record.
fn wait_task(api: &Api, id: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let answer = api.get(&format!("/v1/tasks/{id}"), Some(TOKEN));
        if answer.status == 200 && done(&answer.body["task"]["task"]) {
            return answer.body;
        }
        assert!(start.elapsed() < WAIT, "task {id}: {what}: {}", answer.text);
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_route_answers_with_its_status_code() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(fanout(), dir.path(), "libfanout.so");
    let config = "[plugins.hello]\nprobation_ms = 60000\n";
    let (server, api) = serve(dir.path(), config, &[("HOST_HTTP_TOKEN", TOKEN)]);
    let t = Some(TOKEN);

    // Open routes.
    assert_eq!(api.get("/healthz", None).body, json!({"alive": true}));
    let ready = api.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(ready.body["tasks"], "reachable");

    // Calls: the outcome; a plugin's own error is 200 too.
    let call = api.post("/v1/plugins/hello/greet", t, r#"{"name":"Ada"}"#);
    assert_eq!(call.status, 200, "{}", call.text);
    assert_eq!(call.body["outcome"]["result"]["message"], "Hello, Ada!");
    assert_eq!(call.body["outcome"]["generation"], 1);
    assert!(call.body["outcome"]["logs"].is_array());
    let failed = api.post("/v1/plugins/hello/fail", t, "");
    assert_eq!(failed.status, 200, "{}", failed.text);
    assert!(
        failed.body["outcome"]["error"].is_object(),
        "{}",
        failed.text
    );
    let unknown = api.post("/v1/plugins/nope/greet", t, "{}");
    assert_eq!((unknown.status, kind(&unknown)), (404, "unknown_plugin"));
    let unknown = api.post("/v1/plugins/hello/nope", t, "{}");
    assert_eq!((unknown.status, kind(&unknown)), (404, "unknown_callback"));
    let late = api.post("/v1/plugins/hello/wait?timeout_ms=50", t, r#"{"ms":5000}"#);
    assert_eq!(
        (late.status, kind(&late)),
        (504, "timeout"),
        "{}",
        late.text
    );
    let bad = api.post("/v1/plugins/hello/greet", t, "{not json");
    assert_eq!((bad.status, kind(&bad)), (400, "invalid_request"));

    // Plugins: list, history, restart, rollback.
    let list = api.get("/v1/plugins", t);
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.body["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["metadata"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"hello") && names.contains(&"fanout"),
        "{names:?}"
    );
    let restart = api.post("/v1/plugins/hello/restart", t, "");
    assert_eq!(restart.status, 200, "{}", restart.text);
    assert!(restart.body["message"]
        .as_str()
        .unwrap()
        .contains("restarted plugin hello"));
    install(hello_hi(), dir.path(), "libhello.so");
    let start = Instant::now();
    while api
        .post("/v1/plugins/hello/greet", t, r#"{"name":"Ada"}"#)
        .body["outcome"]["result"]["message"]
        != "Hi, Ada!"
    {
        assert!(start.elapsed() < WAIT, "hello 0.2.0 never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    let history = api.get("/v1/plugins/hello/history", t);
    assert_eq!(history.status, 200);
    assert!(
        history.body["history"].as_array().unwrap().len() >= 2,
        "{}",
        history.text
    );
    let rollback = api.post("/v1/plugins/hello/rollback", t, "{}");
    assert_eq!(rollback.status, 200, "{}", rollback.text);
    assert!(rollback.body["message"]
        .as_str()
        .unwrap()
        .starts_with("rolled back hello 0.2.0"));
    let greet = api.post("/v1/plugins/hello/greet", t, r#"{"name":"Ada"}"#);
    assert_eq!(greet.body["outcome"]["result"]["message"], "Hello, Ada!");
    let rollback = api.post("/v1/plugins/nope/rollback", t, r#"{"generation": 1}"#);
    assert_eq!(rollback.status, 404, "{}", rollback.text);

    // Tasks: submitted (202), its follow-ups as a tree.
    let body = json!({"plugin": "fanout", "callback": "execute", "input": {"items": ["a", "bb"]}});
    let submitted = api.post("/v1/tasks", t, &body.to_string());
    assert_eq!(submitted.status, 202, "{}", submitted.text);
    let id = submitted.body["id"].as_u64().unwrap();
    let tree = wait_task(&api, id, "its two follow-ups", |task| {
        task["status"] == "success"
    });
    let start = Instant::now();
    let mut tree = tree;
    while tree["task"]["children"].as_array().map_or(0, Vec::len) < 2 {
        assert!(start.elapsed() < WAIT, "{tree}");
        tree = api.get(&format!("/v1/tasks/{id}"), t).body;
    }
    assert_eq!(tree["task"]["children"][0]["task"]["callback"], "measure");

    // Listed in pages, newest first, with a cursor: the pages together are the whole list.
    let all = api.get("/v1/tasks?plugin=fanout&limit=100", t);
    assert_eq!(all.status, 200, "{}", all.text);
    let ids = |answer: &Answer| -> Vec<u64> {
        let tasks = answer.body["tasks"].as_array().unwrap();
        tasks.iter().map(|t| t["id"].as_u64().unwrap()).collect()
    };
    let all = ids(&all);
    assert!(all.len() >= 3 && all.contains(&id), "{all:?}");
    let (mut paged, mut cursor) = (Vec::new(), String::new());
    loop {
        let page = api.get(&format!("/v1/tasks?plugin=fanout&limit=2{cursor}"), t);
        let page_ids = ids(&page);
        assert!(page_ids.len() <= 2, "{}", page.text);
        paged.extend(page_ids);
        match page.body["next"].as_u64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let wrong = api.get("/v1/tasks?status=sleeping", t);
    assert_eq!((wrong.status, kind(&wrong)), (400, "invalid_request"));

    // Cancel and retry, each with a reason kept and shown with the task.
    let later = json!({"plugin": "hello", "callback": "greet", "input": {"name": "Later"}, "at": "+1h", "key": "later"});
    let later = api.post("/v1/tasks", t, &later.to_string()).body["id"]
        .as_u64()
        .unwrap();
    let cancel = api.post(
        &format!("/v1/tasks/{later}/cancel"),
        t,
        r#"{"reason":"not today"}"#,
    );
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let retry = api.post(
        &format!("/v1/tasks/{later}/retry"),
        t,
        r#"{"reason":"today after all"}"#,
    );
    assert_eq!(retry.status, 200, "{}", retry.text);
    let shown = wait_task(&api, later, "run after its retry", |task| {
        task["status"] == "success"
    });
    let notes: Vec<&str> = shown["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["message"].as_str())
        .collect();
    assert_eq!(
        notes,
        ["cancel: not today", "retry: today after all"],
        "{shown}"
    );
    let missing = api.post("/v1/tasks/999999/cancel", t, "");
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert_eq!(api.get("/v1/tasks/999999", t).status, 404);

    // The fleet is not configured here; metrics answer.
    let fleet = api.get("/v1/fleet", t);
    assert_eq!((fleet.status, kind(&fleet)), (400, "not_configured"));
    assert_eq!(
        fleet.body["error"]["message"],
        "no fleet database configured"
    );
    let metrics = api.get("/metrics", t);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains("host_plugin_rollbacks_total{plugin=\"hello\"} 1"),
        "{}",
        metrics.text
    );
    drop(server);
}

#[test]
fn tokens_are_checked_before_anything_else_and_never_logged() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let read = dir.path().join("read-token");
    std::fs::write(&read, "reader-token\n").unwrap();
    std::fs::set_permissions(&read, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let state = tempfile::tempdir().unwrap();
    let conf = dir.path().join("host.toml");
    std::fs::write(&conf, "[http]\nread_token_file = \"read-token\"\n").unwrap();
    let (conf, state_arg) = (
        conf.display().to_string(),
        state.path().display().to_string(),
    );
    let args = [
        "--config",
        conf.as_str(),
        "--state-dir",
        state_arg.as_str(),
        "--http",
        "127.0.0.1:0",
    ];
    let server = Server::start(dir.path(), &args);
    let api = Api::of(&server);

    // No HOST_HTTP_TOKEN, no token_file: one made in the state directory, 0600, its path
    // logged and never the token.
    let file = state.path().join("http-token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let mode = std::fs::metadata(&file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let log = server.log();
    assert!(
        log.contains(&format!("made a token in {}", file.display())),
        "{log}"
    );

    let write = Some(token.as_str());
    let reader = Some("reader-token");
    let routes_read = [
        "/v1/plugins",
        "/v1/plugins/hello/history",
        "/v1/tasks",
        "/v1/tasks/1",
        "/v1/tasks/1/events",
        "/v1/fleet",
        "/metrics",
        "/v1/plugins/nope/history",
    ];
    let routes_write = [
        "/v1/plugins/hello/greet",
        "/v1/plugins/nope/greet",
        "/v1/plugins/hello/rollback",
        "/v1/plugins/hello/restart",
        "/v1/tasks",
        "/v1/tasks/1/cancel",
        "/v1/tasks/1/retry",
    ];
    for route in routes_read {
        for token in [None, Some("wrong"), Some("")] {
            let answer = api.get(route, token);
            assert_eq!(
                (answer.status, kind(&answer)),
                (401, "unauthorized"),
                "GET {route}"
            );
        }
    }
    for route in routes_write {
        for token in [None, Some("wrong")] {
            let answer = api.post(route, token, "{}");
            assert_eq!(
                (answer.status, kind(&answer)),
                (401, "unauthorized"),
                "POST {route}"
            );
        }
        let answer = api.post(route, reader, "{}");
        assert_eq!(
            (answer.status, kind(&answer)),
            (403, "forbidden"),
            "POST {route}"
        );
    }
    // The read token reads.
    assert_eq!(api.get("/v1/plugins", reader).status, 200);
    assert_eq!(api.get("/metrics", reader).status, 200);
    let call = api.post("/v1/plugins/hello/greet", write, r#"{"name":"Ada"}"#);
    assert_eq!(call.status, 200, "{}", call.text);
    let log = server.log();
    assert!(
        !log.contains(&token) && !log.contains("reader-token"),
        "{log}"
    );
}

#[test]
fn limits_cut_large_bodies_slow_clients_and_long_requests() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let config = "[http]\nmax_body_bytes = 1024\nheader_read_timeout_ms = 300\n\
                  body_read_timeout_ms = 300\nrequest_timeout_ms = 700\nmax_sse_streams = 1\n";
    let (server, api) = serve(dir.path(), config, &[("HOST_HTTP_TOKEN", TOKEN)]);
    let t = Some(TOKEN);

    // A body over the limit: 413, before the plugin is looked at.
    let big = format!(r#"{{"name":"{}"}}"#, "a".repeat(2000));
    let answer = api.post("/v1/plugins/hello/greet", t, &big);
    assert_eq!(
        (answer.status, kind(&answer)),
        (413, "too_large"),
        "{}",
        answer.text
    );
    assert!(answer.text.contains("http.max_body_bytes"));

    // A client that sends its headers slowly is cut at header_read_timeout_ms.
    let mut slow = TcpStream::connect(api.addr()).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    // Trickle a header byte now and then; the server closes the connection anyway.
    let cut = loop {
        let _ = slow.write_all(b"X");
        let mut buf = [0u8; 256];
        slow.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match slow.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(err)
                if err.kind() == std::io::ErrorKind::WouldBlock
                    || err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
    };
    assert!(
        cut,
        "a slow client was not cut: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // A body that does not arrive in time: 408.
    let mut slow = TcpStream::connect(api.addr()).unwrap();
    let head = format!(
        "POST /v1/plugins/hello/greet HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 100\r\n\r\n{{\"name\""
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("http.body_read_timeout_ms"), "{answer}");

    // ... and the server still answers others.
    assert_eq!(api.get("/healthz", None).status, 200);

    // A request not answered within request_timeout_ms: 504.
    let started = Instant::now();
    let late = api.post(
        "/v1/plugins/hello/wait?timeout_ms=10000",
        t,
        r#"{"ms":5000}"#,
    );
    assert_eq!(
        (late.status, kind(&late)),
        (504, "timeout"),
        "{}",
        late.text
    );
    assert!(
        late.text.contains("http.request_timeout_ms"),
        "{}",
        late.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Event streams past max_sse_streams: 503 with Retry-After.
    let task = json!({"plugin": "hello", "callback": "greet", "input": {}, "at": "+1h"});
    let id = api.post("/v1/tasks", t, &task.to_string()).body["id"]
        .as_u64()
        .unwrap();
    let first = api
        .agent
        .get(format!("{}/v1/tasks/{id}/events", api.base))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = api.get(&format!("/v1/tasks/{id}/events"), t);
    assert_eq!(
        (second.status, kind(&second)),
        (503, "busy"),
        "{}",
        second.text
    );
    assert_eq!(second.retry_after.as_deref(), Some("1"));
    assert!(second.text.contains("http.max_sse_streams"));
    drop(first);
    drop(server);
}

/// Reads SSE events (id, event, data) from `reader` until `n` are read or the stream ends.
fn read_events(reader: &mut impl BufRead, n: usize) -> Vec<(String, String, String)> {
    let mut events = Vec::new();
    let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
    let mut line = String::new();
    while events.len() < n {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if !data.is_empty() || !name.is_empty() {
                events.push((
                    id.clone(),
                    std::mem::take(&mut name),
                    std::mem::take(&mut data),
                ));
            }
        } else if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
            id = v.to_owned();
        } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
            name = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
            data = v.to_owned();
        }
    }
    events
}

#[test]
fn an_event_stream_resumes_with_last_event_id_and_metrics_count_socket_and_task_calls() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let (server, api) = serve(dir.path(), "", &[("HOST_HTTP_TOKEN", TOKEN)]);
    let t = Some(TOKEN);

    // A task due in a moment: its stream shows it queued, then its log line and success.
    let task =
        json!({"plugin": "hello", "callback": "greet", "input": {"name": "Eve"}, "at": "+1s"});
    let id = api.post("/v1/tasks", t, &task.to_string()).body["id"]
        .as_u64()
        .unwrap();
    let url = format!("{}/v1/tasks/{id}/events", api.base);
    let auth = format!("Bearer {TOKEN}");
    let stream = api
        .agent
        .get(&url)
        .header("Authorization", &auth)
        .call()
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut reader = BufReader::new(stream.into_body().into_reader());
    let first = read_events(&mut reader, 1);
    assert_eq!(first.len(), 1, "{first:?}");
    let (last_id, name, data) = &first[0];
    assert_eq!(name, "status");
    assert_eq!(
        serde_json::from_str::<Value>(data).unwrap()["status"],
        "queued"
    );
    drop(reader);

    // Reconnected with Last-Event-ID: the rest, not the first again, and the end.
    let stream = api
        .agent
        .get(&url)
        .header("Authorization", &auth)
        .header("Last-Event-ID", last_id)
        .call()
        .unwrap();
    let mut reader = BufReader::new(stream.into_body().into_reader());
    let rest = read_events(&mut reader, 100);
    let names: Vec<&str> = rest.iter().map(|(_, n, _)| n.as_str()).collect();
    assert!(!rest.iter().any(|(id, _, _)| id == last_id), "{rest:?}");
    let statuses: Vec<String> = rest
        .iter()
        .filter(|(_, n, _)| n == "status")
        .map(|(_, _, d)| {
            serde_json::from_str::<Value>(d).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("success"),
        "{rest:?}"
    );
    assert!(names.contains(&"log"), "{rest:?}");
    let log = rest.iter().find(|(_, n, _)| n == "log").unwrap();
    assert!(log.2.contains("greeting Eve"), "{log:?}");

    // Metrics count calls of every front end: one through the socket, one by the task
    // runner (above), one over HTTP.
    server.cli(&["call", "hello", "wait", "--input", r#"{"ms":1}"#]);
    api.post("/v1/plugins/hello/fail", t, "");
    let metrics = api.get("/metrics", Some(TOKEN)).text;
    for line in [
        "host_calls_total{plugin=\"hello\",callback=\"wait\",outcome=\"ok\"} 1",
        "host_calls_total{plugin=\"hello\",callback=\"greet\",outcome=\"ok\"} 1",
        "host_calls_total{plugin=\"hello\",callback=\"fail\",outcome=\"plugin_error\"} 1",
        "host_tasks{status=\"success\"} 1",
        "host_task_run_seconds_count 1",
        "host_call_duration_seconds_count{plugin=\"hello\",callback=\"wait\"} 1",
        "host_plugin_loads_total{plugin=\"hello\"} 1",
        "host_control_connections ",
        "host_http_connections ",
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
}

#[test]
fn busy_and_shutting_down_calls_get_503() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let config = "shutdown_timeout_ms = 20000\n[plugins.hello]\nmax_concurrent_calls = 1\n";
    let (mut server, api) = serve(dir.path(), config, &[("HOST_HTTP_TOKEN", TOKEN)]);
    let t = Some(TOKEN);

    // One call holds hello's only slot: the next is busy, with Retry-After.
    let long = std::thread::spawn({
        let (base, agent) = (api.base.clone(), api.agent.clone());
        move || {
            let mut answer = agent
                .post(format!("{base}/v1/plugins/hello/wait"))
                .header("Authorization", format!("Bearer {TOKEN}"))
                .send(r#"{"ms":1500}"#)
                .expect("an answer");
            (
                answer.status().as_u16(),
                answer.body_mut().read_to_string().unwrap_or_default(),
            )
        }
    });
    server.wait_until(WAIT, "the long call to run", |s| {
        s.files()
            .iter()
            .any(|f| f.serving.as_ref().is_some_and(|s| s.in_flight > 0))
    });
    let busy = api.post("/v1/plugins/hello/greet", t, "{}");
    assert_eq!((busy.status, kind(&busy)), (503, "busy"), "{}", busy.text);
    assert_eq!(busy.retry_after.as_deref(), Some("1"));

    // Shutting down: the call in flight finishes, new ones get 503 shutting_down, and an
    // open event stream does not hold the host up.
    let task = json!({"plugin": "hello", "callback": "greet", "input": {}, "at": "+1h"});
    let id = api.post("/v1/tasks", t, &task.to_string()).body["id"]
        .as_u64()
        .unwrap();
    let stream = api
        .agent
        .get(format!("{}/v1/tasks/{id}/events", api.base))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let stopping = Instant::now();
    server.signal(libc::SIGTERM);
    server.wait_until(WAIT, "the shutdown line", |s| {
        s.log().contains("received signal")
    });
    let refused = api.post("/v1/plugins/hello/greet", t, "{}");
    assert_eq!(
        (refused.status, kind(&refused)),
        (503, "shutting_down"),
        "{}",
        refused.text
    );
    let (status, text) = long.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("waited_ms"), "{text}");
    assert!(server.wait_timeout(WAIT).is_some_and(|s| s.success()));
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    drop(stream);
}

#[test]
fn an_address_other_than_loopback_is_served_and_warned_about() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let args = ["--http", "0.0.0.0:0"];
    let server = Server::start_with_env(dir.path(), &args, &[("HOST_HTTP_TOKEN", TOKEN)]);
    let api = Api::of(&server);
    let port = api.addr().rsplit(':').next().unwrap_or_default().to_owned();
    let local = Api {
        base: format!("http://127.0.0.1:{port}"),
        agent: api.agent.clone(),
    };
    assert_eq!(local.get("/healthz", None).status, 200);
    let log = server.log();
    assert_eq!(
        log.matches("reachable from other machines").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_connection_past_max_connections_gets_503_and_is_closed() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let config = "[http]\nmax_connections = 2\n";
    let (server, api) = serve(dir.path(), config, &[("HOST_HTTP_TOKEN", TOKEN)]);
    // Two connections, each with a request answered (so both are surely accepted).
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(api.addr()).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            stream
        })
        .collect();
    let mut third = TcpStream::connect(api.addr()).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = third.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("http.max_connections"), "{answer}");
    drop(held);
    // Once they are gone, connections are served again.
    let start = Instant::now();
    while api.get("/healthz", None).status != 200 {
        assert!(start.elapsed() < WAIT, "never served again");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.log().contains("refusing more"), "{}", server.log());
}

/// A running task's log lines show on its event stream as its plugin writes them, before
/// the task ends (plugin ABI 1.5), with the plugin in the host's process and in a worker
/// process: `fanout.staged` logs its first stage, then waits for a file this test writes
/// only once the stream showed that line. Each line is sent once, also when the attempt's
/// stored logs arrive at its end, and a stream resumed with Last-Event-ID goes on from
/// there.
#[test]
fn a_running_tasks_log_lines_show_on_its_event_stream_as_they_are_written() {
    for isolation in ["in-process", "process"] {
        live_lines_come_before_the_task_ends(isolation);
    }
}

fn live_lines_come_before_the_task_ends(isolation: &str) {
    let dir = plugins_dir();
    install(fanout(), dir.path(), "libfanout.so");
    let config = format!("[plugins.fanout]\nisolation = \"{isolation}\"\ntimeout_ms = 15000\n");
    let (server, api) = serve(dir.path(), &config, &[("HOST_HTTP_TOKEN", TOKEN)]);
    let t = Some(TOKEN);
    let gate = tempfile::tempdir().unwrap();
    let go_on = gate.path().join("go-on");
    let task = json!({
        "plugin": "fanout",
        "callback": "staged",
        "input": {"stages": ["fetch", "store"], "wait_for": go_on},
        "max_attempts": 1,
    });
    let submitted = api.post("/v1/tasks", t, &task.to_string());
    assert_eq!(submitted.status, 202, "{}", submitted.text);
    let id = submitted.body["id"].as_u64().unwrap();
    let url = format!("{}/v1/tasks/{id}/events", api.base);
    let auth = format!("Bearer {TOKEN}");
    let stream = api
        .agent
        .get(&url)
        .header("Authorization", &auth)
        .call()
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut reader = BufReader::new(stream.into_body().into_reader());
    let status_of = |data: &str| {
        serde_json::from_str::<Value>(data).unwrap()["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Events until the first stage's line: the task cannot end before it (it waits for the
    // file), so every status before it is queued or running.
    let mut seen = Vec::new();
    let first_line = loop {
        let event = read_events(&mut reader, 1);
        let Some((event_id, name, data)) = event.into_iter().next() else {
            panic!("{isolation}: the stream ended before the first line: {seen:?}");
        };
        if name == "status" {
            let status = status_of(&data);
            assert!(
                status == "queued" || status == "running",
                "{isolation}: the task went {status} before its first line was shown \
                 (the line did not come while it ran): {seen:?} {data}"
            );
        }
        seen.push((name.clone(), data.clone()));
        if name == "log" {
            break (event_id, data);
        }
    };
    assert!(
        first_line.1.contains("stage 1 of 2: fetch done"),
        "{isolation}: {first_line:?}"
    );
    let running = api.get(&format!("/v1/tasks/{id}"), t);
    assert_eq!(
        running.body["task"]["task"]["status"], "running",
        "{isolation}: the line came while the task ran: {}",
        running.text
    );

    // Let it go on: the rest of its lines, once each, then its end.
    std::fs::write(&go_on, b"").unwrap();
    let rest = read_events(&mut reader, 100);
    let lines: Vec<&str> = seen
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_str()))
        .chain(rest.iter().map(|(_, n, d)| (n.as_str(), d.as_str())))
        .filter(|(n, _)| *n == "log")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(lines.len(), 2, "{isolation}: each line once: {lines:#?}");
    assert!(lines[1].contains("stage 2 of 2: store done"), "{lines:?}");
    let last = rest.last().expect("events after the first line");
    assert_eq!(
        (last.1.as_str(), status_of(&last.2).as_str()),
        ("status", "success"),
        "{isolation}: {rest:?}"
    );

    // Resumed after the first line: what came after it, not the line again.
    let resumed = api
        .agent
        .get(&url)
        .header("Authorization", &auth)
        .header("Last-Event-ID", &first_line.0)
        .call()
        .unwrap();
    let mut reader = BufReader::new(resumed.into_body().into_reader());
    let again = read_events(&mut reader, 100);
    let resumed_lines: Vec<&str> = again
        .iter()
        .filter(|(_, n, _)| n == "log")
        .map(|(_, _, d)| d.as_str())
        .collect();
    assert_eq!(resumed_lines.len(), 1, "{isolation}: {again:?}");
    assert!(resumed_lines[0].contains("stage 2 of 2"), "{again:?}");

    // The stored logs have both, as before.
    let done = api.get(&format!("/v1/tasks/{id}"), t);
    let stored = done.body["task"]["task"]["logs"].as_array().cloned();
    assert_eq!(stored.map(|l| l.len()), Some(2), "{}", done.text);
    drop(server);
}

/// `POST /v1/plugins/{plugin}/callbacks/{callback}` calls any callback, those named like the
/// routes under `/v1/plugins/{plugin}/` (`history`, `rollback`, `restart`) too.
#[test]
fn a_callback_named_like_a_plugin_route_is_called_under_callbacks() {
    let dir = plugins_dir();
    let named = Variant::of("example-plugins/hello").edit(
        "src/lib.rs",
        ".add(\"greet\", Hello::greet)",
        ".add(\"greet\", Hello::greet).add(\"history\", Hello::greet)\
         .add(\"rollback\", Hello::greet).add(\"restart\", Hello::greet)",
    );
    named.build_into(dir.path(), "libhello.so");
    let (_server, api) = serve(dir.path(), "", &[("HOST_HTTP_TOKEN", TOKEN)]);
    let t = Some(TOKEN);
    for callback in ["greet", "history", "rollback", "restart"] {
        let call = api.post(
            &format!("/v1/plugins/hello/callbacks/{callback}"),
            t,
            r#"{"name":"Ada"}"#,
        );
        assert_eq!(call.status, 200, "{callback}: {}", call.text);
        assert_eq!(call.body["outcome"]["callback"], callback, "{}", call.text);
        assert_eq!(call.body["outcome"]["result"]["message"], "Hello, Ada!");
    }
    // Without `callbacks/`, those names are still the routes.
    let history = api.get("/v1/plugins/hello/history", t);
    assert_eq!(history.status, 200, "{}", history.text);
    assert!(history.body.get("outcome").is_none(), "{}", history.text);
    let restart = api.post("/v1/plugins/hello/restart", t, "");
    assert_eq!(restart.status, 200, "{}", restart.text);
    assert!(
        restart.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted plugin hello")),
        "{}",
        restart.text
    );
    // A callback the plugin does not have is a 404 there too.
    let unknown = api.post("/v1/plugins/hello/callbacks/nope", t, "null");
    assert_eq!((unknown.status, kind(&unknown)), (404, "unknown_callback"));
}
