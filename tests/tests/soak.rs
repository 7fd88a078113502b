//! The soak test: for a minute (`SOAK_SECS` to change it), everything at once against one
//! `host serve`: random file writes, renames and removals in its directory, reloads,
//! connection churn and half-sent requests, slow, stuck and panicking calls. The host must
//! never die, every request must get exactly one answer, and its threads and memory must
//! stay bounded.
//!
//! Longer, by hand: `SOAK_SECS=3600 cargo test -p e2e --test soak -- --nocapture`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{built, hello_hi, install, plugins_dir, proc_status, tough, Server};

/// A small, seeded random number generator (xorshift), so a failing run can be told apart.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    answers: AtomicU64,
    /// Answers that refused the connection (max_connections) instead of serving it.
    refusals: AtomicU64,
    /// Connections that could not even be made.
    refused_connections: AtomicU64,
    problems: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn problem(&self, what: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 20 {
            problems.push(what);
        }
    }
}

const REQUESTS: [&str; 9] = [
    r#"{"v":1,"op":"call","plugin":"hello","callback":"greet","input":{"name":"Ada"}}"#,
    r#"{"v":1,"op":"call","plugin":"tough","callback":"greet"}"#,
    r#"{"v":1,"op":"call","plugin":"tough","callback":"sleep","input":{"ms":1500}}"#,
    r#"{"v":1,"op":"call","plugin":"tough","callback":"panic"}"#,
    r#"{"v":1,"op":"call","plugin":"tough","callback":"wait","input":{"ms":50}}"#,
    r#"{"v":1,"op":"call","plugin":"tough","callback":"spam","input":{"lines":2000,"bytes":200}}"#,
    r#"{"v":1,"op":"list"}"#,
    r#"{"v":1,"op":"ping"}"#,
    r#"{"v":1,"op":"call","plugin":"nope","callback":"x"}"#,
];

/// Sends requests one at a time on one connection and checks that each gets exactly one
/// answer line, until `stop`.
fn caller(socket: PathBuf, stop: Arc<AtomicBool>, counts: Arc<Counts>, mut rng: Rng) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(stream) = UnixStream::connect(&socket) else {
            counts.refused_connections.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        for _ in 0..rng.below(20) + 1 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let request = REQUESTS[rng.below(REQUESTS.len() as u64) as usize];
            counts.requests.fetch_add(1, Ordering::Relaxed);
            if writer.write_all(format!("{request}\n").as_bytes()).is_err() {
                counts.problem(format!("write failed for {request}"));
                break;
            }
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    counts.problem(format!("no answer to {request}"));
                    break;
                }
                Ok(_) => {}
            }
            if !reader.buffer().is_empty() {
                counts.problem(format!("more than one answer to {request}"));
            }
            match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(answer) if answer["v"] == 1 => {
                    if answer["ok"] == false
                        && answer["error"]["kind"] == "busy"
                        && line.contains("max_connections")
                    {
                        counts.refusals.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    counts.answers.fetch_add(1, Ordering::Relaxed);
                }
                _ => counts.problem(format!("not a protocol answer: {line:.200}")),
            }
        }
    }
}

/// Opens connections and drops them, some after half a request.
fn churner(socket: PathBuf, stop: Arc<AtomicBool>, mut rng: Rng) {
    let mut held = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut stream) = UnixStream::connect(&socket) {
            if rng.below(3) == 0 {
                let _ = stream.write_all(br#"{"v":1,"op":"call","plugin":"hel"#);
            }
            held.push(stream);
        }
        if held.len() > 50 || rng.below(10) == 0 {
            held.clear();
        }
        thread::sleep(Duration::from_millis(rng.below(5)));
    }
}

