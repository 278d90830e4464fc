package main_test

import (
	"os"
	"path/filepath"
	"strconv"
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

// TestLockLeaseValidated: a lease the lock cannot work with is refused
// before any host is touched, naming the flag and the bounds.
func TestLockLeaseValidated(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	a := apptest.New(t, apptest.Options{NoService: true})
	for _, args := range [][]string{
		{"deploy", "test", "--lock-lease", "0s"},
		{"deploy", "test", "--lock-lease", "-5s"},
		{"prepare", "test", "--lock-lease", "1s"},
		{"resume", "test", "--lock-lease", "1s"},
		{"rollback", "test", "--lock-lease", "48h"},
	} {
		out, code := run(t, a.Repo.Dir, args...)
		if code != 2 || !strings.Contains(out, "--lock-lease") || !strings.Contains(out, "between 5s and 1h") {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
	}
	if _, err := os.Stat(filepath.Join(a.DeployTo, "releases")); err == nil {
		t.Error("a refused command changed the host")
	}
}

// TestHostChangingCommandsRespectLock: while someone holds the deploy lock
// (here `drover lock`), cleanup, exec, service and rollback refuse, name the
// holder and change nothing; read-only commands still work; after unlock
// they run, and leave no lock behind.
func TestHostChangingCommandsRespectLock(t *testing.T) {
	a := deployed(t, apptest.Options{})
	a.Repo.Commit("two", map[string]string{"two": "2"})
	if out, code := run(t, a.Repo.Dir, "deploy", "test"); code != 0 {
		t.Fatalf("second deploy exit %d:\n%s", code, out)
	}
	current := func() string { l, _ := os.Readlink(filepath.Join(a.DeployTo, "current")); return l }
	before := current()
	pids := func() string {
		b, _ := os.ReadFile(filepath.Join(a.DeployTo, "shared", "pids", "web-"+strconv.Itoa(a.Ports[0])+".pid"))
		return string(b)
	}
	pidBefore := pids()
	if out, code := run(t, a.Repo.Dir, "lock", "test", "--reason", "db maintenance"); code != 0 {
		t.Fatalf("lock exit %d:\n%s", code, out)
	}
	marker := filepath.Join(t.TempDir(), "ran")
	for _, args := range [][]string{
		{"exec", "test", "--", "touch", marker},
		{"cleanup", "test", "--keep", "1"},
		{"service", "restart", "test"},
		{"service", "stop", "test", "web"},
		{"rollback", "test"},
	} {
		out, code := run(t, a.Repo.Dir, args...)
		if code == 0 || !strings.Contains(out, "deploy lock held by") || !strings.Contains(out, "db maintenance") {
			t.Errorf("%v under a held lock: exit %d\n%s", args, code, out)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("exec ran under someone else's lock")
	}
	if current() != before {
		t.Errorf("rollback switched under someone else's lock: %s → %s", before, current())
	}
	if entries, _ := os.ReadDir(filepath.Join(a.DeployTo, "releases")); len(entries) != 2 {
		t.Errorf("cleanup removed releases under someone else's lock: %d left", len(entries))
	}
	if pids() != pidBefore || pidBefore == "" {
		t.Errorf("service restarted under someone else's lock: pid %q → %q", pidBefore, pids())
	}
	if out, code := run(t, a.Repo.Dir, "service", "status", "test"); code != 0 || !strings.Contains(out, "running") {
		t.Errorf("service status under a lock: exit %d\n%s", code, out)
	}

	if out, code := run(t, a.Repo.Dir, "unlock", "test"); code != 0 {
		t.Fatalf("unlock exit %d:\n%s", code, out)
	}
	if out, code := run(t, a.Repo.Dir, "exec", "test", "--", "touch", marker); code != 0 {
		t.Fatalf("exec after unlock: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Error("exec after unlock did not run")
	}
	if out, code := run(t, a.Repo.Dir, "lock", "test"); code != 0 {
		t.Errorf("exec left the lock behind: lock exit %d\n%s", code, out)
	}
	run(t, a.Repo.Dir, "unlock", "test")
}
