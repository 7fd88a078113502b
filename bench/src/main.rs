//! The benchmark driver: measures the process-level figures against a real `host serve`,
//! reads criterion's in-process figures, and prints one markdown table.
//!
//! `bench/run` builds everything in release mode and runs this; see the README's
//! "Performance" section. Arguments (all set by `bench/run`):
//!
//! ```text
//! bench --host target/release/host --plugin A.so --variant B.so --plugins-50 DIR
//!       --criterion target/criterion [--smoke] [--only GROUP,GROUP...]
//! ```
//!
//! `--only` runs some groups of figures: in-process, socket, idle, reloads, runtime-reloads,
//! startup, isolation, isolated-reloads, sandbox, tasks, http, fleet (on PostgreSQL:
//! `--database URL`, `BENCH_DATABASE_URL` or `E2E_DATABASE_URL`; `bench/run` starts a
//! throwaway server when none is given), catalogue (the same server).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use host::control::Client;

mod catalogue;
mod fleet;
mod http;
mod runtime_reloads;
mod sandbox;
mod tasks;

struct Args {
    host: PathBuf,
    plugin: PathBuf,
    variant: PathBuf,
    plugins_50: PathBuf,
    criterion: PathBuf,
    /// The peers' benchmark binary (bench/peers), if built.
    peers: Option<PathBuf>,
    /// `example-plugins/fetch` built in release mode (a tokio runtime inside a plugin).
    fetch: Option<PathBuf>,
    smoke: bool,
    /// The groups of figures to run (`--only`); all when empty.
    only: Vec<String>,
}

