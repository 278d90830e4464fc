package release_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// deployTwo prepares and activates two releases, A then B, and returns
// their IDs and B's commit.
func deployTwo(t *testing.T, a *apptest.App, e *release.Engine) (rA, rB, cB string) {
	t.Helper()
	cA := a.Repo.Head()
	rA = id(1, cA)
	prepare(t, e, rA, cA)
	if err := e.Activate(context.Background(), rA); err != nil {
		t.Fatal(err)
	}
	cB = a.Repo.Commit("b", map[string]string{"b.txt": "b"})
	rB = id(2, cB)
	prepare(t, e, rB, cB)
	if err := e.Activate(context.Background(), rB); err != nil {
		t.Fatal(err)
	}
	return rA, rB, cB
}

// TestResumeAfterRollbackNeverRecordsWhatDoesNotRun deploys A then B,
// rolls back to A, and runs B's prepare and activate again as `drover
// resume` did: B must never be recorded active while current points at A.
func TestResumeAfterRollbackNeverRecordsWhatDoesNotRun(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{})
	e := engine(a)
	rA, rB, cB := deployTwo(t, a, e)
	if to, err := e.Rollback(ctx, rA); err != nil || to != rA {
		t.Fatalf("rollback: %s %v", to, err)
	}

	// Preparing a release rolled back from again has nothing to do and
	// keeps what the host knows of it.
	if rec := prepare(t, e, rB, cB); rec.Status != release.StatusRolledBack {
		t.Errorf("prepare turned rolled-back %s into %s", rB, rec.Status)
	}
	// Activating it is going back to it: it switches and restarts for real.
	if err := e.Activate(ctx, rB); err != nil {
		t.Fatal(err)
	}
	if cur := current(t, a); statusOf(t, e, rB) == release.StatusActive && cur != rB {
		t.Fatalf("%s recorded active while current points at %s", rB, cur)
	}
	if cur := current(t, a); cur != rB {
		t.Fatalf("activate %s left current at %s", rB, cur)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, rB) {
		t.Fatalf("service answers %q, not %s", body, rB)
	}
}

// TestActivateRedoesASwitchCurrentNoLongerShows resumes the activation of a
// release whose record says its switch and restart are done while
// `current` points elsewhere (moved by hand, or by a rollback after the
// record was written): activate must switch and restart again, never
// record it active on the strength of the old steps.
func TestActivateRedoesASwitchCurrentNoLongerShows(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{})
	e := engine(a)
	rA, rB, _ := deployTwo(t, a, e)
	// The operator puts A back by hand and restarts it; B's record still
	// says activating with every step done, as after a crash just before
	// it was marked active.
	statePath := filepath.Join(a.DeployTo, ".drover", "releases.json")
	data, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Schema   int              `json:"schema"`
		Releases []map[string]any `json:"releases"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Releases {
		switch r["id"] {
		case rA:
			r["status"] = string(release.StatusActive)
		case rB:
			r["status"] = string(release.StatusActivating)
		}
	}
	data, _ = json.Marshal(st)
	if err := os.WriteFile(statePath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(a.DeployTo, "current.tmp")
	if err := os.Symlink(filepath.Join("releases", rA), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(a.DeployTo, "current")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ServiceAction(ctx, "restart", "", 0); err != nil {
		t.Fatal(err)
	}

	if err := e.Activate(ctx, rB); err != nil {
		t.Fatal(err)
	}
	if cur := current(t, a); cur != rB {
		t.Fatalf("activate %s recorded it done while current points at %s", rB, cur)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, rB) {
		t.Fatalf("service answers %q, not %s", body, rB)
	}
}
