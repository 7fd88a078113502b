//! The dashboard (issue 19) in a real headless Chromium, against a real `host serve --http`:
//! sign-in, the plugins page, the run panel, a task followed live, a rollback from a
//! plugin's history. Each test saves a screenshot under `target/dashboard-screenshots/`.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::browser::{free_port, is_png, Browser, CONTROL, ENTER};
use e2e::{built, hello_hi, install, no_probation, plugins_dir, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A `host serve --http` on a free loopback port, with a token of its own.
struct Dash {
    server: Server,
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Dash {
    fn start(plugins: &Path, extra: &[&str]) -> Dash {
        let mut random = [0u8; 16];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .expect("random bytes");
        let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let address = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--http", &address];
        args.extend_from_slice(extra);
        let server = Server::start_with_env(plugins, &args, &[("HOST_HTTP_TOKEN", &token)]);
        let agent = e2e::http_agent(WAIT);
        let dash = Dash {
            server,
            base: format!("http://{address}"),
            token,
            agent,
        };
        dash.server
            .wait_until(WAIT, "GET /healthz to answer 200", |_| {
                dash.agent
                    .get(format!("{}/healthz", dash.base))
                    .call()
                    .is_ok_and(|r| r.status() == 200)
            });
        dash
    }

    /// A headless Chromium signed in through `/#token=...`, showing the plugins page.
    fn signed_in(&self) -> Browser {
        let browser = Browser::start();
        browser.goto(&format!("{}/#token={}", self.base, self.token));
        browser.wait_for_text("#plugins", "hello", WAIT);
        browser
    }

    fn url(&self, fragment: &str) -> String {
        format!("{}/{fragment}", self.base)
    }
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_pages_are_served_without_a_token_with_a_strict_policy_and_revalidated_caching() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let dash = Dash::start(dir.path(), &[]);

    let page = dash.agent.get(dash.url("")).call().expect("GET /");
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let policy = header(&page, "content-security-policy");
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let etag = header(&page, "etag");
    assert!(etag.starts_with('"'), "ETag {etag:?}");

    let again = dash
        .agent
        .get(dash.url(""))
        .header("If-None-Match", &etag)
        .call()
        .expect("GET / again");
    assert_eq!(again.status(), 304, "an unchanged page is not sent again");

    for (file, kind) in [
        ("assets/app.js", "text/javascript; charset=utf-8"),
        ("assets/style.css", "text/css; charset=utf-8"),
    ] {
        let asset = dash.agent.get(dash.url(file)).call().expect("GET an asset");
        assert_eq!(asset.status(), 200, "{file}");
        assert_eq!(header(&asset, "content-type"), kind, "{file}");
        assert!(header(&asset, "content-security-policy").contains("default-src 'self'"));
    }
    let missing = dash
        .agent
        .get(dash.url("assets/nothing.js"))
        .call()
        .expect("GET a missing asset");
    assert_eq!(missing.status(), 404);

    // The data is not open: the same server refuses /v1 without the token.
    let refused = dash
        .agent
        .get(dash.url("v1/plugins"))
        .call()
        .expect("GET /v1/plugins");
    assert_eq!(refused.status(), 401);
}

#[test]
fn signs_in_with_a_pasted_token_lists_the_plugins_and_goes_back_to_sign_in_on_401() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let dash = Dash::start(dir.path(), &[]);
    let browser = Browser::start();
    browser.goto(&dash.url(""));
    browser.wait_for_text("#sign-in", "Sign in", WAIT);

    browser.type_into("#token", "not-the-token");
    browser.click("#sign-in button[type=submit]");
    browser.wait_for_text("#sign-in", "That token was refused.", WAIT);

    browser.type_into("#token", &dash.token);
    browser.click("#sign-in button[type=submit]");
    browser.wait_for_text("#plugins", "hello", WAIT);
    let row = browser
        .text(r#"#plugins tr[data-plugin="hello"]"#)
        .expect("a row for hello");
    assert!(row.contains("0.1.0"), "{row}");
    assert!(row.contains("serving"), "{row}");
    let kept = browser.script("return sessionStorage.getItem('host.token');", json!([]));
    assert_eq!(
        kept,
        json!(dash.token),
        "the token is kept in the tab's sessionStorage"
    );
    let shot = browser.screenshot("plugins");
    assert!(is_png(&shot));

    browser.click(r#"#nav a[data-page="fleet"]"#);
    browser.wait_for_text("#main", "No fleet is configured", WAIT);

    // A token the host refuses (rotated, say) sends the tab back to sign-in.
    browser.script(
        "sessionStorage.setItem('host.token', 'rotated'); location.hash = '#/tasks';",
        json!([]),
    );
    browser.wait_for_text("#sign-in", "refused the token", WAIT);
    let kept = browser.script("return sessionStorage.getItem('host.token');", json!([]));
    assert_eq!(kept, Value::Null, "a refused token is forgotten");

    // `/#token=` signs in too, and the token leaves the address bar at once.
    browser.goto(&format!("{}/#token={}", dash.base, dash.token));
    browser.wait_for_text("#plugins", "hello", WAIT);
    let href = browser.script("return location.href;", json!([]));
    let href = href.as_str().unwrap_or_default();
    assert!(
        !href.contains(&dash.token),
        "the token stayed in the URL: {href}"
    );
    assert!(
        !dash.server.log().contains(&dash.token),
        "the token is in the log"
    );
}

#[test]
fn runs_hello_greet_from_the_run_panel() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let dash = Dash::start(dir.path(), &[]);
    let browser = dash.signed_in();

    browser.click(r#"#nav a[data-page="run"]"#);
    browser.wait_until(WAIT, "the run panel", |b| b.text("#run-form").is_some());
    browser.script(
        "const s = document.querySelector('#run-callback'); s.value = 'greet'; \
         s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    browser.type_into("#run-input", r#"{"name":"Ada"}"#);
    browser.click("#run-call");
    browser.wait_for_text("#run-result", "Hello, Ada!", WAIT);
    browser.wait_for_text("#run-logs", "greeting Ada", WAIT);
    let plugin = browser.script(
        "return document.querySelector('#run-plugin').value;",
        json!([]),
    );
    assert_eq!(plugin, json!("hello"));
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the console shows errors: {errors:?}");
    assert!(is_png(&browser.screenshot("run")));

    // A plugin's own error is shown as such, with its kind.
    browser.script(
        "const s = document.querySelector('#run-callback'); s.value = 'fail'; \
         s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    browser.type_into("#run-input", "{}");
    browser.keys("#run-input", &format!("{CONTROL}{ENTER}"));
    browser.wait_for_text("#run-output", "failed on purpose", WAIT);

    // The tab remembers the last input of each callback.
    browser.goto(&dash.url("#/tasks"));
    browser.goto(&dash.url("#/run?plugin=hello&callback=greet"));
    browser.wait_until(WAIT, "greet's last input again", |b| {
        b.script(
            "return document.querySelector('#run-input')?.value;",
            json!([]),
        ) == json!(r#"{"name":"Ada"}"#)
    });

    // The plugins page counts them, with the latency /metrics gives.
    browser.click(r#"#nav a[data-page="plugins"]"#);
    let row = r#"#plugins tr[data-plugin="hello"]"#;
    browser.wait_until(
        WAIT,
        "hello's calls, errors and p50 on the plugins page",
        |b| {
            let cell = |c: &str| b.text(&format!("{row} td.{c}")).unwrap_or_default();
            cell("calls") == "2" && cell("errors") == "1" && cell("p50").ends_with('s')
        },
    );
}

#[test]
fn a_submitted_task_reaches_success_on_the_page_without_a_reload() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(e2e::fanout(), dir.path(), "libfanout.so");
    let dash = Dash::start(dir.path(), &[]);
    let browser = dash.signed_in();

    browser.goto(&dash.url("#/run?plugin=hello&callback=wait"));
    browser.wait_until(WAIT, "the run panel", |b| {
        b.text("#run-form").is_some()
            && b.script(
                "return document.querySelector('#run-callback').value;",
                json!([]),
            ) == json!("wait")
    });
    browser.type_into("#run-input", r#"{"ms": 3000}"#);
    // Marks this document: a reload would lose the mark.
    browser.script("window.notReloaded = true;", json!([]));
    browser.click("#run-submit");
    browser.wait_until(WAIT, "the task's page", |b| {
        b.script("return location.hash;", json!([]))
            .as_str()
            .is_some_and(|h| h.starts_with("#/tasks/"))
    });
    let start = Instant::now();
    browser.wait_until(WAIT, "the task queued or running", |b| {
        b.text("#task-status")
            .is_some_and(|s| s.contains("queued") || s.contains("running"))
    });
    browser.wait_for_text("#task-status", "success", Duration::from_secs(60));
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the page followed the task"
    );
    browser.wait_for_text("#task-result", "waited_ms", WAIT);
    let events = browser
        .script(
            "return document.querySelectorAll('#task-events li.event').length;",
            json!([]),
        )
        .as_u64()
        .unwrap_or(0);
    assert!(events > 0, "no event reached the page over the stream");
    assert_eq!(
        browser.script("return window.notReloaded === true;", json!([])),
        json!(true),
        "the page was reloaded"
    );
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the console shows errors: {errors:?}");
    assert!(is_png(&browser.screenshot("task")));

    // Follow-ups as a tree: fanout's execute queues one measure per item.
    browser.goto(&dash.url("#/run?plugin=fanout&callback=execute"));
    browser.wait_until(WAIT, "the run panel for fanout", |b| {
        b.script(
            "return document.querySelector('#run-plugin')?.value;",
            json!([]),
        ) == json!("fanout")
    });
    browser.type_into("#run-input", r#"{"items":["a","bb"]}"#);
    browser.click("#run-submit");
    browser.wait_until(WAIT, "two follow-ups that succeeded", |b| {
        b.script(
            "return [...document.querySelectorAll('#task-tree li')]\
               .filter((li) => li.innerText.includes('success')).length;",
            json!([]),
        ) == json!(2)
    });
    browser.wait_for_text("#task-tree", "measure", WAIT);
    assert!(is_png(&browser.screenshot("task-tree")));
}

#[test]
fn rolls_a_plugin_back_from_its_history() {
    let dir = plugins_dir();
    let config = no_probation(dir.path(), &["hello"]);
    install(&built().hello, dir.path(), "libhello.so");
    let dash = Dash::start(dir.path(), &[&config[0], &config[1]]);
    install(hello_hi(), dir.path(), "libhello.so");
    dash.server.wait_until(WAIT, "hello 0.2.0", |s| {
        s.call("hello", "greet", r#"{"name":"Ada"}"#)
            .is_ok_and(|v| v["message"] == json!("Hi, Ada!"))
    });
    let browser = dash.signed_in();

    browser.click(r#"#plugins tr[data-plugin="hello"] a.plugin-name"#);
    browser.wait_for_text("#history", "0.2.0", WAIT);
    browser.click(r##"#history button.rollback[data-generation="1"]"##);
    browser.wait_until(WAIT, "hello rolled back on the plugins page", |b| {
        b.text(r#"#plugins tr[data-plugin="hello"]"#)
            .is_some_and(|row| row.contains("rolled back") && row.contains("0.1.0"))
    });
    browser.wait_for_text("#history", "rollback of 1", WAIT);
    assert_eq!(
        dash.server
            .call("hello", "greet", r#"{"name":"Ada"}"#)
            .expect("hello answers")["message"],
        json!("Hello, Ada!"),
        "the first version serves again"
    );
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the console shows errors: {errors:?}");
    assert!(is_png(&browser.screenshot("rollback")));
}

#[test]
fn a_read_only_token_sees_the_pages_and_the_page_says_its_writes_are_refused() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let read = dir.path().join("read-token");
    fs::write(&read, "reader-token\n").expect("write the read token");
    fs::set_permissions(&read, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod the read token");
    let conf = dir.path().join("host.toml");
    fs::write(&conf, "[http]\nread_token_file = \"read-token\"\n").expect("write host.toml");
    let conf = conf.display().to_string();
    let dash = Dash::start(dir.path(), &["--config", &conf]);
    let browser = Browser::start();
    browser.goto(&dash.url("#token=reader-token"));
    browser.wait_for_text("#plugins", "hello", WAIT);

    browser.goto(&dash.url("#/run?plugin=hello&callback=greet"));
    browser.wait_until(WAIT, "the run panel", |b| {
        b.script(
            "return document.querySelector('#run-callback')?.value;",
            json!([]),
        ) == json!("greet")
    });
    browser.type_into("#run-input", r#"{"name":"Ada"}"#);
    browser.click("#run-call");
    browser.wait_for_text("#run-output", "forbidden", WAIT);
    assert!(
        browser.text("#sign-in").is_none(),
        "a refused write is not a refused token"
    );
    assert!(is_png(&browser.screenshot("read-only")));
}

#[test]
fn cancels_and_retries_a_task_from_its_page_and_filters_the_list() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    let dash = Dash::start(dir.path(), &[]);
    let browser = dash.signed_in();

    browser.goto(&dash.url("#/run?plugin=hello&callback=wait"));
    browser.wait_until(WAIT, "the run panel", |b| {
        b.script(
            "return document.querySelector('#run-callback')?.value;",
            json!([]),
        ) == json!("wait")
    });
    browser.type_into("#run-input", r#"{"ms": 20000}"#);
    browser.click("#run-submit");
    browser.wait_for_text("#task-status", "running", WAIT);
    let id = browser
        .script("return location.hash.split('/')[2];", json!([]))
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(id.parse::<u64>().is_ok(), "no task id in the address: {id}");

    browser.type_into("#task-reason", "stuck on purpose");
    browser.click("#task-cancel");
    browser.wait_for_text("#task-status", "cancelled", WAIT);
    browser.type_into("#task-reason", "once more");
    browser.click("#task-retry");
    browser.wait_until(WAIT, "the task queued again", |b| {
        b.text("#task-status")
            .is_some_and(|s| s.contains("queued") || s.contains("running"))
    });
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the console shows errors: {errors:?}");
    assert!(is_png(&browser.screenshot("task-retried")));

    // The list, filtered by plugin, then by a status the task is not in.
    let row = format!(r#"#tasks tr[data-task="{id}"]"#);
    browser.goto(&dash.url("#/tasks?plugin=hello"));
    browser.wait_until(WAIT, "the task in hello's list", |b| b.text(&row).is_some());
    browser.script(
        "const s = document.querySelector('#filter-status'); s.value = 'success'; \
         s.dispatchEvent(new Event('change'));",
        json!([]),
    );
    browser.wait_for_text("#tasks", "No task matches.", WAIT);
    assert!(browser.text(&row).is_none());
    assert_eq!(
        browser.script("return location.hash;", json!([])),
        json!("#/tasks?status=success&plugin=hello")
    );
}

#[test]
fn shows_probation_and_quarantine_and_restarts_a_plugin_from_its_history() {
    let dir = plugins_dir();
    install(&built().hello, dir.path(), "libhello.so");
    install(e2e::tough(), dir.path(), "libtough.so");
    let conf = dir.path().join("host.toml");
    fs::write(
        &conf,
        "[plugins.tough]\nisolation = \"process\"\nmax_restarts = 3\nrestart_window_ms = 60000\n",
    )
    .expect("write host.toml");
    let conf = conf.display().to_string();
    let dash = Dash::start(dir.path(), &["--config", &conf]);
    dash.server.wait_until(WAIT, "tough in its worker", |s| {
        s.call("tough", "greet", "null").is_ok()
    });
    let browser = dash.signed_in();
    let hello = r#"#plugins tr[data-plugin="hello"]"#;
    let tough = r#"#plugins tr[data-plugin="tough"]"#;

    // A new version serves on probation (30 s by default).
    install(hello_hi(), dir.path(), "libhello.so");
    browser.wait_until(WAIT, "hello 0.2.0 on probation", |b| {
        b.text(hello)
            .is_some_and(|row| row.contains("0.2.0") && row.contains("on probation"))
    });

    // Three crashes in the window: quarantined.
    for _ in 0..3 {
        assert!(dash.server.call("tough", "segv", "null").is_err());
    }
    browser.wait_until(WAIT, "tough quarantined, with the reason", |b| {
        b.text(tough).is_some_and(|row| {
            row.contains("quarantined") && row.contains("3 crashes within 60000 ms")
        })
    });
    assert!(is_png(&browser.screenshot("quarantined")));

    browser.click(&format!("{tough} a.plugin-name"));
    browser.click("#history button.restart");
    browser.wait_until(WAIT, "tough serving again", |b| {
        b.text(tough).is_some_and(|row| row.contains("serving"))
    });
    assert_eq!(
        dash.server.call("tough", "greet", "null"),
        Ok(json!("still here"))
    );
}
