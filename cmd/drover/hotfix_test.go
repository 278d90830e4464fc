package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/gitrepo"
)

// TestHotfixFromTheCLI runs the real binary on a repository deployed to
// this machine: `drover tasks` says which hooks a hotfix skips, `drover
// deploy --hotfix` does not run them nor clean up and says so (text and
// -o json), a plain deploy runs them, and `hotfix: maybe` exits 2 naming
// drover.yml's line.
func TestHotfixFromTheCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("deploys through the real binary")
	}
	repo := gitrepo.New(t)
	srv := filepath.Join(t.TempDir(), "srv")
	t.Cleanup(func() { apptest.KillLeftovers(t, srv) })
	yml := func(hotfix string) string {
		return fmt.Sprintf(`app: shop
repo: %s
deploy_to: %s
keep_releases: 1
hooks:
  prepare: [echo build >> $DROVER_SHARED_DIR/ran]
  migrate: {run_once: true, hotfix: %s, commands: ['echo migrate >> $DROVER_SHARED_DIR/ran']}
environments:
  test:
    branch: main
    hosts: [{name: here, transport: local}]
`, repo.Dir, srv, hotfix)
	}
	ran := func() string {
		f := filepath.Join(srv, "shared", "ran")
		b, _ := os.ReadFile(f)
		os.Remove(f)
		return string(b)
	}
	releases := func() int {
		entries, _ := os.ReadDir(filepath.Join(srv, "releases"))
		return len(entries)
	}
	repo.Commit("app", map[string]string{"drover.yml": yml("skip")})

	out, code := run(t, repo.Dir, "tasks")
	if code != 0 || !strings.Contains(out, "once per rollout, on one host; not on --hotfix") || strings.Count(out, "not on --hotfix") != 1 {
		t.Errorf("tasks does not mark migrate alone as skipped by --hotfix: exit %d\n%s", code, out)
	}
	if out, code = run(t, repo.Dir, "deploy", "test"); code != 0 {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}
	if got := ran(); got != "build\nmigrate\n" {
		t.Errorf("deploy ran %q, want build and migrate", got)
	}

	repo.Commit("fix", map[string]string{"fix.txt": "1"})
	out, code = run(t, repo.Dir, "deploy", "test", "--hotfix")
	if code != 0 {
		t.Fatalf("deploy --hotfix: exit %d\n%s", code, out)
	}
	if got := ran(); got != "build\n" {
		t.Errorf("deploy --hotfix ran %q, want build only", got)
	}
	if !strings.Contains(out, "\nskipped for --hotfix: hook migrate, cleanup\n") || !strings.Contains(out, "hotfix (code only)") {
		t.Errorf("deploy --hotfix does not say what it skipped:\n%s", out)
	}
	if n := releases(); n != 2 {
		t.Errorf("deploy --hotfix with keep_releases 1 left %d releases, want 2 (no cleanup)", n)
	}
	if out, code = run(t, repo.Dir, "releases", "test"); code != 0 || strings.Count(out, "hotfix") != 1 || !strings.Contains(out, "active") {
		t.Errorf("releases does not mark the active hotfix release alone: exit %d\n%s", code, out)
	}

	repo.Commit("fix 2", map[string]string{"fix.txt": "2"})
	out, code = run(t, repo.Dir, "deploy", "test", "--hotfix", "-o", "json")
	if code != 0 {
		t.Fatalf("deploy --hotfix -o json: exit %d\n%s", code, out)
	}
	var rep struct {
		Hotfix       bool `json:"hotfix"`
		SkippedHooks []struct {
			Hook, Stage, Reason string
		} `json:"skipped_hooks"`
		SkippedCleanup string `json:"skipped_cleanup"`
	}
	if i := strings.Index(out, "{\n"); i < 0 || json.Unmarshal([]byte(out[i:]), &rep) != nil {
		t.Fatalf("deploy --hotfix -o json printed no JSON report:\n%s", out)
	}
	if !rep.Hotfix || len(rep.SkippedHooks) != 1 || rep.SkippedHooks[0].Hook != "migrate" || rep.SkippedHooks[0].Reason != "--hotfix" || rep.SkippedCleanup != "--hotfix" {
		t.Errorf("JSON report %+v does not name migrate and cleanup as skipped for --hotfix:\n%s", rep, out)
	}
	if got := ran(); got != "build\n" {
		t.Errorf("deploy --hotfix -o json ran %q", got)
	}

	// A plain deploy cleans up again.
	repo.Commit("fix 3", map[string]string{"fix.txt": "3"})
	if out, code = run(t, repo.Dir, "deploy", "test"); code != 0 || strings.Contains(out, "--hotfix") {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}
	if got, n := ran(), releases(); got != "build\nmigrate\n" || n != 2 {
		t.Errorf("plain deploy after hotfixes ran %q and left %d releases (want build, migrate; the active one and the rollback target)", got, n)
	}

	if err := os.WriteFile(filepath.Join(repo.Dir, "drover.yml"), []byte(yml("maybe")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code = run(t, repo.Dir, "deploy", "test", "--hotfix")
	if code != 2 || !strings.Contains(out, "drover.yml:7") || !strings.Contains(out, "hooks.migrate.hotfix") || !strings.Contains(out, `"maybe" is not skip or run`) {
		t.Errorf("hotfix: maybe: exit %d, want 2 naming drover.yml:7 hooks.migrate.hotfix:\n%s", code, out)
	}
}
