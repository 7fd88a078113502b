//! The unit files `host service unit` prints: a `Type=notify` service with a watchdog and
//! the hardening the host tolerates, and the matching `.socket` unit.
//!
//! What the host needs, and so what is not restricted: it forks worker processes (isolated
//! plugins) and they must get the stop signal (`KillMode=mixed`: SIGTERM to the host, which
//! stops its workers, SIGKILL to every process left at the stop timeout); it watches with
//! inotify; it `dlopen`s private copies written to its temporary directory, so that directory
//! must stay writable and executable (`PrivateTmp=` gives it a private one, never
//! `noexec`). `MemoryDenyWriteExecute=` is not set: a plugin may carry a JIT (a regex or
//! WebAssembly engine), which needs writable, executable memory. Unix and IP sockets only
//! (`RestrictAddressFamilies=`): the control socket, the HTTP listener and whatever plugins
//! connect to. The mount-namespace options (`ProtectSystem=`, `ProtectHome=`, `PrivateTmp=`,
//! `ReadWritePaths=`) are for the system manager; a `--user` unit gets the ones a user
//! manager applies without privileges.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name both units share (`plugin-host.service`, `plugin-host.socket`).
pub const UNIT_NAME: &str = "plugin-host";

/// What the printed units describe. All paths absolute.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UnitOptions {
    /// The `host` binary (`ExecStart=`).
    pub binary: PathBuf,
    /// The plugins directory (`--plugins`).
    pub plugins: PathBuf,
    /// The control socket (`--socket`, and `ListenStream=` of the socket unit).
    pub socket: PathBuf,
    /// The state directory (`--state-dir`).
    pub state_dir: PathBuf,
    /// host.toml (`--config`), if any.
    pub config: Option<PathBuf>,
    /// `--log-format` to pass, if any (`json` suits the journal's fields).
    pub log_format: Option<String>,
    /// `WatchdogSec=`: systemd restarts a host that sends no `WATCHDOG=1` for this long.
    pub watchdog: Duration,
    /// The host's own shutdown deadline (`shutdown_timeout_ms`); `TimeoutStopSec=` leaves
    /// room past it for unloading.
    pub shutdown_timeout: Duration,
    /// A unit for the user's manager (`systemctl --user`).
    pub user: bool,
    /// The HTTP API's address (`--http`, and a second `ListenStream=` of the socket unit).
    pub http: Option<String>,
}

impl UnitOptions {
    /// Options with systemd's usual places for what is not given.
    pub fn new(binary: PathBuf, plugins: PathBuf, socket: PathBuf, state_dir: PathBuf) -> Self {
        UnitOptions {
            binary,
            plugins,
            socket,
            state_dir,
            config: None,
            log_format: None,
            watchdog: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            user: false,
            http: None,
        }
    }
}

