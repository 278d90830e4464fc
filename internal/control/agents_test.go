package control_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/store"
)

// simFleet is a set of simulated agents of one environment. They act as
// the real agent does on the rollout tasks the server hands out, reading
// the tasks from the store and reporting through store.ReportRolloutNode as
// the report path does: a task is worked on once (same rollout and task:
// the recorded result is reported again), a task under a lower fencing
// token than one already acted on is refused. What they do is journalled.
type simFleet struct {
	t        *testing.T
	st       store.Store
	app, env string
	// c, when set, is the control plane the agents go through as the
	// real agent does over the API: Desired, StartUpgrade and Report.
	c *control.Control

	mu      sync.Mutex
	nodes   map[string]*simNode
	journal []simEvent
}

// simNode is one simulated agent; set its behaviour before the rollout.
type simNode struct {
	node     store.Node
	maxToken int64
	done     map[[2]int64]store.RolloutNode
	working  map[[2]int64]bool
	reported map[[2]int64]int64 // through Desired: the token a result was last reported under
	running  int64              // through Desired: the server release it runs

	// silent: the agent never reports on such a task (it died).
	silent func(store.RolloutNode) bool
	// fail: the task fails with this message ("" succeeds).
	fail func(store.RolloutNode) string
	// hold: the task waits for the channel before it finishes (nil: no wait).
	hold func(store.RolloutNode) <-chan struct{}
	// delay: how long every task takes.
	delay time.Duration
}

// simEvent is one thing a simulated agent did.
type simEvent struct {
	Node, Action, Stage, To string
	RunOnce                 []string
	Rollout, Task           int64
	End                     bool // the task finished (else it started)
	Failed                  bool
	At                      time.Time
}

func (e simEvent) String() string {
	s := fmt.Sprintf("%s %s", e.Node, e.Action)
	if e.Stage != "" {
		s += " " + e.Stage
	}
	if len(e.RunOnce) > 0 {
		s += " [" + strings.Join(e.RunOnce, ",") + "]"
	}
	if e.To != "" {
		s += " to " + e.To
	}
	if e.End {
		s += " end"
	}
	return s
}

// newFleet registers nodes "name:role,role" of app/env and starts their
// agents; they stop when the test ends.
func newFleet(t *testing.T, st store.Store, app, env string, specs ...string) *simFleet {
	t.Helper()
	f := &simFleet{t: t, st: st, app: app, env: env, nodes: map[string]*simNode{}}
	f.join(t, specs...)
	f.start(t)
	return f
}

// newAPIFleet is newFleet with agents that go through c: they read their
// desired state with c.Desired and report with c.StartUpgrade and
// c.Report, as the server's handlers do for a real agent.
func newAPIFleet(t *testing.T, c *control.Control, st store.Store, app, env string, specs ...string) *simFleet {
	t.Helper()
	f := &simFleet{t: t, st: st, app: app, env: env, c: c, nodes: map[string]*simNode{}}
	// What the server does with every store change: drop Desired's cache.
	ctx, cancel := context.WithCancel(context.Background())
	changes, err := st.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range changes {
			c.Invalidate(ch.App, ch.Env, ch.Version)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	f.join(t, specs...)
	f.start(t)
	return f
}

// join registers more nodes "name:role,role" (agents that join now).
func (f *simFleet) join(t *testing.T, specs ...string) {
	t.Helper()
	for _, s := range specs {
		name, roles, _ := strings.Cut(s, ":")
		var rs []string
		if roles != "" {
			rs = strings.Split(roles, ",")
		}
		n, err := f.st.RegisterNode(context.Background(), store.Node{Name: name, Hostname: name, App: f.app, Env: f.env, Roles: rs})
		if err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		f.nodes[name] = &simNode{node: n, done: map[[2]int64]store.RolloutNode{}, working: map[[2]int64]bool{}, reported: map[[2]int64]int64{}}
		f.mu.Unlock()
	}
}

// runs returns the server release each node runs (Desired agents).
func (f *simFleet) runs() map[string]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int64{}
	for name, n := range f.nodes {
		out[name] = n.running
	}
	return out
}

