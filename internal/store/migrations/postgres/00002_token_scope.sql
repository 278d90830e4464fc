-- Token scope: the apps and environments a join token (and the agent token
-- minted from it) may act on, comma-separated, empty meaning any; and the
-- node name a join token may take over from a live agent token. A join
-- looks up the agent tokens of its node name by (node, kind).
-- +goose Up
ALTER TABLE tokens ADD COLUMN scope_apps TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN scope_envs TEXT NOT NULL DEFAULT '';
ALTER TABLE tokens ADD COLUMN replace_node TEXT NOT NULL DEFAULT '';
CREATE INDEX tokens_node ON tokens (node, kind);

-- +goose Down
DROP INDEX tokens_node;
ALTER TABLE tokens DROP COLUMN replace_node;
ALTER TABLE tokens DROP COLUMN scope_envs;
ALTER TABLE tokens DROP COLUMN scope_apps;
