//! TLS to the fleet's database, against a real PostgreSQL server of this test's own that
//! accepts only TLS connections (`hostnossl ... reject`), with a certificate made here by a
//! CA made here, naming `db.example` (not 127.0.0.1, where the test connects).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::postgres::env;
use e2e::{host, plugins_dir, text, Server};
use serde_json::Value;

/// Runs `program args` as the server's user (through runuser when root); its output.
fn as_pg(program: &Path, args: &[&str]) -> std::process::Output {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", &env("E2E_PG_USER"), "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .output()
        .expect("the server's program runs")
}

fn ok(output: std::process::Output, what: &str) {
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{what}: {stdout}{stderr}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    ok(output, &format!("openssl {args:?}"));
}

/// A CA (`NAME.crt`, `NAME.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A PostgreSQL server on 127.0.0.1 that takes TLS connections only, stopped when dropped.
struct TlsServer {
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::Builder::new()
            .prefix("pg-tls-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path();
        ca(path, "ca");
        ca(path, "other-ca");
        openssl(
            path,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=db.example",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            path.join("server.ext"),
            "subjectAltName=DNS:db.example\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write server.ext");
        openssl(
            path,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        );
        // The server's user owns its directory and key (PostgreSQL insists on it).
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let user = env("E2E_PG_USER");
            let chown = Command::new("chown")
                .args(["-R", &user])
                .arg(path)
                .output()
                .expect("chown runs");
            ok(chown, "chown");
        }
        let bindir = PathBuf::from(env("E2E_PG_BINDIR"));
        let data = path.join("data");
        let data = data.to_str().expect("a UTF-8 path");
        ok(
            as_pg(
                &bindir.join("initdb"),
                &["-D", data, "-A", "trust", "-U", "postgres", "--no-locale"],
            ),
            "initdb",
        );
        std::fs::write(
            path.join("data/pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("write pg_hba.conf");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {dir} -c fsync=off -c ssl=on \
             -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
            dir = path.display()
        );
        let log = path.join("server.log");
        ok(
            as_pg(
                &bindir.join("pg_ctl"),
                &[
                    "-D",
                    data,
                    "-w",
                    "-l",
                    log.to_str().expect("UTF-8"),
                    "-o",
                    &options,
                    "start",
                ],
            ),
            "pg_ctl start",
        );
        TlsServer { dir, port }
    }

    /// The server's URL with `query` (`sslmode=...`), `{dir}` replaced by where the CAs are.
    fn url(&self, query: &str) -> String {
        let query = query.replace("{dir}", &self.dir.path().display().to_string());
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres{query}",
            self.port
        )
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_pg(
            &PathBuf::from(env("E2E_PG_BINDIR")).join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }
}

/// `host fleet --json --database URL`: its output, and stderr when it failed.
fn fleet(url: &str) -> Result<Vec<Value>, String> {
    let output = host(&["fleet", "--json", "--database", url]);
    let (stdout, stderr) = text(&output);
    if !output.status.success() {
        return Err(stderr);
    }
    serde_json::from_str(&stdout).map_err(|err| format!("{err}: {stdout}"))
}

#[test]
fn tls_to_the_database_as_libpq_reads_sslmode_and_sslrootcert() {
    let server = TlsServer::start();

    // The server refuses a connection in the clear.
    let err = fleet(&server.url("?sslmode=disable")).unwrap_err();
    assert!(err.contains("no encryption"), "{err}");

    // verify-full: the certificate names db.example, not 127.0.0.1.
    let err = fleet(&server.url("?sslmode=verify-full&sslrootcert={dir}/ca.crt")).unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // verify-ca: a CA that did not sign it.
    let err = fleet(&server.url("?sslmode=verify-ca&sslrootcert={dir}/other-ca.crt")).unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A CA file that is not there: one line naming it.
    let err = fleet(&server.url("?sslmode=verify-ca&sslrootcert={dir}/none.crt")).unwrap_err();
    assert!(err.contains("none.crt"), "{err}");

    // verify-ca with the CA that signed it: a host joins the fleet over TLS.
    let url = server.url("?sslmode=verify-ca&sslrootcert={dir}/ca.crt");
    let config = server.dir.path().join("host.toml");
    std::fs::write(&config, format!("[tasks]\ndatabase = \"{url}\"\n")).expect("host.toml");
    let plugins = plugins_dir();
    let serve = Server::spawn(
        None,
        plugins.path(),
        &["--config", config.to_str().expect("UTF-8")],
        |_| {},
    );
    serve.wait_until(Duration::from_secs(30), "the host in the fleet", |_| {
        fleet(&url).is_ok_and(|hosts| hosts.len() == 1 && hosts[0]["alive"] == Value::Bool(true))
    });
    let log = serve.log();
    assert!(
        log.contains("TLS: required, the certificate checked against the trusted CAs"),
        "{log}"
    );
    // Its connections are encrypted (libpq's psql, itself over TLS, asks the server).
    let psql = PathBuf::from(env("E2E_PG_BINDIR")).join("psql");
    let output = Command::new(psql)
        .args(["-X", "-At", "-d", &server.url("?sslmode=require"), "-c"])
        .arg(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'plugin-host'",
        )
        .output()
        .expect("psql runs");
    let (counts, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let (tls, all) = counts.trim().split_once('|').expect("two counts");
    assert!(
        all.parse::<u32>().unwrap_or(0) > 0,
        "no connection of the host: {counts}"
    );
    assert_eq!(tls, all, "every connection of the host is encrypted");

    // The default (prefer) encrypts where the server offers it, without checking.
    let hosts = fleet(&server.url("")).expect("prefer connects over TLS");
    assert_eq!(hosts.len(), 1);
}
