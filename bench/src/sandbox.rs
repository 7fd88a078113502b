//! The sandbox's cost (`[plugins.NAME.sandbox]`): an isolated no-op call, and a worker's
//! start, each with and without a sandbox (Landlock, seccomp, `no_new_privs`), measured
//! alternately (blocks of calls, one start of each per round) so that the machine's drift
//! touches both alike; and a TCP connect to a loopback listener from the plugin with
//! `net = "loopback"` (which the host checks and makes) against `net = "any"`.

use std::path::PathBuf;
use std::time::Instant;

use super::{isolated_host, percentile, row, Args, Row};

/// A library host running the bench plugin in a worker process, sandboxed with `net` or
/// (`None`) not.
fn host(args: &Args, net: Option<&str>) -> (host::Host, PathBuf) {
    let sandbox = net
        .map(|net| serde_json::from_value(serde_json::json!({ "net": net })).expect("a sandbox"));
    let settings = host::config::PluginSettings {
        // Crash after crash, never quarantined nor backed off: the start figure crashes it.
        max_restarts: u32::MAX,
        restart_window_ms: 1,
        sandbox,
        ..host::config::PluginSettings::default()
    };
    isolated_host(args, &format!("sandbox-{}", net.unwrap_or("off")), settings)
}

/// A worker's start, in ms: a call that ends the worker, then calls until a new worker
/// (spawned, sandboxed, the plugin opened and its init run) answers.
fn restart_ms(host: &host::Host) -> f64 {
    host.call("bench-noop", "exit", "null")
        .expect_err("the worker exits");
    let start = Instant::now();
    while host.call("bench-noop", "noop", "null").is_err() {}
    start.elapsed().as_secs_f64() * 1e3
}

fn p50_p99(figures: &mut [f64]) -> (f64, f64) {
    figures.sort_by(f64::total_cmp);
    (percentile(figures, 0.5), percentile(figures, 0.99))
}

pub(super) fn figures(args: &Args, rows: &mut Vec<Row>) {
    let (plain, plain_dir) = host(args, None);
    let (boxed, boxed_dir) = host(args, Some("none"));
    let sandbox = boxed
        .status()
        .into_iter()
        .find_map(|f| f.serving?.worker?.sandbox)
        .expect("the sandboxed worker says what it applied");

    let call = |host: &host::Host| {
        let start = Instant::now();
        let outcome = host.call("bench-noop", "noop", "null").expect("no-op");
        std::hint::black_box(outcome.result().expect("answered"));
        start.elapsed().as_secs_f64() * 1e6
    };
    // In blocks of calls, alternating: one call of each per round would have each worker
    // wake from sleep every time (a lone call polls its channel only briefly), which is not
    // what either costs on its own.
    let (blocks, block) = if args.smoke { (2, 150) } else { (40, 500) };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..blocks {
        for (host, figures) in [(&plain, &mut without), (&boxed, &mut with)] {
            for i in 0..block + block / 10 {
                let us = call(host);
                if i >= block / 10 {
                    figures.push(us);
                }
            }
        }
    }
    let ((a50, a99), (b50, b99)) = (p50_p99(&mut without), p50_p99(&mut with));
    rows.push(row(
        &format!("isolated no-op call with a sandbox ({sandbox}) vs without, alternating blocks of {block} calls ({} each)", blocks * block),
        format!("p50 {b50:.1} µs, p99 {b99:.1} µs (without: p50 {a50:.1} µs, p99 {a99:.1} µs)"),
        "no measurable difference at p50",
        // Within 5% (and half a microsecond): what separates two runs of the same call.
        Some((b50 - a50).abs() <= a50 * 0.05 + 0.5),
    ));

    let rounds = if args.smoke { 10 } else { 200 };
    let (mut without, mut with) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        without.push(restart_ms(&plain));
        with.push(restart_ms(&boxed));
    }
    let ((a50, a99), (b50, b99)) = (p50_p99(&mut without), p50_p99(&mut with));
    rows.push(row(
        &format!(
            "isolated worker start with a sandbox vs without: a crash to the first call a new worker answers ({rounds} each, interleaved)"
        ),
        format!("p50 {b50:.2} ms, p99 {b99:.2} ms (without: p50 {a50:.2} ms, p99 {a99:.2} ms)"),
        "(measured, no target)",
        None,
    ));
    drop((plain, boxed));
    let _ = std::fs::remove_dir_all(&plain_dir);
    let _ = std::fs::remove_dir_all(&boxed_dir);
    loopback(args, rows, rounds);
}

/// A TCP connect to a listener on 127.0.0.1 made by the plugin, timed inside it: with
/// `net = "loopback"` the host's supervisor reads the address, checks it and connects the
/// worker's socket itself; with `net = "any"` the kernel just connects. And the worker's
/// start with `net = "loopback"` (it hands the host its seccomp listener first).
fn loopback(args: &Args, rows: &mut Vec<Row>, rounds: usize) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback listener");
    let addr = serde_json::to_string(&listener.local_addr().expect("its address").to_string())
        .expect("JSON");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let (any, any_dir) = host(args, Some("any"));
    let (checked, checked_dir) = host(args, Some("loopback"));
    let connect = |host: &host::Host| {
        let outcome = host.call("bench-noop", "connect", &addr).expect("a call");
        let us: f64 = serde_json::from_str(outcome.result().expect("connected").get()).expect("µs");
        us
    };
    let (mut direct, mut supervised) = (Vec::new(), Vec::new());
    for _ in 0..rounds * 5 {
        direct.push(connect(&any));
        supervised.push(connect(&checked));
    }
    let ((a50, a99), (b50, b99)) = (p50_p99(&mut direct), p50_p99(&mut supervised));
    rows.push(row(
        &format!(
            "TCP connect to a loopback listener from a sandboxed isolated plugin, net = loopback (checked and made by the host) vs net = any, timed in the plugin ({} each, interleaved)",
            rounds * 5
        ),
        format!("p50 {b50:.1} µs, p99 {b99:.1} µs (net = any: p50 {a50:.1} µs, p99 {a99:.1} µs)"),
        "(measured, no target)",
        None,
    ));
    let (mut without, mut with) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        without.push(restart_ms(&any));
        with.push(restart_ms(&checked));
    }
    let ((a50, a99), (b50, b99)) = (p50_p99(&mut without), p50_p99(&mut with));
    rows.push(row(
        &format!(
            "isolated worker start with net = loopback vs net = any, both sandboxed ({rounds} each, interleaved)"
        ),
        format!("p50 {b50:.2} ms, p99 {b99:.2} ms (net = any: p50 {a50:.2} ms, p99 {a99:.2} ms)"),
        "(measured, no target)",
        None,
    ));
    drop((any, checked));
    let _ = std::fs::remove_dir_all(&any_dir);
    let _ = std::fs::remove_dir_all(&checked_dir);
}
