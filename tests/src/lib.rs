//! Helpers for the end-to-end tests: build the real binaries and plugins, build variants of
//! a plugin from modified sources, run `host` commands and a `host serve` process.

pub mod catalogue;
pub mod postgres;
pub mod variants;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use host::control::Client;

pub mod browser;

/// An HTTP client that answers every status as an answer (not as an error), each request
/// limited to `timeout`.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Where cargo puts what it builds: `$CARGO_TARGET_DIR`, or `target` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The things every test needs, built once per test process.
pub struct Built {
    /// The `host` binary.
    pub host: PathBuf,
    /// `libhello.so`.
    pub hello: PathBuf,
}

/// Runs cargo with `args` in `dir`, optionally with another target directory; panics with
/// its output if it fails.
pub fn cargo(args: &[&str], dir: &Path, target_dir: Option<&Path>) {
    let mut command = Command::new(env!("CARGO"));
    command.args(args).current_dir(dir);
    if let Some(target_dir) = target_dir {
        command.env("CARGO_TARGET_DIR", target_dir);
    }
    let output = command.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds the host binary and the hello plugin (debug profile, the workspace target dir).
///
/// `E2E_HOST_BIN=/path/to/host` runs the tests against another build of the binary (an older
/// commit's, to see a test fail before a fix).
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "host", "-p", "hello"], root(), None);
        let target = target_dir().join("debug");
        Built {
            host: std::env::var_os("E2E_HOST_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| target.join("host")),
            hello: target.join("libhello.so"),
        }
    })
}

/// Builds the sysinfo example plugin and returns its library.
pub fn sysinfo() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "sysinfo"], root(), None);
        target_dir().join("debug/libsysinfo.so")
    })
}

/// Builds the counter example plugin (state handover) and returns its library.
pub fn counter() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "counter"], root(), None);
        target_dir().join("debug/libcounter.so")
    })
}

/// Builds the probe example plugin (tries what a sandbox allows) and returns its library.
pub fn probe() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "probe"], root(), None);
        target_dir().join("debug/libprobe.so")
    })
}

/// Builds `tests/fixtures/tasker`, the plugin that exercises the task runner, and returns
/// its library (shared, never write to it).
pub fn tasker() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| Variant::of("tests/fixtures/tasker").build())
}

/// Builds the fanout example plugin (tasks, pyspider-style) and returns its library.
pub fn fanout() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        cargo(&["build", "-p", "fanout"], root(), None);
        target_dir().join("debug/libfanout.so")
    })
}

/// Builds `tests/fixtures/tough`, the plugin that misbehaves on purpose, and returns its
/// library (shared, never write to it).
pub fn tough() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| Variant::of("tests/fixtures/tough").build())
}

/// Serialises builds in the shared variant target directory.
fn variant_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A crate built from a copy of `example-plugins/hello` (or another crate directory) with
/// textual edits, against the real plugin-api or a modified copy of it.
pub struct Variant<'a> {
    crate_dir: &'a str,
    edits: Vec<(String, &'a str, String)>,
    api_edits: Vec<(&'a str, &'a str, String)>,
}

impl<'a> Variant<'a> {
    /// Starts from the crate at `crate_dir`, relative to the workspace root.
    pub fn of(crate_dir: &'a str) -> Self {
        Variant {
            crate_dir,
            edits: Vec::new(),
            api_edits: Vec::new(),
        }
    }

    /// Replaces `from` with `to` in the crate's file `file` (relative to the crate); the text
    /// must occur.
    pub fn edit(mut self, file: &str, from: &'a str, to: impl Into<String>) -> Self {
        self.edits.push((file.to_owned(), from, to.into()));
        self
    }

    /// Builds against a copy of plugin-api with `from` replaced by `to` in `file`.
    pub fn edit_api(mut self, file: &'a str, from: &'a str, to: impl Into<String>) -> Self {
        self.api_edits.push((file, from, to.into()));
        self
    }

