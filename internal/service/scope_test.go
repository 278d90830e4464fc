package service

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeSystemdRun puts a `systemd-run` on PATH that records its arguments and
// runs the command after `--` (as `systemd-run --scope` does, in the same
// process), or fails at once when fail is set.
func fakeSystemdRun(t *testing.T, fail bool) (argsFile string) {
	t.Helper()
	dir := t.TempDir()
	argsFile = filepath.Join(dir, "args")
	body := "#!/bin/sh\nprintf '%s\\n' \"$@\" >> " + argsFile + "\n"
	if fail {
		body += "echo 'Failed to connect to bus: No such file or directory' >&2\nexit 1\n"
	} else {
		body += "while [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "systemd-run"), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return argsFile
}

// TestSupervisorInItsOwnScope: where systemd runs, the supervisor (and so
// the apps it starts) is started in a transient scope unit of its own, so
// that restarting the unit of whoever started it (`systemctl restart
// drover-agent`) does not kill the app.
func TestSupervisorInItsOwnScope(t *testing.T) {
	args := fakeSystemdRun(t, false)
	f := newSocketFixture(t)
	f.m.Systemd = func() bool { return true }
	s := socketSpec(freePort(t))
	if err := f.m.Restart(testCtx(t), s, f.release); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(args)
	if err != nil {
		t.Fatalf("the supervisor was not started through systemd-run: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(got)), "\n")
	if !slices.Contains(lines, "--scope") || !slices.Contains(lines, "--collect") || !strings.Contains(string(got), ".scope") {
		t.Errorf("systemd-run args %q; want a collected transient scope unit", lines)
	}
	if os.Geteuid() != 0 && !slices.Contains(lines, "--user") {
		t.Errorf("systemd-run args %q; want --user for a non-root drover", lines)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", s.Ports[0]))
	if err != nil {
		t.Fatalf("the service does not serve: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// TestSupervisorScopeFallsBack: a systemd-run that cannot make the scope
// (no bus for this user) must not stop the deploy: the supervisor starts
// as before, and the service serves.
func TestSupervisorScopeFallsBack(t *testing.T) {
	args := fakeSystemdRun(t, true)
	f := newSocketFixture(t)
	f.m.Systemd = func() bool { return true }
	s := socketSpec(freePort(t))
	if err := f.m.Restart(testCtx(t), s, f.release); err != nil {
		t.Fatalf("restart with a failing systemd-run: %v", err)
	}
	if _, err := os.Stat(args); err != nil {
		t.Fatalf("systemd-run was not tried: %v", err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", s.Ports[0]))
	if err != nil {
		t.Fatalf("the service does not serve: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}
