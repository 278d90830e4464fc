package rollout_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport"
	"github.com/drover/drover/internal/transport/local"
)

// rootedConn reaches a host on this machine with its own deploy root: it
// rewrites deploy_to in each request, so several "hosts" share one machine.
type rootedConn struct {
	conn *local.Conn
	root string
}

// rootedTarget is host h on this machine, deployed under root, through the
// node protocol adapter the push transports use.
func rootedTarget(bin string, h *config.Host, root string) rollout.Target {
	return transport.NewNode(&rootedConn{conn: &local.Conn{Binary: bin}, root: root}, h)
}

func (t *rootedConn) Serve(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	br := bufio.NewReader(stdin)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return err
	}
	var req node.Request
	if err := json.Unmarshal(line, &req); err != nil {
		return err
	}
	app := *req.App
	app.DeployTo = t.root
	req.App = &app
	out, _ := json.Marshal(&req)
	return t.conn.Serve(ctx, io.MultiReader(bytes.NewReader(append(out, '\n')), br), stdout)
}

type nopObserver struct {
	mu     sync.Mutex
	events []string
}

func (o *nopObserver) Phase(string) {}
func (o *nopObserver) Event(host string, ev release.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ev.Kind == release.EventStepStart {
		o.events = append(o.events, host+" "+ev.Step)
	}
}
func (o *nopObserver) Done(string, *rollout.HostResult) {}

type fleet struct {
	app     *apptest.App
	targets []rollout.Target
	roots   []string
	env     *config.Environment
	log     string
}

func newFleet(t *testing.T, n int, extraHooks string) *fleet {
	t.Helper()
	logFile := filepath.Join(t.TempDir(), "hooks.log")
	hosts := ""
	for i := range n {
		roles := "[web]"
		if i == 0 {
			roles = "[web, db]"
		}
		hosts += "      - {name: h" + string(rune('1'+i)) + ", transport: local, roles: " + roles + "}\n"
	}
	hooks := "  migrate: {run_once: true, role: db, commands: ['echo migrate $DROVER_HOST >> " + logFile + "']}\n" +
		"  build: {when: prepare, commands: ['echo build $DROVER_HOST >> " + logFile + "']}\n" + extraHooks
	a := apptest.New(t, apptest.Options{NoService: true, Hosts: hosts, Extra: hooks})
	f := &fleet{app: a, env: a.Config.Environments["test"], log: logFile}
	bin := apptest.DroverBinary(t)
	for _, h := range f.env.Hosts {
		root := filepath.Join(t.TempDir(), h.Name)
		f.roots = append(f.roots, root)
		f.targets = append(f.targets, rootedTarget(bin, h, root))
	}
	return f
}

func (f *fleet) plan(commit string, n int) *rollout.Plan {
	return &rollout.Plan{App: f.app.Config, Env: f.env, ID: release.NewID(time.Unix(int64(n)*1000, 0), commit), Commit: commit,
		Spec: "branch:main", By: "test@here", Strategy: config.Strategy{Type: config.StrategyAllAtOnce}, Lease: 10 * time.Second}
}

