//! Measures the peers the README compares the host with, in this process, and prints the
//! figures as one JSON object for the benchmark driver (`bench/src/main.rs`):
//!
//! * hot-lib-reloader 0.8 calling a dylib's empty function, a JSON `null` in and out, and the
//!   ~100-byte echo, through the wrappers its `hot_module` macro generates (what its users
//!   call);
//! * wasmtime 48 calling an empty exported function through a `TypedFunc<(), ()>`; loading
//!   a precompiled module (deserialize, instantiate, first call); the resident memory of
//!   creating and dropping 200 modules.
//!
//! `bench-peers [--smoke]`.

use std::hint::black_box;
use std::time::Instant;

#[hot_lib_reloader::hot_module(
    dylib = "hot_dylib",
    lib_dir = {
        let mut dir = std::env::current_exe().expect("this binary");
        dir.pop();
        dir
    }
)]
mod hot {
    hot_functions_from_file!("hot-dylib/src/lib.rs");
}

const RECORD: &str = r#"{"id":42,"host":"web-07.example.net","service":"checkout","status":"degraded","latency_ms":212.5,"tags":["eu","canary"]}"#;

/// Nanoseconds per call of `f`, the best of three rounds of `n` calls.
fn ns_per_call(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A module with `functions` small exported functions, so that its compiled form has a
/// size comparable to a real one.
fn big_module(functions: usize) -> String {
    let mut wat = String::from("(module\n");
    for i in 0..functions {
        wat.push_str(&format!(
            "  (func (export \"f{i}\") (param i64) (result i64)\n    local.get 0\n    i64.const {i}\n    i64.add\n    i64.const 3\n    i64.mul)\n"
        ));
    }
    wat.push_str("  (func (export \"noop\")))\n");
    wat
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let n: u32 = if smoke { 20_000 } else { 2_000_000 };

    let hot_noop = ns_per_call(n, || hot::noop());
    let hot_json_null = ns_per_call(n, || {
        black_box(hot::json_null(black_box("null")));
    });
    let hot_echo = ns_per_call(n / 4, || {
        black_box(hot::echo(black_box(RECORD)));
    });

    let engine = wasmtime::Engine::default();
    let noop_module =
        wasmtime::Module::new(&engine, "(module (func (export \"noop\")))").expect("WAT");
    let mut store = wasmtime::Store::new(&engine, ());
    let instance = wasmtime::Instance::new(&mut store, &noop_module, &[]).expect("instance");
    let noop = instance
        .get_typed_func::<(), ()>(&mut store, "noop")
        .expect("noop");
    let wasm_noop = ns_per_call(n, || noop.call(&mut store, ()).expect("call"));

    // Loading a precompiled module, as a reload would.
    let functions = if smoke { 200 } else { 4_000 };
    let compiled = engine
        .precompile_module(big_module(functions).as_bytes())
        .expect("precompile");
    let loads = if smoke { 5 } else { 100 };
    let mut load_ms: Vec<f64> = (0..loads)
        .map(|_| {
            let start = Instant::now();
            // SAFETY: the bytes were produced by `precompile_module` of this very engine,
            // in this process, which is what `deserialize` requires.
            let module = unsafe { wasmtime::Module::deserialize(&engine, &compiled) }
                .expect("deserialize");
            let mut store = wasmtime::Store::new(&engine, ());
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instance");
            let noop = instance
                .get_typed_func::<(), ()>(&mut store, "noop")
                .expect("noop");
            noop.call(&mut store, ()).expect("call");
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    load_ms.sort_by(f64::total_cmp);

    // Resident memory of creating and dropping 200 modules (after a first one).
    let modules = if smoke { 20 } else { 200 };
    let make = || {
        // SAFETY: as above.
        let module =
            unsafe { wasmtime::Module::deserialize(&engine, &compiled) }.expect("deserialize");
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instance");
        black_box(instance);
    };
    make();
    let before = rss_kib();
    for _ in 0..modules {
        make();
    }
    let after = rss_kib();

    let figures = serde_json::json!({
        "hot_noop_ns": hot_noop,
        "hot_json_null_ns": hot_json_null,
        "hot_echo_ns": hot_echo,
        "wasm_noop_ns": wasm_noop,
        "wasm_load_ms_p50": load_ms[load_ms.len() / 2],
        "wasm_module_kb": compiled.len() as f64 / 1024.0,
        "wasm_modules": modules,
        "wasm_rss_growth_mb": (after as f64 - before as f64) / 1024.0,
    });
    println!("{figures}");
}