    /// Writes the variant's sources into a new directory, as a crate of its own (with the
    /// workspace's lock file, so nothing new is downloaded). Returns the directory (removed
    /// when dropped) and the crate in it.
    pub fn prepare(&self) -> (tempfile::TempDir, PathBuf) {
        let work = tempfile::tempdir().expect("temp dir");
        let api_dir = if self.api_edits.is_empty() {
            root().join("plugin-api")
        } else {
            let api = work.path().join("plugin-api");
            copy_dir(&root().join("plugin-api"), &api);
            for (file, from, to) in &self.api_edits {
                replace_in(&api.join(file), from, to);
            }
            make_standalone(&api.join("Cargo.toml"), &api, false);
            api
        };
        let crate_dir = work.path().join("plugin");
        copy_dir(&root().join(self.crate_dir), &crate_dir);
        for (file, from, to) in &self.edits {
            replace_in(&crate_dir.join(file), from, to);
        }
        make_standalone(&crate_dir.join("Cargo.toml"), &api_dir, true);
        fs::copy(root().join("Cargo.lock"), crate_dir.join("Cargo.lock")).expect("copy Cargo.lock");
        (work, crate_dir)
    }

    /// Builds the variant and returns a private copy of the library, in `out_dir` under
    /// `file_name`.
    pub fn build_into(self, out_dir: &Path, file_name: &str) -> PathBuf {
        let built = self.build();
        let out = out_dir.join(file_name);
        // Through a temporary name and a rename, so a watcher sees one complete file.
        let tmp = out_dir.join(format!(".{file_name}.tmp"));
        fs::copy(&built, &tmp).expect("copy the built library");
        fs::rename(&tmp, &out).expect("rename into place");
        out
    }

    /// Builds the variant, or finds the library an earlier test process built from the very
    /// same sources, and returns it (in a cache under the target directory: never write to
    /// it, copy it).
    pub fn build(self) -> PathBuf {
        let _serial = variant_lock();
        // The inputs: the sources, the edits, and the workspace's manifest and lock file.
        let key = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            hash_tree(&root().join(self.crate_dir), &mut hasher);
            hash_tree(&root().join("plugin-api"), &mut hasher);
            self.edits.hash(&mut hasher);
            self.api_edits.hash(&mut hasher);
            fs::read(root().join("Cargo.toml"))
                .expect("manifest")
                .hash(&mut hasher);
            fs::read(root().join("Cargo.lock"))
                .expect("lock file")
                .hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        let (_work, crate_dir) = self.prepare();
        let package = package_name(&crate_dir);
        let file = format!("lib{}.so", package.replace('-', "_"));
        let target = target_dir().join("e2e-variants");
        let cached = target.join("cache").join(&key).join(&file);
        if cached.exists() {
            return cached;
        }
        cargo(&["build", "--lib"], &crate_dir, Some(&target));
        let dir = cached.parent().expect("cache dir");
        fs::create_dir_all(dir).expect("create the cache dir");
        let tmp = dir.join(format!(".{file}.{}", std::process::id()));
        fs::copy(target.join("debug").join(&file), &tmp).expect("copy the built library");
        fs::rename(&tmp, &cached).expect("rename into the cache");
        cached
    }
}

/// Feeds the names and contents of the source files under `dir` (sorted; `target` and
/// `Cargo.lock` left out) to `hasher`.
fn hash_tree(dir: &Path, hasher: &mut std::collections::hash_map::DefaultHasher) {
    use std::hash::Hash;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "target" || name == "Cargo.lock" {
            continue;
        }
        name.hash(hasher);
        if path.is_dir() {
            hash_tree(&path, hasher);
        } else {
            fs::read(&path).expect("read source").hash(hasher);
        }
    }
}

