//! The PostgreSQL database a fleet of hosts shares (`[tasks] database`): connecting with a
//! bounded pool, the versioned schema, and the hosts table. The task store on it is
//! `tasks/postgres` ([`PgStore`](crate::services::tasks::PgStore)).
//!
//! One concept per file: `url` (reading `database` and `HOST_DATABASE_URL`), `error`
//! ([`PgError`], one line), `database` ([`Database`]: the pool and the small runtime that
//! drives its connections), `migrate` (the versioned migrations under an advisory lock),
//! `hosts` (this host's row, its heartbeat, `host fleet`), `identity` (whether this host
//! may take the id kept in its state directory: a copied one is refused), `tls` (libpq's
//! `sslmode` and `sslrootcert` on rustls).

mod database;
mod error;
mod hosts;
mod identity;
mod membership;
mod migrate;
mod tls;
mod url;

pub use database::Database;
pub use error::PgError;
pub use hosts::{hostname, FleetHost, HostRow, ServedPlugin, GONE_ROWS_KEPT_MS};
pub use identity::{Holder, IdCheck};
pub use membership::{served, Membership};
pub use migrate::{Migration, MIGRATIONS, SCHEMA_VERSION};
pub use tls::TlsPolicy;
pub use url::{database_url, parse_url, redact, DATABASE_ENV};
