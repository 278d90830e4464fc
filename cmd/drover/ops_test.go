package main_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/testenv/apptest"
)

// deployed is the example app deployed once to this machine with the real
// binary, ready for the commands that act on a deployed host.
func deployed(t *testing.T, o apptest.Options) *apptest.App {
	t.Helper()
	if testing.Short() {
		t.Skip("builds drover and deploys the example app")
	}
	a := apptest.New(t, o)
	if out, code := run(t, a.Repo.Dir, "deploy", "test"); code != 0 {
		t.Fatalf("deploy exit %d:\n%s", code, out)
	}
	return a
}

// TestExecKeepsArgv: the words after -- reach the host as they were typed,
// one argument each, with nothing expanded by a shell along the way.
func TestExecKeepsArgv(t *testing.T) {
	a := deployed(t, apptest.Options{NoService: true})
	marker := filepath.Join(t.TempDir(), "expanded")
	args := []string{"a b", `it's "quoted"`, "$(touch " + marker + ")", "`id`", "$HOME", "back\\slash", ""}
	out, code := run(t, a.Repo.Dir, append([]string{"exec", "test", "--", "printf", "<%s>\\n"}, args...)...)
	if code != 0 {
		t.Fatalf("exec exit %d:\n%s", code, out)
	}
	var want strings.Builder
	for _, arg := range args {
		want.WriteString("<" + arg + ">\n")
	}
	if out != want.String() {
		t.Errorf("exec printed\n%s\nwant\n%s", out, want.String())
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("an argument was run by a shell: $(touch ...) created its file")
	}
	// One argument stays a shell command line, as with ssh HOST 'CMD'.
	out, code = run(t, a.Repo.Dir, "exec", "test", "--", "echo one two | wc -w")
	if code != 0 || strings.TrimSpace(out) != "2" {
		t.Errorf("exec of a command line: exit %d: %q", code, out)
	}
}
