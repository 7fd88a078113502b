//! The README, checked against the code (issue 16, item 6).
//!
//! Every ```` ```console ```` block of README.md is run: each `$ ` line is a command, the
//! lines after it up to the next `$ ` line are what it prints (stdout, then stderr), and
//! the two must match, with `[..]` standing for any text within a line and a line `...`
//! for any number of lines (the conventions of cargo's and clap's snapshot tests). Blocks
//! that cannot run in a test (installing, a release build) are ```` ```sh ```` blocks.
//!
//! The commands are read, not handed to a shell: `host ...` (and `cargo run -p host --
//! ...`) runs the `host` binary built for the tests; `cargo build -p ...` builds what it
//! names; `cd DIR` changes directory; `&&` chains. Each block runs in a fresh directory
//! where `target` is cargo's target directory and `~` a fresh home. A client command
//! without `--plugins` talks to a `host serve` started for the block (hello and fanout
//! installed, an empty task database), as the README's reader would have one running.
//!
//! Why a small extractor and matcher here rather than trycmd: trycmd runs each command in
//! a sandbox of files, but the README's commands need a live `host serve` (with its socket
//! added to each client command) and cargo's target directory; snapbox would bring only
//! the matcher, which is the forty lines of `matches` below.
//!
//! Besides the blocks, the facts the README states about the code are checked: the ABI
//! version, the frozen plugin-apis in `tests/fixtures`, the line a panic is reported at,
//! and that no table is cut in two by a blank line. (That `host new` writes the
//! `src/lib.rs` the README shows is `cli.rs`'s `the_readme_shows_what_host_new_writes`.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{built, cargo, fanout, install, plugins_dir, root, target_dir, text, Server};

/// How long a command reading the host's state (`host tasks`, `host task`) is repeated
/// until its output matches: the tasks it shows run in the background.
const SETTLE: Duration = Duration::from_secs(10);

/// The first `report` firing of a fresh host must be at least this far off, so that the
/// example's task ids are those of a fresh host whose schedule has not fired yet.
const SCHEDULE_MARGIN_MS: u64 = 5_000;

fn readme() -> String {
    fs::read_to_string(root().join("README.md")).expect("README.md")
}

/// A command of a console block and the output it shows.
#[derive(Debug)]
struct Step {
    /// The README's line number of the command (1-based).
    line: usize,
    command: String,
    expected: Vec<String>,
}

/// The ```console blocks of `text`, each as its steps.
fn console_blocks(text: &str) -> Vec<Vec<Step>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<Step>> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match current.as_mut() {
            None if fence == "```console" => current = Some(Vec::new()),
            None => {}
            Some(_) if fence == "```" => blocks.extend(current.take()),
            Some(steps) => {
                if let Some(command) = line.strip_prefix("$ ") {
                    steps.push(Step {
                        line: i + 1,
                        command: command.to_owned(),
                        expected: Vec::new(),
                    });
                } else if let Some(step) = steps.last_mut() {
                    step.expected.push(line.to_owned());
                } else {
                    panic!("README.md:{}: output before any `$ ` command", i + 1);
                }
            }
        }
    }
    assert!(
        current.is_none(),
        "README.md: a console block is not closed"
    );
    blocks
}

/// Whether `actual` matches `expected`: a line `...` matches any lines, `[..]` any text
/// within a line.
fn matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| matches(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(line, more)| line_matches(first, line) && matches(rest, more)),
    }
}

/// Whether `line` matches `pattern`, where `[..]` stands for any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    match pattern.split_once("[..]") {
        None => pattern == line,
        Some((head, tail)) => line.strip_prefix(head).is_some_and(|rest| {
            rest.char_indices()
                .map(|(i, _)| i)
                .chain([rest.len()])
                .any(|at| line_matches(tail, &rest[at..]))
        }),
    }
}

