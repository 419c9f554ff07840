-- Prompt sets: a probe over many prompts is stored as units, one per (prompt, model), each in its own
-- transaction, so a killed run recomputes only the missing units. The probe's own row in `probes` holds the
-- aggregate over its prompts and is written once every unit is in.

CREATE TABLE units (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    probe TEXT NOT NULL,        -- the probe's name in the suite
    prompt_id TEXT NOT NULL,
    model TEXT NOT NULL,        -- the model entry's name
    position INTEGER NOT NULL,  -- the prompt's place in its set
    prompt TEXT NOT NULL,       -- the prompt as the model saw it (template applied)
    meta TEXT NOT NULL,         -- JSON object: the prompt's other keys (a category, say)
    cache_key TEXT NOT NULL,
    seconds REAL NOT NULL,
    from_cache INTEGER NOT NULL,
    payload TEXT NOT NULL,      -- JSON: the probe's result on this prompt and model
    notes TEXT NOT NULL,        -- JSON list of strings
    saved REAL NOT NULL,        -- unix time
    UNIQUE (run_id, probe, prompt_id, model)
);
CREATE INDEX units_by_cache_key ON units (cache_key, id);

CREATE TABLE unit_metrics (
    unit_id INTEGER NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    model TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    text TEXT,
    PRIMARY KEY (unit_id, position)
);

CREATE TABLE unit_artifacts (
    unit_id INTEGER NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    mime TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (unit_id, name)
);

-- Which stored unit holds the output for a unit's cache key (as `cache` does for whole probes).
CREATE TABLE unit_cache (
    key TEXT PRIMARY KEY,
    unit_id INTEGER NOT NULL REFERENCES units (id) ON DELETE CASCADE
);
CREATE INDEX unit_cache_by_unit ON unit_cache (unit_id);

-- Units an executor gave up on (after its retries); removed when the unit is stored by a later --resume.
CREATE TABLE unit_failures (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    probe TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    model TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    saved REAL NOT NULL,
    PRIMARY KEY (run_id, probe, prompt_id, model)
);
