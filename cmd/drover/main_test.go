package main_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/gitrepo"
)

// run runs the real drover binary in dir and returns its output and exit code.
func run(t *testing.T, dir string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(apptest.DroverBinary(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+t.TempDir(), "XDG_CACHE_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// TestDemo is the README's first command: a real deploy of the bundled
// example app to this machine, service running, URL printed.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and deploys the example app")
	}
	dir := t.TempDir()
	ports := apptest.FreePorts(t, 2)
	portArgs := []string{"--port", fmt.Sprint(ports[0]), "--port", fmt.Sprint(ports[1])}
	t.Cleanup(func() { apptest.StopPIDs(filepath.Join(dir, "srv", "shared", "pids")) })
	out, code := run(t, dir, append([]string{"demo", "--dir", dir}, portArgs...)...)
	url := fmt.Sprintf("http://127.0.0.1:%d/", ports[0])
	if code != 0 || !strings.Contains(out, "The example app is running: "+url) {
		t.Fatalf("demo exit %d:\n%s", code, out)
	}
	first := get(t, url)
	// Again: a redeploy restarts the service on the new release.
	out, code = run(t, dir, append([]string{"demo", "--dir", dir}, portArgs...)...)
	if code != 0 {
		t.Fatalf("second demo exit %d:\n%s", code, out)
	}
	second := get(t, url)
	if first == second || !strings.Contains(second, "release: ") {
		t.Errorf("second deploy did not change the running release:\n%s\n%s", first, second)
	}
	out, code = run(t, filepath.Join(dir, "src"), "releases", "demo")
	if code != 0 || strings.Count(out, "local") != 2 || !strings.Contains(out, "active") || !strings.Contains(out, "rollback target") {
		t.Errorf("releases exit %d:\n%s", code, out)
	}
	out, code = run(t, filepath.Join(dir, "src"), "rollback", "demo")
	if code != 0 {
		t.Errorf("rollback exit %d:\n%s", code, out)
	}
	if !strings.Contains(get(t, url), strings.Split(strings.Split(first, "release: ")[1], "\n")[0]) {
		t.Errorf("after rollback the service runs %q, want the first release", get(t, url))
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestBadInputExitsTwo(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "drover.yml"), []byte("app: x\nrepo: /r\ndeploy_to: /srv/x\nenvironments:\n  staging:\n    hosts: [{host: a, rolez: [web]}]\n"), 0o644)
	out, code := run(t, dir, "deploy", "staging")
	if code != 2 || !strings.Contains(out, "drover.yml:6") || !strings.Contains(out, `"rolez"`) {
		t.Errorf("bad key: exit %d\n%s", code, out)
	}
	out, code = run(t, dir, "deploy")
	if code != 2 || !strings.Contains(out, "needs an environment") {
		t.Errorf("missing arg: exit %d\n%s", code, out)
	}
	os.WriteFile(filepath.Join(dir, "drover.yml"), []byte("app: x\nrepo: /nonexistent\ndeploy_to: /srv/x\nenvironments:\n  staging:\n    hosts: [{transport: local}]\n"), 0o644)
	out, code = run(t, dir, "deploy", "staging", "--version", "tag :v1")
	if code != 2 || !strings.Contains(out, "no spaces around the colon") {
		t.Errorf("bad spec: exit %d\n%s", code, out)
	}
	out, code = run(t, dir, "deploy", "production")
	if code != 2 || !strings.Contains(out, `no environment "production"; it has: staging`) {
		t.Errorf("unknown env: exit %d\n%s", code, out)
	}
}

func TestInitAndTasks(t *testing.T) {
	repo := gitrepo.New(t)
	repo.Commit("start", map[string]string{"README": "x"})
	out, code := run(t, repo.Dir, "init")
	if code != 0 || !strings.Contains(out, "wrote") {
		t.Fatalf("init exit %d\n%s", code, out)
	}
	if _, code = run(t, repo.Dir, "init"); code != 2 {
		t.Errorf("init over an existing file exit %d, want 2", code)
	}
	out, code = run(t, repo.Dir, "tasks")
	if code != 0 || !strings.Contains(out, "prepare") || !strings.Contains(out, "web") || !strings.Contains(out, "staging: branch main") {
		t.Errorf("tasks exit %d\n%s", code, out)
	}
	for _, cmd := range []string{"deploy", "prepare", "activate", "rollback", "resume", "releases", "cleanup", "exec", "service", "tasks", "lock", "unlock", "init", "demo", "server", "agent", "status", "release"} {
		out, code := run(t, repo.Dir, cmd, "--help")
		if code != 0 || !strings.Contains(out, "Example") && !strings.Contains(out, "Available Commands") {
			t.Errorf("%s --help: exit %d, no examples:\n%s", cmd, code, out)
		}
	}
	out, code = run(t, repo.Dir, "version")
	if code != 0 || !strings.HasPrefix(out, "drover ") {
		t.Errorf("version: %d %s", code, out)
	}
}
