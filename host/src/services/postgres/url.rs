//! Which database: `HOST_DATABASE_URL` in the environment wins over `[tasks] database` in
//! host.toml (an operator overrides a shipped file without editing it, as with the other
//! `HOST_*` variables); neither: the SQLite file in the state directory.

use std::str::FromStr;

use super::error::PgError;
use super::tls::TlsPolicy;

/// The environment variable that names the fleet's database, over `[tasks] database`.
pub const DATABASE_ENV: &str = "HOST_DATABASE_URL";

/// Reads a `postgres://` (or `postgresql://`) URL, refusing anything else in one line; with
/// what it asks of TLS (`sslmode`, `sslrootcert`: [`TlsPolicy`]).
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, TlsPolicy), PgError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PgError::Url(format!(
            "{:?} is not a PostgreSQL URL (postgres://USER@HOST:PORT/DB)",
            redact(url)
        )));
    }
    let (plain, tls) =
        super::tls::split(url).map_err(|err| PgError::Url(format!("{}: {err}", redact(url))))?;
    let config = tokio_postgres::Config::from_str(&plain)
        .map_err(|err| PgError::Url(format!("{}: {err}", redact(url))))?;
    if config.get_hosts().is_empty() {
        return Err(PgError::Url(format!("{}: names no host", redact(url))));
    }
    Ok((config, tls))
}

/// The fleet's database URL: `HOST_DATABASE_URL` if set (and not empty), else
/// `configured` (`[tasks] database`), checked; `None`: no fleet, the SQLite store.
pub fn database_url(configured: Option<&str>) -> Result<Option<String>, PgError> {
    match std::env::var(DATABASE_ENV) {
        Ok(url) if !url.is_empty() => match parse_url(&url) {
            Ok(_) => Ok(Some(url)),
            Err(err) => Err(PgError::Url(format!("{DATABASE_ENV}: {err}"))),
        },
        _ => match configured {
            Some(url) => match parse_url(url) {
                Ok(_) => Ok(Some(url.to_owned())),
                Err(err) => Err(PgError::Url(format!("[tasks] database: {err}"))),
            },
            None => Ok(None),
        },
    }
}

/// `url` without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((user, hosts)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{hosts}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        assert!(parse_url("postgres://u@127.0.0.1:5432/db").is_ok());
        let err = parse_url("mysql://u@h/db").unwrap_err().to_string();
        assert!(err.contains("is not a PostgreSQL URL"), "{err}");
        let err = parse_url("postgres://u:secret@h:notaport/db")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
        assert_eq!(redact("postgres://u:pw@h:1/db"), "postgres://u:***@h:1/db");
    }
}
