//! The HTTP API's figures: a no-op call's latency against the control socket's, calls per
//! second with 64 keep-alive clients (both through a minimal HTTP/1.1 client, as lean as the
//! socket's), and how long a task's end takes to reach 500 SSE
//! subscribers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{fresh_dir, percentile, row, Args, Row, Serve};

const TOKEN: &str = "bench-token";

fn new_agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build();
    ureq::Agent::new_with_config(config)
}

/// A keep-alive HTTP/1.1 connection that makes no-op calls: one write per request, the
/// answer read by its Content-Length (as lean as the socket's client, so the figures
/// compare the servers, not the clients).
struct Conn {
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
    body: Vec<u8>,
}

impl Conn {
    fn new(base: &str) -> Conn {
        let addr = base.trim_start_matches("http://");
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!(
            "POST /v1/plugins/bench-noop/noop HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Length: 4\r\n\r\nnull"
        );
        Conn {
            stream: BufReader::new(stream),
            request: request.into_bytes(),
            body: Vec::new(),
        }
    }

    /// A no-op call; the plugin's own time in microseconds.
    fn call(&mut self) -> u64 {
        self.stream
            .get_mut()
            .write_all(&self.request)
            .expect("write");
        let mut line = String::new();
        let mut length = 0;
        let mut status = 0;
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("read");
            if status == 0 {
                status = line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
            if line == "\r\n" {
                break;
            }
        }
        assert_eq!(status, 200, "HTTP no-op call");
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).expect("body");
        let text = std::str::from_utf8(&self.body).unwrap_or("");
        text.split("\"elapsed_us\":")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `host serve --http` on a free loopback port, with a token file; its base URL.
fn start(args: &Args, name: &str) -> (Serve, String) {
    let dir = fresh_dir(name);
    std::fs::copy(&args.plugin, dir.join("libbench_noop.so")).expect("copy plugin");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let token = dir.with_extension("token");
    std::fs::write(&token, TOKEN).expect("token file");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "max_call_threads = 128\n[http]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n\
             max_connections = 1024\nmax_sse_streams = 1024\n",
            token.display()
        ),
    )
    .expect("config");
    let (serve, _) = Serve::start_with(&args.host, dir, &["--config".as_ref(), config.as_os_str()]);
    let _ = serve.client();
    (serve, format!("http://127.0.0.1:{port}"))
}

pub(crate) fn figures(args: &Args, rows: &mut Vec<Row>) {
    let (serve, base) = start(args, "http");
    let mut conn = Conn::new(&base);
    let n = if args.smoke { 200 } else { 20_000 };

    // Latency, one call at a time, HTTP and the socket interleaved on the same host (so a
    // busy moment of the machine weighs on both alike).
    let mut client = serve.client();
    let (mut overhead, mut socket) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + n / 10 {
        let start = Instant::now();
        let plugin_us = conn.call();
        let http = start.elapsed().as_secs_f64() * 1e6 - plugin_us as f64;
        let start = Instant::now();
        let outcome = client.call("bench-noop", "noop", "null").expect("noop");
        let sock = start.elapsed().as_secs_f64() * 1e6 - outcome.elapsed_us as f64;
        if i >= n / 10 {
            overhead.push(http);
            socket.push(sock);
        }
    }
    overhead.sort_by(f64::total_cmp);
    socket.sort_by(f64::total_cmp);
    let (http50, http99) = (percentile(&overhead, 0.5), percentile(&overhead, 0.99));
    let (sock50, sock99) = (percentile(&socket, 0.5), percentile(&socket, 0.99));
    rows.push(row(
        "HTTP no-op call (keep-alive) vs the control socket's, interleaved, minus the plugin's own time",
        format!(
            "{http50:.1} µs median (p99 {http99:.1} µs) vs {sock50:.1} µs (p99 {sock99:.1} µs) \
             = {:.2}x",
            http50 / sock50
        ),
        "p50 <= 1.5x the socket's",
        Some(http50 <= 1.5 * sock50),
    ));

    // Throughput: 64 keep-alive clients calling as fast as they can; the same over the
    // socket for comparison.
    let clients = 64;
    let seconds = if args.smoke { 0.5 } else { 5.0 };
    let rate = |http: bool| {
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(|| {
                    let mut conn = Conn::new(&base);
                    let mut socket = serve.client();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if http {
                            conn.call();
                        } else {
                            socket.call("bench-noop", "noop", "null").expect("noop");
                        }
                        n += 1;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                });
            }
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
        });
        count.load(Ordering::Relaxed) as f64 / seconds
    };
    let (http, socket) = (rate(true), rate(false));
    rows.push(row(
        &format!("HTTP no-op calls per second, {clients} concurrent keep-alive clients"),
        format!(
            "{:.1}k/s (the control socket with {clients} clients: {:.1}k/s)",
            http / 1000.0,
            socket / 1000.0
        ),
        ">= 20,000/s",
        Some(http >= 20_000.0),
    ));

    sse_fan_out(args, &base, rows);
    drop(serve);
}

/// 500 streams on one task: when its end reached each, after the store recorded it.
fn sse_fan_out(args: &Args, base: &str, rows: &mut Vec<Row>) {
    let subscribers = if args.smoke { 20 } else { 500 };
    let agent = new_agent();
    let task = r#"{"plugin":"bench-noop","callback":"noop","input":null,"at":"+2s"}"#;
    let mut submitted = agent
        .post(format!("{base}/v1/tasks"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send(task)
        .expect("submit");
    let body: serde_json::Value = submitted.body_mut().read_json().expect("JSON");
    let id = body["id"].as_u64().expect("a task id");
    let url = format!("{base}/v1/tasks/{id}/events");
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let threads: Vec<_> = (0..subscribers)
        .map(|_| {
            let (url, ready) = (url.clone(), ready.clone());
            std::thread::spawn(move || -> Option<f64> {
                let answer = new_agent()
                    .get(&url)
                    .header("Authorization", format!("Bearer {TOKEN}"))
                    .call();
                let mut reader = answer
                    .ok()
                    .map(|a| BufReader::new(a.into_body().into_reader()));
                ready.wait();
                let reader = reader.as_mut()?;
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).ok()? == 0 {
                        return None;
                    }
                    if line.starts_with("data:") && line.contains("\"success\"") {
                        return Some(unix_ms());
                    }
                }
            })
        })
        .collect();
    ready.wait();
    let received: Vec<f64> = threads
        .into_iter()
        .filter_map(|t| t.join().ok().flatten())
        .collect();
    let mut record = agent
        .get(format!("{base}/v1/tasks/{id}"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .call()
        .expect("the task");
    let record: serde_json::Value = record.body_mut().read_json().expect("JSON");
    let finished = record["task"]["task"]["finished_unix_ms"]
        .as_f64()
        .unwrap_or(0.0);
    let mut after: Vec<f64> = received.iter().map(|t| t - finished).collect();
    after.sort_by(f64::total_cmp);
    let (first, last) = (
        after.first().copied().unwrap_or(f64::NAN),
        after.last().copied().unwrap_or(f64::NAN),
    );
    rows.push(row(
        &format!("{subscribers} SSE subscribers on one task: its end reaching all of them"),
        format!(
            "{} of {subscribers} got it; last {last:.0} ms after the store recorded it \
             (first {first:.0} ms; the feed polls the store every {} ms)",
            received.len(),
            host::http::EVENT_POLL.as_millis()
        ),
        "-",
        None,
    ));
}
