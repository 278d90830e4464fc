package release_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

func engine(a *apptest.App) *release.Engine {
	return release.New(a.Config, "test", "local", []string{"web", "db"})
}

var clockBase = time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)

// id makes the n-th release ID of a test, one second apart.
func id(n int, commit string) string {
	return release.NewID(clockBase.Add(time.Duration(n)*time.Second), commit)
}

func prepare(t *testing.T, e *release.Engine, rid, commit string) *release.Record {
	t.Helper()
	rec, err := e.Prepare(context.Background(), release.PrepareOptions{ID: rid, Commit: commit, Spec: "branch:main"})
	if err != nil {
		t.Fatalf("prepare %s: %v", rid, err)
	}
	return rec
}

func get(t *testing.T, port int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		t.Fatalf("GET :%d: %v", port, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func current(t *testing.T, a *apptest.App) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(a.DeployTo, "current"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

func TestPrepareActivateRollback(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{Extra: "  env: {when: prepare, commands: [env | grep ^DROVER_ | sort > drover.env]}\n"})
	e := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	rec := prepare(t, e, r1, c1)
	if rec.Status != release.StatusPrepared {
		t.Fatalf("status %s", rec.Status)
	}
	if current(t, a) != "" {
		t.Fatal("prepare switched current")
	}
	dir := filepath.Join(a.DeployTo, "releases", r1)
	env, err := os.ReadFile(filepath.Join(dir, "drover.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"DROVER_APP=hello", "DROVER_ENV=test", "DROVER_RELEASE=" + r1, "DROVER_RELEASE_DIR=" + dir,
		"DROVER_SHARED_DIR=" + filepath.Join(a.DeployTo, "shared"), "DROVER_COMMIT=" + c1, "DROVER_HOST=local", "DROVER_ROLES=web,db"} {
		if !strings.Contains(string(env), want+"\n") {
			t.Errorf("hook env lacks %s:\n%s", want, env)
		}
	}
	// Shared paths are links into shared/, even where the repo had a directory.
	for _, p := range []string{"log", "tmp/pids", "public/uploads", ".env"} {
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Errorf("%s is not a symlink: %v", p, err)
		}
	}

	if err := e.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	if current(t, a) != r1 {
		t.Fatalf("current = %s", current(t, a))
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r1) {
		t.Fatalf("service answers %q, not release %s", body, r1)
	}

	c2 := a.Repo.Commit("second", map[string]string{"two.txt": "2"})
	r2 := id(2, c2)
	prepare(t, e, r2, c2)
	if err := e.Activate(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r2) {
		t.Fatalf("after activate r2 service answers %q", body)
	}
	target, err := e.RollbackTarget()
	if err != nil || target != r1 {
		t.Fatalf("rollback target %q %v, want %s", target, err, r1)
	}
	to, err := e.Rollback(ctx, "")
	if err != nil || to != r1 {
		t.Fatalf("rollback = %s, %v", to, err)
	}
	if current(t, a) != r1 || !strings.Contains(get(t, a.Ports[0]), r1) {
		t.Fatalf("after rollback current=%s", current(t, a))
	}
	recs, active, err := e.Releases()
	if err != nil || active != r1 {
		t.Fatalf("releases: active %s %v", active, err)
	}
	statuses := map[string]release.Status{}
	for _, r := range recs {
		statuses[r.ID] = r.Status
	}
	if statuses[r1] != release.StatusActive || statuses[r2] != release.StatusRolledBack {
		t.Errorf("statuses after rollback: %v", statuses)
	}
	// Activating the active release again is a no-op.
	if err := e.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
}

func TestSharedNeverOverwritten(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true})
	shared := filepath.Join(a.DeployTo, "shared")
	// A host that already has data: an .env and user uploads.
	if err := os.MkdirAll(filepath.Join(shared, "public", "uploads"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(shared, ".env"), []byte("SECRET=1\n"), 0o600)
	os.WriteFile(filepath.Join(shared, "public", "uploads", "cat.jpg"), []byte("meow"), 0o644)
	// The repo ships its own .env and uploads dir, which must not win.
	c := a.Repo.Commit("ship defaults", map[string]string{".env": "SECRET=default\n", "public/uploads/x": "from repo"})
	e := engine(a)
	prepare(t, e, id(1, c), c)
	if err := e.Activate(context.Background(), id(1, c)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(shared, ".env")); string(b) != "SECRET=1\n" {
		t.Errorf("shared/.env = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(a.DeployTo, "current", "public", "uploads", "cat.jpg")); string(b) != "meow" {
		t.Errorf("upload through current: %q", b)
	}
	if _, err := os.Stat(filepath.Join(shared, "public", "uploads", "x")); err == nil {
		t.Error("the repo's file landed in shared/")
	}
	// A shared path of the wrong kind is an error, and nothing is moved.
	os.RemoveAll(filepath.Join(shared, "log"))
	os.WriteFile(filepath.Join(shared, "log"), []byte("a file"), 0o644)
	c2 := a.Repo.Commit("two", map[string]string{"x": "y"})
	_, err := e.Prepare(context.Background(), release.PrepareOptions{ID: id(2, c2), Commit: c2})
	var se *release.StepError
	if !errors.As(err, &se) || se.Step != "shared" || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("prepare with shared/log a file: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(shared, "log")); string(b) != "a file" {
		t.Error("shared/log was touched")
	}
}

func TestFailingHookAndResume(t *testing.T) {
	a := apptest.New(t, apptest.Options{Extra: "  check: {when: prepare, commands: [echo checking, 'echo \"missing $DROVER_SHARED_DIR/ok\" >&2', test -f $DROVER_SHARED_DIR/ok]}\n"})
	e := engine(a)
	ctx := context.Background()
	c1 := a.Repo.Head()
	// A first good release to stay on.
	os.MkdirAll(filepath.Join(a.DeployTo, "shared"), 0o755)
	os.WriteFile(filepath.Join(a.DeployTo, "shared", "ok"), nil, 0o644)
	prepare(t, e, id(1, c1), c1)
	if err := e.Activate(ctx, id(1, c1)); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(a.DeployTo, "shared", "ok"))
	c2 := a.Repo.Commit("two", map[string]string{"x": "2"})
	r2 := id(2, c2)
	rec, err := e.Prepare(ctx, release.PrepareOptions{ID: r2, Commit: c2})
	var se *release.StepError
	if !errors.As(err, &se) {
		t.Fatalf("prepare with failing hook: %v", err)
	}
	var ee *release.ExitError
	if se.Step != "hook:check" || !errors.As(err, &ee) || ee.Code != 1 {
		t.Errorf("step %s err %v", se.Step, err)
	}
	if !strings.Contains(strings.Join(se.Tail, "\n"), "missing") {
		t.Errorf("tail does not show stderr: %q", se.Tail)
	}
	if rec.Status != release.StatusFailed || current(t, a) != id(1, c1) {
		t.Fatalf("status %s, current %s", rec.Status, current(t, a))
	}
	if err := e.Activate(ctx, r2); !errors.Is(err, release.ErrNotPrepared) {
		t.Fatalf("activated a failed release: %v", err)
	}
	// Fix the cause, resume: done steps are skipped, the hook reruns.
	os.WriteFile(filepath.Join(a.DeployTo, "shared", "ok"), nil, 0o644)
	var started []string
	e.Emit = func(ev release.Event) {
		if ev.Kind == release.EventStepStart {
			started = append(started, ev.Step)
		}
	}
	rec, err = e.Prepare(ctx, release.PrepareOptions{ID: r2, Commit: c2})
	if err != nil || rec.Status != release.StatusPrepared {
		t.Fatalf("resume: %v", err)
	}
	if strings.Join(started, ",") != "hook:check" {
		t.Errorf("resume ran steps %v, want only hook:check", started)
	}
	// The same ID for another commit is refused: a release dir is never reused.
	if _, err := e.Prepare(ctx, release.PrepareOptions{ID: r2, Commit: c1}); err == nil {
		t.Fatal("reused a release ID for another commit")
	}
}

func TestFailedHealthCheckRevertsToPrevious(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{Ports: 2})
	e := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e, r1, c1)
	if err := e.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	// Release 2's server exits at once (apptest's hook breaks it on BROKEN).
	c2 := a.Repo.Commit("broken", map[string]string{"BROKEN": "yes"})
	r2 := id(2, c2)
	prepare(t, e, r2, c2)
	err := e.Activate(ctx, r2)
	if err == nil || !strings.Contains(err.Error(), "switched back to "+r1) {
		t.Fatalf("activate of a broken release: %v", err)
	}
	if current(t, a) != r1 {
		t.Fatalf("current = %s after failed health, want %s", current(t, a), r1)
	}
	for _, p := range a.Ports {
		if body := get(t, p); !strings.Contains(body, r1) {
			t.Errorf("port %d answers %q, want release %s", p, body, r1)
		}
	}
	recs, _, _ := e.Releases()
	for _, r := range recs {
		if r.ID == r2 && r.Status != release.StatusFailed {
			t.Errorf("broken release status %s", r.Status)
		}
	}
}

