package control

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
)

// tempStore opens a store on a new SQLite file, closed when t ends.
func tempStore(t *testing.T) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestAdvanceMatchesLoad: the entry advance builds after a hand-out (the
// cached entry before it, plus the rows written) answers every node as a
// load from the store does; a hand-out that is not the only change since
// the cached entry (its version is not one below the bump's) leaves the
// entry to be loaded.
func TestAdvanceMatchesLoad(t *testing.T) {
	ctx := context.Background()
	st := tempStore(t)
	c, err := New(st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []store.Node
	for i := range 3 {
		name := fmt.Sprintf("web%d", i+1)
		if err := c.RegisterNode(ctx, name, name, "test", []api.NodeApp{{App: "shop", Env: "production", Roles: []string{"web"}}}); err != nil {
			t.Fatal(err)
		}
		n, err := st.FindNode(ctx, name, "shop", "production")
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	old, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1", Commit: strings.Repeat("a", 40)})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetCurrentRelease(ctx, "shop", "production", old.ID); err != nil {
		t.Fatal(err)
	}
	rel, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v2", Commit: strings.Repeat("b", 40)})
	if err != nil {
		t.Fatal(err)
	}
	tk, err := st.EnqueueTicket(ctx, store.Ticket{App: "shop", Env: "production", Holder: "test", Resumable: true}, false)
	if err != nil {
		t.Fatal(err)
	}
	l, ok, err := st.TryAcquire(ctx, tk.ID, time.Now(), time.Hour)
	if err != nil || !ok {
		t.Fatalf("acquire: %v %v", ok, err)
	}
	ro, err := st.CreateRollout(ctx, store.Rollout{App: "shop", Env: "production", Kind: store.RolloutServer, ReleaseID: rel.ID, TicketID: tk.ID,
		Strategy: "rolling", Plan: []byte(`{"hotfix":true}`), State: store.RolloutRunning, CreatedBy: "test"})
	if err != nil {
		t.Fatal(err)
	}
	apiRel := ReleaseToAPI(rel)

	// handOut writes rows as the assigner does and advances the cache
	// from the entry cached before; it returns the desired state of
	// every node from the cache, and from a load.
	// cached loads the entry before a hand-out.
	cached := func() *envDesired {
		t.Helper()
		c.Invalidate("shop", "production", 0)
		if _, err := c.Desired(ctx, nodes[:1]); err != nil {
			t.Fatal(err)
		}
		return c.desired.peek("shop", "production")
	}
	// write writes rows and bumps the version, as the assigner does, after
	// other, someone else's version bumps.
	write := func(rows []store.RolloutNode, other int) int64 {
		t.Helper()
		for range other {
			if _, err := st.BumpVersion(ctx, "shop", "production"); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.AssignRolloutNodes(ctx, rows); err != nil {
			t.Fatal(err)
		}
		v, err := st.BumpVersion(ctx, "shop", "production")
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	handOut := func(rows ...store.RolloutNode) (cachedDs, loaded []*api.Desired) {
		t.Helper()
		base := cached()
		v := write(rows, 0)
		c.desired.advance("shop", "production", base, v, rolloutAnswer{id: ro.ID, release: &apiRel, hotfix: true}, l.Token, rows)
		c.Invalidate("shop", "production", v) // the Change arriving: keeps it
		for _, n := range nodes {
			d, err := c.Desired(ctx, []store.Node{n})
			if err != nil {
				t.Fatal(err)
			}
			cachedDs = append(cachedDs, d)
		}
		fresh, err := New(st, Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			d, err := fresh.Desired(ctx, []store.Node{n})
			if err != nil {
				t.Fatal(err)
			}
			loaded = append(loaded, d)
		}
		return cachedDs, loaded
	}
	row := func(n store.Node, task int64, action string, runOnce ...string) store.RolloutNode {
		return store.RolloutNode{RolloutID: ro.ID, Node: n.Name, NodeID: n.ID, Task: task, Action: action, RunOnce: runOnce, Token: l.Token}
	}

	// The first wave (no rollout in the entry yet), then a second task for
	// one node.
	for i, rows := range [][]store.RolloutNode{
		{row(nodes[0], 1, api.ActionPrepare, "migrate"), row(nodes[1], 1, api.ActionPrepare), row(nodes[2], 1, api.ActionPrepare)},
		{row(nodes[1], 2, api.ActionActivate)},
	} {
		cached, loaded := handOut(rows...)
		if !reflect.DeepEqual(cached, loaded) {
			t.Fatalf("hand-out %d: the advanced cache answers\n%s\na load answers\n%s", i+1, show(cached), show(loaded))
		}
		if cached[0].Apps[0].Rollout != ro.ID || cached[0].Apps[0].Task == 0 {
			t.Fatalf("hand-out %d: web1 is told %+v, want a task of rollout %d", i+1, cached[0].Apps[0], ro.ID)
		}
		if e := c.desired.peek("shop", "production"); e == nil || e.tasks[rows[0].Node].Task != rows[0].Task {
			t.Fatalf("hand-out %d: the cached entry does not hold the hand-out", i+1)
		}
	}

	// Another change between the cached entry and the hand-out: no advance.
	base := cached()
	rows := []store.RolloutNode{row(nodes[2], 2, api.ActionActivate)}
	v := write(rows, 1)
	c.desired.advance("shop", "production", base, v, rolloutAnswer{id: ro.ID, release: &apiRel, hotfix: true}, l.Token, rows)
	if e := c.desired.peek("shop", "production"); e != base {
		t.Fatalf("advanced over a change it did not see (version %d, base %d)", v, base.version)
	}

	// A later change announced before the advance: no advance either.
	base = cached()
	rows = []store.RolloutNode{row(nodes[0], 2, api.ActionActivate)}
	v = write(rows, 0)
	c.Invalidate("shop", "production", v+1) // someone else's change, announced first
	c.desired.advance("shop", "production", base, v, rolloutAnswer{id: ro.ID, release: &apiRel, hotfix: true}, l.Token, rows)
	if e := c.desired.peek("shop", "production"); e != nil {
		t.Fatalf("advanced to version %d after version %d was announced", e.version, v+1)
	}
}

func show(ds []*api.Desired) string {
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "  %d %+v\n", d.Version, d.Apps)
	}
	return b.String()
}

// gatedVersions is a store whose Version waits while gate is shut.
type gatedVersions struct {
	store.Store
	gate chan struct{}
}

func (g *gatedVersions) Version(ctx context.Context, app, env string) (int64, error) {
	if g.gate != nil {
		<-g.gate
	}
	return g.Store.Version(ctx, app, env)
}

// TestAdvanceFreesWaitersOfALoad: a long-poll that started a load of the
// environment (its change was announced before the hand-out's advance)
// takes the advanced entry instead of waiting for the slow load.
func TestAdvanceFreesWaitersOfALoad(t *testing.T) {
	ctx := context.Background()
	inner := tempStore(t)
	st := &gatedVersions{Store: inner}
	c, err := New(st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterNode(ctx, "web1", "web1", "test", []api.NodeApp{{App: "shop", Env: "production", Roles: []string{"web"}}}); err != nil {
		t.Fatal(err)
	}
	n, err := st.FindNode(ctx, "web1", "shop", "production")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Desired(ctx, []store.Node{n}); err != nil {
		t.Fatal(err)
	}
	base := c.desired.peek("shop", "production")
	v, err := st.BumpVersion(ctx, "shop", "production")
	if err != nil {
		t.Fatal(err)
	}
	st.gate = make(chan struct{})
	defer close(st.gate)
	c.Invalidate("shop", "production", v)
	got := make(chan int64, 1)
	go func() {
		d, err := c.Desired(ctx, []store.Node{n})
		if err != nil {
			got <- -1
			return
		}
		got <- d.Version
	}()
	deadline := time.Now().Add(10 * time.Second)
	for { // the waiter's load has started (and waits at the gate)
		c.desired.mu.Lock()
		e := c.desired.entries[envKey{"shop", "production"}]
		c.desired.mu.Unlock()
		if e != nil && e != base {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no load started")
		}
		time.Sleep(time.Millisecond)
	}
	rel := api.Release{ID: 1, App: "shop", Env: "production", Commit: strings.Repeat("c", 40)}
	c.desired.advance("shop", "production", base, v, rolloutAnswer{id: 7, release: &rel}, 1, []store.RolloutNode{{RolloutID: 7, Node: "web1", NodeID: n.ID, Task: 1, Action: api.ActionPrepare, Token: 1}})
	select {
	case version := <-got:
		if version <= 0 {
			t.Fatalf("the waiter failed (%d)", version)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter still waits for the gated load after the advance")
	}
}