/// Writes, renames and removes files in the plugins directory, and reloads hello.
fn file_churner(dir: PathBuf, stop: Arc<AtomicBool>, mut rng: Rng) {
    let hello = fs::read(&built().hello).unwrap();
    let hi = fs::read(hello_hi()).unwrap();
    let names = [
        "junk1.so",
        "junk2.so",
        "junk3.so",
        ".hidden.so",
        "notes.txt",
    ];
    while !stop.load(Ordering::Relaxed) {
        let name = names[rng.below(names.len() as u64) as usize];
        let path = dir.join(name);
        match rng.below(7) {
            0 => {
                let _ = fs::write(&path, &hello[..rng.below(hello.len() as u64) as usize]);
            }
            1 => {
                let _ = fs::write(&path, format!("junk {}", rng.next()));
            }
            2 => {
                let other = dir.join(names[rng.below(names.len() as u64) as usize]);
                let _ = fs::rename(&path, other);
            }
            3 => {
                let _ = fs::remove_file(&path);
            }
            4 => {
                // A reload of hello, written in place.
                let bytes = if rng.below(2) == 0 { &hello } else { &hi };
                let _ = fs::write(dir.join("libhello.so"), bytes);
            }
            5 => {
                // A second file for hello: refused, then removed.
                let _ = fs::write(dir.join("hello-copy.so"), &hello);
            }
            _ => {
                let _ = fs::remove_file(dir.join("hello-copy.so"));
            }
        }
        thread::sleep(Duration::from_millis(5 + rng.below(30)));
    }
}

#[test]
fn the_host_survives_everything_at_once() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed = seed();
    eprintln!("soak: {secs} s, seed {seed}");
    let mut rng = Rng(seed);

    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(tough(), dir.path(), "libtough.so");
    let conf = dir.path().join("host.toml");
    fs::write(
        &conf,
        "max_connections = 100\nrequest_timeout_ms = 500\nmax_buffered_bytes = 8000000\n\
         [plugins.tough]\ntimeout_ms = 300\nmax_concurrent_calls = 6\n",
    )
    .unwrap();
    let mut server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(Duration::from_secs(30), "both plugins", |s| {
        s.call("hello", "greet", r#"{"name":"Ada"}"#).is_ok()
            && s.call("tough", "greet", "null").is_ok()
    });
    let pid = server.pid();
    let rss_start = proc_status(pid, "VmRSS");

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (socket, stop, counts) = (server.socket.clone(), stop.clone(), counts.clone());
        let rng = Rng(rng.next() | 1);
        workers.push(thread::spawn(move || caller(socket, stop, counts, rng)));
    }
    for _ in 0..2 {
        let (socket, stop) = (server.socket.clone(), stop.clone());
        let rng = Rng(rng.next() | 1);
        workers.push(thread::spawn(move || churner(socket, stop, rng)));
    }
    {
        let (dir, stop) = (dir.path().to_owned(), stop.clone());
        let rng = Rng(rng.next() | 1);
        workers.push(thread::spawn(move || file_churner(dir, stop, rng)));
    }

    let end = Instant::now() + Duration::from_secs(secs);
    let (mut max_threads, mut max_rss) = (0, 0);
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(250));
        if let Some(status) = server.exit_status() {
            panic!(
                "the host died, {status} (seed {seed}):\n{}",
                tail(&server.log)
            );
        }
        max_threads = max_threads.max(proc_status(pid, "Threads"));
        max_rss = max_rss.max(proc_status(pid, "VmRSS"));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    let problems = counts.problems.lock().unwrap().clone();
    let (requests, answers) = (
        counts.requests.load(Ordering::Relaxed),
        counts.answers.load(Ordering::Relaxed),
    );
    let refusals = counts.refusals.load(Ordering::Relaxed);
    eprintln!(
        "soak: {requests} requests, {answers} answers, {refusals} refused for max_connections, \
         {} connections not made, at most {max_threads} threads and {max_rss} KiB (from \
         {rss_start} KiB)",
        counts.refused_connections.load(Ordering::Relaxed)
    );
    assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
    assert!(requests > 100, "{requests} requests");
    // Exactly one answer per request: served, or refused with the connection.
    assert_eq!(answers + refusals, requests, "seed {seed}");
    // Threads: the runtime, the call pool (bounded by max_call_threads), loads, the reaper,
    // plus threads of stuck calls still sleeping.
    assert!(max_threads < 120, "{max_threads} threads (seed {seed})");
    assert!(
        max_rss < rss_start + 200_000,
        "resident memory went from {rss_start} to {max_rss} KiB (seed {seed})"
    );
    assert!(server.is_running());
    server.wait_until(Duration::from_secs(30), "hello to answer", |s| {
        s.call("hello", "greet", r#"{"name":"Ada"}"#).is_ok()
    });
    assert!(server.stop(), "a clean shutdown:\n{}", tail(&server.log));
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
