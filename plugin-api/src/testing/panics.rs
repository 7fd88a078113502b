//! Panics of author code as the glue reports them, seen through the [`Harness`]: the
//! hook of `panic_hook` and the errors of `glue` together.

use crate::panic_hook::{backtraces_enabled, install, take_caught, Mode};
use crate::testing::Harness;
use crate::{Context, ErrorKind, InitContext, Level, Plugin, PluginError};

struct Exploding;

fn explode() -> ! {
    panic!("exploded\non two lines")
}
const EXPLODE_LINE: u32 = line!() - 2;

impl Plugin for Exploding {
    type Input = String;
    type Output = ();
    fn init(_: &InitContext<'_>) -> Result<Self, PluginError> {
        Ok(Exploding)
    }
    fn execute(&self, _: &Context<'_>, what: String) -> Result<(), PluginError> {
        match what.as_str() {
            "explode" => explode(),
            "thread" => {
                let spawned = std::thread::spawn(|| explode()).join();
                assert!(spawned.is_err());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[test]
fn a_panic_in_a_harness_call_names_its_location_on_one_line() {
    let plugin = Harness::<Exploding>::new("exploding", serde_json::json!({})).unwrap();
    let err = plugin
        .execute(serde_json::json!("explode"))
        .result
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked);
    assert_eq!(
        err.message(),
        format!(
            "plugin exploding panicked in execute: exploded on two lines (at {}:{})",
            file!(),
            EXPLODE_LINE
        )
    );
    // Nothing is left behind for this thread.
    assert!(take_caught().is_none());
    assert!(plugin.execute(serde_json::json!("fine")).result.is_ok());
}

#[test]
fn a_thread_spawned_in_a_harness_call_may_panic() {
    install("exploding", Mode::InProcess);
    let plugin = Harness::<Exploding>::new("exploding", serde_json::json!({})).unwrap();
    assert!(plugin.execute(serde_json::json!("thread")).result.is_ok());
}

/// Set in the child processes of [`in_host_mode_only_unguarded_panics_print`].
const CHILD: &str = "PLUGIN_API_PANIC_HOOK_CHILD";

/// What the host-mode child does: install the hook as a loaded library does, then panic
/// in a guarded call and in a spawned thread. Does nothing in an ordinary test run.
#[test]
fn host_mode_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    install("exploding", Mode::Host);
    let plugin = Harness::<Exploding>::new("exploding", serde_json::json!({})).unwrap();
    let outcome = plugin.execute(serde_json::json!("explode"));
    let err = outcome.result.unwrap_err();
    assert!(err
        .message()
        .ends_with(&format!("(at {}:{EXPLODE_LINE})", file!())));
    let backtraces: Vec<_> = outcome
        .logs
        .iter()
        .filter(|r| r.message.starts_with("backtrace of the panic:\n"))
        .collect();
    if backtraces_enabled() {
        assert_eq!(backtraces.len(), 1, "{:?}", outcome.logs);
        assert_eq!(backtraces[0].level, Level::Error);
        // The first frame kept is the function that panicked.
        let frames = &backtraces[0].message["backtrace of the panic:\n".len()..];
        let first = frames.trim_start().split_once(": ").map(|(_, rest)| rest);
        assert!(
            first.is_some_and(|f| f.starts_with("plugin_api::testing::panics::explode\n")),
            "{frames}"
        );
    } else {
        assert!(backtraces.is_empty(), "{:?}", outcome.logs);
    }
    assert!(plugin.execute(serde_json::json!("thread")).result.is_ok());
}

fn run_child(backtraces: bool) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut command = std::process::Command::new(exe);
    command
        .args(["--exact", "testing::panics::host_mode_child"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("RUST_BACKTRACE");
    if backtraces {
        command.env("PLUGIN_HOST_BACKTRACE", "1");
    } else {
        command.env_remove("PLUGIN_HOST_BACKTRACE");
    }
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    stderr
}

#[test]
fn in_host_mode_only_unguarded_panics_print() {
    let line = format!(
        "plugin exploding: thread panicked at {}:{EXPLODE_LINE}: exploded on two lines\n",
        file!()
    );
    assert_eq!(run_child(false), line);
    let stderr = run_child(true);
    assert!(stderr.starts_with(&line), "{stderr}");
    assert!(
        stderr[line.len()..].starts_with("backtrace of the panic:\n"),
        "{stderr}"
    );
}
