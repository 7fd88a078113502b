//! In-process call costs, with criterion. `bench/run` reads the medians from
//! `target/criterion/*/new/estimates.json`.
//!
//! * `handler/abi_noop`: a no-op callback through the ABI `Handler` trait object, as the host
//!   calls a loaded plugin (the same vtable call, glue, panic guard and JSON decoding);
//! * `handler/direct_noop`: the same callback work (decode `null`, call, encode `null`)
//!   through a plain Rust `dyn` call, the reference;
//! * `host/call_echo_100b`: `Host::call` on the real cdylib, loaded with `dlopen`, with a
//!   ~100-byte JSON input and output: the path `host serve` uses for every request;
//! * `host/call_noop`: `Host::call` of the no-op callback (`null` in, `null` out);
//! * `host/typed_noop`: a `TypedCall` of the typed no-op callback (no bytes in or out);
//! * `direct/echo_100b`: the echo's serde work (decode the record, encode it) through a
//!   plain Rust `dyn` call, the reference for the echo.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use abi_stable::std_types::RStr;
use criterion::{criterion_group, criterion_main, Criterion};
use plugin_api::abi::{FfiCallContext, FfiInit};
use plugin_api::glue::{instantiate, Package};

/// The reference: the work the glue does for `noop`, without the ABI.
trait Callback {
    fn call(&self, input: &str) -> Result<String, String>;
}

struct DirectNoop(bench_noop::Noop);

/// The reference for the echo: decode the ~100-byte record and encode it again.
struct DirectEcho;

impl Callback for DirectEcho {
    fn call(&self, input: &str) -> Result<String, String> {
        let record: bench_noop::Record = serde_json::from_str(input).map_err(|e| e.to_string())?;
        serde_json::to_string(&record).map_err(|e| e.to_string())
    }
}

impl Callback for DirectNoop {
    fn call(&self, input: &str) -> Result<String, String> {
        let () = serde_json::from_str(input).map_err(|e| e.to_string())?;
        let _plugin = &self.0;
        serde_json::to_string(&()).map_err(|e| e.to_string())
    }
}

fn handler(c: &mut Criterion) {
    let package = Package {
        name: "bench-noop",
        version: "0",
        description: "",
        unwinds: cfg!(panic = "unwind"),
    };
    let init = FfiInit {
        config_json: "{}".into(),
        generation: 1,
    };
    let handler = instantiate::<bench_noop::Noop>(package, init)
        .handler
        .into_result()
        .map_err(|e| e.message.to_string())
        .expect("bench-noop initialises");
    let cancelled = AtomicBool::new(false);
    let ctx = FfiCallContext {
        cancelled: &cancelled,
        deadline_unix_ms: 0,
    };
    let direct: Box<dyn Callback> = Box::new(DirectNoop(bench_noop::Noop));

    let mut group = c.benchmark_group("handler");
    group.bench_function("abi_noop", |b| {
        b.iter(|| {
            black_box(handler.callback(RStr::from("noop"), RStr::from(black_box("null")), &ctx))
        })
    });
    group.bench_function("direct_noop", |b| {
        b.iter(|| black_box(direct.call(black_box("null"))))
    });
    group.finish();
}

fn host_call(c: &mut Criterion) {
    let library = std::env::var_os("BENCH_NOOP_SO")
        .map(PathBuf::from)
        .expect("BENCH_NOOP_SO names the built bench-noop library (bench/run sets it)");
    let dir = std::env::temp_dir().join(format!("bench-calls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("libbench_noop.so");
    std::fs::copy(&library, &file).expect("copy the plugin");
    let host = host::Host::new(host::HostOptions::default()).expect("host");
    host.load_file(&file).expect("bench-noop loads");
    let input = r#"{"id":42,"host":"web-07.example.net","service":"checkout","status":"degraded","latency_ms":212.5,"tags":["eu","canary"]}"#;
    assert!((90..=130).contains(&input.len()));
    let mut group = c.benchmark_group("host");
    group.bench_function("call_echo_100b", |b| {
        b.iter(|| {
            black_box(
                host.call("bench-noop", "echo", black_box(input))
                    .expect("echo"),
            )
        })
    });
    group.bench_function("call_noop", |b| {
        b.iter(|| {
            black_box(
                host.call("bench-noop", "noop", black_box("null"))
                    .expect("noop"),
            )
        })
    });
    let mut typed = host.typed("bench-noop", "noop_bytes").expect("typed noop");
    let mut out = Vec::with_capacity(64);
    group.bench_function("typed_noop", |b| {
        b.iter(|| {
            out.clear();
            black_box(typed.call(black_box(b""), &mut out).expect("typed noop"))
        })
    });
    group.finish();

    let direct: Box<dyn Callback> = Box::new(DirectEcho);
    let mut group = c.benchmark_group("direct");
    group.bench_function("echo_100b", |b| {
        b.iter(|| black_box(direct.call(black_box(input)).expect("echo")))
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, handler, host_call);
criterion_main!(benches);
