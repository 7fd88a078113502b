//! Tests of `process`: how an exit is named, and a worker's life seen from the host.

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