/// The `plugin-host.service` unit.
pub fn service_unit(options: &UnitOptions) -> String {
    let mut args = vec![
        exec_word(&options.binary.to_string_lossy()),
        "serve".to_owned(),
        "--plugins".to_owned(),
        exec_path(&options.plugins),
        "--socket".to_owned(),
        exec_path(&options.socket),
        "--state-dir".to_owned(),
        exec_path(&options.state_dir),
    ];
    if let Some(config) = &options.config {
        args.extend(["--config".to_owned(), exec_path(config)]);
    }
    if let Some(format) = &options.log_format {
        args.extend(["--log-format".to_owned(), exec_word(format)]);
    }
    if let Some(http) = &options.http {
        args.extend(["--http".to_owned(), exec_word(http)]);
    }
    let mut unit = String::new();
    let target = if options.user {
        "default.target"
    } else {
        "multi-user.target"
    };
    let _ = writeln!(
        unit,
        "# {UNIT_NAME}.service, printed by `host service unit{}`.",
        if options.user { " --user" } else { "" }
    );
    let _ = writeln!(unit, "[Unit]");
    let _ = writeln!(
        unit,
        "Description=Plugin host serving {}",
        specifiers(&options.plugins.to_string_lossy())
    );
    let _ = writeln!(unit, "After=network.target");
    let _ = writeln!(unit);
    let _ = writeln!(unit, "[Service]");
    let _ = writeln!(unit, "Type=notify");
    let _ = writeln!(unit, "NotifyAccess=main");
    let _ = writeln!(unit, "ExecStart={}", args.join(" "));
    let _ = writeln!(unit, "WatchdogSec={}", seconds(options.watchdog));
    let _ = writeln!(unit, "Restart=on-failure");
    let _ = writeln!(unit, "RestartSec=1");
    let _ = writeln!(
        unit,
        "# SIGTERM to the host (it stops its workers); SIGKILL to all left."
    );
    let _ = writeln!(unit, "KillMode=mixed");
    let _ = writeln!(
        unit,
        "TimeoutStopSec={}",
        seconds(options.shutdown_timeout) + 10
    );
    let _ = writeln!(unit, "UMask=0077");
    let _ = writeln!(unit, "NoNewPrivileges=yes");
    let _ = writeln!(unit, "LockPersonality=yes");
    let _ = writeln!(unit, "RestrictRealtime=yes");
    let _ = writeln!(unit, "RestrictSUIDSGID=yes");
    let _ = writeln!(unit, "SystemCallArchitectures=native");
    let _ = writeln!(unit, "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6");
    if options.user {
        let _ = writeln!(
            unit,
            "# ProtectSystem=, ProtectHome=, PrivateTmp= need the system manager: see `host service unit`."
        );
    } else {
        // systemd's own directories, created for the service (mode 0700, as the host
        // wants them) and writable under ProtectSystem=strict; the runtime directory is
        // kept across restarts, since the socket unit's socket may live there.
        let state = managed(&options.state_dir, "/var/lib");
        let runtime = managed(socket_dir(&options.socket), "/run");
        if let Some(name) = state {
            let _ = writeln!(unit, "StateDirectory={name}");
            let _ = writeln!(unit, "StateDirectoryMode=0700");
        }
        if let Some(name) = runtime {
            let _ = writeln!(unit, "RuntimeDirectory={name}");
            let _ = writeln!(unit, "RuntimeDirectoryMode=0700");
            let _ = writeln!(unit, "RuntimeDirectoryPreserve=yes");
        }
        let writable = [
            options.plugins.as_path(),
            options.state_dir.as_path(),
            socket_dir(&options.socket),
        ];
        let all: Vec<&Path> = writable
            .iter()
            .copied()
            .chain([options.binary.as_path()])
            .chain(options.config.as_deref())
            .collect();
        let _ = writeln!(unit, "ProtectSystem=strict");
        let mut rw: Vec<String> = vec![list_path(&options.plugins)];
        if state.is_none() {
            rw.push(list_path(&options.state_dir));
        }
        if runtime.is_none() {
            rw.push(list_path(socket_dir(&options.socket)));
        }
        rw.dedup();
        let _ = writeln!(unit, "ReadWritePaths={}", rw.join(" "));
        // Hidden homes would hide a binary, plugins or state kept there: read-only then.
        let in_home = all.iter().any(|p| {
            ["/home", "/root", "/run/user"]
                .iter()
                .any(|home| p.starts_with(home))
        });
        let _ = writeln!(
            unit,
            "ProtectHome={}",
            if in_home { "read-only" } else { "yes" }
        );
        // A private /tmp would hide a socket or directory kept there from everyone else.
        let in_tmp = all
            .iter()
            .any(|p| p.starts_with("/tmp") || p.starts_with("/var/tmp"));
        let _ = writeln!(unit, "PrivateTmp={}", if in_tmp { "no" } else { "yes" });
        let _ = writeln!(unit, "PrivateDevices=yes");
        let _ = writeln!(unit, "ProtectKernelTunables=yes");
        let _ = writeln!(unit, "ProtectKernelModules=yes");
        let _ = writeln!(unit, "ProtectKernelLogs=yes");
        let _ = writeln!(unit, "ProtectControlGroups=yes");
        let _ = writeln!(unit, "ProtectClock=yes");
        let _ = writeln!(unit, "ProtectHostname=yes");
        let _ = writeln!(unit, "RestrictNamespaces=yes");
    }
    let _ = writeln!(unit);
    let _ = writeln!(unit, "[Install]");
    let _ = writeln!(unit, "WantedBy={target}");
    unit
}

/// The `plugin-host.socket` unit: systemd binds the control socket and passes it as
/// `control`, so a restart loses no connection attempt. With an HTTP address it binds that
/// too; systemd names every socket of a unit alike, so both are then passed under the
/// unit's name and the host tells them by type (the Unix one is the control socket).
pub fn socket_unit(options: &UnitOptions) -> String {
    let mut unit = String::new();
    let _ = writeln!(
        unit,
        "# {UNIT_NAME}.socket, printed by `host service unit{} --socket-unit`.",
        if options.user { " --user" } else { "" }
    );
    let _ = writeln!(unit, "[Unit]");
    let _ = writeln!(unit, "Description=Plugin host control socket");
    let _ = writeln!(unit);
    let _ = writeln!(unit, "[Socket]");
    let _ = writeln!(
        unit,
        "ListenStream={}",
        specifiers(&options.socket.to_string_lossy())
    );
    match &options.http {
        Some(http) => {
            let _ = writeln!(unit, "ListenStream={}", specifiers(http));
        }
        None => {
            let _ = writeln!(unit, "FileDescriptorName=control");
        }
    }
    let _ = writeln!(unit, "SocketMode=0600");
    let _ = writeln!(unit, "DirectoryMode=0700");
    let _ = writeln!(unit, "Service={UNIT_NAME}.service");
    let _ = writeln!(unit);
    let _ = writeln!(unit, "[Install]");
    let _ = writeln!(unit, "WantedBy=sockets.target");
    unit
}