/// Rewrites a member manifest of this workspace so that it builds on its own: every
/// `x.workspace = true` becomes the workspace's value, and `plugin-api` points at `api_dir`.
fn make_standalone(manifest: &Path, api_dir: &Path, own_workspace: bool) {
    let workspace = fs::read_to_string(root().join("Cargo.toml")).expect("workspace manifest");
    let mut section = "";
    let mut inherited = std::collections::HashMap::new();
    for line in workspace.lines() {
        if line.starts_with('[') {
            section = line;
        } else if let Some((key, value)) = line.split_once(" = ") {
            if section == "[workspace.package]" || section == "[workspace.dependencies]" {
                inherited.insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
    }
    inherited.insert(
        "plugin-api".into(),
        format!("{{ path = {:?} }}", api_dir.display().to_string()),
    );
    let text = fs::read_to_string(manifest).expect("manifest");
    let mut out: String = text
        .lines()
        .map(|line| match line.strip_suffix(".workspace = true") {
            Some(key) => format!(
                "{key} = {}",
                inherited
                    .get(key)
                    .unwrap_or_else(|| panic!("{key} is not inherited"))
            ),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    if own_workspace {
        out.push_str("\n[workspace]\n");
    }
    fs::write(manifest, out).expect("write manifest");
}

fn package_name(crate_dir: &Path) -> String {
    let manifest = fs::read_to_string(crate_dir.join("Cargo.toml")).expect("manifest");
    manifest
        .lines()
        .find_map(|l| {
            l.strip_prefix("name = \"")
                .and_then(|r| r.strip_suffix('"'))
        })
        .expect("package name")
        .to_owned()
}

/// Replaces `from` with `to` in the file at `path`; the text must occur.
pub fn replace_in(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains(from),
        "{} does not contain {from:?}",
        path.display()
    );
    fs::write(path, text.replace(from, to)).expect("write edited file");
}

/// Copies a crate's sources (everything but `target`).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&src, &dst);
        } else {
            fs::copy(&src, &dst).expect("copy file");
        }
    }
}

/// The system's libz: a real shared library that is not a plugin.
pub fn libz() -> &'static Path {
    [
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/aarch64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("libz is installed")
}

/// A host.toml for `plugins` without probation: for tests about how a replaced version is
/// unloaded, which a probation would keep loaded (30 s by default) to roll back to. Written
/// as `host.toml` into `dir`; returns the `--config` arguments.
pub fn no_probation(dir: &Path, plugins: &[&str]) -> [String; 2] {
    let text: String = plugins
        .iter()
        .map(|p| format!("[plugins.{p}]\nprobation_ms = 0\n"))
        .collect();
    let path = dir.join("host.toml");
    fs::write(&path, text).expect("write host.toml");
    ["--config".to_owned(), path.display().to_string()]
}

/// A fresh directory for plugin files (mode 0700, as the host's checks want).
pub fn plugins_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("plugins-")
        .tempdir()
        .expect("temp dir")
}

/// Copies `library` into `dir` as `name`, atomically (temporary name, then rename).
pub fn install(library: &Path, dir: &Path, name: &str) -> PathBuf {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::copy(library, &tmp).expect("copy library");
    let out = dir.join(name);
    fs::rename(&tmp, &out).expect("rename library");
    out
}

/// Runs the host binary with `args`.
pub fn host(args: &[&str]) -> Output {
    Command::new(&built().host)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("host runs")
}

