//! The sandbox's cost (`[plugins.NAME.sandbox]`): an isolated no-op call, and a worker's
//! start, each with and without a sandbox (Landlock, seccomp, `no_new_privs`), measured
//! alternately (blocks of calls, one start of each per round) so that the machine's drift
//! touches both alike.

use std::path::PathBuf;
use std::time::Instant;

use super::{fresh_dir, percentile, row, Args, Row};

/// A library host running the bench plugin in a worker process, sandboxed or not.
fn host(args: &Args, sandboxed: bool) -> (host::Host, PathBuf) {
    let dir = fresh_dir(if sandboxed {
        "sandboxed"
    } else {
        "unsandboxed"
    });
    let file = dir.join("libbench_noop.so");
    std::fs::copy(&args.plugin, &file).expect("copy plugin");
    let sandbox = sandboxed
        .then(|| serde_json::from_value(serde_json::json!({ "net": "none" })).expect("a sandbox"));
    let settings = host::config::PluginSettings {
        // Crash after crash, never quarantined nor backed off: the start figure crashes it.
        max_restarts: u32::MAX,
        restart_window_ms: 1,
        sandbox,
        ..host::config::PluginSettings::default()
    };
    let mut options = host::HostOptions::default();
    options.isolation.isolate_all = true;
    options.isolation.worker_program = Some(args.host.clone());
    options.plugins.insert("bench-noop".into(), settings);
    let host = host::Host::new(options).expect("host");
    host.load_file(&file).expect("an isolated load");
    (host, dir)
}

fn p50_p99(figures: &mut [f64]) -> (f64, f64) {
    figures.sort_by(f64::total_cmp);
    (percentile(figures, 0.5), percentile(figures, 0.99))
}

pub(super) fn figures(args: &Args, rows: &mut Vec<Row>) {
    let (plain, plain_dir) = host(args, false);
    let (boxed, boxed_dir) = host(args, true);
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

    // A worker's start: a call that ends the worker, then calls until a new worker (spawned,
    // sandboxed, the plugin opened and its init run) answers.
    let restart = |host: &host::Host| {
        host.call("bench-noop", "exit", "null")
            .expect_err("the worker exits");
        let start = Instant::now();
        while host.call("bench-noop", "noop", "null").is_err() {}
        start.elapsed().as_secs_f64() * 1e3
    };
    let rounds = if args.smoke { 10 } else { 200 };
    let (mut without, mut with) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        without.push(restart(&plain));
        with.push(restart(&boxed));
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
}
