//! The SQLite task store: one file (`tasks.db`) holding every task and when each schedule
//! last fired. This file owns its schema (and its migrations, counted by
//! `PRAGMA user_version`), the connection's settings and what they promise:
//!
//! - **WAL** (`journal_mode=WAL`): other connections reading the file (a `sqlite3` shell,
//!   another process) never wait for the host's writes, and a commit is one append to the
//!   `-wal` file (copied into the database at checkpoints).
//! - **Durability** (`synchronous=NORMAL`): a committed transaction survives a kill of the
//!   process at any moment; after a power loss or an OS crash the database is still
//!   consistent, but the last transactions committed before it may be gone (a task
//!   inserted, claimed or finished again, as if the host had stopped a little earlier:
//!   tasks run at least once).
//! - **One writer**: every method is one transaction, writes `BEGIN IMMEDIATE`, and a
//!   busy timeout of 2 s turns a database held by another process into an error that
//!   says so rather than a host that hangs.
//!
//! Deduplication is atomic: a UNIQUE index on `key` over the active (`queued`, `running`)
//! tasks makes a second active task with a key impossible, whoever writes the file.
//!
//! One concept per file: `schema` (the tables, their migrations and the connection's
//! settings), `connection` ([`SqliteStore`] and its transactions), `store_impl` (the
//! [`TaskStore`](super::store::TaskStore) methods, each one transaction), `insert`
//! (deduplication and age), `claim` (taking due tasks, recovering interrupted ones),
//! `outcome` (how an attempt ended), `query` (reads), `admin` (cancel, requeue),
//! `prune`, `schedules`, `row` (a row as a [`TaskRecord`](super::task::TaskRecord)) and
//! `error` (what a failure means, in one line).

#[macro_use]
mod row;

mod admin;
mod claim;
mod connection;
mod error;
mod insert;
mod outcome;
mod prune;
mod query;
mod schedules;
mod schema;
mod store_impl;
#[cfg(test)]
mod tests;

pub use connection::SqliteStore;
