//! Tests of `process`: how an exit is named, and a worker's life seen from the host.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;

use super::watch::classify;
use super::*;

fn label() -> Label {
    Label {
        plugin: "tough".into(),
        generation: 3,
        timeout_ms: 300,
        kill_after_ms: 100,
        max_memory_mb: Some(64),
    }
}

fn status(raw: i32) -> io::Result<std::process::ExitStatus> {
    Ok(std::process::ExitStatus::from_raw(raw))
}

#[test]
fn an_exit_is_named_by_its_signal_status_or_last_words() {
    let none = VecDeque::new();
    let exit = |raw, stopping, last: &VecDeque<String>| {
        classify(status(raw), None, stopping, last, &label())
    };
    assert_eq!(
        exit(libc::SIGSEGV, false, &none).reason,
        "killed by signal SIGSEGV"
    );
    assert_eq!(exit(3 << 8, false, &none).reason, "exited with status 3");
    assert!(exit(0, true, &none).clean);
    assert!(
        !exit(0, false, &none).clean,
        "an exit nobody asked for is a crash"
    );
    let oom = VecDeque::from(["memory allocation of 1048576 bytes failed".to_owned()]);
    assert_eq!(
        exit(libc::SIGABRT, false, &oom).reason,
        "out of memory (max_memory_mb = 64), killed by signal SIGABRT"
    );
    let overflow = VecDeque::from([
        "thread 'x' has overflowed its stack".to_owned(),
        "fatal runtime error: stack overflow".to_owned(),
    ]);
    assert_eq!(
        exit(libc::SIGABRT, false, &overflow).reason,
        "stack overflow, killed by signal SIGABRT"
    );
    let denied = VecDeque::from(["seccomp: denied system call ptrace (101)".to_owned()]);
    assert_eq!(
        exit(libc::SIGSYS, false, &denied).reason,
        "its sandbox denied system call ptrace (101) (seccomp), killed by signal SIGSYS"
    );
    let killed = classify(
        status(libc::SIGKILL),
        Some("its worker was killed because"),
        false,
        &none,
        &label(),
    );
    assert_eq!(killed.reason, "its worker was killed because");
    assert!(!killed.clean);
}

/// What a worker of `program` is asked to load (nothing real: stand-in workers ignore it).
fn request(dir: &std::path::Path) -> LoadRequest {
    LoadRequest {
        copy: dir.join("copy.so"),
        source: dir.join("libfake.so"),
        generation: 3,
        settings: crate::types::settings::PluginSettings::default(),
        max_message_bytes: 1 << 20,
        max_log_bytes_per_call: 1 << 16,
        tsc_per_us: None,
        previous: None,
    }
}

fn spec(program: std::path::PathBuf) -> SpawnSpec {
    SpawnSpec {
        program,
        max_memory_mb: None,
    }
}

/// `frame` as it goes on the channel.
fn frame_bytes(frame: &impl serde::Serialize) -> Vec<u8> {
    let json = serde_json::to_vec(frame).unwrap();
    let mut bytes = (json.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    bytes
}

#[test]
fn a_kill_after_the_worker_was_reaped_signals_no_one_who_got_its_pid() {
    use crate::runtime::isolation::testing::{script, sleep_as, was_killed};
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "worker", "exit 0");
    let (tell, told) = std::sync::mpsc::channel();
    // `on_exit` runs on the watch thread after the worker is reaped and before its exit is
    // recorded: the moment the worker's pid is free for anyone while `kill` may be called.
    let on_exit: OnExit = Box::new(move |worker: &Worker, _: &Exit| {
        let recycled = sleep_as(worker.pid());
        worker.kill();
        let _ = tell.send((worker.pid(), recycled));
    });
    let started = Worker::start(&spec(program), request(dir.path()), label(), on_exit);
    assert!(started.is_err(), "a worker that exits at once cannot load");
    let (pid, recycled) = told.recv_timeout(Duration::from_secs(30)).unwrap();
    let Some(mut recycled) = recycled else {
        eprintln!("cannot reuse pid {pid} here (no CAP_SYS_ADMIN): only the no-op is shown");
        return;
    };
    let killed = was_killed(&mut recycled);
    let _ = recycled.kill();
    let _ = recycled.wait();
    assert!(
        !killed,
        "Worker::kill signalled process {pid}, which had the reaped worker's pid"
    );
}

#[test]
fn a_bad_frame_from_a_worker_ends_it_as_crashed_naming_why() {
    use crate::runtime::isolation::testing::script;
    let dir = tempfile::tempdir().unwrap();
    let ready = FromWorker::Ready {
        metadata: Metadata::named("fake"),
        logs: Vec::new(),
        sandbox: None,
    };
    let mut frames = frame_bytes(&ready);
    let nonsense = br#"{"nonsense":1}"#;
    frames.extend_from_slice(&(nonsense.len() as u32).to_le_bytes());
    frames.extend_from_slice(nonsense);
    std::fs::write(dir.path().join("frames"), frames).unwrap();
    let body = format!(
        "/bin/cat '{}' >&3\nexec /bin/sleep 30",
        dir.path().join("frames").display()
    );
    let program = script(dir.path(), "worker", &body);
    let (worker, metadata, _) = Worker::start(
        &spec(program),
        request(dir.path()),
        label(),
        Box::new(|_, _| {}),
    )
    .unwrap();
    assert_eq!(metadata.name, "fake");
    worker.put_in_service();
    let start = Instant::now();
    let deadline = SystemTime::now() + Duration::from_secs(5);
    let err = worker
        .call("greet", "null", &AtomicBool::new(false), deadline, None)
        .unwrap_err();
    assert_eq!(err.kind, CallErrorKind::Crashed, "{err}");
    assert!(err.message.contains("its worker sent a bad frame"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(worker.is_gone());
}