func TestFirstReleaseFailingHealthLeavesNoCurrent(t *testing.T) {
	a := apptest.New(t, apptest.Options{})
	c := a.Repo.Commit("broken", map[string]string{"BROKEN": "yes"})
	e := engine(a)
	prepare(t, e, id(1, c), c)
	if err := e.Activate(context.Background(), id(1, c)); err == nil {
		t.Fatal("a release whose server exits was activated")
	}
	if cur := current(t, a); cur != "" {
		t.Fatalf("current points at %s, a release that never became healthy", cur)
	}
}

func TestCleanup(t *testing.T) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{NoService: true, Keep: 2})
	e := engine(a)
	var ids []string
	for i := 1; i <= 5; i++ {
		c := a.Repo.Commit(fmt.Sprint("c", i), map[string]string{"n": fmt.Sprint(i)})
		rid := id(i, c)
		opts := release.PrepareOptions{ID: rid, Commit: c}
		if i == 1 {
			opts.KeepDays = 24 * time.Hour // pinned
		}
		if _, err := e.Prepare(ctx, opts); err != nil {
			t.Fatal(err)
		}
		if i != 3 { // 3 stays prepared, never activated
			if err := e.Activate(ctx, rid); err != nil {
				t.Fatal(err)
			}
		}
		ids = append(ids, rid)
	}
	// A failed one, newest of all: it goes first.
	os.WriteFile(filepath.Join(a.Repo.Dir, "x"), nil, 0o644)
	bad := a.Repo.Commit("bad", map[string]string{"fail": "1"})
	failed := id(9, bad)
	cfg := *a.Config
	e2 := *e
	e2.App = &cfg
	cfg.Repo = "/nonexistent/repo"
	if _, err := e2.Prepare(ctx, release.PrepareOptions{ID: failed, Commit: bad}); err == nil {
		t.Fatal("prepare from a missing repo worked")
	}
	removed, err := e.Cleanup(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	// Active 5, previous good 4, pinned 1 stay; 3 and 2 go; the failed one goes.
	want := map[string]bool{ids[2]: true, ids[1]: true, failed: true}
	if len(removed) != len(want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	for _, r := range removed {
		if !want[r] {
			t.Errorf("removed %s", r)
		}
		if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", r)); !os.IsNotExist(err) {
			t.Errorf("%s still on disk", r)
		}
	}
	for _, keep := range []string{ids[0], ids[3], ids[4]} {
		if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", keep)); err != nil {
			t.Errorf("%s was removed: %v", keep, err)
		}
	}
	// keep 1 still never removes the active release or the rollback target.
	if _, err := e.Cleanup(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for _, keep := range []string{ids[3], ids[4]} {
		if _, err := os.Stat(filepath.Join(a.DeployTo, "releases", keep)); err != nil {
			t.Errorf("keep 1 removed %s", keep)
		}
	}
}

