package control_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/dbtest"
)

func sqliteStore(t *testing.T) store.Store {
	t.Helper()
	return openStore(t, "sqlite://"+filepath.Join(t.TempDir(), "drover.db"))
}

func report(t *testing.T, st store.Store, id int64) *rollout.Report {
	t.Helper()
	ro, err := st.GetRollout(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var rep rollout.Report
	if err := json.Unmarshal(ro.Report, &rep); err != nil {
		t.Fatalf("rollout %d report %q: %v", id, ro.Report, err)
	}
	return &rep
}

// TestAllAtOnceBarrier: an all-at-once rollout across agents prepares
// every node, runs the run_once hook on exactly one node with its role,
// and hands out no activation before every node prepared and the hook ran;
// then every node activates once and the environment's current release is
// the new one.
func TestAllAtOnceBarrier(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	f := newFleet(t, st, "shop", "production", "n1:web", "n2:web,db", "n3:web")
	f.set("n3", func(n *simNode) { n.delay = 300 * time.Millisecond }) // the slow one
	runRollouts(t, c, control.RunnerOptions{Name: "a"})
	rel, ro := create(t, c, control.NewRelease{Commit: commit1, Config: droverYML("{type: all-at-once}")})
	got := waitEnded(t, c, ro.ID, 20*time.Second)
	if got.State != string(store.RolloutSucceeded) || got.Runner != "a" || got.Strategy != "all-at-once" {
		t.Fatalf("rollout: %+v\n%s", got, f)
	}
	var lastPrepared, lastHook, firstActivate time.Time
	for _, e := range f.events(nil) {
		switch {
		case e.End && e.Action == api.ActionPrepare && e.At.After(lastPrepared):
			lastPrepared = e.At
		case e.End && e.Action == api.ActionHooks:
			lastHook = e.At
		case !e.End && e.Action == api.ActionActivate && (firstActivate.IsZero() || e.At.Before(firstActivate)):
			firstActivate = e.At
		}
	}
	if firstActivate.Before(lastPrepared) || firstActivate.Before(lastHook) {
		t.Errorf("a node activated before every node prepared and the hook ran:\n%s", f)
	}
	hooks := f.events(func(e simEvent) bool { return !e.End && e.Action == api.ActionHooks })
	if len(hooks) != 1 || hooks[0].Node != "n2" || hooks[0].Stage != "before_activate" || !slices.Equal(hooks[0].RunOnce, []string{"migrate"}) {
		t.Errorf("run_once hooks: %v, want migrate once on n2 (the db node)", hooks)
	}
	for action, want := range map[string][]string{api.ActionPrepare: {"n1", "n2", "n3"}, api.ActionActivate: {"n1", "n2", "n3"}} {
		starts := f.starts(ro.ID, action)
		if names := nodeNames(starts); !slices.Equal(names, want) || slices.ContainsFunc(names, func(n string) bool { return starts[n] != 1 }) {
			t.Errorf("%s ran %v, want once on each of %v", action, starts, want)
		}
	}
	env, err := st.GetEnvironment(context.Background(), "shop", "production")
	if err != nil || env.CurrentRelease != rel.ID {
		t.Errorf("current release %d (%v), want %d", env.CurrentRelease, err, rel.ID)
	}
	if rep := report(t, st, ro.ID); !rep.OK() || len(rep.Hosts) != 3 || rep.Release != got.Release || got.Release == "" {
		t.Errorf("report %+v", rep)
	}
}

// TestRunOnceWithoutConfig: a release created without drover.yml runs
// each stage's run_once hooks through RunOnceAll on one node, the first by
// name, and on no other.
func TestRunOnceWithoutConfig(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	f := newFleet(t, st, "shop", "production", "b:web", "a:web", "c:web")
	runRollouts(t, c, control.RunnerOptions{})
	_, ro := create(t, c, control.NewRelease{Commit: commit1})
	if got := waitEnded(t, c, ro.ID, 20*time.Second); got.State != string(store.RolloutSucceeded) || got.Strategy != "all-at-once" {
		t.Fatalf("rollout %+v\n%s", got, f)
	}
	var once []string
	for _, e := range f.events(func(e simEvent) bool { return !e.End && len(e.RunOnce) > 0 }) {
		if !slices.Equal(e.RunOnce, []string{api.RunOnceAll}) {
			t.Errorf("%s: run_once %v, want [*]", e, e.RunOnce)
		}
		once = append(once, e.Node+" "+e.Action+" "+e.Stage)
	}
	want := []string{"a prepare prepare", "a hooks before_activate", "a hooks after_activate"}
	if !slices.Equal(once, want) {
		t.Errorf("run_once tasks %q, want %q\n%s", once, want, f)
	}
}

// TestNodeTimeoutCountsAgainstMaxFail: a node whose agent dies in its
// prepare or its activation (it never reports) fails after the node
// timeout, counted against max_fail: within it the rollout goes on without
// it, succeeds and names the node; past it the rollout fails (a node dead
// in prepare: no node moves).
func TestNodeTimeoutCountsAgainstMaxFail(t *testing.T) {
	// Long enough for a live simulated agent on a busy machine (-race).
	const nodeTimeout = 2 * time.Second
	for _, tc := range []struct {
		action, maxFail string
		want            store.RolloutState
		activated       []string
	}{
		{api.ActionActivate, "1", store.RolloutSucceeded, []string{"n1", "n3"}}, // n2's agent took it and died
		{api.ActionActivate, "0", store.RolloutFailed, []string{"n1"}},
		{api.ActionPrepare, "1", store.RolloutSucceeded, []string{"n1", "n3"}},
		{api.ActionPrepare, "0", store.RolloutFailed, nil},
	} {
		t.Run(tc.action+"/max_fail="+tc.maxFail, func(t *testing.T) {
			st := sqliteStore(t)
			c := newRunnerControl(t, st, control.Options{})
			f := newFleet(t, st, "shop", "production", "n1:web,db", "n2:web", "n3:web")
			f.set("n2", func(n *simNode) {
				n.silent = func(r store.RolloutNode) bool { return r.Action == tc.action }
			})
			runRollouts(t, c, control.RunnerOptions{NodeTimeout: nodeTimeout})
			start := time.Now()
			_, ro := create(t, c, control.NewRelease{Commit: commit1, Config: droverYML("{type: rolling, batch: 1, max_fail: " + tc.maxFail + "}")})
			got := waitEnded(t, c, ro.ID, 20*time.Second)
			if got.State != string(tc.want) {
				t.Fatalf("rollout %s, want %s: %+v\n%s", got.State, tc.want, got, f)
			}
			if time.Since(start) < nodeTimeout {
				t.Errorf("ended after %s, before the node timeout", time.Since(start))
			}
			rep := report(t, st, ro.ID)
			i := slices.IndexFunc(rep.Hosts, func(h *rollout.HostResult) bool { return h.Host == "n2" })
			if i < 0 || rep.Hosts[i].State == rollout.StateOK || !strings.Contains(rep.Hosts[i].Error, "node n2 stopped reporting") && !strings.Contains(rep.Hosts[i].Error, "node n2 did not pick up") {
				t.Fatalf("n2 in the report: %+v", rep.Hosts)
			}
			i = slices.IndexFunc(got.Nodes, func(n api.RolloutNode) bool { return n.Node == "n2" })
			if got.Nodes[i].State != store.NodeFailed || !strings.Contains(got.Nodes[i].Error, "node-timeout") {
				t.Errorf("n2's row: %+v", got.Nodes[i])
			}
			if activated := nodeNames(f.starts(ro.ID, api.ActionActivate)); !slices.Equal(activated, tc.activated) {
				t.Errorf("activations started on %v, want %v\n%s", activated, tc.activated, f)
			}
		})
	}
}

// TestRollingThroughCommandBalancer: a rolling rollout drains each node in
// the load balancer (a command load balancer over files, allowed with
// AllowCommands) before the node activates and enables it after, one node
// out at a time; without AllowCommands the server refuses the release.
func TestRollingThroughCommandBalancer(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"n1", "n2", "n3"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("up\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	yml := droverYML("{type: rolling, batch: 1, min_healthy: 2}",
		"load_balancer:",
		"  type: command",
		"  drain: echo drain > "+dir+"/{{member}}",
		"  enable: echo up > "+dir+"/{{member}}",
		"  status: cd "+dir+" && for f in *; do echo \"$f $(cat $f)\"; done")
	st := sqliteStore(t)
	strict := newRunnerControl(t, st, control.Options{})
	_, _, err := strict.CreateRelease(context.Background(), control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Commit: commit1, Config: yml, By: "t"})
	var ce *control.ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "--allow-commands") {
		t.Fatalf("without AllowCommands: %v, want a ConfigError naming --allow-commands", err)
	}
	if rels, _ := st.ListReleases(context.Background(), store.ReleaseFilter{}); len(rels) != 0 {
		t.Fatalf("a refused release was recorded: %v", rels)
	}

	c := newRunnerControl(t, st, control.Options{AllowCommands: true})
	f := newFleet(t, st, "shop", "production", "n1:web,db", "n2:web", "n3:web")
	drained := make(chan string, 10)
	for _, name := range []string{"n1", "n2", "n3"} {
		f.set(name, func(n *simNode) {
			n.hold = func(r store.RolloutNode) <-chan struct{} {
				if r.Action == api.ActionActivate {
					// What the load balancer says of every member as the
					// node switches.
					var states []string
					for _, m := range []string{"n1", "n2", "n3"} {
						b, _ := os.ReadFile(filepath.Join(dir, m))
						states = append(states, m+"="+strings.TrimSpace(string(b)))
					}
					drained <- r.Node + ": " + strings.Join(states, " ")
				}
				return nil
			}
		})
	}
	runRollouts(t, c, control.RunnerOptions{AllowCommands: true})
	_, ro := create(t, c, control.NewRelease{Commit: commit1, Config: yml})
	if got := waitEnded(t, c, ro.ID, 30*time.Second); got.State != string(store.RolloutSucceeded) {
		t.Fatalf("rollout %+v\n%s", got, f)
	}
	close(drained)
	var seen []string
	for s := range drained {
		seen = append(seen, s)
	}
	want := []string{"n1: n1=drain n2=up n3=up", "n2: n1=up n2=drain n3=up", "n3: n1=up n2=up n3=drain"}
	if !slices.Equal(seen, want) {
		t.Errorf("the load balancer as each node switched:\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
	for _, m := range []string{"n1", "n2", "n3"} {
		if b, _ := os.ReadFile(filepath.Join(dir, m)); strings.TrimSpace(string(b)) != "up" {
			t.Errorf("%s left %q in the load balancer", m, b)
		}
	}
}

// TestCanaryPromoteAndAbort: a canary rollout activates its first node and
// pauses (state paused, only that node moved); promote lets the others
// follow; abort switches the canary node back to the release it ran before
// and ends the rollout aborted, the environment's release unchanged.
func TestCanaryPromoteAndAbort(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	f := newFleet(t, st, "shop", "production", "n1:web,db", "n2:web", "n3:web")
	runRollouts(t, c, control.RunnerOptions{})
	ctx := context.Background()

	rel1, first := create(t, c, control.NewRelease{Commit: commit1, Config: droverYML("{type: all-at-once}")})
	if got := waitEnded(t, c, first.ID, 20*time.Second); got.State != string(store.RolloutSucceeded) {
		t.Fatalf("first rollout %+v", got)
	}

	canary := droverYML("{type: canary, batch: 1}")
	_, ro := create(t, c, control.NewRelease{Spec: "tag:v2", Commit: commit2, Config: canary})
	paused := waitRollout(t, c, ro.ID, 20*time.Second, "paused", func(r *api.Rollout) bool { return r.State == string(store.RolloutPaused) })
	if a := f.starts(ro.ID, api.ActionActivate); len(a) != 1 || a["n1"] != 1 {
		t.Fatalf("paused with activations %v, want the canary n1 only", a)
	}
	if want := fmt.Sprintf("canary: paused on n1; drover promote --rollout %d or drover abort --rollout %d", ro.ID, ro.ID); paused.Phase != want {
		t.Errorf("phase %q, want %q", paused.Phase, want)
	}
	if _, err := c.Decide(ctx, first.ID, "promote", "ops"); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("promote of a rollout that is no canary: %v", err)
	}
	if _, err := c.DecideEnv(ctx, "shop", "production", "promote", "ops@ci"); err != nil {
		t.Fatal(err)
	}
	if got := waitEnded(t, c, ro.ID, 20*time.Second); got.State != string(store.RolloutSucceeded) {
		t.Fatalf("promoted rollout %+v\n%s", got, f)
	}
	if a := f.starts(ro.ID, api.ActionActivate); len(a) != 3 {
		t.Errorf("after promote: activations %v, want every node", a)
	}
	if rep := report(t, st, ro.ID); !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.Contains(n, "promoted by ops@ci") }) {
		t.Errorf("notes %q, want who promoted", rep.Notes)
	}

	rel3, ro3 := create(t, c, control.NewRelease{Spec: "tag:v3", Commit: "3333333333333333333333333333333333333333", Config: canary})
	waitRollout(t, c, ro3.ID, 20*time.Second, "paused", func(r *api.Rollout) bool { return r.State == string(store.RolloutPaused) })
	if _, err := c.Decide(ctx, ro3.ID, "abort", "ops@ci"); err != nil {
		t.Fatal(err)
	}
	got := waitEnded(t, c, ro3.ID, 20*time.Second)
	if got.State != string(store.RolloutAborted) || !strings.Contains(got.Error, "canary aborted by ops@ci") {
		t.Fatalf("aborted rollout %+v\n%s", got, f)
	}
	prev := waitRollout(t, c, ro.ID, time.Second, "read", func(*api.Rollout) bool { return true }).Release
	back := f.events(func(e simEvent) bool { return e.Rollout == ro3.ID && e.Action == api.ActionRollback && !e.End })
	if len(back) != 1 || back[0].Node != "n1" || back[0].To != prev {
		t.Errorf("rollbacks %v, want n1 back to %s", back, prev)
	}
	if a := f.starts(ro3.ID, api.ActionActivate); len(a) != 1 {
		t.Errorf("aborted canary activated %v", a)
	}
	env, _ := st.GetEnvironment(ctx, "shop", "production")
	if env.CurrentRelease == rel3.ID || env.CurrentRelease == rel1.ID {
		t.Errorf("current release %d after the abort, want the promoted one", env.CurrentRelease)
	}
}

