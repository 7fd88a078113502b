-- The fleet's schema, version 1. Times are milliseconds since the Unix epoch; leases and
-- heartbeats are read on the database's clock (fleet_now_ms), so hosts whose clocks
-- disagree still agree on whose lease expired.
CREATE FUNCTION fleet_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- One row per host, kept up to date by its heartbeat; a gone host's row is deleted a day
-- after its last heartbeat. `plugins`: [{"name", "sha256", "generation"}].
CREATE TABLE hosts (
    id           text    PRIMARY KEY,
    hostname     text    NOT NULL,
    pid          integer NOT NULL,
    version      text    NOT NULL,
    started      bigint  NOT NULL,
    heartbeat    bigint  NOT NULL,
    plugins      jsonb   NOT NULL DEFAULT '[]'
);

-- The tasks: the SQLite store's columns, and the claim of the attempt running: the host
-- that runs it, until when its lease holds, and the token every write of the attempt
-- carries (fencing: a write without the live token is refused).
-- Every task is updated two or three times in its life and deleted later: autovacuum must
-- visit this table long before the default 20% of it is dead (see the README's "Fleet").
CREATE TABLE tasks (
    id              bigserial PRIMARY KEY,
    plugin          text    NOT NULL,
    callback        text    NOT NULL,
    input           text    NOT NULL,
    key             text    NOT NULL,
    priority        bigint  NOT NULL,
    status          text    NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL,
    retry_delays_ms text    NOT NULL,
    not_before      bigint  NOT NULL,
    created         bigint  NOT NULL,
    started         bigint,
    finished        bigint,
    result          text,
    error           text,
    logs            text    NOT NULL DEFAULT '[]',
    parent          bigint,
    depth           integer NOT NULL,
    schedule        text,
    generation      bigint,
    interrupted     integer NOT NULL DEFAULT 0,
    host_id         text,
    lease_until     bigint,
    claim_token     bigint
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    fillfactor = 70
);
-- claim: queued tasks in the order they are claimed.
CREATE INDEX tasks_queued ON tasks (priority DESC, not_before, id) WHERE status = 'queued';
-- Deduplication: at most one active task per key.
CREATE UNIQUE INDEX tasks_active_key ON tasks (key) WHERE status IN ('queued', 'running');
-- age: the latest success of a key.
CREATE INDEX tasks_succeeded ON tasks (key, finished) WHERE status = 'success';
CREATE INDEX tasks_parent ON tasks (parent) WHERE parent IS NOT NULL;
-- active(plugin), queued_plugins, list by plugin.
CREATE INDEX tasks_plugin ON tasks (plugin, status);
-- takeover: running tasks by lease.
CREATE INDEX tasks_lease ON tasks (lease_until) WHERE status = 'running';
-- prune.
CREATE INDEX tasks_finished ON tasks (finished) WHERE finished IS NOT NULL;

CREATE TABLE schedules (
    name       text   PRIMARY KEY,
    last_fired bigint NOT NULL
);
-- One row per schedule and due time: the host whose INSERT made it fires it, the others'
-- INSERT ... ON CONFLICT DO NOTHING find it there.
CREATE TABLE schedule_fires (
    name    text   NOT NULL,
    due     bigint NOT NULL,
    host_id text   NOT NULL,
    PRIMARY KEY (name, due)
);
