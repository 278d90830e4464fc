package release_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// TestLostStateKeepsReleases damages a host's state file, follows the
// advice of the error, and checks that no release is deleted: `releases`
// lists every directory (unknown, the one current points to active),
// cleanup keeps them, a new deploy works, and only a release named with
// Remove goes.
func TestLostStateKeepsReleases(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{NoService: true, Keep: 1})
	e := engine(a)
	var ids []string
	for i := 1; i <= 3; i++ {
		c := a.Repo.Commit("r", map[string]string{"n": string(rune('0' + i))})
		rid := id(i, c)
		prepare(t, e, rid, c)
		if err := e.Activate(ctx, rid); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rid)
	}
	statePath := filepath.Join(a.DeployTo, ".drover", "releases.json")
	if err := os.WriteFile(statePath, []byte("{\"schema\": 1, \"releases\": [tru"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := e.Releases()
	if err == nil {
		t.Fatal("a damaged state file was read")
	}
	for _, want := range []string{statePath, "drover releases", "--remove"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	if _, err := e.Cleanup(ctx, 1); err == nil {
		t.Error("cleanup ran on a damaged state file")
	}
	// The advice: move the file aside.
	if err := os.Rename(statePath, statePath+".damaged"); err != nil {
		t.Fatal(err)
	}
	recs, active, err := e.Releases()
	if err != nil || active != ids[2] {
		t.Fatalf("releases after losing the state: active %s, %v", active, err)
	}
	got := map[string]release.Status{}
	for _, r := range recs {
		got[r.ID] = r.Status
	}
	want := map[string]release.Status{ids[0]: release.StatusUnknown, ids[1]: release.StatusUnknown, ids[2]: release.StatusActive}
	if len(got) != len(want) {
		t.Errorf("rebuilt record %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("rebuilt %s as %q, want %q", k, got[k], v)
		}
	}
	exists := func(rid string) bool {
		_, err := os.Stat(filepath.Join(a.DeployTo, "releases", rid))
		return err == nil
	}
	if removed, err := e.Cleanup(ctx, 1); err != nil || len(removed) != 0 {
		t.Errorf("cleanup after losing the state removed %v, %v", removed, err)
	}
	// A new deploy (with its cleanup) still leaves the unknown ones alone.
	c := a.Repo.Commit("r4", map[string]string{"n": "4"})
	r4 := id(4, c)
	prepare(t, e, r4, c)
	if err := e.Activate(ctx, r4); err != nil {
		t.Fatal(err)
	}
	if target, err := e.RollbackTarget(); err != nil || target != ids[2] {
		t.Errorf("rollback target %s, %v; want %s, the release current pointed at", target, err, ids[2])
	}
	if removed, err := e.Cleanup(ctx, 1); err != nil || len(removed) != 0 {
		t.Errorf("cleanup after a new deploy removed %v, %v", removed, err)
	}
	for _, rid := range ids {
		if !exists(rid) {
			t.Errorf("%s was deleted", rid)
		}
	}
	// Named, an unknown release goes; the active one never does.
	if found, err := e.Remove(ctx, ids[0]); err != nil || !found {
		t.Fatalf("remove %s: %v, %v", ids[0], found, err)
	}
	if exists(ids[0]) {
		t.Errorf("%s still there after Remove", ids[0])
	}
	if _, err := e.Remove(ctx, r4); err == nil || !exists(r4) {
		t.Errorf("removed the active release: %v", err)
	}
	recs, _, _ = e.Releases()
	if slices.ContainsFunc(recs, func(r *release.Record) bool { return r.ID == ids[0] }) {
		t.Errorf("%s still recorded after Remove", ids[0])
	}
}