// TestRolloutsRunInFIFOOrder: two releases created together on one
// environment roll out one after the other: the second starts only after
// the first ended, and no node works on the second before the first is
// done everywhere.
func TestRolloutsRunInFIFOOrder(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	f := newFleet(t, st, "shop", "production", "n1:web,db", "n2:web", "n3:web")
	for _, n := range []string{"n1", "n2", "n3"} {
		f.set(n, func(n *simNode) { n.delay = 30 * time.Millisecond })
	}
	_, ro1 := create(t, c, control.NewRelease{Commit: commit1, Config: droverYML("{type: rolling, batch: 1}")})
	_, ro2 := create(t, c, control.NewRelease{Spec: "tag:v2", Commit: commit2, Config: droverYML("{type: all-at-once}")})
	if ro1.State != "queued" || ro1.Position != 1 || ro2.Position != 2 {
		t.Fatalf("queued: %d at %d, %d at %d", ro1.ID, ro1.Position, ro2.ID, ro2.Position)
	}
	runRollouts(t, c, control.RunnerOptions{})
	r1 := waitEnded(t, c, ro1.ID, 20*time.Second)
	r2 := waitEnded(t, c, ro2.ID, 20*time.Second)
	if r1.State != "succeeded" || r2.State != "succeeded" {
		t.Fatalf("rollouts %s, %s\n%s", r1.State, r2.State, f)
	}
	if r2.StartedAt.Before(r1.EndedAt) {
		t.Errorf("rollout 2 started at %s, before rollout 1 ended at %s", r2.StartedAt, r1.EndedAt)
	}
	var last1, first2 time.Time
	for _, e := range f.events(nil) {
		if e.Rollout == ro1.ID && e.End && e.At.After(last1) {
			last1 = e.At
		}
		if e.Rollout == ro2.ID && (first2.IsZero() || e.At.Before(first2)) {
			first2 = e.At
		}
	}
	if !first2.After(last1) {
		t.Errorf("the rollouts interleaved:\n%s", f)
	}
}

