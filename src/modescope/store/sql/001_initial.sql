-- The first schema. Shipped migrations are never edited: change the schema with a new numbered file.

CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    suite TEXT NOT NULL,
    suite_hash TEXT NOT NULL,
    suite_text TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started REAL NOT NULL,   -- unix time
    finished REAL            -- unix time; NULL while running
);
CREATE INDEX runs_by_suite_hash ON runs (suite_hash, id);

-- The models of a run, in the suite's order, with every setting they were loaded with.
CREATE TABLE models (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    settings TEXT NOT NULL,  -- JSON object
    PRIMARY KEY (run_id, position)
);

-- One row per finished probe; (run_id, name) is unique so a rerun replaces the probe instead of adding one.
CREATE TABLE probes (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,  -- the order probes were first stored in
    kind TEXT NOT NULL,
    params TEXT NOT NULL,       -- JSON object
    cache_key TEXT NOT NULL,
    seconds REAL NOT NULL,
    from_cache INTEGER NOT NULL,
    payload TEXT NOT NULL,      -- JSON: the probe's full result
    notes TEXT NOT NULL,        -- JSON list of strings
    saved REAL NOT NULL,        -- unix time
    UNIQUE (run_id, name)
);
CREATE INDEX probes_by_cache_key ON probes (cache_key, id);

CREATE TABLE metrics (
    probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    model TEXT NOT NULL,        -- '' for a metric about the pair / all models
    name TEXT NOT NULL,
    value REAL,                 -- NULL: not measured or not finite
    text TEXT,
    PRIMARY KEY (probe_id, position)
);

CREATE TABLE artifacts (
    probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (probe_id, name)
);

-- Which stored probe holds the output for a cache key. The output itself lives in probes/metrics/artifacts,
-- so figures are not stored twice; when that probe is replaced the entry moves to another probe with the key.
CREATE TABLE cache (
    key TEXT PRIMARY KEY,
    probe_id INTEGER NOT NULL REFERENCES probes (id) ON DELETE CASCADE
);
CREATE INDEX cache_by_probe ON cache (probe_id);
