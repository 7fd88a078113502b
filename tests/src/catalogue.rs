//! Helpers for the plugin catalogue's tests (`tests/tests/catalogue*.rs`): hosts of a fleet
//! each with a plugins directory of its own, on a database of the server `.ci/test` starts;
//! `host publish` and `host published`; the plugin variants the canary tests publish (from
//! [`crate::variants`]).

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::postgres::psql;
pub use crate::variants::{failing_self_test, panicking_greet, passing_self_test};
use crate::{plugins_dir, Server};

pub const WAIT: Duration = Duration::from_secs(60);
pub const ADA: &str = r#"{"name":"Ada"}"#;

pub fn sha256_hex(path: &Path) -> String {
    let bytes = fs::read(path).expect("read the plugin");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One host of the fleet: its plugins directory, its state directory (where it keeps its
/// id) and its `host serve`.
pub struct Member {
    pub dir: tempfile::TempDir,
    pub state: tempfile::TempDir,
    pub server: Server,
    /// The database it was started on (none: a host outside any fleet).
    pub database: Option<String>,
}

impl Member {
    /// Whether `host_id` is this host's (as its catalogue agent logged it).
    pub fn is(&self, host_id: &str) -> bool {
        self.id() == host_id
    }

    /// This host's id in the fleet, as its catalogue agent logged it.
    pub fn id(&self) -> String {
        let log = self.server.log();
        let at = log
            .find("catalogue: this host is ")
            .unwrap_or_else(|| panic!("the host's id is not logged: {log}"))
            + "catalogue: this host is ".len();
        log[at..]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// The SHA-256 of the hello it serves, if it serves one.
    pub fn serving_sha256(&self) -> Option<String> {
        self.server.files().into_iter().find_map(|f| {
            let serving = f.serving?;
            (f.metadata?.name == "hello").then_some(serving.sha256?)
        })
    }

    pub fn greet(&self) -> Result<String, String> {
        self.server
            .call("hello", "greet", ADA)
            .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
    }

    /// Ends the host with `signal`, waits for it, and starts it again on the same plugins
    /// and state directories; waits until its catalogue agent reached the database.
    pub fn restart(&mut self, signal: libc::c_int) {
        self.server.signal(signal);
        self.server.wait();
        self.server = serve(self.dir.path(), self.state.path(), self.database.as_deref());
    }
}

/// Starts a host on `database` (or none) with `config` as its host.toml, and waits until
/// its catalogue agent reached the database.
pub fn member(database: Option<&str>, config: &str) -> Member {
    let dir = plugins_dir();
    let state = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("host.toml"), config).expect("write host.toml");
    let server = serve(dir.path(), state.path(), database);
    Member {
        dir,
        state,
        server,
        database: database.map(str::to_owned),
    }
}

/// `host serve` of `plugins` (with its host.toml) and `state` (as `--state-dir`), on
/// `database` or none.
fn serve(plugins: &Path, state: &Path, database: Option<&str>) -> Server {
    let conf = plugins.join("host.toml");
    let args = [
        "--config",
        conf.to_str().expect("UTF-8"),
        "--state-dir",
        state.to_str().expect("UTF-8"),
    ];
    let server = Server::start_configured(plugins, &args, |command| {
        command.env_remove("HOST_DATABASE_URL");
        if let Some(url) = database {
            command.env("HOST_DATABASE_URL", url);
        }
    });
    if database.is_some() {
        server.wait_until(WAIT, "the catalogue agent to connect", |s| {
            s.log()
                .contains("catalogue: connected to the fleet database")
        });
    }
    server
}

pub const FLEET_CONFIG: &str =
    "[catalogue]\npoll_ms = 500\n\n[plugins.hello]\nprobation_ms = 1500\n";

/// Three hosts on `database`, each with a plugins directory of its own, alive in the
/// `hosts` table (so that any of them may be chosen as a canary).
pub fn fleet(database: &str) -> Vec<Member> {
    fleet_with(database, FLEET_CONFIG)
}

/// Three hosts on `database` with host.toml `config`, once all three are in the hosts table.
pub fn fleet_with(database: &str, config: &str) -> Vec<Member> {
    let hosts: Vec<Member> = (0..3).map(|_| member(Some(database), config)).collect();
    wait("three hosts alive in the hosts table", || {
        psql(database, "SELECT count(*) FROM hosts") == "3"
    });
    hosts
}

pub fn published(server: &Server) -> serde_json::Value {
    let out = server.cli(&["published", "--json"]);
    serde_json::from_str(&out).expect("published --json is JSON")
}

pub fn publish(server: &Server, file: &Path, extra: &[&str]) -> String {
    let mut args = vec!["publish", file.to_str().expect("UTF-8")];
    args.extend_from_slice(extra);
    server.cli(&args)
}

pub fn wait(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
