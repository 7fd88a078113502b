//! The task store on the fleet's PostgreSQL database: [`PgStore`], behind the same
//! [`TaskStore`](super::store::TaskStore) trait as the SQLite store, shared by every host
//! of the fleet.
//!
//! - **Claiming** is one statement: `FOR UPDATE SKIP LOCKED` in a CTE picks a batch of due
//!   tasks, `UPDATE ... RETURNING` marks them running, so hosts never wait for each other's
//!   rows.
//! - **Leases, not age**: a claimed row carries this host's id, a lease (`lease_ms`,
//!   extended by the heartbeat every third of it) and a claim token. A task whose lease
//!   expired is taken back by any live host, the takeover written in its logs naming the
//!   lost host; at start a host takes back only expired leases.
//! - **Fencing**: every write of an attempt (finish, retry, release, the follow-ups of a
//!   finish) carries the claim token in its `WHERE`: a host that lost its lease (paused,
//!   cut off) cannot overwrite what the host that took over wrote.
//! - **Batched finishes**: finishes without follow-ups are written by one finisher, many
//!   in one `UPDATE ... FROM unnest(...)` statement (group commit: those that arrive while
//!   a write is in flight go in the next), each row still fenced by its token.
//! - **NOTIFY only wakes**: inserts `NOTIFY host_tasks`; each host LISTENs on a
//!   connection of its own and wakes its dispatcher, which also polls.
//!
//! One concept per file: `store` ([`PgStore`] and its connection helpers), `row` (a row as
//! a [`TaskRecord`](super::task::TaskRecord)), `insert`, `claim` (claims and takeovers),
//! `finisher` (batched finishes), `outcome` (finish with follow-ups, retry, release),
//! `query` (reads, cancel, requeue, prune, schedules), `listen` (LISTEN/NOTIFY),
//! `store_impl` (the trait).

#[macro_use]
mod row;

mod claim;
mod finisher;
mod insert;
mod listen;
mod outcome;
mod query;
mod store;
mod store_impl;

pub use store::PgStore;