// TestCancelSupersedeNoWait: a queued rollout is cancelled; --no-wait fails
// with ErrBusy and records nothing while others wait; --supersede replaces
// every older queued rollout; only the last one runs; a rollout that ended
// cannot be cancelled.
func TestCancelSupersedeNoWait(t *testing.T) {
	ctx := context.Background()
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	f := newFleet(t, st, "shop", "production", "n1:web,db", "n2:web")
	_, ro1 := create(t, c, control.NewRelease{Spec: "tag:v1", Commit: commit1})
	_, ro2 := create(t, c, control.NewRelease{Spec: "tag:v2", Commit: commit1})
	_, ro3 := create(t, c, control.NewRelease{Spec: "tag:v3", Commit: commit1})
	got, err := c.CancelRollout(ctx, ro2.ID, "ops")
	if err != nil || got.State != "cancelled" || got.Error != "cancelled by ops" {
		t.Fatalf("cancel: %+v, %v", got, err)
	}
	if r, _ := c.Rollout(ctx, ro3.ID); r.Position != 2 {
		t.Errorf("after the cancel rollout 3 waits at %d, want 2", r.Position)
	}
	_, _, err = c.CreateRelease(ctx, control.NewRelease{App: "shop", Env: "production", Spec: "tag:v4", Commit: commit1, NoWait: true, By: "ci"})
	if !errors.Is(err, control.ErrBusy) || !strings.Contains(err.Error(), "tag:v1") {
		t.Fatalf("--no-wait behind queued rollouts: %v, want ErrBusy naming the first", err)
	}
	if rels, _ := st.ListReleases(ctx, store.ReleaseFilter{}); len(rels) != 3 {
		t.Errorf("--no-wait recorded a release: %d releases", len(rels))
	}
	_, ro5 := create(t, c, control.NewRelease{Spec: "tag:v5", Commit: commit2, Supersede: true})
	for _, id := range []int64{ro1.ID, ro3.ID} {
		r, _ := c.Rollout(ctx, id)
		if r.State != "superseded" || !strings.Contains(r.Error, "superseded") {
			t.Errorf("rollout %d after --supersede: %s %q", id, r.State, r.Error)
		}
		if _, err := c.CancelRollout(ctx, id, "ops"); !errors.Is(err, control.ErrNotQueued) {
			t.Errorf("cancel of superseded rollout %d: %v", id, err)
		}
	}
	if ro5.Position != 1 {
		t.Errorf("the superseding rollout waits at %d, want 1", ro5.Position)
	}
	runRollouts(t, c, control.RunnerOptions{})
	if r := waitEnded(t, c, ro5.ID, 20*time.Second); r.State != "succeeded" {
		t.Fatalf("rollout 5: %+v", r)
	}
	for _, e := range f.events(nil) {
		if e.Rollout != ro5.ID {
			t.Errorf("a cancelled or superseded rollout ran: %s (rollout %d)", e, e.Rollout)
		}
	}
	if _, err := c.CancelRollout(ctx, ro5.ID, "ops"); !errors.Is(err, control.ErrNotQueued) {
		t.Errorf("cancel of an ended rollout: %v", err)
	}
	list, err := c.Rollouts(ctx, "shop", "", 0)
	if err != nil || len(list) != 4 || list[0].ID != ro5.ID || len(list[0].Nodes) != 2 {
		t.Errorf("Rollouts: %d (%v), want 4 newest first with nodes", len(list), err)
	}
	if _, ro6, err := c.CreateRelease(ctx, control.NewRelease{App: "shop", Env: "production", Spec: "tag:v6", Commit: commit2, NoWait: true, By: "ci"}); err != nil || ro6.State != "queued" && ro6.State != "running" {
		t.Errorf("--no-wait on an idle environment: %v", err)
	}
}