impl Args {
    /// Whether the group of figures `name` runs.
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

fn args() -> Args {
    let value = |name: &str| -> PathBuf {
        let mut args = std::env::args();
        while let Some(arg) = args.next() {
            if arg == name {
                if let Some(value) = args.next() {
                    return PathBuf::from(value);
                }
            }
        }
        panic!("{name} is required (bench/run passes it)")
    };
    Args {
        host: value("--host"),
        plugin: value("--plugin"),
        variant: value("--variant"),
        plugins_50: value("--plugins-50"),
        criterion: value("--criterion"),
        peers: std::env::args()
            .skip_while(|a| a != "--peers")
            .nth(1)
            .map(PathBuf::from),
        fetch: std::env::args()
            .skip_while(|a| a != "--fetch")
            .nth(1)
            .map(PathBuf::from),
        smoke: std::env::args().any(|a| a == "--smoke"),
        only: std::env::args()
            .skip_while(|a| a != "--only")
            .nth(1)
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// One row of the table.
struct Row {
    figure: String,
    measured: String,
    target: String,
    ok: Option<bool>,
}

fn row(figure: &str, measured: String, target: &str, ok: Option<bool>) -> Row {
    Row {
        figure: figure.to_owned(),
        measured,
        target: target.to_owned(),
        ok,
    }
}

/// A `host serve` process on a fresh directory and socket.
struct Serve {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Serve {
    fn start(host: &Path, dir: PathBuf) -> (Serve, Instant) {
        Serve::start_with(host, dir, &[])
    }

    /// [`Serve::start`] with extra arguments for `host serve`.
    fn start_with(host: &Path, dir: PathBuf, extra: &[&std::ffi::OsStr]) -> (Serve, Instant) {
        // The socket's directory must be the user's own and closed to others.
        let run = dir.with_extension("run");
        let _ = std::fs::remove_dir_all(&run);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&run)
            .expect("socket directory");
        let socket = run.join("host.sock");
        let started = Instant::now();
        let child = Command::new(host)
            .arg("serve")
            .arg("--plugins")
            .arg(&dir)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("XDG_STATE_HOME", dir.with_extension("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("host serve starts");
        (Serve { child, dir, socket }, started)
    }

    fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = Client::connect(&self.socket) {
                if client.ping().is_ok() {
                    return client;
                }
            }
            assert!(Instant::now() < deadline, "host serve did not answer");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn rss_kib(&self) -> u64 {
        self.status("VmRSS")
    }

    /// A number from the process's `/proc/PID/status` (`VmRSS` in KiB, `Threads`).
    fn status(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(run) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(run);
        }
    }
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Median nanoseconds criterion measured for `id` (e.g. `handler/abi_noop`).
fn criterion_median_ns(dir: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// The peers' figures, from `bench-peers` (bench/peers), if it was built and ran.
fn peers(args: &Args) -> serde_json::Value {
    let Some(program) = &args.peers else {
        return serde_json::Value::Null;
    };
    let mut command = Command::new(program);
    if args.smoke {
        command.arg("--smoke");
    }
    match command.stderr(Stdio::inherit()).output() {
        Ok(out) if out.status.success() => {
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
        }
        _ => {
            eprintln!("bench-peers did not run: {}", program.display());
            serde_json::Value::Null
        }
    }
}

/// A figure of the peers, or NaN when they did not run.
fn peer(peers: &serde_json::Value, key: &str) -> f64 {
    peers[key].as_f64().unwrap_or(f64::NAN)
}

fn in_process(args: &Args, peers: &serde_json::Value, rows: &mut Vec<Row>) {
    let c = |id: &str| criterion_median_ns(&args.criterion, id);
    let not_run = "not run (bench/run without --smoke runs it)".to_owned();
    let hot_noop = peer(peers, "hot_noop_ns");
    let hot_null = peer(peers, "hot_json_null_ns");
    let hot_echo = peer(peers, "hot_echo_ns");
    let wasm_noop = peer(peers, "wasm_noop_ns");
    let direct_noop = c("handler/direct_noop");

    rows.push(match (c("host/call_noop"), direct_noop) {
        (Some(ns), Some(direct)) => row(
            "`Host::call` no-op (JSON `null` in and out), in-process",
            format!(
                "{ns:.1} ns; direct `dyn` doing the same JSON {direct:.1} ns ({:.2}x); \
                 hot-lib-reloader: JSON `null` {hot_null:.1} ns ({:.2}x), empty fn {hot_noop:.1} ns ({:.2}x)",
                ns / direct,
                ns / hot_null,
                ns / hot_noop
            ),
            "<= 60 ns, and below hot-lib-reloader's empty fn",
            Some(ns <= 60.0 && ns < hot_noop),
        ),
        _ => row("`Host::call` no-op", not_run.clone(), "<= 60 ns", None),
    });
    rows.push(match (c("host/call_echo_100b"), c("direct/echo_100b")) {
        (Some(ns), Some(direct)) => row(
            "`Host::call` with ~100-byte JSON in and out, in-process",
            format!(
                "{:.3} µs; direct `dyn` doing the same serde work {:.3} µs ({:.2}x); \
                 hot-lib-reloader {:.3} µs ({:.2}x)",
                ns / 1000.0,
                direct / 1000.0,
                ns / direct,
                hot_echo / 1000.0,
                ns / hot_echo
            ),
            "<= 1.15x the direct `dyn` call",
            Some(ns / direct <= 1.15),
        ),
        _ => row(
            "`Host::call` ~100-byte echo",
            not_run.clone(),
            "<= 1.15x direct",
            None,
        ),
    });
    rows.push(match c("host/typed_noop") {
        Some(ns) => row(
            "typed no-op (`TypedCall`, no bytes in or out), in-process",
            format!(
                "{ns:.1} ns; wasmtime `TypedFunc<(), ()>` {wasm_noop:.1} ns ({:.2}x)",
                ns / wasm_noop
            ),
            "<= 20 ns, and below wasmtime's typed call",
            Some(ns <= 20.0 && ns < wasm_noop),
        ),
        None => row("typed no-op", not_run.clone(), "<= 20 ns", None),
    });
    match (c("handler/abi_noop"), direct_noop) {
        (Some(abi), Some(direct)) => rows.push(row(
            "an inner layer: no-op through the ABI `Handler` alone (not the public API)",
            format!(
                "{abi:.1} ns (direct {direct:.1} ns, ratio {:.2}x)",
                abi / direct
            ),
            "-",
            None,
        )),
        _ => rows.push(row("no-op through the ABI `Handler`", not_run, "-", None)),
    }

    // Throughput on one plugin, 1 thread then 2 threads, same process, JSON and typed.
    let dir = fresh_dir("threads");
    let file = dir.join("libbench_noop.so");
    std::fs::copy(&args.plugin, &file).expect("copy plugin");
    let host = host::Host::new(host::HostOptions::default()).expect("host");
    host.load_file(&file).expect("load");
    let seconds = if args.smoke { 0.2 } else { 2.0 };
    let rate = |threads: usize, typed: bool| {
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut call = host.typed("bench-noop", "noop_bytes").expect("typed");
                    let mut out = Vec::with_capacity(64);
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            if typed {
                                out.clear();
                                std::hint::black_box(call.call(b"", &mut out).expect("typed"));
                            } else {
                                std::hint::black_box(
                                    host.call("bench-noop", "noop", "null").expect("noop"),
                                );
                            }
                        }
                        n += 256;
                    }
                    count.fetch_add(n, Ordering::Relaxed);
                });
            }
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
        });
        count.load(Ordering::Relaxed) as f64 / seconds
    };
    for (typed, what) in [(false, "JSON no-op"), (true, "typed no-op")] {
        let _warm = rate(1, typed);
        let one = rate(1, typed);
        let two = rate(2, typed);
        rows.push(row(
            &format!("calls per second, 2 threads vs 1 thread, one plugin, {what}"),
            format!(
                "{:.0}k/s vs {:.0}k/s = {:.2}x",
                two / 1000.0,
                one / 1000.0,
                two / one
            ),
            ">= 1.9x",
            Some(two / one >= 1.9),
        ));
    }
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Microseconds of each of `n` no-op calls through `client` (after `n / 10` to warm up),
/// minus the plugin's own time, sorted.
fn socket_overheads(client: &mut Client, n: usize) -> Vec<f64> {
    let mut overhead = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        let outcome = client.call("bench-noop", "noop", "null").expect("noop");
        let total = start.elapsed().as_secs_f64() * 1e6;
        if i >= n / 10 {
            overhead.push(total - outcome.elapsed_us as f64);
        }
    }
    overhead.sort_by(f64::total_cmp);
    overhead
}