func (f *simFleet) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if f.c != nil {
				f.pollDesired(ctx, &wg)
			} else {
				f.pollStore(ctx, &wg)
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// pollDesired is the agents' poll of their desired state through Control.
func (f *simFleet) pollDesired(ctx context.Context, wg *sync.WaitGroup) {
	f.mu.Lock()
	nodes := make([]*simNode, 0, len(f.nodes))
	for _, n := range f.nodes {
		nodes = append(nodes, n)
	}
	f.mu.Unlock()
	for _, n := range nodes {
		d, err := f.c.Desired(ctx, []store.Node{n.node})
		if err != nil {
			continue
		}
		for _, a := range d.Apps {
			f.handleDesired(ctx, wg, n, a)
		}
	}
}

// handleDesired is what an agent does with one desired app: outside a
// rollout it converges to the release (no run_once hook); inside one it
// does the task once, reporting a finished one's result again under a
// newer token.
func (f *simFleet) handleDesired(ctx context.Context, wg *sync.WaitGroup, n *simNode, a api.DesiredApp) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a.Release == nil || a.Token < n.maxToken {
		return
	}
	n.maxToken = a.Token
	if a.Rollout == 0 {
		if n.running != a.Release.ID {
			n.running = a.Release.ID
			f.journal = append(f.journal, simEvent{Node: n.node.Name, Action: "converge", At: time.Now(), Task: a.Release.ID})
		}
		return
	}
	key := [2]int64{a.Rollout, a.Task}
	up := api.StartUpgrade{ReleaseID: a.Release.ID, App: a.App, Env: a.Env, Rollout: a.Rollout, Task: a.Task}
	if res, ok := n.done[key]; ok {
		if n.reported[key] < a.Token {
			n.reported[key] = a.Token
			if u, _, err := f.c.StartUpgrade(ctx, n.node, up); err == nil {
				_ = f.c.Report(ctx, n.node, u, simReport(res))
			}
		}
		return
	}
	if n.working[key] {
		return
	}
	n.working[key] = true
	row := store.RolloutNode{RolloutID: a.Rollout, Node: n.node.Name, Task: a.Task, Action: a.Action, Stage: a.Stage, RunOnce: a.RunOnce, To: a.To, Token: a.Token}
	if n.silent != nil && n.silent(row) {
		return
	}
	u, _, err := f.c.StartUpgrade(ctx, n.node, up)
	if err != nil {
		f.t.Errorf("%s: StartUpgrade: %v", n.node.Name, err)
		return
	}
	engine := release.NewID(a.Release.CreatedAt, a.Release.Commit)
	f.work(ctx, wg, n, row, engine, func(res store.RolloutNode) {
		n.reported[key] = a.Token
		if res.State == store.NodeDone && row.Action == api.ActionActivate {
			n.running = a.Release.ID
		}
	}, func(res store.RolloutNode) {
		if err := f.c.Report(ctx, n.node, u, simReport(res)); err != nil && ctx.Err() == nil {
			f.t.Errorf("%s: Report: %v", n.node.Name, err)
		}
	})
}

// work does task row on n (f.mu held): it journals the start, then in the
// background waits out the node's delay and hold, records the result
// (engine is the release an activation serves; record runs under f.mu)
// and reports it.
func (f *simFleet) work(ctx context.Context, wg *sync.WaitGroup, n *simNode, row store.RolloutNode, engine string, record, report func(store.RolloutNode)) {
	f.journal = append(f.journal, simEvent{Node: row.Node, Action: row.Action, Stage: row.Stage, To: row.To, RunOnce: row.RunOnce, Rollout: row.RolloutID, Task: row.Task, At: time.Now()})
	var hold <-chan struct{}
	if n.hold != nil {
		hold = n.hold(row)
	}
	msg := ""
	if n.fail != nil {
		msg = n.fail(row)
	}
	delay := n.delay
	key := [2]int64{row.RolloutID, row.Task}
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
		if hold != nil {
			select {
			case <-hold:
			case <-ctx.Done():
				return
			}
		}
		res := row
		res.State, res.Step = store.NodeDone, ""
		switch {
		case msg != "":
			res.State, res.Step, res.Error = store.NodeFailed, row.Action, msg
		case row.Action == api.ActionActivate:
			res.Serving = engine
		case row.Action == api.ActionRollback:
			res.Serving = row.To
		}
		f.mu.Lock()
		n.done[key] = res
		delete(n.working, key)
		record(res)
		f.journal = append(f.journal, simEvent{Node: row.Node, Action: row.Action, Stage: row.Stage, To: row.To, RunOnce: row.RunOnce, Rollout: row.RolloutID, Task: row.Task, End: true, Failed: msg != "", At: time.Now()})
		f.mu.Unlock()
		report(res)
	}()
}

// simReport is the final report of a finished task.
func simReport(res store.RolloutNode) api.Report {
	if res.State == store.NodeFailed {
		return api.Report{Status: api.StatusFailed, Step: res.Step, Error: res.Error, Serving: res.Serving}
	}
	return api.Report{Status: api.StatusSucceeded, Serving: res.Serving}
}

// set changes a node's behaviour under the fleet's lock.
func (f *simFleet) set(name string, fn func(n *simNode)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.nodes[name])
}

// pollStore is the agents' poll of their tasks in the store.
func (f *simFleet) pollStore(ctx context.Context, wg *sync.WaitGroup) {
	rs, err := f.st.ListRollouts(ctx, store.RolloutFilter{App: f.app, Env: f.env, States: []store.RolloutState{store.RolloutRunning, store.RolloutPaused}})
	if err != nil {
		return
	}
	for _, ro := range rs {
		rows, err := f.st.ListRolloutNodes(ctx, ro.ID)
		if err != nil {
			continue
		}
		for _, row := range rows {
			f.handle(ctx, wg, ro, row)
		}
	}
}