// TestTakeover: the server running a rollout dies mid-rollout (runner A's
// context ends while a node activates); another replica on the same
// database (runner B, its own Control and store connection) takes the
// rollout over once A's lease lapsed and finishes it from the recorded
// per-node state: every node prepared and activated once, the run_once
// hook ran once, the node that was activating kept its task (same number,
// new fencing token), and B's tokens are higher than A's.
func TestTakeover(t *testing.T) {
	for _, tc := range []struct {
		name, backend string
		api           bool // the agents go through Control (Desired, StartUpgrade, Report)
	}{{"sqlite", dbtest.SQLite, false}, {"postgres", dbtest.Postgres, false}, {"sqlite/desired", dbtest.SQLite, true}} {
		t.Run(tc.name, func(t *testing.T) {
			url := dbtest.New(t, tc.backend)
			stA, stB := &renewFails{Store: openStore(t, url)}, openStore(t, url)
			a := newRunnerControl(t, stA, control.Options{})
			b := newRunnerControl(t, stB, control.Options{})
			var f *simFleet
			if tc.api {
				f = newAPIFleet(t, b, stB, "shop", "production", "n1:web,db", "n2:web", "n3:web")
			} else {
				f = newFleet(t, stA, "shop", "production", "n1:web,db", "n2:web", "n3:web")
			}
			release := f.holdActivation("n2")
			stopA := runRollouts(t, a, control.RunnerOptions{Name: "a"})
			_, ro := create(t, a, control.NewRelease{Commit: commit1, Config: droverYML("{type: rolling, batch: 1}")})
			f.waitEvents(t, 1, "n2 never started to activate", func(e simEvent) bool { return e.Node == "n2" && e.Action == api.ActionActivate })
			before, _ := a.Rollout(context.Background(), ro.ID)
			stA.fail.Store(true) // the server dies: its lease is no longer renewed, nor handed over
			stopA()
			if r, _ := a.Rollout(context.Background(), ro.ID); r.State != "running" || r.Runner != "a" {
				t.Fatalf("after runner A stopped the rollout is %s by %q, want still running by a", r.State, r.Runner)
			}
			runRollouts(t, b, control.RunnerOptions{Name: "b"})
			taken := waitRollout(t, b, ro.ID, 20*time.Second, "taken over by b", func(r *api.Rollout) bool { return r.Runner == "b" })
			if taken.Token <= before.Token {
				t.Errorf("token after the takeover %d, before %d", taken.Token, before.Token)
			}
			close(release)
			got := waitEnded(t, b, ro.ID, 20*time.Second)
			if got.State != "succeeded" || got.Runner != "b" {
				t.Fatalf("rollout %+v\n%s", got, f)
			}
			for _, action := range []string{api.ActionPrepare, api.ActionActivate} {
				starts := f.starts(ro.ID, action)
				if len(starts) != 3 || starts["n1"] != 1 || starts["n2"] != 1 || starts["n3"] != 1 {
					t.Errorf("%s ran %v, want once on each node\n%s", action, starts, f)
				}
			}
			if hooks := f.events(func(e simEvent) bool { return !e.End && e.Action == api.ActionHooks }); len(hooks) != 1 || hooks[0].Node != "n1" {
				t.Errorf("run_once hooks ran %v, want once on n1", hooks)
			}
			var n2Before, n2After api.RolloutNode
			for _, n := range before.Nodes {
				if n.Node == "n2" {
					n2Before = n
				}
			}
			for _, n := range got.Nodes {
				if n.Node == "n2" {
					n2After = n
				}
			}
			if n2Before.Action != api.ActionActivate || n2After.Task != n2Before.Task {
				t.Errorf("n2's task before %+v, after %+v: want the same activate task", n2Before, n2After)
			}
			env, _ := stB.GetEnvironment(context.Background(), "shop", "production")
			if env.CurrentRelease != got.ReleaseID {
				t.Errorf("current release %d, want %d", env.CurrentRelease, got.ReleaseID)
			}
		})
	}
}