/// stdout and stderr of a command, as text.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `host serve` process for one test, killed (SIGKILL) when dropped; [`Server::stop`]
/// stops it the polite way (SIGTERM).
pub struct Server {
    child: Option<Child>,
    /// Its control socket.
    pub socket: PathBuf,
    /// Where its log goes.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `host serve --plugins DIR` with extra arguments, and waits until it answers.
    pub fn start(plugins: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(plugins, extra, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(plugins: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_configured(plugins, extra, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// [`Server::start`] with `config` written as `plugins/host.toml` and `state` as its
    /// state directory (`--config`, `--state-dir`).
    pub fn start_with_state(plugins: &Path, state: &Path, config: &str) -> Server {
        let conf = plugins.join("host.toml");
        fs::write(&conf, config).expect("write host.toml");
        let args = [
            "--config",
            conf.to_str().expect("a UTF-8 path"),
            "--state-dir",
            state.to_str().expect("a UTF-8 path"),
        ];
        Server::start(plugins, &args)
    }

    /// Runs `host ARGS --socket SOCKET` against this server.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--socket", self.socket.to_str().expect("a UTF-8 path")]);
        host(&all)
    }

    /// Runs `host ARGS --socket SOCKET`: its stdout, or a panic with its stderr.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "host {args:?}: {stderr}");
        stdout
    }

    /// [`Server::start`], with `configure` applied to the command before it runs.
    pub fn start_configured(
        plugins: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let server = Server::spawn(None, plugins, extra, configure);
        server.wait_until(
            Duration::from_secs(20),
            "the host to answer on its socket",
            |s| s.client().and_then(|mut c| c.ping().ok()).is_some(),
        );
        server
    }

    /// Starts `host serve --plugins DIR --socket SOCKET` with extra arguments, without
    /// waiting for it to answer (it may be refused). `socket` is a fresh one unless given.
    /// Its temporary directory (`TMPDIR`, where its private copies go) and its state
    /// directory (`XDG_STATE_HOME`) are the server's own, removed with it, unless
    /// `configure` sets others.
    pub fn spawn(
        socket: Option<&Path>,
        plugins: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        Server::spawn_via(&[], socket, plugins, extra, configure)
    }

    /// [`Server::spawn`], the host started by `wrapper` (a program and its first arguments,
    /// followed by the host binary and its arguments), such as `sh -c '... exec "$0" "$@"'`.
    pub fn spawn_via(
        wrapper: &[&str],
        socket: Option<&Path>,
        plugins: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = socket.map_or_else(|| dir.path().join("sock/host.sock"), Path::to_owned);
        let log = dir.path().join("serve.log");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).expect("create the server's temporary directory");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&built().host);
                command
            }
            None => Command::new(&built().host),
        };
        command
            .arg("serve")
            .arg("--plugins")
            .arg(plugins)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("TMPDIR", &tmp)
            // Its task database, unless a test names one with --state-dir.
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"));
        configure(&mut command);
        let child = command.spawn().expect("host serve starts");
        Server {
            child: Some(child),
            socket,
            log,
            _dir: dir,
        }
    }

    /// A new connection to the server; an answer that takes over 30 s is an error.
    pub fn client(&self) -> Option<Client> {
        let mut client = Client::connect(&self.socket).ok()?;
        client.set_timeout(Some(Duration::from_secs(30))).ok()?;
        Some(client)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The HTTP API's base URL (`http://ADDR`), from the host's `http: listening on` line
    /// (waited for: with port 0 it names the port the system chose).
    pub fn http_base(&self) -> String {
        let mut base = String::new();
        self.wait_until(
            Duration::from_secs(60),
            "the HTTP API's address in the log",
            |s| {
                let log = s.log();
                let word = log
                    .split("http: listening on ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next());
                if let Some(word) = word {
                    base = word.to_owned();
                }
                word.is_some()
            },
        );
        base
    }

    /// Polls `ready` every 10 ms until it is true; panics with the log after `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&Server) -> bool,
    ) {
        let start = Instant::now();
        while !ready(self) {
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; host log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The plugin files the server reports, through the socket.
    pub fn files(&self) -> Vec<host::FileStatus> {
        self.client()
            .and_then(|mut c| c.list().ok())
            .unwrap_or_default()
    }

    /// Calls through the socket and returns the result as JSON, or the error message.
    pub fn call(
        &self,
        plugin: &str,
        callback: &str,
        input: &str,
    ) -> Result<serde_json::Value, String> {
        let mut client = self.client().ok_or("no connection")?;
        let outcome = client
            .call(plugin, callback, input)
            .map_err(|e| e.to_string())?;
        match outcome.result() {
            Ok(raw) => Ok(serde_json::from_str(raw.get()).expect("result is JSON")),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Sends SIGTERM and waits for the process; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        self.signal(libc::SIGTERM);
        self.wait().is_some_and(|s| s.success())
    }

    /// Sends `signal` to the process (if it still runs).
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's,
            // which has not been reaped yet, so it cannot name another process.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// Waits for the process to exit; its status, once.
    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take()?.wait().ok()
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Calls through the socket and returns the refusal (`ok: false`) or the plugin's error
    /// as one string, or the result.
    pub fn call_raw(
        &self,
        plugin: &str,
        callback: &str,
        input: &str,
    ) -> Result<host::CallOutcome, String> {
        let mut client = self.client().ok_or("no connection")?;
        client
            .call(plugin, callback, input)
            .map_err(|e| e.to_string())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// How the process ended, if it has (it stays reported on later calls).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A number from `/proc/PID/status` (`Threads`, `VmRSS` in KiB, ...).
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// hello with another default greeting ("Hi") and version 0.2.0, so a reload is visible in
/// the answer.
pub fn hello_hi() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        Variant::of("example-plugins/hello")
            .edit("src/lib.rs", "\"Hello\".to_owned()", "\"Hi\".to_owned()")
            .edit("Cargo.toml", "version = \"0.1.0\"", "version = \"0.2.0\"")
            .build()
    })
}

/// The names of the threads of process `pid` (at most 15 bytes each, as the kernel keeps
/// them).
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}