// handle is what an agent does with the desired state row.
func (f *simFleet) handle(ctx context.Context, wg *sync.WaitGroup, ro store.Rollout, row store.RolloutNode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[row.Node]
	if n == nil || row.Token < n.maxToken {
		return // not ours, or a lower token than one acted on: refused
	}
	n.maxToken = row.Token
	key := [2]int64{row.RolloutID, row.Task}
	if res, ok := n.done[key]; ok {
		if row.State != res.State {
			_, _ = f.st.ReportRolloutNode(ctx, res) // the recorded result, again
		}
		return
	}
	if n.working[key] {
		return
	}
	n.working[key] = true
	if n.silent != nil && n.silent(row) {
		return
	}
	row.State = store.NodeWorking
	_, _ = f.st.ReportRolloutNode(ctx, row)
	f.work(ctx, wg, n, row, ro.Release, func(store.RolloutNode) {}, func(res store.RolloutNode) {
		if res.State == store.NodeDone && row.Action == api.ActionActivate {
			_ = f.st.SetNodeRelease(ctx, n.node.ID, ro.ReleaseID) // as the report path records it
		}
		_, _ = f.st.ReportRolloutNode(ctx, res)
	})
}

// holdActivation makes node's activations wait until the returned channel
// is closed.
func (f *simFleet) holdActivation(node string) chan struct{} {
	release := make(chan struct{})
	f.set(node, func(n *simNode) {
		n.hold = func(r store.RolloutNode) <-chan struct{} {
			if r.Action == api.ActionActivate {
				return release
			}
			return nil
		}
	})
	return release
}

// waitEvents waits until at least n journal entries match.
func (f *simFleet) waitEvents(t *testing.T, n int, what string, match func(simEvent) bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(f.events(match)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s:\n%s", what, f)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// events returns the journal entries that match.
func (f *simFleet) events(match func(simEvent) bool) []simEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []simEvent
	for _, e := range f.journal {
		if match == nil || match(e) {
			out = append(out, e)
		}
	}
	return out
}

// starts counts the tasks of action started, by node.
func (f *simFleet) starts(rollout int64, action string) map[string]int {
	out := map[string]int{}
	for _, e := range f.events(func(e simEvent) bool { return !e.End && e.Rollout == rollout && e.Action == action }) {
		out[e.Node]++
	}
	return out
}

func (f *simFleet) String() string {
	var lines []string
	for _, e := range f.events(nil) {
		lines = append(lines, fmt.Sprintf("%s r%d t%d %s", e.At.Format("15:04:05.000"), e.Rollout, e.Task, e))
	}
	return strings.Join(lines, "\n")
}

// Helpers shared by the rollout tests.

const commit1 = "1111111111111111111111111111111111111111"
const commit2 = "2222222222222222222222222222222222222222"

// drover writes a drover.yml for app shop with env production's strategy
// and extra lines under it.
func droverYML(strategy string, extra ...string) []byte {
	s := `app: shop
repo: https://example.com/shop.git
deploy_to: /srv/shop
hooks:
  migrate: {run_once: true, role: db, commands: [./manage.py migrate]}
environments:
  production:
    strategy: ` + strategy + "\n"
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return []byte(s)
}

// newRunnerControl is a Control on st with a lease of 5s (the shortest
// allowed), so a takeover comes soon.
func newRunnerControl(t *testing.T, st store.Store, opts control.Options) *control.Control {
	t.Helper()
	if opts.Lease == 0 {
		opts.Lease = 5 * time.Second
	}
	c, err := control.New(st, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runRollouts starts c's runner; it stops when the test ends (or when the
// returned function is called).
func runRollouts(t *testing.T, c *control.Control, opts control.RunnerOptions) (stop func()) {
	t.Helper()
	if opts.Poll == 0 {
		opts.Poll = 20 * time.Millisecond
	}
	if opts.NodeTimeout == 0 {
		opts.NodeTimeout = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.RunRollouts(ctx, opts) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("RunRollouts: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitRollout waits until rollout id satisfies cond, at most limit.
func waitRollout(t *testing.T, c *control.Control, id int64, limit time.Duration, what string, cond func(*api.Rollout) bool) *api.Rollout {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		r, err := c.Rollout(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %d: not %s within %s; it is %s (phase %q, error %q)", id, what, limit, r.State, r.Phase, r.Error)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ended(r *api.Rollout) bool { return store.RolloutState(r.State).Done() }

// waitEnded waits until rollout id ended and returns it.
func waitEnded(t *testing.T, c *control.Control, id int64, limit time.Duration) *api.Rollout {
	t.Helper()
	return waitRollout(t, c, id, limit, "ended", ended)
}

// create records a release of app shop, env production and its rollout.
func create(t *testing.T, c *control.Control, req control.NewRelease) (store.Release, *api.Rollout) {
	t.Helper()
	if req.App == "" {
		req.App, req.Env = "shop", "production"
	}
	if req.Spec == "" {
		req.Spec = "branch:main"
	}
	if req.By == "" {
		req.By = "admin token 1"
	}
	rel, ro, err := c.CreateRelease(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return rel, ro
}

func nodeNames(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
