//! The serving core: nothing a client, a file writer or a plugin does can kill, stall or
//! bloat `host serve`. Each test names the defect it pins (issue 8); each failed on the code
//! before the fix.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use e2e::{built, hello_hi, install, plugins_dir, proc_status, tough, Server};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const ADA: &str = r#"{"name":"Ada"}"#;

fn greet(server: &Server) -> Result<String, String> {
    server
        .call("hello", "greet", ADA)
        .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
}

/// A server on a directory with hello and tough, and `config` as its host.toml.
fn serve(config: &str) -> (tempfile::TempDir, Server) {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(tough(), dir.path(), "libtough.so");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, config).unwrap();
    let server = Server::start(dir.path(), &["--config", conf.to_str().unwrap()]);
    server.wait_until(WAIT, "both plugins", |s| {
        greet(s).is_ok() && s.call("tough", "greet", "null").is_ok()
    });
    (dir, server)
}

/// Sends one raw line and reads one answer line.
fn exchange(stream: &mut UnixStream, line: &str) -> String {
    stream.write_all(line.as_bytes()).unwrap();
    stream.write_all(b"\n").unwrap();
    let mut reply = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    reply
}

fn call_line(plugin: &str, callback: &str, input: &str) -> String {
    format!(r#"{{"v":1,"op":"call","plugin":"{plugin}","callback":"{callback}","input":{input}}}"#)
}

#[test]
fn a_writer_rewriting_a_file_in_a_loop_never_kills_the_host() {
    // Defect 1: the lease that tells a finished write from an unfinished one made the kernel
    // send SIGIO to the host whenever a writer opened the file; the host died in 0.3 s.
    // Every close after writing makes the host look at the file (and take the lease), so
    // two writers opening it over and over hit the moment the lease is held.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let mut server = Server::start(dir.path(), &[]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());
    let path = dir.path().join("libchurn.so");
    fs::write(&path, "not a plugin").unwrap();
    let end = Instant::now() + Duration::from_secs(3);
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let path = path.clone();
            thread::spawn(move || {
                let mut writes = 0u64;
                while Instant::now() < end {
                    let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
                    file.write_all(b"not").unwrap();
                    writes += 1;
                }
                writes
            })
        })
        .collect();
    let writes: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(writes > 1000, "{writes}");
    if let Some(status) = server.exit_status() {
        panic!("the host died, {status}:\n{}", server.log());
    }
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn a_plugin_rewritten_in_place_in_a_loop_is_only_ever_loaded_whole() {
    // Found by the soak test: a copy read while `fs::write` rewrote the file in place mixed
    // two versions of it, passed the ELF checks, and the host died of SIGSEGV in `dlopen`;
    // copies read while the writer was halfway were reported as truncated plugins.
    let dir = plugins_dir();
    let path = install(&built().hello, dir.path(), "libhello.so");
    let mut server = Server::start(dir.path(), &[]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());
    let versions = [
        fs::read(&built().hello).unwrap(),
        fs::read(hello_hi()).unwrap(),
    ];
    let writer = thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(4);
        let mut writes = 0;
        while Instant::now() < end {
            fs::write(&path, &versions[writes % 2]).unwrap();
            writes += 1;
            // Now and then a pause long enough for the host to start reading it.
            if writes % 4 == 0 {
                thread::sleep(Duration::from_millis(writes as u64 % 7));
            }
        }
        writes
    });
    while !writer.is_finished() {
        if let Some(status) = server.exit_status() {
            panic!("the host died, {status}:\n{}", server.log());
        }
        let answer = greet(&server).unwrap();
        assert!(
            ["Hello, Ada!", "Hi, Ada!"].contains(&answer.as_str()),
            "{answer}"
        );
    }
    let writes = writer.join().unwrap();
    // The last version written is the one that ends up serving.
    let expected = if writes % 2 == 1 {
        "Hello, Ada!"
    } else {
        "Hi, Ada!"
    };
    server.wait_until(WAIT, "the last version", |s| {
        greet(s).is_ok_and(|answer| answer == expected)
    });
    let log = server.log();
    let rejected: Vec<&str> = log.lines().filter(|l| l.contains("rejected")).collect();
    assert!(rejected.is_empty(), "{writes} writes: {rejected:#?}");
}

