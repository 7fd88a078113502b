//! The panic hook a plugin installs in its own copy of std.
//!
//! Every plugin library links its own std, and with it its own panic hook. std's default hook
//! writes a multi-line message to stderr, outside the host's log format, and with
//! `RUST_BACKTRACE=1` captures a backtrace whose symbolizer state (the parsed debug info of
//! every loaded binary, tens of MB) stays in that std's statics, which nothing frees when the
//! library is unloaded. The glue replaces it, once per library, with [`hook`]:
//!
//! * in a guarded call (author code the glue runs under `catch_unwind`) it records where the
//!   panic happened, for the `panicked` error the glue returns, and prints nothing;
//! * anywhere else (a thread the plugin spawned), and anywhere at all in a plugin built with
//!   `panic = "abort"` (whose panics end the process: nothing catches them), it writes one
//!   line to stderr;
//! * it captures a backtrace only when `PLUGIN_HOST_BACKTRACE=1` is set.
//!
//! Nothing here may keep the library mapped after `dlclose`: the thread-local is a `Cell` of a
//! `Copy` type without `Drop` (so std registers no TLS destructor for it), and the records
//! that carry text from the hook to the glue live in a `static` (statics never drop, and the
//! buffer is freed whenever it empties).

use std::any::Any;
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe, PanicHookInfo};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, PoisonError};

/// Who installs the hook, which decides what it does with a panic outside a guarded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A library the host loaded (the entry points of [`export_plugin!`](crate::export_plugin)):
    /// such a panic is one line on stderr.
    Host,
    /// In-process use (the `testing` harness, benches): such a panic goes to the hook that
    /// was there before, so that a test binary reports failing tests as usual.
    InProcess,
}

/// What the hook saw of a panic in a guarded call.
#[derive(Debug, Default)]
pub(crate) struct Caught {
    /// `file:line` of the panic.
    pub(crate) location: Option<String>,
    /// The backtrace, when `PLUGIN_HOST_BACKTRACE=1`.
    pub(crate) backtrace: Option<String>,
}

type Hook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

static INSTALL: Once = Once::new();
static NAME: OnceLock<&'static str> = OnceLock::new();
static MODE: OnceLock<Mode> = OnceLock::new();
/// The hook replaced in [`Mode::InProcess`].
static PREVIOUS: OnceLock<Hook> = OnceLock::new();
/// Panics recorded in guarded calls and not yet taken, keyed by [`thread_key`].
static CAUGHT: Mutex<Vec<(usize, Caught)>> = Mutex::new(Vec::new());
#[cfg(test)]
static INSTALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The calling thread's state; `Copy` and without `Drop`, see the module documentation.
#[derive(Debug, Clone, Copy)]
struct ThreadState {
    /// Inside [`catch`].
    guarded: bool,
    /// The hook pushed a record to [`CAUGHT`] during the current [`catch`].
    recorded: bool,
}

const OUTSIDE: ThreadState = ThreadState {
    guarded: false,
    recorded: false,
};

thread_local! {
    static STATE: Cell<ThreadState> = const { Cell::new(OUTSIDE) };
}

