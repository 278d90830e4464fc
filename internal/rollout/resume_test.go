package rollout_test

import (
	"context"
	"strings"
	"testing"

	"github.com/drover/drover/internal/rollout"
)

// TestResumeAfterRollbackHasNothingToResume deploys A then B, rolls back
// to A, and asks what `drover resume` would continue: nothing, since B was
// rolled back from, not interrupted.
func TestResumeAfterRollbackHasNothingToResume(t *testing.T) {
	f := newFleet(t, 2, "")
	ctx := context.Background()
	first := f.plan(f.app.Repo.Head(), 1)
	second := f.plan(f.app.Repo.Commit("b", map[string]string{"b": "b"}), 2)
	for _, p := range []*rollout.Plan{first, second} {
		if rep, err := rollout.Deploy(ctx, p, f.targets, &nopObserver{}); err != nil || !rep.OK() {
			t.Fatalf("deploy %s: %v %+v", p.ID, err, rep)
		}
	}
	back := *first
	if rep, err := rollout.Rollback(ctx, &back, f.targets, &nopObserver{}); err != nil || !rep.OK() {
		t.Fatalf("rollback: %v %+v", err, rep)
	}
	id, _, _, err := rollout.Resumable(rollout.Releases(ctx, second, f.targets))
	if err == nil {
		// What resume would then do: it must not record B active while
		// current points at A.
		rep, derr := rollout.Deploy(ctx, second, f.targets, &nopObserver{})
		t.Fatalf("resume after rollback picked %s (deploy: %v, ok %v; current on h1: %s)", id, derr, rep.OK(), f.current(0))
	}
	if !strings.Contains(err.Error(), "nothing to resume") || !strings.Contains(err.Error(), "rolled back") || !strings.Contains(err.Error(), second.ID) {
		t.Errorf("resume's refusal does not say why: %v", err)
	}
	for i := range f.targets {
		if f.current(i) != first.ID {
			t.Errorf("host %d current %s, want %s", i, f.current(i), first.ID)
		}
	}
}