fn socket(args: &Args, rows: &mut Vec<Row>) {
    let dir = fresh_dir("socket");
    std::fs::copy(&args.plugin, dir.join("libbench_noop.so")).expect("copy plugin");
    let (serve, _) = Serve::start(&args.host, dir);
    let mut client = serve.client();
    let n = if args.smoke { 200 } else { 20_000 };
    let overhead = socket_overheads(&mut client, n);
    let median = percentile(&overhead, 0.5);
    rows.push(row(
        "control-socket request to a running host, minus the plugin's own time",
        format!(
            "{median:.1} µs median (p99 {:.1} µs)",
            percentile(&overhead, 0.99)
        ),
        "<= 50 µs median",
        Some(median <= 50.0),
    ));
}

/// 2,000 idle connections held on one `host serve`: what they cost it (threads, resident
/// memory), and a call's latency on another connection meanwhile.
fn idle_connections(args: &Args, rows: &mut Vec<Row>) {
    let idle = 2_000;
    let dir = fresh_dir("idle");
    std::fs::copy(&args.plugin, dir.join("libbench_noop.so")).expect("copy plugin");
    let config = dir.with_extension("toml");
    std::fs::write(&config, format!("max_connections = {}\n", idle + 100)).expect("config");
    let (serve, _) = Serve::start_with(&args.host, dir, &["--config".as_ref(), config.as_os_str()]);
    let mut client = serve.client();
    let n = if args.smoke { 200 } else { 20_000 };
    let before = socket_overheads(&mut client, n);
    let (threads_before, rss_before) = (serve.status("Threads"), serve.rss_kib());
    let held: Vec<std::os::unix::net::UnixStream> = (0..idle)
        .map(|_| {
            std::os::unix::net::UnixStream::connect(&serve.socket)
                .expect("an idle connection (raise `ulimit -n` to 4096 or more)")
        })
        .collect();
    // Every connection is accepted once a request on a newer one is answered.
    let mut last = serve.client();
    last.ping().expect("ping");
    let (threads, rss) = (serve.status("Threads"), serve.rss_kib());
    let during = socket_overheads(&mut client, n);
    drop(held);
    let _ = std::fs::remove_file(&config);
    rows.push(row(
        &format!("`host serve` threads and resident memory, idle vs {idle} idle connections"),
        format!(
            "{threads_before} -> {threads} threads, {:.1} MB -> {:.1} MB ({:+.2} KB per connection)",
            rss_before as f64 / 1024.0,
            rss as f64 / 1024.0,
            (rss as f64 - rss_before as f64) / idle as f64
        ),
        "no thread per connection",
        Some(threads <= threads_before + 2),
    ));
    let (p50, p99) = (percentile(&during, 0.5), percentile(&during, 0.99));
    rows.push(row(
        &format!("control-socket request while {idle} idle connections are held, minus the plugin's own time"),
        format!(
            "{p50:.1} µs median (p99 {p99:.1} µs); without them {:.1} µs (p99 {:.1} µs)",
            percentile(&before, 0.5),
            percentile(&before, 0.99)
        ),
        "<= 50 µs median",
        Some(p50 <= 50.0),
    ));
}

