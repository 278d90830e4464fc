package rollout_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/testenv/apptest"
)

// TestFailedAfterActivateHookSummary: an after_activate hook that fails
// after the switch leaves the new release serving; the summary must say
// the host runs it and name the hook, never "no host runs" it.
func TestFailedAfterActivateHookSummary(t *testing.T) {
	flag := filepath.Join(t.TempDir(), "fail-notify")
	a := apptest.New(t, apptest.Options{
		Hosts: "      - {name: h1, transport: local, roles: [web]}\n",
		Extra: "  notify: {when: after_activate, commands: ['test ! -f " + flag + "']}\n",
	})
	env := a.Config.Environments["test"]
	targets := []rollout.Target{rootedTarget(apptest.DroverBinary(t), env.Hosts[0], a.DeployTo)}
	plan := func(commit string, n int) *rollout.Plan {
		return &rollout.Plan{App: a.Config, Env: env, ID: release.NewID(time.Unix(int64(n)*1000, 0), commit), Commit: commit,
			Spec: "branch:main", By: "test@here", Strategy: config.Strategy{Type: config.StrategyAllAtOnce}, Lease: 10 * time.Second}
	}
	if rep, err := rollout.Deploy(context.Background(), plan(a.Repo.Head(), 1), targets, &nopObserver{}); err != nil || !rep.OK() {
		t.Fatalf("first deploy: %v %+v", err, rep)
	}
	writeFlag(t, flag)
	second := plan(a.Repo.Commit("v2", map[string]string{"v2": "yes"}), 2)
	rep, err := rollout.Deploy(context.Background(), second, targets, &nopObserver{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatalf("a failed after_activate hook reported OK: %+v", rep)
	}
	if strings.Contains(rep.Err, "no host runs") || !strings.Contains(rep.Err, "h1 runs "+second.ID) || !strings.Contains(rep.Err, "notify") {
		t.Errorf("summary %q; want that h1 runs %s and that its after_activate hook notify failed", rep.Err, second.ID)
	}
}

func writeFlag(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}