func TestExec(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true})
	e := engine(a)
	var out strings.Builder
	if err := e.Exec(context.Background(), "pwd", nil, &out, &out); err == nil {
		t.Fatal("exec without a release worked")
	}
	c := a.Repo.Head()
	prepare(t, e, id(1, c), c)
	if err := e.Activate(context.Background(), id(1, c)); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := e.Exec(context.Background(), "cat README; echo $DROVER_RELEASE; exit 0", nil, &out, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "example\n"+id(1, c)+"\n" {
		t.Errorf("exec output %q", got)
	}
	var ee *release.ExitError
	if err := e.Exec(context.Background(), "exit 7", nil, &out, &out); !errors.As(err, &ee) || ee.Code != 7 {
		t.Errorf("exit code: %v", err)
	}
}

// TestEnginesSerialisePerDeployTo runs two engines on one deploy_to at
// once (a killed deployer's hook still running while a new deploy starts):
// the second waits, saying so, until the first is done, and both records
// survive in the state file.
func TestEnginesSerialisePerDeployTo(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "gate")
	a := apptest.New(t, apptest.Options{NoService: true, Extra: "  slow: {when: prepare, commands: ['if [ -f SLOW ]; then touch " + gate + ".in; while [ ! -f " + gate + " ]; do sleep 0.02; done; fi']}\n"})
	ctx := context.Background()
	c1 := a.Repo.Commit("slow", map[string]string{"SLOW": "1"})
	c2 := a.Repo.Commit("fast", map[string]string{"SLOW": "\x00delete"})
	first, second := engine(a), engine(a)
	done1 := make(chan error, 1)
	go func() {
		_, err := first.Prepare(ctx, release.PrepareOptions{ID: id(1, c1), Commit: c1})
		done1 <- err
	}()
	waitFile(t, gate+".in")
	waiting := make(chan struct{})
	second.Emit = func(ev release.Event) {
		if ev.Kind == release.EventInfo && strings.Contains(ev.Line, "waiting for another drover process") {
			close(waiting)
		}
	}
	done2 := make(chan error, 1)
	go func() {
		_, err := second.Prepare(ctx, release.PrepareOptions{ID: id(2, c2), Commit: c2})
		done2 <- err
	}()
	select {
	case <-waiting:
	case err := <-done2:
		t.Fatalf("second engine ran while the first was preparing: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("second engine neither waited nor finished")
	}
	os.WriteFile(gate, nil, 0o644)
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	recs, _, err := first.Releases()
	if err != nil || len(recs) != 2 {
		t.Fatalf("state after two engines: %d records, %v", len(recs), err)
	}
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