/// Installs the hook, once per library; later calls (in any mode) change nothing. The first
/// caller's `name` is the plugin name of the one-line messages.
pub(crate) fn install(name: &'static str, mode: Mode) {
    // `set_hook` and `take_hook` panic on a panicking thread (a `Drop` during unwinding):
    // leave the installation to a later entry point then.
    if std::thread::panicking() {
        return;
    }
    INSTALL.call_once_force(|_| {
        let _ = NAME.set(name);
        let _ = MODE.set(mode);
        if mode == Mode::InProcess {
            let _ = PREVIOUS.set(std::panic::take_hook());
        }
        // `hook` is a function item: the box is zero-sized and allocates nothing.
        std::panic::set_hook(Box::new(hook));
        #[cfg(test)]
        INSTALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
}

/// Runs `f` as a guarded call, catching a panic in it: the hook records the panic for the
/// caller instead of printing it. Returns what `f` returned or the panic's payload, and what
/// the hook recorded (of the last panic, if `f` caught some itself).
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> (std::thread::Result<R>, Option<Caught>) {
    // One thread-local access per call. `with` cannot fail on this thread-local (no
    // destructor, so never "destroyed"), and `catch_unwind` keeps `f` from unwinding past
    // the restore.
    let (result, inner) = STATE.with(|state| {
        let outer = state.replace(ThreadState {
            guarded: true,
            recorded: false,
        });
        let result = catch_unwind(AssertUnwindSafe(f));
        (result, state.replace(outer))
    });
    // Only a call that panicked takes the lock.
    let caught = if inner.recorded { take_caught() } else { None };
    (result, caught)
}

/// A panic payload as text.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Whether the hook captures backtraces: `PLUGIN_HOST_BACKTRACE=1`, read at every panic.
pub(crate) fn backtraces_enabled() -> bool {
    std::env::var_os("PLUGIN_HOST_BACKTRACE").is_some_and(|value| value == "1")
}

/// Writes to stderr the backtrace of a caught panic that has no call outcome to go with (a
/// panic in callback registration or in `Drop`).
pub(crate) fn write_backtrace(plugin: &str, place: &dyn std::fmt::Display, backtrace: &str) {
    let text = format!("plugin {plugin}: backtrace of the panic in {place}:\n{backtrace}\n");
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The one line written for a panic outside a guarded call.
fn unguarded_line(plugin: &str, location: Option<(&str, u32)>, message: &str) -> String {
    let message = message.replace(['\r', '\n'], " ");
    match location {
        Some((file, line)) => {
            format!("plugin {plugin}: thread panicked at {file}:{line}: {message}\n")
        }
        None => format!("plugin {plugin}: thread panicked: {message}\n"),
    }
}

/// The panic hook. It must not panic itself (that aborts the process), so it writes with
/// `write_all` and ignores errors instead of using `eprintln!`.
fn hook(info: &PanicHookInfo<'_>) {
    let state = STATE.try_with(Cell::get).unwrap_or(OUTSIDE);
    // Built with panic = "abort" (this crate is compiled with the plugin's profile), no
    // panic is caught: the process ends after this hook, so say why, as for any panic
    // outside a guarded call.
    if state.guarded && cfg!(panic = "unwind") {
        let caught = Caught {
            location: info
                .location()
                .map(|at| format!("{}:{}", at.file(), at.line())),
            backtrace: if backtraces_enabled() {
                Some(capture_backtrace())
            } else {
                None
            },
        };
        lock_caught().push((thread_key(), caught));
        let _ = STATE.try_with(|s| {
            s.set(ThreadState {
                recorded: true,
                ..state
            })
        });
        return;
    }
    if MODE.get() == Some(&Mode::InProcess) {
        if let Some(previous) = PREVIOUS.get() {
            previous(info);
            return;
        }
    }
    let name = NAME.get().copied().unwrap_or("(unknown)");
    let location = info.location().map(|at| (at.file(), at.line()));
    let mut text = unguarded_line(name, location, panic_message(info.payload()));
    if backtraces_enabled() {
        text.push_str(&format!(
            "backtrace of the panic:\n{}\n",
            capture_backtrace()
        ));
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The backtrace of the panic being handled, as text, from the frame that panicked: the
/// frames of this hook and of std's panic machinery above it are left out.
fn capture_backtrace() -> String {
    let text = Backtrace::force_capture().to_string();
    trim_panic_frames(&text).to_owned()
}

/// `text` (a formatted backtrace) from its first frame that is not panic machinery, or all
/// of it if there is none.
fn trim_panic_frames(text: &str) -> &str {
    const MACHINERY: [&str; 11] = [
        "plugin_api::panic_hook::hook",
        "plugin_api::panic_hook::capture_backtrace",
        "core::ops::function::",
        "<alloc::boxed::Box<dyn ",
        "std::panicking::",
        "std::sys::backtrace::",
        "__rustc::",
        "rust_begin_unwind",
        "core::panicking::",
        "std::backtrace::",
        "std::backtrace_rs::",
    ];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let frame = line.trim_start();
        let symbol = frame
            .split_once(": ")
            .filter(|(index, _)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()))
            .map(|(_, symbol)| symbol);
        if let Some(symbol) = symbol {
            if !MACHINERY.iter().any(|prefix| symbol.starts_with(prefix)) {
                return &text[offset..];
            }
        }
        offset += line.len();
    }
    text
}

/// Identifies the calling thread among the live ones: the address of its [`STATE`]. (Not
/// `thread::current()`, which may register a TLS destructor on a host thread.)
fn thread_key() -> usize {
    STATE
        .try_with(|state| state as *const Cell<ThreadState> as usize)
        .unwrap_or(0)
}

fn lock_caught() -> MutexGuard<'static, Vec<(usize, Caught)>> {
    CAUGHT.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the calling thread's records and returns the last one.
pub(crate) fn take_caught() -> Option<Caught> {
    let key = thread_key();
    let mut all = lock_caught();
    let mut last = None;
    let mut i = 0;
    while i < all.len() {
        if all[i].0 == key {
            last = Some(all.remove(i).1);
        } else {
            i += 1;
        }
    }
    if all.is_empty() {
        // Free the buffer: the static never drops it, and it would outlive an unload.
        *all = Vec::new();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    // Tests of the hook through the glue and the harness are in `testing/panics.rs`: this
    // module is below both.

    fn explode() -> ! {
        panic!("exploded\non two lines")
    }
    const EXPLODE_LINE: u32 = line!() - 2;

    #[test]
    fn installing_twice_keeps_one_hook() {
        install("first", Mode::InProcess);
        install("second", Mode::InProcess);
        install("third", Mode::Host);
        assert_eq!(INSTALLS.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The one hook works: a guarded panic is recorded with its location.
        let (result, caught) = catch(|| explode());
        assert!(result.is_err());
        let location = caught.and_then(|c| c.location);
        assert_eq!(location, Some(format!("{}:{EXPLODE_LINE}", file!())));
    }

    #[test]
    fn a_panic_outside_a_guarded_call_does_not_abort() {
        install("exploding", Mode::InProcess);
        assert!(std::thread::spawn(|| explode()).join().is_err());
        // Spawned inside a guarded call: still outside the guard, still no abort.
        let (spawned, caught) = catch(|| std::thread::spawn(|| explode()).join().is_err());
        assert_eq!(spawned.ok(), Some(true));
        assert!(
            caught.is_none(),
            "the spawned thread's panic is not the call's"
        );
    }

    #[test]
    fn a_guarded_call_without_a_panic_takes_nothing() {
        install("exploding", Mode::InProcess);
        let (value, caught) = catch(|| 7);
        assert_eq!(value.ok(), Some(7));
        assert!(caught.is_none());
        // A panic the guarded code catches itself is taken (and dropped) at the end.
        let (value, caught) = catch(|| std::panic::catch_unwind(|| explode()).is_err());
        assert_eq!(value.ok(), Some(true));
        assert!(caught.is_some_and(|c| c.location.is_some()));
        assert!(take_caught().is_none());
    }

    #[test]
    fn backtraces_start_at_the_frame_that_panicked() {
        let text = concat!(
            "   0: plugin_api::panic_hook::hook\n",
            "             at ./src/panic_hook.rs:1:1\n",
            "   1: std::panicking::panic_with_hook\n",
            "   2: core::panicking::panic_fmt\n",
            "             at x.rs:2:2\n",
            "   3: hello::Hello::panic\n",
            "             at ./src/lib.rs:110:9\n",
            "   4: std::panicking::try\n",
        );
        assert!(trim_panic_frames(text).starts_with("   3: hello::Hello::panic\n"));
        let only_machinery = "   0: std::panicking::begin_panic\n";
        assert_eq!(trim_panic_frames(only_machinery), only_machinery);
        assert_eq!(trim_panic_frames(""), "");
    }

    #[test]
    fn the_unguarded_line_is_one_line() {
        assert_eq!(
            unguarded_line("hello", Some(("src/lib.rs", 42)), "a\nb\r\nc"),
            "plugin hello: thread panicked at src/lib.rs:42: a b  c\n"
        );
        assert_eq!(
            unguarded_line("hello", None, "boom"),
            "plugin hello: thread panicked: boom\n"
        );
    }
}
