-- Server-run rollouts: one row per rollout (a release applied to an
-- environment with a strategy, or a push deploy recorded here) and one row
-- per node it asked something of (its current task, fenced by the token of
-- the environment's lease). The environment records its last completed
-- release, which nodes outside a rollout converge to; existing environments
-- start at their latest release so their nodes keep converging as before.
-- A Resumable ticket's lapsed lease waits for a takeover instead of being
-- expired by the next ticket. An upgrade records the rollout task it does.
-- +goose Up
CREATE TABLE rollouts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    app            TEXT NOT NULL,
    env            TEXT NOT NULL,
    kind           TEXT NOT NULL,
    release_id     BIGINT NOT NULL DEFAULT 0,
    engine_release TEXT NOT NULL DEFAULT '',
    ticket_id      BIGINT NOT NULL DEFAULT 0,
    strategy       TEXT NOT NULL DEFAULT '',
    plan           BLOB NOT NULL DEFAULT X'',
    state          TEXT NOT NULL,
    phase          TEXT NOT NULL DEFAULT '',
    error          TEXT NOT NULL DEFAULT '',
    decision       TEXT NOT NULL DEFAULT '',
    runner         TEXT NOT NULL DEFAULT '',
    created_by     TEXT NOT NULL DEFAULT '',
    created_at     DATETIME NOT NULL,
    started_at     DATETIME NULL,
    ended_at       DATETIME NULL,
    report         BLOB NOT NULL DEFAULT X'',
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
);
CREATE INDEX rollouts_app_env ON rollouts (app, env, id);
CREATE INDEX rollouts_ticket ON rollouts (ticket_id);
CREATE INDEX rollouts_state ON rollouts (state, id);

CREATE TABLE rollout_nodes (
    rollout_id     BIGINT NOT NULL REFERENCES rollouts (id),
    node           TEXT NOT NULL,
    node_id        BIGINT NOT NULL DEFAULT 0,
    task           BIGINT NOT NULL DEFAULT 0,
    action         TEXT NOT NULL DEFAULT '',
    stage          TEXT NOT NULL DEFAULT '',
    run_once       TEXT NOT NULL DEFAULT '[]',
    to_release     TEXT NOT NULL DEFAULT '',
    token          BIGINT NOT NULL DEFAULT 0,
    state          TEXT NOT NULL,
    step           TEXT NOT NULL DEFAULT '',
    error          TEXT NOT NULL DEFAULT '',
    serving        TEXT NOT NULL DEFAULT '',
    upgrade_id     BIGINT NOT NULL DEFAULT 0,
    updated_at     DATETIME NOT NULL,
    PRIMARY KEY (rollout_id, node)
);

ALTER TABLE deploy_tickets ADD COLUMN resumable INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN current_release BIGINT NOT NULL DEFAULT 0;
UPDATE environments SET current_release = COALESCE((SELECT MAX(r.id) FROM releases r WHERE r.app = environments.app AND r.env = environments.name), 0);
ALTER TABLE upgrades ADD COLUMN rollout_id BIGINT NOT NULL DEFAULT 0;
ALTER TABLE upgrades ADD COLUMN task BIGINT NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE upgrades DROP COLUMN task;
ALTER TABLE upgrades DROP COLUMN rollout_id;
ALTER TABLE environments DROP COLUMN current_release;
ALTER TABLE deploy_tickets DROP COLUMN resumable;
DROP TABLE rollout_nodes;
DROP TABLE rollouts;