// TestTakeoverAllAtOnce: runner A stops (the server shuts down) while one
// node of an all-at-once rollout is switching and the others are already
// done; A hands its lease over, runner B takes over at once, hands no node
// a second activation and does not wait at the barrier for nodes past it.
func TestTakeoverAllAtOnce(t *testing.T) {
	url := dbtest.New(t, dbtest.SQLite)
	stA, stB := openStore(t, url), openStore(t, url)
	a := newRunnerControl(t, stA, control.Options{})
	b := newRunnerControl(t, stB, control.Options{})
	f := newFleet(t, stA, "shop", "production", "n1:web,db", "n2:web", "n3:web")
	release := f.holdActivation("n3")
	stopA := runRollouts(t, a, control.RunnerOptions{Name: "a"})
	_, ro := create(t, a, control.NewRelease{Commit: commit1, Config: droverYML("{type: all-at-once}")})
	f.waitEvents(t, 2, "n1 and n2 never activated", func(e simEvent) bool { return e.End && e.Action == api.ActionActivate })
	stopA() // a graceful stop hands the lease over: no wait for it to lapse
	stopped := time.Now()
	runRollouts(t, b, control.RunnerOptions{Name: "b"})
	waitRollout(t, b, ro.ID, 20*time.Second, "taken over by b", func(r *api.Rollout) bool { return r.Runner == "b" })
	if d := time.Since(stopped); d > 3*time.Second {
		t.Errorf("runner B took over %s after A stopped; A's lease (5s) should have been handed over at its stop", d)
	}
	close(release)
	got := waitEnded(t, b, ro.ID, 20*time.Second)
	if got.State != "succeeded" {
		t.Fatalf("rollout %+v\n%s", got, f)
	}
	if a := f.starts(ro.ID, api.ActionActivate); len(a) != 3 || a["n1"] != 1 || a["n2"] != 1 || a["n3"] != 1 {
		t.Errorf("activations %v, want one per node\n%s", a, f)
	}
	if h := f.events(func(e simEvent) bool { return !e.End && e.Action == api.ActionHooks }); len(h) != 1 {
		t.Errorf("run_once hooks ran %d times, want once", len(h))
	}
}

// renewFails is a store whose lease renewals fail while fail is set, as a
// server cut off from its database.
type renewFails struct {
	store.Store
	fail atomic.Bool
}

func (s *renewFails) RenewLease(ctx context.Context, l store.Lease, at time.Time, ttl time.Duration) (store.Lease, error) {
	if s.fail.Load() {
		return store.Lease{}, errors.New("connection refused (simulated)")
	}
	return s.Store.RenewLease(ctx, l, at, ttl)
}

// TakeOverLease fails too while fail is set: a server cut off from its
// database takes nothing over. (Without it, A's runner, told at once that
// its lease lapsed, took the rollout back before B's next look, round
// after round, and B took over only when it happened to look first.)
func (s *renewFails) TakeOverLease(ctx context.Context, ticketID int64, at time.Time, ttl time.Duration) (store.Lease, error) {
	if s.fail.Load() {
		return store.Lease{}, errors.New("connection refused (simulated)")
	}
	return s.Store.TakeOverLease(ctx, ticketID, at, ttl)
}

