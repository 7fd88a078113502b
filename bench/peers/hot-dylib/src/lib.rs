//! The functions hot-lib-reloader calls in the benchmarks: the same work as the benchmark
//! plugin's callbacks.

/// About 100 bytes of JSON, as the benchmark plugin's record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Record {
    id: u64,
    host: String,
    service: String,
    status: String,
    latency_ms: f64,
    tags: Vec<String>,
}

/// Does nothing.
#[no_mangle]
pub fn noop() {}

/// Decodes `null` and encodes `null`, as the plugin's JSON no-op.
#[no_mangle]
pub fn json_null(input: &str) -> String {
    let () = serde_json::from_str(input).unwrap_or(());
    serde_json::to_string(&()).unwrap_or_default()
}

/// Decodes the record and encodes it again, as the plugin's echo.
#[no_mangle]
pub fn echo(input: &str) -> String {
    match serde_json::from_str::<Record>(input) {
        Ok(record) => serde_json::to_string(&record).unwrap_or_default(),
        Err(err) => err.to_string(),
    }
}