/// The size of a plugin file, in MB.
fn plugin_mb(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6)
}

/// Puts `source` in place of the plugin atomically: a hidden copy, then a rename.
fn swap_in(dir: &Path, source: &Path) -> Instant {
    let tmp = dir.join(".libbench_noop.so.tmp");
    std::fs::copy(source, &tmp).expect("copy");
    let started = Instant::now();
    std::fs::rename(&tmp, dir.join("libbench_noop.so")).expect("rename");
    started
}

/// Reload latency of an isolated plugin under `host serve --isolate-all`: rename into the
/// directory to the first call answered by the new version's worker.
fn isolated_reloads(args: &Args, rows: &mut Vec<Row>) {
    let n = if args.smoke { 10 } else { 100 };
    let dir = fresh_dir("isolated-reload");
    std::fs::copy(&args.plugin, dir.join("libbench_noop.so")).expect("copy plugin");
    let (serve, _) = Serve::start_with(&args.host, dir.clone(), &["--isolate-all".as_ref()]);
    let mut client = serve.client();
    let variants = [(&args.variant, "b"), (&args.plugin, "a")];
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let (source, expected) = variants[i % 2];
        let started = swap_in(&dir, source);
        loop {
            let answered = client
                .call("bench-noop", "variant", "null")
                .ok()
                .and_then(|o| {
                    o.result()
                        .ok()
                        .map(|r| r.get() == format!("\"{expected}\""))
                });
            if answered == Some(true) {
                break;
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    rows.push(row(
        &format!("isolated reload: rename into the directory to first call answered by the new worker ({n} reloads)"),
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
        "p50 <= 25 ms, p99 <= 100 ms",
        Some(p50 <= 25.0 && p99 <= 100.0),
    ));
}

fn reloads(args: &Args, peers: &serde_json::Value, rows: &mut Vec<Row>) {
    let (latency_n, load_n, total) = if args.smoke {
        (10, 20, 40)
    } else {
        (100, 500, 1000)
    };
    let dir = fresh_dir("reload");
    std::fs::copy(&args.plugin, dir.join("libbench_noop.so")).expect("copy plugin");
    let (serve, _) = Serve::start(&args.host, dir.clone());
    let mut client = serve.client();
    let variants = [(&args.variant, "b"), (&args.plugin, "a")];
    let reload = |client: &mut Client, i: usize| -> f64 {
        let (source, expected) = variants[i % 2];
        let started = swap_in(&dir, source);
        loop {
            if let Ok(outcome) = client.call("bench-noop", "variant", "null") {
                if outcome
                    .result()
                    .map(|r| r.get() == format!("\"{expected}\""))
                    .unwrap_or(false)
                {
                    return started.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
    };

    let mut rss_first = 0;
    let mut latencies = Vec::new();
    let mut i = 0;
    while i < latency_n {
        latencies.push(reload(&mut client, i));
        i += 1;
        if i == 1 {
            rss_first = serve.rss_kib();
        }
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    rows.push(row(
        &format!("reload latency, a {:.1} MB plugin: rename into the directory to first call answered by it ({latency_n} reloads)", plugin_mb(&args.plugin)),
        format!(
            "p50 {p50:.2} ms, p99 {p99:.2} ms; wasmtime loading a precompiled {:.0} KB module: {:.2} ms p50",
            peer(peers, "wasm_module_kb"),
            peer(peers, "wasm_load_ms_p50")
        ),
        "p50 <= 3 ms, p99 <= 10 ms",
        Some(p50 <= 3.0 && p99 <= 10.0),
    ));

    // Under load: two callers on their own connections while reloads go on.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let mut caller = serve.client();
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match caller.call("bench-noop", "noop", "null") {
                        Ok(outcome) if outcome.result().is_ok() => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for _ in 0..load_n {
        reload(&mut client, i);
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().expect("caller");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    rows.push(row(
        &format!("reload under load: 2 threads calling during {load_n} reloads"),
        format!("{failed} failed of {ok} calls"),
        "0 failed calls",
        Some(failed == 0 && ok > 0),
    ));

    while i < total {
        reload(&mut client, i);
        i += 1;
    }
    let rss_end = serve.rss_kib();
    let growth_mb = (rss_end as f64 - rss_first as f64) / 1024.0;
    rows.push(row(
        &format!("resident memory after {total} reloads vs after the first"),
        format!(
            "{growth_mb:+.2} MB ({:.1} MB -> {:.1} MB); wasmtime creating and dropping {} modules: {:+.2} MB",
            rss_first as f64 / 1024.0,
            rss_end as f64 / 1024.0,
            peer(peers, "wasm_modules"),
            peer(peers, "wasm_rss_growth_mb")
        ),
        "<= 1 MB more",
        Some(growth_mb <= 1.0),
    ));
}

fn startup(args: &Args, rows: &mut Vec<Row>) {
    let dir = fresh_dir("startup");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&args.plugins_50).expect("the 50 plugins") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if let Some(plugin) = name.strip_prefix("lib").and_then(|n| n.strip_suffix(".so")) {
            names.push(plugin.to_owned());
            std::fs::copy(&path, dir.join(&name)).expect("copy");
        }
    }
    names.sort();
    let count = names.len();
    let (serve, started) = Serve::start(&args.host, dir);
    let mut client = serve.client();
    let mut pending = names.clone();
    while !pending.is_empty() {
        pending.retain(|name| client.call(name, "execute", "null").is_err());
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    rows.push(row(
        &format!("`host serve` start with {count} plugins, until all answer"),
        format!("{ms:.0} ms"),
        "<= 300 ms",
        Some(ms <= 300.0),
    ));
}

/// The ~100-byte record the echo figures send.
const RECORD: &str = r#"{"id":42,"host":"web-7","service":"checkout","status":"degraded","latency_ms":12.5,"tags":["eu","canary"]}"#;

/// The peer of the isolated-call figure: a child process (this binary, `--echo-child`)
/// that answers each JSON line on stdin with the same JSON on stdout, decoded and encoded
/// as the plugin does.
fn echo_child() {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON in");
        serde_json::to_writer(&mut stdout, &value).expect("JSON out");
        stdout.write_all(b"\n").expect("write");
        stdout.flush().expect("flush");
    }
}

/// A library host whose plugins all run in worker processes (the host binary), the bench
/// plugin loaded with `settings` from a copy in a fresh directory named for `name`.
fn isolated_host(
    args: &Args,
    name: &str,
    settings: host::config::PluginSettings,
) -> (host::Host, PathBuf) {
    let dir = fresh_dir(name);
    let file = dir.join("libbench_noop.so");
    std::fs::copy(&args.plugin, &file).expect("copy plugin");
    let mut options = host::HostOptions::default();
    options.isolation.isolate_all = true;
    options.isolation.worker_program = Some(args.host.clone());
    options.plugins.insert("bench-noop".into(), settings);
    let host = host::Host::new(options).expect("host");
    host.load_file(&file).expect("an isolated load");
    (host, dir)
}

fn isolation(args: &Args, rows: &mut Vec<Row>) {
    use std::io::{BufRead, BufReader, Write};
    let (host, dir) = isolated_host(args, "isolated", host::config::PluginSettings::default());
    let mut child = Command::new(std::env::current_exe().expect("this binary"))
        .arg("--echo-child")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the echo child");
    let mut to_child = child.stdin.take().expect("stdin");
    let mut from_child = BufReader::new(child.stdout.take().expect("stdout"));
    let n = if args.smoke { 300 } else { 20_000 };
    let mut line = String::new();
    let ours_once = || {
        let start = Instant::now();
        let outcome = host
            .call("bench-noop", "echo", RECORD)
            .expect("isolated echo");
        std::hint::black_box(outcome.result().expect("echoed"));
        start.elapsed().as_secs_f64() * 1e6
    };
    let mut child_once = || {
        let start = Instant::now();
        to_child.write_all(RECORD.as_bytes()).expect("to child");
        to_child.write_all(b"\n").expect("to child");
        line.clear();
        from_child.read_line(&mut line).expect("from child");
        start.elapsed().as_secs_f64() * 1e6
    };
    // Two ways, because the scheduler treats them differently on a small VM: one of each
    // per round on one thread; then each alone, a run of ours and then a run of the child's.
    let (mut ours, mut theirs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + n / 10 {
        let (a, b) = (ours_once(), child_once());
        if i >= n / 10 {
            ours.push(a);
            theirs.push(b);
        }
    }
    let mut ours_alone: Vec<f64> = (0..n + n / 10).map(|_| ours_once()).skip(n / 10).collect();
    let mut theirs_alone: Vec<f64> = (0..n + n / 10).map(|_| child_once()).skip(n / 10).collect();
    drop(to_child);
    let _ = child.wait();
    let p = |figures: &mut Vec<f64>| {
        figures.sort_by(f64::total_cmp);
        (percentile(figures, 0.5), percentile(figures, 0.99))
    };
    let ((p50, p99), (c50, c99)) = (p(&mut ours), p(&mut theirs));
    rows.push(row(
        "isolated `Host::call`, ~100-byte JSON echo, vs a child process echoing JSON lines over a pipe: interleaved, one of each per round",
        format!("p50 {p50:.1} µs, p99 {p99:.1} µs (child: p50 {c50:.1} µs, p99 {c99:.1} µs)"),
        "p50 <= 25 µs and faster than the child",
        Some(p50 <= 25.0 && p50 < c50),
    ));
    let ((p50, p99), (c50, c99)) = (p(&mut ours_alone), p(&mut theirs_alone));
    rows.push(row(
        "the same, each measured alone: a run of isolated calls, then a run of the child's",
        format!("p50 {p50:.1} µs, p99 {p99:.1} µs (child: p50 {c50:.1} µs, p99 {c99:.1} µs)"),
        "p50 <= 25 µs and faster than the child",
        Some(p50 <= 25.0 && p50 < c50),
    ));

    // Throughput, 1 thread then 2 threads, on the one worker.
    let seconds = if args.smoke { 0.2 } else { 2.0 };
    let rate = |threads: usize| {
        let stop = AtomicBool::new(false);
        let count = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        host.call("bench-noop", "echo", RECORD).expect("echo");
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
    let one = rate(1);
    let two = rate(2);
    rows.push(row(
        "isolated calls per second, 2 threads vs 1 thread, ~100-byte echo",
        format!(
            "{:.0}k/s vs {:.0}k/s = {:.2}x",
            two / 1000.0,
            one / 1000.0,
            two / one
        ),
        "(measured, no target)",
        None,
    ));
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);

    // Crash to serving again: a call that kills the worker, then calls until one is served.
    let settings = host::config::PluginSettings {
        max_restarts: u32::MAX,
        restart_window_ms: 1,
        ..host::config::PluginSettings::default()
    };
    let (host, dir) = isolated_host(args, "isolated", settings);
    let rounds = if args.smoke { 10 } else { 200 };
    let mut back = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let err = host
            .call("bench-noop", "exit", "null")
            .expect_err("the worker exits");
        assert_eq!(err.kind, host::CallErrorKind::Crashed, "{err}");
        let start = Instant::now();
        while host.call("bench-noop", "noop", "null").is_err() {}
        back.push(start.elapsed().as_secs_f64() * 1e3);
    }
    back.sort_by(f64::total_cmp);
    let p50 = percentile(&back, 0.5);
    rows.push(row(
        &format!("isolated plugin, worker crash to serving again ({rounds} crashes)"),
        format!("p50 {p50:.2} ms, p99 {:.2} ms", percentile(&back, 0.99)),
        "p50 <= 50 ms",
        Some(p50 <= 50.0),
    ));
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if std::env::args().any(|a| a == "--echo-child") {
        return echo_child();
    }
    let args = args();
    let peers = if args.runs("in-process") || args.runs("reloads") {
        peers(&args)
    } else {
        serde_json::Value::Null
    };
    let mut rows = Vec::new();
    if args.runs("in-process") {
        in_process(&args, &peers, &mut rows);
    }
    if args.runs("socket") {
        socket(&args, &mut rows);
    }
    if args.runs("idle") {
        idle_connections(&args, &mut rows);
    }
    if args.runs("reloads") {
        reloads(&args, &peers, &mut rows);
    }
    if let (true, Some(fetch)) = (args.runs("runtime-reloads"), &args.fetch) {
        runtime_reloads::figures(&args, fetch, &mut rows);
    }
    if args.runs("startup") {
        startup(&args, &mut rows);
    }
    if args.runs("isolation") {
        isolation(&args, &mut rows);
    }
    if args.runs("isolated-reloads") {
        isolated_reloads(&args, &mut rows);
    }
    if args.runs("sandbox") {
        sandbox::figures(&args, &mut rows);
    }
    if args.runs("tasks") {
        tasks::figures(&args, &mut rows);
    }
    if args.runs("http") {
        http::figures(&args, &mut rows);
    }
    if args.runs("fleet") {
        fleet::figures(&args, &mut rows);
    }
    if args.runs("catalogue") {
        catalogue::figures(&args, &mut rows);
    }
    println!("| figure | measured | target | ok |");
    println!("|---|---|---|---|");
    for r in rows {
        let ok = match r.ok {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!("| {} | {} | {} | {ok} |", r.figure, r.measured, r.target);
    }
}
