package rollout_test

import (
	"errors"
	"testing"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/rollout"
)

// TestHotfixNeedsNoHostForSkippedRunOnce: a hotfix rollout to web hosts
// only needs no db host for a migrate hook marked hotfix: skip (it will not
// run), while a plain rollout still refuses.
func TestHotfixNeedsNoHostForSkippedRunOnce(t *testing.T) {
	app, err := config.Parse("drover.yml", []byte(`app: shop
repo: /src/shop
deploy_to: /srv/shop
hooks:
  migrate: {run_once: true, role: db, hotfix: skip, commands: [./migrate]}
environments:
  test:
    hosts: [{name: db1, host: db1, roles: [db]}, {name: web1, host: web1, roles: [web]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	env := app.Environments["test"]
	webOnly := env.Hosts[1:]
	plan := &rollout.Plan{App: app, Env: env}
	var nh *rollout.NoRunOnceHostError
	if err := rollout.CheckRunOnce(plan, webOnly); !errors.As(err, &nh) || nh.Hook != "migrate" {
		t.Errorf("a plain rollout to web hosts: %v, want a NoRunOnceHostError for migrate", err)
	}
	plan.Hotfix = true
	if err := rollout.CheckRunOnce(plan, webOnly); err != nil {
		t.Errorf("a hotfix rollout to web hosts, migrate marked hotfix: skip: %v", err)
	}
}