// TestLostLeaseStopsTheRunner: runner A cannot renew its lease (cut off
// from the database) while a node works; the lease lapses, runner B takes
// the rollout over and finishes it; A stops when it learns its lease is
// lost and records nothing: the rollout ends succeeded by B, each node
// activated once.
func TestLostLeaseStopsTheRunner(t *testing.T) {
	url := dbtest.New(t, dbtest.SQLite)
	stA := &renewFails{Store: openStore(t, url)}
	stB := openStore(t, url)
	a := newRunnerControl(t, stA, control.Options{})
	b := newRunnerControl(t, stB, control.Options{})
	f := newFleet(t, stB, "shop", "production", "n1:web,db", "n2:web")
	release := f.holdActivation("n2")
	var logA lockedBuffer
	runRollouts(t, a, control.RunnerOptions{Name: "a", Logger: slog.New(slog.NewTextHandler(&logA, nil))})
	_, ro := create(t, a, control.NewRelease{Commit: commit1, Config: droverYML("{type: rolling, batch: 1}")})
	f.waitEvents(t, 1, "n2 never started to activate", func(e simEvent) bool { return e.Node == "n2" && e.Action == api.ActionActivate })
	stA.fail.Store(true)
	var logB lockedBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("runner a's log:\n%s\nrunner b's log:\n%s", logA.String(), logB.String())
		}
	})
	runRollouts(t, b, control.RunnerOptions{Name: "b", Logger: slog.New(slog.NewTextHandler(&logB, nil))})
	waitRollout(t, b, ro.ID, 20*time.Second, "taken over by b", func(r *api.Rollout) bool { return r.Runner == "b" })
	close(release)
	got := waitEnded(t, b, ro.ID, 20*time.Second)
	if got.State != "succeeded" || got.Runner != "b" {
		t.Fatalf("rollout %+v\n%s", got, f)
	}
	if a := f.starts(ro.ID, api.ActionActivate); len(a) != 2 || a["n1"] != 1 || a["n2"] != 1 {
		t.Errorf("activations %v, want one per node\n%s", a, f)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logA.String(), "rollout lost its lease") {
		if time.Now().After(deadline) {
			t.Fatalf("runner A never said it lost its lease:\n%s", logA.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lockedBuffer is a log destination safe for concurrent writers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestCreateReleaseRefuses: what the server refuses is a *ConfigError
// that says what is wrong (the file and line for drover.yml), and nothing
// is recorded.
func TestCreateReleaseRefuses(t *testing.T) {
	ctx := context.Background()
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	for _, tc := range []struct {
		name string
		req  control.NewRelease
		want string
	}{
		{"bad name", control.NewRelease{App: "Shop!", Env: "production", Spec: "branch:main"}, `app "Shop!"`},
		{"bad spec", control.NewRelease{App: "shop", Env: "production", Spec: "main"}, "main"},
		{"bad commit", control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Commit: "abc"}, "full hex SHA"},
		{"yaml line", control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Commit: commit1, Config: droverYML("{type: rollin}")},
			"drover.yml@111111111111:8: environments.production.strategy.type: unknown strategy"},
		{"no such env", control.NewRelease{App: "shop", Env: "staging", Spec: "branch:main", Config: droverYML("{type: rolling}")}, `has no environment "staging" (it has: production)`},
		{"other app", control.NewRelease{App: "blog", Env: "production", Spec: "branch:main", Config: droverYML("{type: rolling}")}, `app is "shop", not "blog"`},
		{"strategy", control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Strategy: "blue-green"}, `unknown strategy "blue-green"`},
		{"skip unknown", control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Config: droverYML("{type: rolling}"), Skip: []string{"backup"}}, "--skip backup"},
		{"skip without config", control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Skip: []string{"migrate"}}, "without drover.yml"},
		{"canary command", control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Config: droverYML("{type: canary, canary: {wait: 1m, command: ./check}}")}, "strategy.canary.command"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := c.CreateRelease(ctx, tc.req)
			var ce *control.ConfigError
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a ConfigError with %q", err, tc.want)
			}
		})
	}
	if rels, _ := st.ListReleases(ctx, store.ReleaseFilter{}); len(rels) != 0 {
		t.Errorf("refused releases were recorded: %v", rels)
	}
	if q, _ := c.Status(ctx, "shop", "production"); len(q.Queue) != 0 {
		t.Errorf("refused releases queued: %v", q.Queue)
	}
	// --skip of a run_once hook drover.yml has is taken, and kept in the plan.
	_, ro, err := c.CreateRelease(ctx, control.NewRelease{App: "shop", Env: "production", Spec: "branch:main", Config: droverYML("{type: rolling}"), Skip: []string{"migrate"}, Strategy: "serial"})
	if err != nil || ro.Strategy != "serial" || ro.State != "queued" {
		t.Fatalf("--skip migrate --strategy serial: %+v, %v", ro, err)
	}
}

