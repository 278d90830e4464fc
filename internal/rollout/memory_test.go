package rollout_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/rollout/rollouttest"
)

// memFleet is n simulated hosts (h1 has roles web and db, the others web)
// of an app with a run_once migrate hook, all running release R1.
type memFleet struct {
	hosts   []*rollouttest.Host
	journal *rollouttest.Journal
	plan    *rollout.Plan
}

func newMemFleet(t *testing.T, n int, strategy string) *memFleet {
	t.Helper()
	var hosts strings.Builder
	for i := range n {
		roles := "[web]"
		if i == 0 {
			roles = "[web, db]"
		}
		fmt.Fprintf(&hosts, "      - {name: h%d, host: 10.0.0.%d, roles: %s}\n", i+1, i+1, roles)
	}
	if strategy == "" {
		strategy = "{type: two-phase}"
	}
	yml := "app: shop\nrepo: git@example.com:acme/shop.git\ndeploy_to: /srv/shop\n" +
		"hooks:\n  migrate: {run_once: true, role: db, commands: [./migrate]}\n" +
		"environments:\n  prod:\n    strategy: " + strategy + "\n    hosts:\n" + hosts.String()
	app, err := config.Parse("drover.yml", []byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	env := app.Environments["prod"]
	j := &rollouttest.Journal{}
	f := &memFleet{hosts: rollouttest.FromConfig(j, env.Hosts), journal: j}
	for _, h := range f.hosts {
		h.Start("R1")
	}
	f.plan = &rollout.Plan{App: app, Env: env, ID: "R2", Commit: "c2", Spec: "branch:main", By: "test@here",
		Strategy: env.Strategy, Fleet: len(env.Hosts), Lease: 10 * time.Second}
	return f
}

func (f *memFleet) deploy(t *testing.T) *rollout.Report {
	t.Helper()
	rep, err := rollout.Deploy(context.Background(), f.plan, rollouttest.Targets(f.hosts), &nopObserver{})
	if err != nil && rep == nil {
		t.Fatal(err)
	}
	return rep
}

func (f *memFleet) actives() string {
	var out []string
	for _, h := range f.hosts {
		out = append(out, h.Name()+"="+h.Active())
	}
	return strings.Join(out, " ")
}

// TestMemTwoPhase: every host prepares before the run_once hook runs, on
// exactly one host, before any host switches; every host ends on R2.
func TestMemTwoPhase(t *testing.T) {
	f := newMemFleet(t, 5, "")
	rep := f.deploy(t)
	if !rep.OK() {
		t.Fatalf("deploy failed: %+v\n%s", rep, f.journal)
	}
	lines := f.journal.Lines()
	lastPrepare, hook, firstActivate := -1, -1, -1
	for i, l := range lines {
		switch {
		case strings.Contains(l, " prepare "):
			lastPrepare = i
		case strings.Contains(l, " hook migrate"):
			if hook >= 0 {
				t.Errorf("migrate ran twice:\n%s", f.journal)
			}
			hook = i
		case strings.Contains(l, " activate ") && firstActivate < 0:
			firstActivate = i
		}
	}
	if !(lastPrepare < hook && hook < firstActivate) || lines[hook] != "h1 hook migrate" {
		t.Errorf("want every prepare, then migrate on h1, then activation:\n%s", f.journal)
	}
	for _, h := range f.hosts {
		if h.Active() != "R2" {
			t.Errorf("%s runs %s, want R2", h.Name(), h.Active())
		}
	}
}

// TestMemPrepareFailureSwitchesNothing: one host failing to prepare leaves
// every host on R1, and the run_once hook does not run.
func TestMemPrepareFailureSwitchesNothing(t *testing.T) {
	f := newMemFleet(t, 4, "")
	f.hosts[2].FailPrepare = "disk full"
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "failed to prepare") {
		t.Fatalf("report %+v, want a prepare failure", rep)
	}
	if got := f.journal.Matching("activate"); len(got) != 0 {
		t.Errorf("hosts activated after a failed prepare: %v", got)
	}
	if got := f.journal.Matching("hook migrate"); len(got) != 0 {
		t.Errorf("migrate ran after a failed prepare: %v", got)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1 h4=R1" {
		t.Errorf("hosts run %s", got)
	}
}

// TestMemHookFailureSwitchesNothing: a failing run_once hook keeps every
// host on its release.
func TestMemHookFailureSwitchesNothing(t *testing.T) {
	f := newMemFleet(t, 3, "")
	f.hosts[0].FailHooks = true
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "run_once") {
		t.Fatalf("report %+v, want a run_once failure", rep)
	}
	if got := f.actives(); got != "h1=R1 h2=R1 h3=R1" {
		t.Errorf("hosts run %s", got)
	}
}

// TestMemUnreachableAtLockChangesNothing: a host that cannot be locked
// stops the rollout before anything is prepared, and every lock taken is
// given back.
func TestMemUnreachableAtLockChangesNothing(t *testing.T) {
	f := newMemFleet(t, 3, "")
	f.hosts[1].Unreachable = true
	rep := f.deploy(t)
	if rep.OK() || !strings.Contains(rep.Err, "could not lock every host") {
		t.Fatalf("report %+v, want a lock failure", rep)
	}
	if got := f.journal.Matching("prepare"); len(got) != 0 {
		t.Errorf("prepared after a lock failure: %v", got)
	}
	if locks, unlocks := len(f.journal.Matching(" lock")), len(f.journal.Matching(" unlock")); locks != unlocks {
		t.Errorf("%d locks, %d unlocks:\n%s", locks, unlocks, f.journal)
	}
}

// TestMemFailedActivationSaysWhatRuns: a host whose health check fails
// goes back to R1 and the summary says so.
func TestMemFailedActivationSaysWhatRuns(t *testing.T) {
	f := newMemFleet(t, 3, "")
	f.hosts[1].FailActivate = true
	rep := f.deploy(t)
	if rep.OK() {
		t.Fatalf("report OK, want a failure")
	}
	if !strings.Contains(rep.Err, "h2 serves R1 (healthy)") {
		t.Errorf("summary %q does not say h2 serves R1", rep.Err)
	}
}
