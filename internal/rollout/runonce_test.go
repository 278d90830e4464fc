package rollout_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/drover/drover/internal/rollout"
)

// TestRunOnceWithoutEligibleHostRefused: deploying to hosts none of which
// has a run_once hook's role (drover deploy --role web, while migrate wants
// db) is refused before anything changes, naming the hook and the role;
// --skip migrate deploys without it and the report says so.
func TestRunOnceWithoutEligibleHostRefused(t *testing.T) {
	f := newFleet(t, 2, "")
	webOnly := f.targets[1:] // h2 has role web only; migrate wants db
	plan := f.plan(f.app.Repo.Head(), 1)
	rep, err := rollout.Deploy(context.Background(), plan, webOnly, &nopObserver{})
	var nh *rollout.NoRunOnceHostError
	if !errors.As(err, &nh) || nh.Hook != "migrate" || nh.Role != "db" {
		t.Fatalf("deploy with no db host: err %v, report %+v; want a NoRunOnceHostError for migrate/db", err, rep)
	}
	for _, want := range []string{`"migrate"`, `role "db"`, "--skip migrate"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %s", err, want)
		}
	}
	// The CLI asks the same before it reaches any host.
	if err := rollout.CheckRunOnce(plan, f.env.Hosts[1:]); !errors.As(err, &nh) {
		t.Errorf("CheckRunOnce on h2 alone: %v", err)
	}
	if err := rollout.CheckRunOnce(plan, f.env.Hosts); err != nil {
		t.Errorf("CheckRunOnce on h1 and h2: %v", err)
	}
	plan.Skip = []string{"build"}
	if err := rollout.CheckRunOnce(plan, f.env.Hosts); err == nil || !strings.Contains(err.Error(), "--skip build") {
		t.Errorf("--skip of a hook that is not run_once: %v", err)
	}
	if f.current(1) != "" {
		t.Errorf("h2 switched to %s although the deploy was refused", f.current(1))
	}
	if log := f.hookLog(t); log != "" {
		t.Errorf("hooks ran although the deploy was refused:\n%s", log)
	}

	plan.Skip = []string{"migrate"}
	rep, err = rollout.Deploy(context.Background(), plan, webOnly, &nopObserver{})
	if err != nil || !rep.OK() {
		t.Fatalf("deploy with --skip migrate: %v %+v", err, rep)
	}
	if f.current(1) != plan.ID {
		t.Errorf("h2 runs %q, want %s", f.current(1), plan.ID)
	}
	if log := f.hookLog(t); strings.Contains(log, "migrate") {
		t.Errorf("skipped hook ran:\n%s", log)
	}
	if len(rep.SkippedHooks) != 1 || rep.SkippedHooks[0].Hook != "migrate" || rep.SkippedHooks[0].Role != "db" {
		t.Errorf("report's skipped hooks = %+v, want migrate (role db)", rep.SkippedHooks)
	}
}