// TestNoNodes: a rollout of an environment without registered agents
// fails and says so; the environment's release stays as it was.
func TestNoNodes(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	runRollouts(t, c, control.RunnerOptions{})
	_, ro := create(t, c, control.NewRelease{Commit: commit1})
	got := waitEnded(t, c, ro.ID, 20*time.Second)
	if got.State != "failed" || !strings.Contains(got.Error, "no agent is registered for shop/production") {
		t.Fatalf("rollout %+v", got)
	}
	if env, _ := st.GetEnvironment(context.Background(), "shop", "production"); env.CurrentRelease != 0 {
		t.Errorf("current release %d", env.CurrentRelease)
	}
	deadline := time.Now().Add(10 * time.Second)
	for q, _ := c.Status(context.Background(), "shop", "production"); q.Holder != nil; q, _ = c.Status(context.Background(), "shop", "production") {
		if time.Now().After(deadline) {
			t.Fatalf("the lease is still held: %+v", q.Holder)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestJoinDuringCanary: agents that go through Control (Desired,
// StartUpgrade, Report, as over the API) roll out a canary; a node that
// joins while the canary is paused converges to the environment's last
// completed release, not to the canary's, and gets no rollout task; once
// the rollout is promoted and ends, it converges to the new release.
func TestJoinDuringCanary(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	f := newAPIFleet(t, c, st, "shop", "production", "n1:web,db", "n2:web")
	runRollouts(t, c, control.RunnerOptions{})
	rel1, ro1 := create(t, c, control.NewRelease{Commit: commit1, Config: droverYML("{type: all-at-once}")})
	if got := waitEnded(t, c, ro1.ID, 20*time.Second); got.State != "succeeded" {
		t.Fatalf("first rollout %+v\n%s", got, f)
	}
	rel2, ro2 := create(t, c, control.NewRelease{Spec: "tag:v2", Commit: commit2, Config: droverYML("{type: canary, batch: 1}")})
	waitRollout(t, c, ro2.ID, 20*time.Second, "paused", func(r *api.Rollout) bool { return r.State == "paused" })
	f.join(t, "n3:web")
	f.waitEvents(t, 1, "n3 never converged", func(e simEvent) bool { return e.Node == "n3" && e.Action == "converge" })
	if runs := f.runs(); runs["n1"] != rel2.ID || runs["n2"] != rel1.ID || runs["n3"] != rel1.ID {
		t.Fatalf("during the canary the nodes run %v; want n1 the canary %d, n2 and the newcomer n3 the last completed %d", runs, rel2.ID, rel1.ID)
	}
	if _, err := c.Decide(context.Background(), ro2.ID, "promote", "ops"); err != nil {
		t.Fatal(err)
	}
	if got := waitEnded(t, c, ro2.ID, 20*time.Second); got.State != "succeeded" || len(got.Nodes) != 2 {
		t.Fatalf("canary rollout %+v\n%s", got, f)
	}
	f.waitEvents(t, 2, "n3 never converged to the promoted release", func(e simEvent) bool { return e.Node == "n3" && e.Action == "converge" })
	if runs := f.runs(); runs["n1"] != rel2.ID || runs["n2"] != rel2.ID || runs["n3"] != rel2.ID {
		t.Errorf("after the rollout the nodes run %v, want %d everywhere", runs, rel2.ID)
	}
	if a := f.starts(ro2.ID, api.ActionActivate); len(a) != 2 || a["n1"] != 1 || a["n2"] != 1 {
		t.Errorf("activations %v\n%s", a, f)
	}
	if h := f.events(func(e simEvent) bool { return !e.End && e.Action == api.ActionHooks && e.Rollout == ro2.ID }); len(h) != 1 || h[0].Node != "n1" {
		t.Errorf("run_once hooks of the canary rollout: %v", h)
	}
}

// releaseFails is a store whose first lease release fails, as a server
// that dies right after it recorded a rollout's outcome.
type releaseFails struct {
	store.Store
	failed atomic.Bool
}

func (s *releaseFails) ReleaseLease(ctx context.Context, l store.Lease, at time.Time) error {
	if s.failed.CompareAndSwap(false, true) {
		return errors.New("connection refused (simulated)")
	}
	return s.Store.ReleaseLease(ctx, l, at)
}

// TestEndedRolloutFreesLapsedLease: a runner that recorded a rollout's
// outcome but never released the lease (it died in between) does not block
// the environment: once the lease lapsed, the next rollout runs.
func TestEndedRolloutFreesLapsedLease(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, &releaseFails{Store: st}, control.Options{})
	newFleet(t, st, "shop", "production", "n1:web,db", "n2:web")
	runRollouts(t, c, control.RunnerOptions{})
	_, ro1 := create(t, c, control.NewRelease{Commit: commit1})
	if got := waitEnded(t, c, ro1.ID, 20*time.Second); got.State != "succeeded" {
		t.Fatalf("rollout 1 %+v", got)
	}
	if q, _ := c.Status(context.Background(), "shop", "production"); q.Holder == nil || q.Holder.TicketID != ro1.ID {
		t.Fatalf("the lease of rollout 1 should still be held (its release failed): %+v", q.Holder)
	}
	_, ro2 := create(t, c, control.NewRelease{Spec: "tag:v2", Commit: commit2})
	if got := waitEnded(t, c, ro2.ID, 20*time.Second); got.State != "succeeded" {
		t.Fatalf("rollout 2 %+v", got)
	}
}

// TestNoWaitRace: --no-wait releases created at the same moment on an
// idle environment: exactly one goes on, the others fail with ErrBusy and
// record no release.
func TestNoWaitRace(t *testing.T) {
	for _, backend := range []string{dbtest.SQLite, dbtest.Postgres} {
		t.Run(backend, func(t *testing.T) { testNoWaitRace(t, openStore(t, dbtest.New(t, backend))) })
	}
}

func testNoWaitRace(t *testing.T, st store.Store) {
	ctx := context.Background()
	c := newRunnerControl(t, st, control.Options{})
	const n = 8
	errs := make(chan error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, _, err := c.CreateRelease(ctx, control.NewRelease{App: "shop", Env: "production", Spec: fmt.Sprintf("tag:v%d", i), Commit: commit1, NoWait: true, By: "ci"})
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, control.ErrBusy):
			t.Errorf("a --no-wait release failed with %v, want ErrBusy", err)
		}
	}
	rels, _ := st.ListReleases(ctx, store.ReleaseFilter{})
	if ok != 1 || len(rels) != 1 {
		t.Errorf("%d of %d --no-wait releases went on, %d recorded; want exactly one", ok, n, len(rels))
	}
}

// TestManyNodesAssignedTogether: an all-at-once rollout of 200 nodes hands
// their tasks out in a few writes (each a version bump that wakes every
// agent's long-poll), not one per node.
func TestManyNodesAssignedTogether(t *testing.T) {
	ctx := context.Background()
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	specs := make([]string, 200)
	for i := range specs {
		specs[i] = fmt.Sprintf("n%03d:web", i)
	}
	f := newFleet(t, st, "shop", "production", specs...)
	before, err := st.Version(ctx, "shop", "production")
	if err != nil {
		t.Fatal(err)
	}
	runRollouts(t, c, control.RunnerOptions{})
	_, ro := create(t, c, control.NewRelease{Commit: commit1})
	if got := waitEnded(t, c, ro.ID, 60*time.Second); got.State != "succeeded" {
		t.Fatalf("rollout %s %q", got.State, got.Error)
	}
	if a := f.starts(ro.ID, api.ActionActivate); len(a) != 200 {
		t.Fatalf("%d nodes activated, want 200", len(a))
	}
	after, _ := st.Version(ctx, "shop", "production")
	t.Logf("%d version bumps", after-before)
	if bumps := after - before; bumps > 100 {
		t.Errorf("the rollout bumped the version %d times for 400 tasks of 200 nodes; want them handed out together", bumps)
	}
}

// TestStaleNodeLeftOut: a node whose agent was not seen for StaleAfter (a
// machine scaled in) is left out of a new rollout, with a note, instead of
// failing it after the node timeout; it converges to the release later.
func TestStaleNodeLeftOut(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	f := newFleet(t, st, "shop", "production", "n1:web,db", "n2:web", "n3:web")
	n3, err := st.FindNode(context.Background(), "n3", "shop", "production")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.TouchNode(context.Background(), n3.ID, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	runRollouts(t, c, control.RunnerOptions{StaleAfter: 10 * time.Minute})
	_, ro := create(t, c, control.NewRelease{Commit: commit1})
	got := waitEnded(t, c, ro.ID, 20*time.Second)
	if got.State != string(store.RolloutSucceeded) {
		t.Fatalf("rollout %s: %+v\n%s", got.State, got, f)
	}
	rep := report(t, st, ro.ID)
	if slices.ContainsFunc(rep.Hosts, func(h *rollout.HostResult) bool { return h.Host == "n3" }) {
		t.Errorf("n3 (not seen for an hour) took part: %+v", rep.Hosts)
	}
	if len(rep.Hosts) != 2 || !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.HasPrefix(n, "n3: left out") }) {
		t.Errorf("report hosts %d, notes %q: want n1 and n2, and a note on n3", len(rep.Hosts), rep.Notes)
	}
}