#[test]
fn a_client_that_never_reads_delays_no_other_callers_timeout() {
    // Defect 2: one watchdog wrote every timeout answer with a blocking write; a client that
    // asked for a large result and a call that timed out, and never read, blocked it, and
    // other connections' calls ran past their timeout unanswered.
    let (_dir, server) = serve("max_call_threads = 128\n[plugins.tough]\ntimeout_ms = 300\n");
    // Results of many sizes around a socket buffer's, each followed by a call that times
    // out, on connections that never read: one of them fills its buffer just so.
    let stalled: Vec<UnixStream> = (0..40)
        .map(|i| {
            let mut stream = UnixStream::connect(&server.socket).unwrap();
            let big = call_line(
                "tough",
                "big",
                &format!(r#"{{"bytes":{}}}"#, 150_000 + i * 3_000),
            );
            let slow = call_line("tough", "sleep", r#"{"ms":3000}"#);
            stream
                .write_all(format!("{big}\n{slow}\n").as_bytes())
                .unwrap();
            stream
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let err = server.call("tough", "sleep", r#"{"ms":2000}"#).unwrap_err();
    let took = start.elapsed();
    assert!(err.contains("did not finish within 300 ms"), "{err}");
    assert!(
        took < Duration::from_millis(1000),
        "answered after {took:?}"
    );
    drop(stalled);
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
}

#[test]
fn sigterm_with_a_stuck_call_exits_by_the_deadline_and_a_second_signal_at_once() {
    // Defect 3: shutdown joined every connection with no deadline, so a stuck call kept the
    // host from ever exiting, and a second SIGTERM or SIGINT was ignored.
    let config = "shutdown_timeout_ms = 500\n[plugins.tough]\ntimeout_ms = 60000\n";
    let (_dir, mut server) = serve(config);
    let mut client = server.client().unwrap();
    let stuck = thread::spawn(move || client.call("tough", "sleep", r#"{"ms":30000}"#).map(|_| ()));
    server.wait_until(WAIT, "the call to start", |s| in_flight(s, "tough") == 1);
    let start = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_timeout(Duration::from_secs(10))
        .expect("the host exits after shutdown_timeout_ms");
    assert!(!status.success());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let log = server.log();
    assert!(
        log.contains("calls still running: tough `sleep` (generation 1"),
        "{log}"
    );
    drop(stuck);

    let config = "shutdown_timeout_ms = 60000\n[plugins.tough]\ntimeout_ms = 60000\n";
    let (_dir, mut server) = serve(config);
    let mut client = server.client().unwrap();
    let _stuck =
        thread::spawn(move || client.call("tough", "sleep", r#"{"ms":30000}"#).map(|_| ()));
    server.wait_until(WAIT, "the call to start", |s| in_flight(s, "tough") == 1);
    server.signal(libc::SIGTERM);
    server.wait_until(WAIT, "the first signal to be handled", |s| {
        s.log().contains("finishing calls in flight")
    });
    // New calls are refused while the host waits for the old one.
    let mut late = UnixStream::connect(&server.socket).ok();
    if let Some(stream) = late.as_mut() {
        let reply = exchange(stream, &call_line("hello", "greet", ADA));
        assert!(
            reply.contains("shutting_down") || reply.is_empty(),
            "{reply}"
        );
    }
    let start = Instant::now();
    server.signal(libc::SIGINT);
    let status = server
        .wait_timeout(Duration::from_secs(5))
        .expect("a second signal ends the host at once");
    assert!(!status.success());
    assert!(start.elapsed() < Duration::from_secs(2));
}

fn in_flight(server: &Server, plugin: &str) -> u64 {
    server
        .files()
        .iter()
        .filter(|f| f.metadata.as_ref().is_some_and(|m| m.name == plugin))
        .filter_map(|f| f.serving.as_ref())
        .map(|s| s.in_flight)
        .sum()
}

#[test]
fn idle_connections_cost_no_thread_and_every_limit_holds() {
    // Defect 4: one thread per connection, no cap, no read timeout, no bound on buffers.
    let config = "max_connections = 60\nrequest_timeout_ms = 300\nmax_buffered_bytes = 1000000\n";
    let (_dir, server) = serve(config);
    let pid = server.pid();
    let threads_before = proc_status(pid, "Threads");
    let rss_before = proc_status(pid, "VmRSS");

    let idle: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(&server.socket).unwrap())
        .collect();
    // Every connection is accepted before the next check.
    thread::sleep(Duration::from_millis(200));
    let threads = proc_status(pid, "Threads");
    assert!(
        threads <= threads_before + 2,
        "{threads} threads with 60 idle connections, {threads_before} before"
    );
    // One more is refused with a line saying why. The connections of the calls made before
    // may still count for a moment after they closed; then the one refused is among the 60,
    // or a slot frees while we wait and a later one is refused.
    // (A refusal is written at accept, and every connection was accepted above.)
    let refused_line = |stream: &UnixStream| {
        stream.set_nonblocking(true).unwrap();
        let mut reply = String::new();
        let _ = BufReader::new(stream).read_line(&mut reply);
        (!reply.is_empty()).then_some(reply)
    };
    let mut extra = Vec::new();
    let reply = loop {
        if let Some(reply) = idle.iter().find_map(refused_line) {
            break reply;
        }
        assert!(extra.len() < 3, "no connection was refused");
        let stream = UnixStream::connect(&server.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reply = String::new();
        match BufReader::new(&stream).read_line(&mut reply) {
            Ok(n) if n > 0 => break reply,
            _ => extra.push(stream),
        }
    };
    assert!(reply.contains("max_connections"), "{reply}");
    assert!(reply.contains("\"busy\""), "{reply}");
    drop((idle, extra));
    server.wait_until(WAIT, "room for connections again", |s| greet(s).is_ok());

    // A request that never ends is cut off after request_timeout_ms.
    let mut half = UnixStream::connect(&server.socket).unwrap();
    half.write_all(br#"{"v":1,"op":"pi"#).unwrap();
    let start = Instant::now();
    let mut reply = String::new();
    BufReader::new(&mut half).read_line(&mut reply).unwrap();
    assert!(
        reply.contains("did not arrive whole within 300 ms (request_timeout_ms)"),
        "{reply}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));

    // Unfinished requests of 600 KB each: the 1 MB pool of buffers runs out.
    let mut writers: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&server.socket).unwrap())
        .collect();
    let chunk = vec![b' '; 600_000];
    let mut full = 0;
    for stream in &mut writers {
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = stream.write_all(&chunk);
    }
    for stream in &mut writers {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reply = String::new();
        let _ = BufReader::new(stream).read_line(&mut reply);
        if reply.contains("request buffers are full") {
            full += 1;
        }
    }
    assert!(
        full >= 2,
        "{full} connections were refused for lack of buffers"
    );
    assert_eq!(greet(&server).unwrap(), "Hello, Ada!");
    let rss = proc_status(pid, "VmRSS");
    assert!(
        rss < rss_before + 20_000,
        "RSS {rss_before} KiB -> {rss} KiB"
    );
}

#[test]
fn running_out_of_descriptors_backs_off_and_logs_once_a_second() {
    // Defect 4: at the descriptor limit, accept failed with EMFILE and was retried without
    // pause: 6.6 million log lines in 56 s.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start_configured(dir.path(), &[], |command| {
        // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 48,
                    rlim_max: 48,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                Ok(())
            });
        }
    });
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());
    let held: Vec<UnixStream> = (0..80)
        .filter_map(|_| UnixStream::connect(&server.socket).ok())
        .collect();
    thread::sleep(Duration::from_secs(3));
    let log = server.log();
    let failures = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        (1..=6).contains(&failures),
        "{failures} accept failures logged in 3 s:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(log.contains("fewer than max_connections"), "{log}");
    drop(held);
    server.wait_until(WAIT, "the host to accept again", |s| greet(s).is_ok());
}

#[test]
fn stuck_calls_pin_only_their_own_generation_and_free_their_slot() {
    // Defect 6: a stuck call held the whole table snapshot, so every plugin's replaced
    // generation stayed loaded; after a reload the stuck calls were not shown anywhere; and
    // calls that timed out kept their `max_concurrent_calls` slots.
    // Without probation, which would keep the replaced hello loaded on purpose.
    let config = "[plugins.tough]\ntimeout_ms = 200\nmax_concurrent_calls = 2\nprobation_ms = 0\n\
                  [plugins.hello]\nprobation_ms = 0\n";
    let (dir, server) = serve(config);
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let mut client = server.client().unwrap();
            thread::spawn(move || client.call("tough", "sleep", r#"{"ms":20000}"#).map(|_| ()))
        })
        .collect();
    for call in stuck {
        let err = call.join().unwrap().unwrap_err().to_string();
        assert!(err.contains("did not finish within 200 ms"), "{err}");
    }
    // Both slots are free again, though both calls still run.
    assert_eq!(server.call("tough", "greet", "null").unwrap(), "still here");

    // Other plugins' old generations unload while those calls are stuck.
    install(hello_hi(), dir.path(), "libhello.so");
    server.wait_until(WAIT, "hello generation 1 to unload", |s| {
        s.log().lines().any(|l| {
            l.contains("plugin=hello generation=1") && l.contains("unloaded: library closed")
        })
    });

    // A reload of tough itself leaves the stuck calls visible on its old generation.
    let tough2 = e2e::Variant::of("tests/fixtures/tough")
        .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
        .build();
    install(&tough2, dir.path(), "libtough.so");
    server.wait_until(WAIT, "tough generation 2", |s| {
        s.call_raw("tough", "greet", "null")
            .is_ok_and(|o| o.generation == 2)
    });
    let files = server.files();
    let file = files
        .iter()
        .find(|f| f.path.ends_with("libtough.so"))
        .unwrap();
    assert_eq!(file.retired.len(), 1, "{file:?}");
    assert_eq!(
        file.retired[0].state,
        host::RetiredState::Draining {
            in_flight: 2,
            stuck: 2
        }
    );
    let out = e2e::host(&["list", "--socket", server.socket.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("generation 1: 2 calls draining, 2 stuck"),
        "{table}"
    );
}

#[test]
fn a_call_that_logs_without_end_gets_a_bounded_answer() {
    // Defect 7: only the result counted against max_message_bytes: a call that logged 50 MB
    // produced a 52 MB answer and 50 MB of host log.
    let (_dir, server) = serve("");
    let mut stream = UnixStream::connect(&server.socket).unwrap();
    let reply = exchange(
        &mut stream,
        &call_line("tough", "spam", r#"{"lines":20000,"bytes":1000}"#),
    );
    assert!(reply.len() < 1_000_000, "a {} byte answer", reply.len());
    let response: Value = serde_json::from_str(&reply).unwrap();
    let logs = response["outcome"]["logs"].as_array().unwrap();
    let last = logs.last().unwrap()["message"].as_str().unwrap();
    assert!(
        last.contains("log records (") && last.contains("dropped: over this call's log budget"),
        "{last}"
    );
    assert_eq!(response["outcome"]["result"], 20000);
    let log_size = fs::metadata(&server.log).unwrap().len();
    assert!(log_size < 2_000_000, "the host log has {log_size} bytes");
}

#[test]
fn panics_pin_no_memory_and_reach_the_log_as_one_record() {
    // Defect 8: with RUST_BACKTRACE=1, a plugin's own std captured and symbolised a
    // backtrace on each panic and cached it in statics unloading never frees: ~70 MB per
    // generation. Defect 11: the panic also reached the log as std's raw multi-line message.
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let server = Server::start_with_env(dir.path(), &[], &[("RUST_BACKTRACE", "1")]);
    server.wait_until(WAIT, "hello", |s| greet(s).is_ok());
    let pid = server.pid();
    let mut rss_after_first = 0;
    for round in 1..=6u64 {
        let err = server.call("hello", "panic", "null").unwrap_err();
        assert!(err.contains("hello panicked on purpose"), "{err}");
        if round == 1 {
            rss_after_first = proc_status(pid, "VmRSS");
        }
        let source = if round % 2 == 1 {
            hello_hi()
        } else {
            built().hello.as_path()
        };
        install(source, dir.path(), "libhello.so");
        server.wait_until(WAIT, &format!("generation {}", round + 1), |s| {
            s.call_raw("hello", "greet", ADA)
                .is_ok_and(|o| o.generation == round + 1)
        });
    }
    // Measured once the replaced generations have left (the one on standby for its
    // probation stays): a library copy still being unloaded is mapped, and counted.
    server.wait_until(WAIT, "replaced generations to be unloaded", |s| {
        s.files().iter().all(|f| {
            f.retired
                .iter()
                .all(|r| matches!(r.state, host::RetiredState::Standby { .. }))
        })
    });
    let growth = proc_status(pid, "VmRSS").saturating_sub(rss_after_first);
    assert!(growth < 30_000, "resident memory grew by {growth} KiB");
    let log = server.log();
    let records: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hello panicked on purpose"))
        .collect();
    assert_eq!(records.len(), 6, "{log}");
    assert!(records.iter().all(|l| l.contains("WARN")), "{records:?}");
    for raw in ["stack backtrace", "note: run with", "panicked at"] {
        assert!(!log.contains(raw), "{raw:?} in the log:\n{log}");
    }
}

#[test]
fn a_thread_of_a_plugin_panicking_outside_a_call_writes_one_line() {
    let (_dir, server) = serve("");
    assert!(server.call("tough", "thread_panic", "null").is_ok());
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("a thread of tough panicked"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(!log.contains("note: run with"), "{log}");
}
