-- drover control server schema, SQLite.
-- +goose Up
CREATE TABLE apps (
    name       TEXT PRIMARY KEY,
    created_at DATETIME NOT NULL
);

CREATE TABLE environments (
    app        TEXT NOT NULL REFERENCES apps (name),
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL DEFAULT 0,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (app, name)
);

CREATE TABLE releases (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    app             TEXT NOT NULL,
    env             TEXT NOT NULL,
    spec            TEXT NOT NULL,
    resolved_commit TEXT NOT NULL DEFAULT '',
    created_by      TEXT NOT NULL DEFAULT '',
    created_at      DATETIME NOT NULL,
    note            TEXT NOT NULL DEFAULT '',
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
);
CREATE INDEX releases_app_env_id ON releases (app, env, id);

CREATE TABLE nodes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL,
    hostname        TEXT NOT NULL DEFAULT '',
    app             TEXT NOT NULL,
    env             TEXT NOT NULL,
    roles           TEXT NOT NULL DEFAULT '[]',
    agent_version   TEXT NOT NULL DEFAULT '',
    created_at      DATETIME NOT NULL,
    last_seen       DATETIME NOT NULL,
    current_release BIGINT NULL REFERENCES releases (id),
    UNIQUE (name, app, env),
    FOREIGN KEY (app, env) REFERENCES environments (app, name)
);
CREATE INDEX nodes_app_env ON nodes (app, env);

CREATE TABLE upgrades (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id      BIGINT NOT NULL REFERENCES nodes (id),
    release_id   BIGINT NOT NULL REFERENCES releases (id),
    status       TEXT NOT NULL,
    current_step TEXT NOT NULL DEFAULT '',
    created_at   DATETIME NOT NULL,
    started_at   DATETIME NULL,
    ended_at     DATETIME NULL,
    error        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX upgrades_node ON upgrades (node_id, id);
CREATE INDEX upgrades_release ON upgrades (release_id, id);

CREATE TABLE upgrade_steps (
    upgrade_id BIGINT NOT NULL REFERENCES upgrades (id),
    seq        INTEGER NOT NULL,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL,
    started_at DATETIME NULL,
    ended_at   DATETIME NULL,
    log        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (upgrade_id, name)
);

CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    node       TEXT NOT NULL DEFAULT '',
    hash       TEXT NOT NULL UNIQUE,
    note       TEXT NOT NULL DEFAULT '',
    created_at DATETIME NOT NULL,
    expires_at DATETIME NULL,
    used_at    DATETIME NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE audit_events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     DATETIME NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);

-- +goose Down
DROP TABLE audit_events;
DROP TABLE tokens;
DROP TABLE upgrade_steps;
DROP TABLE upgrades;
DROP TABLE nodes;
DROP TABLE releases;
DROP TABLE environments;
DROP TABLE apps;
