package release_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// TestPreparedOnlyAfterSync checks that a release's files are synced to
// disk (after its prepare hooks wrote theirs) before the host records it
// prepared: a power cut must not leave `current` on zero-length files.
func TestPreparedOnlyAfterSync(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true})
	e := engine(a)
	c := a.Repo.Head()
	rid := id(1, c)
	dir := filepath.Join(a.DeployTo, "releases", rid)
	var synced []string // the recorded status at each sync of dir
	release.SetSyncFS(e, func(d string) error {
		if d == dir {
			synced = append(synced, recordedStatus(t, a, rid))
			if _, err := os.Stat(filepath.Join(dir, "bin", "hello")); err != nil {
				t.Errorf("synced before the prepare hooks wrote bin/hello: %v", err)
			}
		}
		return release.SyncFS(d)
	})
	rec := prepare(t, e, rid, c)
	if rec.Status != release.StatusPrepared {
		t.Fatalf("status %s", rec.Status)
	}
	if len(synced) == 0 {
		t.Fatal("the release was recorded prepared without syncing its files to disk")
	}
	if last := synced[len(synced)-1]; last == string(release.StatusPrepared) {
		t.Errorf("synced only after the release was recorded prepared")
	}
	if got := recordedStatus(t, a, rid); got != string(release.StatusPrepared) {
		t.Errorf("recorded status %q after prepare", got)
	}
}

// recordedStatus reads release rid's status from the host's state file.
func recordedStatus(t *testing.T, a *apptest.App, rid string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(a.DeployTo, ".drover", "releases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Releases []struct{ ID, Status string }
	}
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.Releases {
		if r.ID == rid {
			return r.Status
		}
	}
	return ""
}
