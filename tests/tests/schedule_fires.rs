//! A schedule's firing on the fleet's PostgreSQL (`.ci/test` starts the server): the row
//! that says which host fires a due time and the task it queues are written together, so
//! a firing is never recorded without its task (a host killed between the two, or an
//! insert that fails, would otherwise lose that due time for the whole fleet).

use std::time::Duration;

use ::host::postgres::Database;
use ::host::tasks::{Insert, Inserted, PgStore, TaskStore};
use e2e::postgres::{fresh_database, psql};

/// The store of host `id` on the (migrated) database at `url`.
fn store(url: &str, id: &str) -> PgStore {
    let db = Database::open(url, 2, Duration::from_secs(10)).expect("open the database");
    db.block_on(db.migrate()).expect("migrate");
    PgStore::new(db, id, 30_000, 1_000)
}

/// Schedule `nightly`'s task, calling `plugin`.
fn firing_task(plugin: &str) -> Insert {
    Insert {
        plugin: plugin.to_owned(),
        callback: "execute".to_owned(),
        input: "null".to_owned(),
        key: "schedule:nightly".to_owned(),
        priority: 0,
        max_attempts: 1,
        retry_delays_ms: Vec::new(),
        not_before_unix_ms: 0,
        age_ms: None,
        parent: None,
        depth: 0,
        schedule: Some("nightly".to_owned()),
        created_unix_ms: 1_000,
        refused: None,
    }
}

#[test]
fn a_firing_whose_task_cannot_be_inserted_is_not_recorded_and_fires_at_the_next_tick() {
    let url = fresh_database();
    let a = store(&url, "host-a");
    // PostgreSQL refuses a NUL byte in text: the task's INSERT fails inside the firing.
    let err = a
        .insert_firing("nightly", 5_000, &firing_task("bro\0ken"))
        .expect_err("a task with a NUL byte is refused");
    assert!(
        err.to_string().contains("0x00"),
        "the error names the refused byte: {err}"
    );
    assert_eq!(
        psql(&url, "SELECT count(*) FROM schedule_fires"),
        "0",
        "the firing was recorded without its task"
    );
    assert_eq!(psql(&url, "SELECT count(*) FROM tasks"), "0");

    // The next tick fires the same due time: once, on one host.
    let fired = a
        .insert_firing("nightly", 5_000, &firing_task("hello"))
        .expect("the store answers");
    let Some(Inserted::Queued(id)) = fired else {
        panic!("the due time fires at the next tick: {fired:?}");
    };
    let b = store(&url, "host-b");
    assert_eq!(
        b.insert_firing("nightly", 5_000, &firing_task("hello"))
            .expect("the store answers"),
        None,
        "another host fires a due time already fired"
    );
    assert_eq!(
        psql(
            &url,
            "SELECT host_id FROM schedule_fires WHERE name = 'nightly' AND due = 5000"
        ),
        "host-a"
    );
    assert_eq!(
        psql(&url, "SELECT id, plugin, status, schedule FROM tasks"),
        format!("{id}|hello|queued|nightly")
    );
    assert_eq!(
        psql(
            &url,
            "SELECT last_fired FROM schedules WHERE name = 'nightly'"
        ),
        "5000"
    );
}
