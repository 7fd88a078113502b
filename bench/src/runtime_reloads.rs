//! Reload latency of a plugin that owns a tokio runtime and a thread (`example-plugins/fetch`),
//! beside the plain plugin's row: rename into the directory to the first call answered by
//! the new version (load, `init`: a runtime built), and to the old version gone (its stop
//! signal, `stop` shutting the runtime down, its thread joined, its library unloaded).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{fresh_dir, percentile, row, Args, Row, Serve};

/// Puts `source` (with `pad` extra bytes at its end, so that each version differs) in place
/// of the plugin atomically.
fn swap_in(dir: &Path, source: &[u8], pad: usize) -> Instant {
    let tmp = dir.join(".libfetch.so.tmp");
    let mut bytes = source.to_vec();
    bytes.resize(source.len() + pad, 0);
    std::fs::write(&tmp, &bytes).expect("write plugin");
    let started = Instant::now();
    std::fs::rename(&tmp, dir.join("libfetch.so")).expect("rename");
    started
}

pub(super) fn figures(args: &Args, fetch: &Path, rows: &mut Vec<Row>) {
    let n = if args.smoke { 5 } else { 50 };
    let source = std::fs::read(fetch).expect("the fetch plugin");
    let dir = fresh_dir("runtime-reload");
    std::fs::write(dir.join("libfetch.so"), &source).expect("copy plugin");
    // Without probation: a probation keeps the replaced version loaded (30 s by default)
    // to roll back to, and this row measures how long the old version takes to go.
    let config = dir.with_extension("toml");
    std::fs::write(&config, "[plugins.fetch]\nprobation_ms = 0\n").expect("host.toml");
    let (serve, _) = Serve::start_with(
        &args.host,
        dir.clone(),
        &["--config".as_ref(), config.as_os_str()],
    );
    let mut client = serve.client();
    let (mut served, mut retired) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        // Generation i + 1 serves; the rename brings generation i + 2.
        let expected = i as u64 + 2;
        let started = swap_in(&dir, &source, i % 2 + 1);
        let deadline = started + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "reload {i}: generation {expected} did not answer within 30 s"
            );
            let answered = client
                .call("fetch", "execute", "null")
                .ok()
                .is_some_and(|o| o.generation == expected && o.result().is_ok());
            if answered {
                break;
            }
        }
        served.push(started.elapsed().as_secs_f64() * 1e3);
        loop {
            assert!(
                Instant::now() < deadline,
                "reload {i}: the replaced version was not unloaded within 30 s"
            );
            let files = client.list().expect("host list");
            if files.iter().all(|f| f.retired.is_empty()) {
                break;
            }
        }
        retired.push(started.elapsed().as_secs_f64() * 1e3);
    }
    served.sort_by(f64::total_cmp);
    retired.sort_by(f64::total_cmp);
    rows.push(row(
        &format!(
            "reload latency, a plugin with its own tokio runtime and a thread ({n} reloads): \
             rename to first call answered by the new version / to the old one stopped, \
             joined and unloaded"
        ),
        format!(
            "p50 {:.2} ms, p99 {:.2} ms / p50 {:.2} ms, p99 {:.2} ms",
            percentile(&served, 0.5),
            percentile(&served, 0.99),
            percentile(&retired, 0.5),
            percentile(&retired, 0.99)
        ),
        "(measured beside the plain plugin's row, no target)",
        None,
    ));
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}