func (f *fleet) current(i int) string {
	target, err := os.Readlink(filepath.Join(f.roots[i], "current"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

func (f *fleet) hookLog(t *testing.T) string {
	b, _ := os.ReadFile(f.log)
	return string(b)
}

func TestTwoPhaseRunOnceExactlyOnce(t *testing.T) {
	f := newFleet(t, 3, "")
	plan := f.plan(f.app.Repo.Head(), 1)
	rep, err := rollout.Deploy(context.Background(), plan, f.targets, &nopObserver{})
	if err != nil || !rep.OK() {
		t.Fatalf("deploy: %v %+v", err, rep)
	}
	for i := range f.targets {
		if f.current(i) != plan.ID {
			t.Errorf("host %d current %s, want %s", i, f.current(i), plan.ID)
		}
	}
	log := f.hookLog(t)
	if n := strings.Count(log, "migrate "); n != 1 || !strings.Contains(log, "migrate h1") {
		t.Errorf("run_once hook ran %d times:\n%s", n, log)
	}
	if n := strings.Count(log, "build "); n != 3 {
		t.Errorf("prepare hook ran %d times, want 3:\n%s", n, log)
	}
	// Every build happened before the migration: prepare everywhere, then run-once.
	if strings.LastIndex(log, "build ") > strings.Index(log, "migrate ") {
		t.Errorf("migration ran before every host prepared:\n%s", log)
	}
}

func TestNoHostActivatesWhenOneFailsToPrepare(t *testing.T) {
	f := newFleet(t, 3, "  flaky: {when: prepare, commands: ['if [ $DROVER_HOST = h3 ]; then echo h3 is broken >&2; test -f $DROVER_SHARED_DIR/fixed; fi']}\n")
	ctx := context.Background()
	first := f.plan(f.app.Repo.Head(), 1)
	// h3 needs shared/fixed to prepare: give it for the first release.
	os.MkdirAll(filepath.Join(f.roots[2], "shared"), 0o755)
	os.WriteFile(filepath.Join(f.roots[2], "shared", "fixed"), nil, 0o644)
	if rep, err := rollout.Deploy(ctx, first, f.targets, &nopObserver{}); err != nil || !rep.OK() {
		t.Fatalf("first deploy: %v %+v", err, rep)
	}
	os.Remove(filepath.Join(f.roots[2], "shared", "fixed"))

	c2 := f.app.Repo.Commit("two", map[string]string{"two": "2"})
	second := f.plan(c2, 2)
	rep, err := rollout.Deploy(ctx, second, f.targets, &nopObserver{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatal("deploy reported success with a host that failed to prepare")
	}
	for i := range f.targets {
		if f.current(i) != first.ID {
			t.Errorf("host %d switched to %s although h3 failed to prepare", i, f.current(i))
		}
	}
	var h3 *rollout.HostResult
	for _, h := range rep.Hosts {
		if h.Host == "h3" {
			h3 = h
		}
	}
	if h3 == nil || h3.State != rollout.StateFailed || h3.Step != "hook:flaky" || !strings.Contains(strings.Join(h3.Tail, "\n"), "h3 is broken") {
		t.Fatalf("h3 result: %+v", h3)
	}
	if !strings.Contains(rep.Err, "resume") {
		t.Errorf("report does not say what to do: %q", rep.Err)
	}

	// Fix h3 and resume: the same release finishes, h1 and h2 skip their
	// finished prepare steps.
	os.WriteFile(filepath.Join(f.roots[2], "shared", "fixed"), nil, 0o644)
	hosts := rollout.Releases(ctx, second, f.targets)
	id, commit, _, err := rollout.Resumable(hosts)
	if err != nil || id != second.ID || commit != c2 {
		t.Fatalf("resumable = %s %s %v", id, commit, err)
	}
	obs := &nopObserver{}
	rep, err = rollout.Deploy(ctx, second, f.targets, obs)
	if err != nil || !rep.OK() {
		t.Fatalf("resume: %v %+v", err, rep)
	}
	for i := range f.targets {
		if f.current(i) != second.ID {
			t.Errorf("host %d current %s after resume", i, f.current(i))
		}
	}
	for _, ev := range obs.events {
		if strings.HasPrefix(ev, "h1 checkout") || strings.HasPrefix(ev, "h2 fetch") {
			t.Errorf("resume redid a finished step: %s", ev)
		}
	}
}

func TestLockHeldFailsFast(t *testing.T) {
	f := newFleet(t, 2, "")
	lk := &lock.File{Path: filepath.Join(f.roots[1], ".drover", "lock")}
	if _, err := lk.Acquire(lock.Holder{Owner: "alice@laptop", PID: 4242, Command: "deploy test", Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	plan := f.plan(f.app.Repo.Head(), 1)
	start := time.Now()
	_, err := rollout.Deploy(context.Background(), plan, f.targets, &nopObserver{})
	if err == nil || !strings.Contains(err.Error(), "alice@laptop") || !strings.Contains(err.Error(), "h2") {
		t.Fatalf("deploy with a held lock: %v", err)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("waited %s on a held lock instead of failing fast", time.Since(start))
	}
	if f.current(0) != "" {
		t.Error("h1 deployed although h2 was locked")
	}
	// h1's lock was released again.
	if h, _ := (&lock.File{Path: filepath.Join(f.roots[0], ".drover", "lock")}).Read(); h != nil {
		t.Errorf("h1 still locked by %+v", h)
	}
	// And a deploy while the first holds the lock on every host waits for nobody.
	plan2 := f.plan(f.app.Repo.Head(), 2)
	if _, err := lk.Break(); err != nil {
		t.Fatal(err)
	}
	rep, err := rollout.Deploy(context.Background(), plan2, f.targets, &nopObserver{})
	if err != nil || !rep.OK() {
		t.Fatalf("deploy after unlock: %v", err)
	}
	if h, _ := lk.Read(); h != nil {
		t.Errorf("lock left behind after a deploy: %+v", h)
	}
}

func TestRollbackTargetRefusesMissingHost(t *testing.T) {
	hosts := []*rollout.HostReleases{
		{Host: "a", Active: "2", Target: "1", Releases: []*release.Record{{ID: "1", Status: release.StatusGood}, {ID: "2", Status: release.StatusActive}}},
		{Host: "b", Active: "2", Target: "", Releases: []*release.Record{{ID: "2", Status: release.StatusActive}}},
	}
	if _, err := rollout.RollbackTarget(hosts, ""); err == nil || !strings.Contains(err.Error(), "disagree") {
		t.Errorf("no common target: %v", err)
	}
	if _, err := rollout.RollbackTarget(hosts, "1"); err == nil || !strings.Contains(err.Error(), "b (not there)") {
		t.Errorf("--to missing on b: %v", err)
	}
	hosts[1].Releases = append(hosts[1].Releases, &release.Record{ID: "1", Status: release.StatusGood})
	hosts[1].Target = "1"
	if to, err := rollout.RollbackTarget(hosts, ""); err != nil || to != "1" {
		t.Errorf("common target: %s %v", to, err)
	}
}

// TestRacingDeploysOneWins starts two deploys of one environment at once:
// exactly one runs, the other fails naming the lock holder, and neither
// leaves a lock behind.
func TestRacingDeploysOneWins(t *testing.T) {
	f := newFleet(t, 3, "")
	c := f.app.Repo.Head()
	plans := []*rollout.Plan{f.plan(c, 1), f.plan(c, 2)}
	plans[0].By, plans[1].By = "alice@a", "bob@b"
	type outcome struct {
		rep *rollout.Report
		err error
	}
	out := make(chan outcome, 2)
	for _, p := range plans {
		go func() {
			rep, err := rollout.Deploy(context.Background(), p, f.targets, &nopObserver{})
			out <- outcome{rep, err}
		}()
	}
	wins, losses := 0, 0
	for range 2 {
		o := <-out
		switch {
		case o.err == nil && o.rep.OK():
			wins++
		case o.err != nil && strings.Contains(o.err.Error(), "deploy lock held by"):
			losses++
		default:
			t.Errorf("unexpected outcome: %v %+v", o.err, o.rep)
		}
	}
	if wins != 1 || losses != 1 {
		t.Fatalf("%d deploys won and %d lost, want 1 and 1", wins, losses)
	}
	for i := range f.targets {
		if h, _ := (&lock.File{Path: filepath.Join(f.roots[i], ".drover", "lock")}).Read(); h != nil {
			t.Errorf("host %d still locked by %+v", i, h)
		}
	}
}