/// Splits a command line into words as a shell would (quotes, backslashes, `~/`), and
/// into the commands `&&` chains.
fn commands(line: &str, home: &Path) -> Vec<Vec<String>> {
    let mut all = vec![Vec::new()];
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref().take_while(|&c| c != '\'') {
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => w.extend(chars.next()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '~' if word.is_none() && matches!(chars.peek(), Some('/') | None | Some(' ')) => {
                word = Some(home.display().to_string());
            }
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    if w == "&&" {
                        all.push(Vec::new());
                    } else {
                        all.last_mut().expect("a command").push(w);
                    }
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    if let Some(w) = word {
        all.last_mut().expect("a command").push(w);
    }
    all
}

/// The client commands of `host`: they talk to a running host unless given `--plugins`.
const CLIENT_COMMANDS: [&str; 10] = [
    "call", "list", "submit", "tasks", "task", "cancel", "retry", "restart", "history", "rollback",
];

/// What a block runs in.
struct Sandbox {
    dir: tempfile::TempDir,
    cwd: PathBuf,
    server: Option<Server>,
    plugins: Option<tempfile::TempDir>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(target_dir(), dir.path().join("target")).expect("symlink");
        for sub in ["home", "run", "state"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        let cwd = dir.path().to_owned();
        Sandbox {
            dir,
            cwd,
            server: None,
            plugins: None,
        }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Runs one `$ ` line; what it printed, stdout then stderr.
    fn run(&mut self, step: &Step) -> String {
        let mut printed = String::new();
        for words in commands(&step.command, &self.home()) {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["cd", dir] => self.cwd = self.cwd.join(dir),
                ["cargo", "build", "-p", package] => {
                    cargo(&["build", "-p", package], root(), None);
                }
                ["cargo", "run", "-p", "host", "--", args @ ..] | ["host", args @ ..] => {
                    printed.push_str(&self.host(args));
                }
                _ => panic!(
                    "README.md:{}: `{}` cannot run in a test: show it in a ```sh block",
                    step.line, step.command
                ),
            }
        }
        printed
    }

    /// Runs the `host` binary with `args`, against the block's server for a client
    /// command without `--plugins`.
    fn host(&mut self, args: &[&str]) -> String {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let client = args
            .first()
            .is_some_and(|c| CLIENT_COMMANDS.contains(&c.as_str()));
        if client && !args.iter().any(|a| a == "--plugins") {
            let socket = self.server().socket.display().to_string();
            args.extend(["--socket".to_owned(), socket]);
        }
        let output = Command::new(&built().host)
            .args(&args)
            .current_dir(&self.cwd)
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env_remove("RUST_LOG")
            .env_remove("HOST_CONFIG")
            .output()
            .expect("host runs");
        let (stdout, stderr) = text(&output);
        stdout + &stderr
    }

    /// The block's `host serve`: hello and fanout, a fresh task database, and fanout's
    /// `report` schedule not due for `SCHEDULE_MARGIN_MS`.
    fn server(&mut self) -> &Server {
        if self.server.is_none() {
            let plugins = plugins_dir();
            install(&built().hello, plugins.path(), "libhello.so");
            install(fanout(), plugins.path(), "libfanout.so");
            let server = loop {
                let server = Server::start(plugins.path(), &[]);
                let next = report_due_in(&server);
                if next >= SCHEDULE_MARGIN_MS {
                    break server;
                }
                // Too close: let that firing pass, then start afresh (a new state
                // directory, so nothing is missed), a whole period before the next.
                drop(server);
                let until = now_ms() + next + 100;
                while now_ms() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
            self.plugins = Some(plugins);
            self.server = Some(server);
        }
        self.server.as_ref().expect("started")
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(since.as_millis()).expect("ms")
}

/// In how many ms fanout's `report` schedule fires first, from the server's log.
fn report_due_in(server: &Server) -> u64 {
    let mut due = None;
    server.wait_until(Duration::from_secs(20), "the report schedule", |s| {
        due = s
            .log()
            .lines()
            .find(|l| l.contains("schedule=plugin:fanout.report"))
            .and_then(|l| l.split("next in ").nth(1))
            .and_then(|rest| rest.split(" ms").next())
            .and_then(|ms| ms.parse::<u64>().ok());
        due.is_some()
    });
    due.expect("found")
}

/// Whether a command only reads the host's state, so it may be repeated until the tasks
/// it shows have run.
fn reads_only(command: &str) -> bool {
    ["host tasks", "host task ", "host list", "host history"]
        .iter()
        .any(|c| command.starts_with(c))
}

#[test]
fn the_console_blocks_print_what_the_readme_shows() {
    let text = readme();
    let blocks = console_blocks(&text);
    // The examples a new user runs first are all there.
    for wanted in [
        "call hello greet",
        "host check",
        "host new",
        "host submit",
        "host tasks",
    ] {
        assert!(
            blocks.iter().flatten().any(|s| s.command.contains(wanted)),
            "README.md has no console block running `{wanted}`"
        );
    }
    for block in blocks {
        let mut sandbox = Sandbox::new();
        for step in &block {
            let start = Instant::now();
            loop {
                let printed = sandbox.run(step);
                let lines: Vec<&str> = printed.lines().collect();
                if matches(&step.expected, &lines) {
                    break;
                }
                if !reads_only(&step.command) || start.elapsed() > SETTLE {
                    panic!(
                        "README.md:{}: `{}` printed\n{printed}\nwhere the README shows\n{}\n",
                        step.line,
                        step.command,
                        step.expected.join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn the_facts_the_readme_states_are_those_of_the_code() {
    let text = readme();
    // The ABI version.
    let abi = format!(
        "now {}.{})",
        plugin_api::abi::ABI_MAJOR,
        plugin_api::abi::ABI_MINOR
    );
    assert!(
        text.contains(&abi),
        "README.md does not say the ABI is `{abi}`"
    );

    // The frozen plugin-apis: each one's ABI version is in the fixtures line.
    let fixtures_line = text
        .lines()
        .find(|l| l.contains("`tests/fixtures`: plugin-api frozen at ABI"))
        .expect("README.md lists the fixtures");
    for entry in fs::read_dir(root().join("tests/fixtures")).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("plugin-api-") {
            continue;
        }
        let abi = fs::read_to_string(path.join("src/abi.rs")).expect("abi.rs");
        let version = abi
            .lines()
            .find_map(|l| l.strip_prefix("pub const ABI_VERSION: &str = \""))
            .and_then(|v| v.strip_suffix(".0\";"))
            .unwrap_or_else(|| panic!("{name}: no ABI_VERSION"));
        assert!(
            fixtures_line.contains(&format!(" {version}")),
            "README.md's fixtures line does not name ABI {version} ({name}): {fixtures_line}"
        );
    }

    // Where a panic is reported: the line shown holds the `panic!`.
    let mut places = 0;
    for (at, _) in text.match_indices("(at ") {
        let Some((place, _)) = text[at + 4..].split_once(')') else {
            continue;
        };
        let Some((file, line)) = place.rsplit_once(':') else {
            continue;
        };
        let Ok(line) = line.parse::<usize>() else {
            continue;
        };
        places += 1;
        let source = fs::read_to_string(root().join(file))
            .unwrap_or_else(|e| panic!("README.md names {place}: {file}: {e}"));
        let shown = source.lines().nth(line - 1).unwrap_or_default();
        assert!(
            shown.contains("panic!"),
            "README.md says a panic is at {place}, but that line is `{}`",
            shown.trim()
        );
    }
    assert!(places > 0, "README.md shows no panic location");

    // No table is cut in two by a blank line (a row, a blank line, then a row that does
    // not start a new table).
    let lines: Vec<&str> = text.lines().collect();
    for (i, window) in lines.windows(4).enumerate() {
        let row = |l: &str| l.starts_with('|');
        if row(window[0]) && window[1].is_empty() && row(window[2]) && !window[3].starts_with("|-")
        {
            panic!("README.md:{}: a blank line cuts a table in two", i + 2);
        }
    }
}

#[test]
fn the_matcher_elides_what_it_should_and_nothing_else() {
    let pattern = |lines: &[&str]| lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>();
    assert!(matches(&pattern(&["a [..] c"]), &["a b c"]));
    assert!(matches(&pattern(&["a [..] c"]), &["a  c"]));
    assert!(!matches(&pattern(&["a [..] c"]), &["a b d"]));
    assert!(matches(&pattern(&["[..]x[..]"]), &["yyxyy"]));
    assert!(matches(&pattern(&["1", "...", "4"]), &["1", "2", "3", "4"]));
    assert!(matches(&pattern(&["1", "...", "2"]), &["1", "2"]));
    assert!(!matches(&pattern(&["1", "...", "4"]), &["1", "2", "3"]));
    assert!(!matches(&pattern(&["1"]), &["1", "2"]));
    assert!(!matches(&pattern(&["1", "2"]), &["1"]));
    let home = Path::new("/h");
    assert_eq!(
        commands(r#"a 'b c' "d\"e" ~/x && f"#, home),
        vec![vec!["a", "b c", "d\"e", "/h/x"], vec!["f"]]
    );
}
