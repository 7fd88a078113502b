-- The plugin catalogue (`host publish`), version 2. One row per published name with its
-- bytes and its rollout (`canary`: only the hosts in `canaries` load it; `everywhere`;
-- `failed`, with the reason), and what each host made of it (`loading`, `serving`,
-- `passed`: served past its probation, `failed` with the host's reason). The canaries are
-- the lowest ids among the hosts alive (the `hosts` table).
CREATE TABLE catalogue_plugins (
    name text PRIMARY KEY,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    bytes bytea NOT NULL,
    version text NOT NULL,
    publisher text NOT NULL,
    published_ms bigint NOT NULL,
    canary integer NOT NULL,
    canaries text[] NOT NULL,
    rollout text NOT NULL,
    reason text,
    -- The last version whose rollout did not fail: what a canary goes back to when the
    -- new one fails there (so that a restart does not load the failed file afresh).
    good_sha256 text,
    good_bytes bytea
);
-- Plugin files are stored as they are: pglz compressing (and every fetch decompressing)
-- megabytes of machine code cost more than the bytes it saves.
ALTER TABLE catalogue_plugins ALTER COLUMN bytes SET STORAGE EXTERNAL;
ALTER TABLE catalogue_plugins ALTER COLUMN good_bytes SET STORAGE EXTERNAL;
CREATE TABLE catalogue_reports (
    host_id text NOT NULL,
    name text NOT NULL,
    sha256 text NOT NULL,
    state text NOT NULL,
    reason text,
    generation bigint,
    updated_ms bigint NOT NULL,
    PRIMARY KEY (host_id, name)
);