/// `NAME` when `dir` is `BASE/NAME`, one plain component: a directory systemd manages.
fn managed<'a>(dir: &'a Path, base: &str) -> Option<&'a str> {
    let name = dir.strip_prefix(base).ok()?.to_str()?;
    let plain = !name.is_empty()
        && !name.contains('/')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    plain.then_some(name)
}

fn socket_dir(socket: &Path) -> &Path {
    socket.parent().unwrap_or(Path::new("/"))
}

fn seconds(duration: Duration) -> u64 {
    duration.as_secs_f64().ceil() as u64
}

/// A setting's value as it is, with `%` escaped (systemd expands specifiers in most
/// settings: `Description=`, `ListenStream=`).
fn specifiers(value: &str) -> String {
    value.replace('%', "%%")
}

/// One path of a space-separated list (`ReadWritePaths=`): `%` escaped, quoted when it
/// holds spaces, quotes or backslashes. (`$` is literal there.)
fn list_path(path: &Path) -> String {
    quoted(specifiers(&path.to_string_lossy()))
}

/// One path on a command line (`ExecStart=`).
fn exec_path(path: &Path) -> String {
    exec_word(&path.to_string_lossy())
}

/// One word of a command line (`ExecStart=`): `%` and `$` escaped (specifiers, variables),
/// quoted when it holds spaces, quotes or backslashes.
fn exec_word(word: &str) -> String {
    quoted(specifiers(word).replace('$', "$$"))
}

fn quoted(word: String) -> String {
    if word.is_empty()
        || word
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';')
    {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> UnitOptions {
        UnitOptions::new(
            "/usr/local/bin/host".into(),
            "/srv/plugins".into(),
            "/run/plugin-host/host.sock".into(),
            "/var/lib/plugin-host".into(),
        )
    }

    #[test]
    fn the_service_runs_the_binary_with_its_paths_and_hardening() {
        let unit = service_unit(&options());
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/host serve --plugins /srv/plugins --socket \
             /run/plugin-host/host.sock --state-dir /var/lib/plugin-host\n"
        ));
        for line in [
            "Type=notify\n",
            "WatchdogSec=30\n",
            "KillMode=mixed\n",
            "ProtectSystem=strict\n",
            "ReadWritePaths=/srv/plugins\n",
            "StateDirectory=plugin-host\n",
            "RuntimeDirectory=plugin-host\n",
            "ProtectHome=yes\n",
            "PrivateTmp=yes\n",
        ] {
            assert!(unit.contains(line), "{line} missing from:\n{unit}");
        }
        let mut user = options();
        user.user = true;
        let unit = service_unit(&user);
        assert!(!unit.contains("\nProtectSystem="), "{unit}");
        assert!(unit.contains("WantedBy=default.target"), "{unit}");
    }

    #[test]
    fn words_are_escaped_for_systemd() {
        assert_eq!(exec_word("/srv/plugins"), "/srv/plugins");
        assert_eq!(exec_word("/srv/my plugins"), "\"/srv/my plugins\"");
        assert_eq!(exec_word("/srv/100%/$HOME"), "/srv/100%%/$$HOME");
        assert_eq!(exec_word("a\"b"), "\"a\\\"b\"");
        // `$` is literal outside command lines.
        assert_eq!(list_path(Path::new("/srv/100% $x")), "\"/srv/100%% $x\"");
        assert_eq!(specifiers("/run/a b%"), "/run/a b%%");
    }

    #[test]
    fn homes_and_tmp_relax_what_would_hide_them() {
        let mut home = options();
        home.binary = "/home/ada/bin/host".into();
        home.plugins = "/tmp/plugins".into();
        home.state_dir = "/srv/state".into();
        let unit = service_unit(&home);
        assert!(unit.contains("ProtectHome=read-only\n"), "{unit}");
        assert!(unit.contains("PrivateTmp=no\n"), "{unit}");
        assert!(
            unit.contains("ReadWritePaths=/tmp/plugins /srv/state\n"),
            "{unit}"
        );
    }
}
