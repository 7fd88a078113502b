//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`, which
//! `.ci/test` installs), for the dashboard's tests: a few WebDriver commands as JSON over
//! HTTP, every wait bounded, and screenshots saved as PNG files.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::target_dir;

/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// WebDriver's code for the Control key (held until the end of the keys sent).
pub const CONTROL: &str = "\u{E009}";
/// WebDriver's code for the Enter key.
pub const ENTER: &str = "\u{E007}";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Where a program is on the PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// One browser at a time in a test process: a test binary's tests run in parallel, and
/// several Chromiums on a small machine make every bounded wait a gamble.
static TURN: Mutex<()> = Mutex::new(());

/// A chromedriver process and one headless Chromium session; both end when it is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    /// The browser's process, ended with the session.
    chromium: Option<i32>,
    agent: ureq::Agent,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// Released last, once the browser is gone.
    _turn: MutexGuard<'static, ()>,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium (1280x900).
    pub fn start() -> Browser {
        let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
        let chromedriver = which("chromedriver")
            .expect("chromedriver is not on the PATH: install chromium-driver (.ci/test does)");
        let chromium = which("chromium")
            .expect("chromium is not on the PATH: install chromium (.ci/test does)");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let agent = crate::http_agent(COMMAND_TIMEOUT);
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            chromium: None,
            agent,
            log,
            _dir: dir,
            _turn: turn,
        };
        let start = Instant::now();
        loop {
            let ready = browser
                .agent
                .get(format!("{}/status", browser.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer on port {port} within 30 s; its log:\n{}",
                browser.driver_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = browser._dir.path().join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-background-networking",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let answer = browser.send("POST", "/session", Some(capabilities));
        let value = &answer["value"];
        browser.chromium = value["capabilities"]["goog:processID"]
            .as_u64()
            .and_then(|pid| i32::try_from(pid).ok());
        browser.session = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        browser
    }

    fn driver_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One WebDriver command; its `value`, or a panic with the driver's error.
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self.agent.post(&url).send_json(body.unwrap_or(json!({}))),
        };
        let mut response = response.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let answer: Value = response
            .body_mut()
            .read_json()
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: unreadable answer: {e}"));
        assert!(
            status.is_success(),
            "WebDriver {method} {path} answered {status}: {}",
            answer["value"]
        );
        answer
    }

    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.send(method, &path, body)["value"].take()
    }

    /// Opens `url` in the tab.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its result.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The visible text of the first element matching `css`, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            json!([css]),
        )
        .as_str()
        .map(str::to_owned)
    }

    /// The reference of the first element matching `css`, waiting up to `timeout` for it.
    fn element(&self, css: &str, timeout: Duration) -> String {
        self.wait_until(timeout, &format!("an element matching {css}"), |b| {
            b.text(css).is_some()
        });
        let found = self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference for {css}: {found}"))
            .to_owned()
    }

    /// Clicks the element matching `css` (waiting up to 20 s for it to exist).
    pub fn click(&self, css: &str) {
        let id = self.element(css, Duration::from_secs(20));
        self.command("POST", &format!("/element/{id}/click"), None);
    }

    /// Clears the field matching `css` and types `text` into it.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css, Duration::from_secs(20));
        self.command("POST", &format!("/element/{id}/clear"), None);
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Types `keys` into the element matching `css` as they are (WebDriver key codes such
    /// as [`CONTROL`] and [`ENTER`] included), without clearing it.
    pub fn keys(&self, css: &str, keys: &str) {
        let id = self.element(css, Duration::from_secs(20));
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": keys })),
        );
    }

    /// Polls `ready` every 50 ms; after `timeout`, saves a screenshot and panics with the
    /// page's text.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&Browser) -> bool,
    ) {
        let start = Instant::now();
        while !ready(self) {
            if start.elapsed() >= timeout {
                // Named after the test (its thread's name), so failures do not overwrite.
                let test = std::thread::current()
                    .name()
                    .unwrap_or("test")
                    .replace("::", "-");
                let shot = self.screenshot(&format!("{test}-timed-out"));
                let page = self.text("body").unwrap_or_default();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; screenshot {}; page:\n{page}",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the element matching `css` shows text containing `expected`.
    pub fn wait_for_text(&self, css: &str, expected: &str, timeout: Duration) {
        self.wait_until(timeout, &format!("{css} to show {expected:?}"), |b| {
            b.text(css).is_some_and(|t| t.contains(expected))
        });
    }

    /// The browser console's errors since the last time they were read (script errors,
    /// Content-Security-Policy violations, failed loads), one line each.
    pub fn console_errors(&self) -> Vec<String> {
        let entries = self.command("POST", "/se/log", Some(json!({"type": "browser"})));
        entries
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == json!("SEVERE"))
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the page as `target/dashboard-screenshots/NAME.png`, prints and returns
    /// its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.command("GET", "/screenshot", None);
        let png = decode_base64(encoded.as_str().unwrap_or_default());
        let dir = target_dir().join("dashboard-screenshots");
        fs::create_dir_all(&dir).expect("create the screenshots directory");
        let path = dir.join(format!("{name}.png"));
        fs::write(&path, png).expect("write the screenshot");
        println!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let closed = !self.session.is_empty()
            && self
                .agent
                .delete(&url)
                .call()
                .is_ok_and(|r| r.status().is_success());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A browser whose session could not be closed would outlive its driver.
        let browser = self.chromium.filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("chromium"))
        });
        if let (false, Some(pid)) = (closed, browser) {
            // SAFETY: kill has no memory-safety preconditions; the pid is the browser
            // chromedriver started for this session, checked by its command line just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Standard base64 (what WebDriver's screenshot answers); ignores what is not in the
/// alphabet (padding, line breaks).
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0u32);
    for six in text.bytes().filter_map(value) {
        bits = (bits << 6) | u32::from(six);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// Whether `path` is a PNG file (its signature).
pub fn is_png(path: &Path) -> bool {
    fs::read(path).is_ok_and(|bytes| bytes.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_base64() {
        assert_eq!(super::decode_base64("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(super::decode_base64("YQ=="), b"a");
        assert_eq!(super::decode_base64(""), b"");
    }
}
