package release_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// commitConfig commits yaml as the app's drover.yml (plus files) and returns
// the commit and the engine a deploy of it runs: the deployer's file with
// the commit's hooks and services, as the CLI builds it.
func commitConfig(t *testing.T, a *apptest.App, msg, yaml string, files map[string]string) (string, *release.Engine) {
	t.Helper()
	if files == nil {
		files = map[string]string{}
	}
	files["drover.yml"] = yaml
	c := a.Repo.Commit(msg, files)
	code, err := config.ParseCode(filepath.Join(a.Repo.Dir, "drover.yml"), []byte(yaml))
	if err != nil {
		t.Fatalf("%s: %v\n%s", msg, err, yaml)
	}
	return c, release.New(a.Config.AtCommit(code), "test", "local", []string{"web", "db"})
}

// A release whose new start command fails is switched back, and the
// previous release is restarted with its own services, not the new ones.
func TestRevertRestartsPreviousWithItsOwnServices(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{})
	e1 := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e1, r1, c1)
	if err := e1.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	v2 := strings.Replace(a.YAML, "start: ./bin/hello", "start: ./bin/app", 1)
	c2, e2 := commitConfig(t, a, "v2 runs bin/app", v2, map[string]string{"bin/app": "#!/bin/sh\nexit 1\n"})
	r2 := id(2, c2)
	prepare(t, e2, r2, c2)
	err := e2.Activate(ctx, r2)
	if err == nil {
		t.Fatal("a release whose server exits was activated")
	}
	if current(t, a) != r1 {
		t.Fatalf("current = %s, want %s", current(t, a), r1)
	}
	if !strings.Contains(err.Error(), "serves "+r1+" (healthy)") {
		t.Fatalf("after the switch back: %v", err)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r1) {
		t.Fatalf("port answers %q, want %s", body, r1)
	}
}

// After a rollback, service commands act with the services of the release
// current runs, not with the deployer's (newer) file.
func TestServiceActionUsesTheRunningReleasesServices(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{})
	e1 := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e1, r1, c1)
	if err := e1.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	v2 := strings.Replace(a.YAML, "start: ./bin/hello", "start: ./bin/app", 1)
	c2, e2 := commitConfig(t, a, "v2 runs bin/app", v2, map[string]string{"bin/app": "#!/bin/sh\nexec ./bin/hello \"$@\"\n"})
	r2 := id(2, c2)
	prepare(t, e2, r2, c2)
	if err := e2.Activate(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if to, err := e2.Rollback(ctx, ""); err != nil || to != r1 {
		t.Fatalf("rollback: %s, %v", to, err)
	}
	if _, err := e2.ServiceAction(ctx, "restart", "", 0); err != nil {
		t.Fatalf("restart after a rollback: %v", err)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r1) {
		t.Fatalf("port answers %q, want %s", body, r1)
	}
	procs, err := e2.ServiceAction(ctx, "status", "web", 0)
	if err != nil || len(procs) != 1 || !procs[0].Running {
		t.Fatalf("status: %+v, %v", procs, err)
	}
}

// A service the previous release ran and the new one no longer defines is
// stopped once the new release is healthy, and reported.
func TestActivateStopsRemovedServices(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{})
	admin := apptest.FreePorts(t, 1)[0]
	v1 := strings.Replace(a.YAML, "environments:", fmt.Sprintf("  admin:\n    start: ./bin/hello --port {{port}}\n    ports: [%d]\n    health: {http: \"http://127.0.0.1:{{port}}/healthz\", timeout: 10s}\n    stop_grace: 5s\nenvironments:", admin), 1)
	c1, e1 := commitConfig(t, a, "v1 with admin", v1, nil)
	r1 := id(1, c1)
	prepare(t, e1, r1, c1)
	if err := e1.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	if body := get(t, admin); !strings.Contains(body, r1) {
		t.Fatalf("admin answers %q", body)
	}
	c2, e2 := commitConfig(t, a, "v2 without admin", a.YAML, nil)
	var mu sync.Mutex
	var events []string
	e2.Emit = func(ev release.Event) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, ev.Line)
	}
	r2 := id(2, c2)
	prepare(t, e2, r2, c2)
	if err := e2.Activate(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", admin)); err == nil {
		resp.Body.Close()
		t.Fatalf("admin, removed in %s, still answers", r2)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.ContainsFunc(events, func(l string) bool { return strings.Contains(l, "stopped service admin") }) {
		t.Fatalf("no event says admin was stopped: %q", events)
	}
}

// A failed after_activate hook leaves the new release active and serving;
// the error is an *ActivateError that says so and names the hook.
func TestFailedAfterActivateHookSaysTheReleaseServes(t *testing.T) {
	ctx := context.Background()
	flag := filepath.Join(t.TempDir(), "flag")
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a := apptest.New(t, apptest.Options{Extra: "  notify: {when: after_activate, commands: ['test ! -f " + flag + "']}\n"})
	e := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e, r1, c1)
	err := e.Activate(ctx, r1)
	var ae *release.ActivateError
	if !errors.As(err, &ae) {
		t.Fatalf("error %T %v is not an *ActivateError", err, err)
	}
	if ae.Serving.Release != r1 || !ae.Serving.Healthy {
		t.Errorf("Serving = %+v, want %s healthy", ae.Serving, r1)
	}
	for _, want := range []string{"after_activate hook notify failed", "serves " + r1 + " (healthy)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "switched back") {
		t.Errorf("error %q says the host was switched back", err)
	}
	if current(t, a) != r1 {
		t.Fatalf("current = %s, want %s", current(t, a), r1)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r1) {
		t.Fatalf("port answers %q, want %s", body, r1)
	}
}
