package release_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/drover/drover/internal/testenv/apptest"
)

// TestSkewedDeployerClocks deploys three releases in turn, the last one by
// a deployer whose clock is behind: its ID carries an older timestamp than
// the release before it. The host orders releases by its own record, so
// the rollback target is the release that ran before, cleanup keeps it,
// and the listing shows the last deployed first.
func TestSkewedDeployerClocks(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{NoService: true})
	e := engine(a)
	var ids []string
	for i, at := range []int{10, 100, 50} { // seconds after clockBase, as each deployer's clock said
		c := a.Repo.Commit("r", map[string]string{"n": string(rune('a' + i))})
		rid := id(at, c)
		prepare(t, e, rid, c)
		if err := e.Activate(ctx, rid); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rid)
	}
	first, second, last := ids[0], ids[1], ids[2]
	recs, active, err := e.Releases()
	if err != nil || active != last {
		t.Fatalf("releases: active %s, %v", active, err)
	}
	var order []string
	for _, r := range recs {
		order = append(order, r.ID)
	}
	if want := []string{last, second, first}; !slices.Equal(order, want) {
		t.Errorf("releases listed %v, want the host's order %v", order, want)
	}
	if target, err := e.RollbackTarget(); err != nil || target != second {
		t.Errorf("rollback target %s, %v; want %s, the release that ran before", target, err, second)
	}
	removed, err := e.Cleanup(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{first}) {
		t.Errorf("cleanup removed %v, want only %s", removed, first)
	}
	if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", second)); err != nil {
		t.Errorf("cleanup removed the rollback target %s", second)
	}
	to, err := e.Rollback(ctx, "")
	if err != nil || to != second {
		t.Fatalf("rollback went to %s, %v; want %s", to, err, second)
	}
	if cur := current(t, a); cur != second {
		t.Errorf("current = %s", cur)
	}
}

// TestLegacyStateOrderedByHostTime reads a state file written before
// records had a sequence: they are ordered by the time this host recorded
// them, not by their IDs.
func TestLegacyStateOrderedByHostTime(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true})
	older, newer := id(100, "aaaaaaa"), id(50, "bbbbbbb") // the newer deploy had a clock behind
	state := `{"schema": 1, "releases": [
  {"id": "` + older + `", "commit": "aaaaaaa", "status": "good", "created_at": "2026-11-22T10:00:00Z"},
  {"id": "` + newer + `", "commit": "bbbbbbb", "status": "active", "created_at": "2026-11-22T11:00:00Z"}]}`
	for _, d := range []string{".drover", "releases/" + older, "releases/" + newer} {
		if err := os.MkdirAll(filepath.Join(a.DeployTo, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(a.DeployTo, ".drover", "releases.json"), []byte(state), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("releases/"+newer, filepath.Join(a.DeployTo, "current")); err != nil {
		t.Fatal(err)
	}
	e := engine(a)
	if target, err := e.RollbackTarget(); err != nil || target != older {
		t.Errorf("rollback target %q, %v; want %s", target, err, older)
	}
	recs, _, err := e.Releases()
	if err != nil || len(recs) != 2 || recs[0].ID != newer || recs[0].Seq <= recs[1].Seq {
		t.Errorf("releases %v, %v; want %s first with the higher sequence", recs, err, newer)
	}
}
