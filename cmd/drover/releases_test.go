package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/testenv/apptest"
)

// TestLostStateFromTheCLI damages a host's state file and follows what
// drover says: `releases` then lists the releases on disk as unknown (the
// running one active), `cleanup` keeps them, and `cleanup --remove`
// removes the one named.
func TestLostStateFromTheCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and deploys the example app")
	}
	dir := t.TempDir()
	ports := apptest.FreePorts(t, 1)
	t.Cleanup(func() { apptest.KillLeftovers(t, dir) })
	t.Cleanup(func() { apptest.StopPIDs(filepath.Join(dir, "srv", "shared", "pids")) })
	for range 2 {
		if out, code := run(t, dir, "demo", "--dir", dir, "--port", fmt.Sprint(ports[0])); code != 0 {
			t.Fatalf("demo exit %d:\n%s", code, out)
		}
	}
	src, srv := filepath.Join(dir, "src"), filepath.Join(dir, "srv")
	entries, err := os.ReadDir(filepath.Join(srv, "releases"))
	if err != nil || len(entries) != 2 {
		t.Fatalf("releases/: %v %v", entries, err)
	}
	first := entries[0].Name()
	state := filepath.Join(srv, ".drover", "releases.json")
	if err := os.WriteFile(state, []byte("{\"schema\": 1, \"rel"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := run(t, src, "releases", "demo")
	if code == 0 || !strings.Contains(out, "mv "+state) || !strings.Contains(out, "--remove") {
		t.Errorf("releases on a damaged state: exit %d\n%s", code, out)
	}
	if err := os.Rename(state, state+".damaged"); err != nil {
		t.Fatal(err)
	}
	out, code = run(t, src, "releases", "demo")
	if code != 0 || !strings.Contains(out, "unknown") || !strings.Contains(out, "active") {
		t.Errorf("releases after moving the state aside: exit %d\n%s", code, out)
	}
	out, code = run(t, src, "cleanup", "demo", "--keep", "1")
	if code != 0 || !strings.Contains(out, "nothing to remove") {
		t.Errorf("cleanup of unknown releases: exit %d\n%s", code, out)
	}
	out, code = run(t, src, "cleanup", "demo", "--remove", first)
	if code != 0 || !strings.Contains(out, "removed "+first) {
		t.Errorf("cleanup --remove: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(srv, "releases", first)); !os.IsNotExist(err) {
		t.Errorf("%s still there: %v", first, err)
	}
	if _, code = run(t, src, "cleanup", "demo", "--remove", "nonsense"); code != 2 {
		t.Errorf("cleanup --remove nonsense: exit %d, want 2", code)
	}
}