// countsNodeReads is a store that counts the run's reads of a rollout's
// every node (the desired state's loads read them too: not counted).
type countsNodeReads struct {
	store.Store
	reads atomic.Int64
}

func (s *countsNodeReads) ListRolloutNodes(ctx context.Context, id int64) ([]store.RolloutNode, error) {
	pcs := make([]uintptr, 16)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for f, more := frames.Next(); more; f, more = frames.Next() {
		if strings.Contains(f.Function, "nodeBoard") {
			s.reads.Add(1)
			break
		}
	}
	return s.Store.ListRolloutNodes(ctx, id)
}

// TestReportsNeedNoReadOfEveryNode: agents reporting through this
// replica's Control reach the run at once; the run does not read every
// node's row again for each (ten thousand agents reporting made it read
// ten thousand rows every 20 ms), only at its start and on its poll.
func TestReportsNeedNoReadOfEveryNode(t *testing.T) {
	st := &countsNodeReads{Store: sqliteStore(t)}
	c := newRunnerControl(t, st, control.Options{})
	specs := make([]string, 20)
	for i := range specs {
		specs[i] = fmt.Sprintf("n%02d:web", i)
	}
	specs[0] += ",db" // runs the migrate hook
	f := newAPIFleet(t, c, st, "shop", "production", specs...)
	runRollouts(t, c, control.RunnerOptions{Name: "a", Poll: time.Hour})
	_, ro := create(t, c, control.NewRelease{Commit: commit1, Config: droverYML("{type: all-at-once}")})
	if got := waitEnded(t, c, ro.ID, 30*time.Second); got.State != "succeeded" {
		t.Fatalf("rollout %s %q\n%s", got.State, got.Error, f)
	}
	if a := f.starts(ro.ID, api.ActionActivate); len(a) != len(specs) {
		t.Fatalf("%d nodes activated, want %d", len(a), len(specs))
	}
	if n := st.reads.Load(); n > 1 {
		t.Errorf("the run read every node's row %d times for %d nodes' reports; want once, at its start", n, len(specs))
	}
}

// TestReportsOnAnotherReplicaBeforeTheTimeout: agents that report to
// another replica are not failed as silent when the run's board has not
// read their rows since (its poll is an hour here): before it gives up on
// a node, the run reads the node's row once more.
func TestReportsOnAnotherReplicaBeforeTheTimeout(t *testing.T) {
	st := sqliteStore(t)
	c := newRunnerControl(t, st, control.Options{})
	other := newRunnerControl(t, st, control.Options{}) // the replica the agents talk to
	f := newAPIFleet(t, other, st, "shop", "production", "n1:web,db", "n2:web")
	runRollouts(t, c, control.RunnerOptions{Name: "a", Poll: time.Hour, NodeTimeout: time.Second})
	_, ro := create(t, c, control.NewRelease{Commit: commit1, Config: droverYML("{type: all-at-once}")})
	if got := waitEnded(t, c, ro.ID, 30*time.Second); got.State != "succeeded" {
		t.Fatalf("rollout %s %q\n%s", got.State, got.Error, f)
	}
}
