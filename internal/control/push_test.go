package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/store"
)

func beginPush(t *testing.T, c *control.Control, holder string, hosts ...string) *api.Rollout {
	t.Helper()
	r, err := c.BeginPush(ctxT(t), api.BeginPush{App: "shop", Env: "production", Holder: holder, Release: "20261123T120000Z-abc", Strategy: "rolling", Hosts: hosts})
	must(t, err)
	if r.Kind != store.RolloutPush {
		t.Fatalf("push rollout of kind %q", r.Kind)
	}
	return r
}

// pushWaiter is a WaitPush running in a goroutine.
type pushWaiter struct {
	done chan struct{}
	r    *api.Rollout
	err  error
}

func waitPush(ctx context.Context, c *control.Control, id int64, d time.Duration) *pushWaiter {
	w := &pushWaiter{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.r, w.err = c.WaitPush(ctx, id, d)
	}()
	return w
}

func (w *pushWaiter) get(t *testing.T) *api.Rollout {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("WaitPush did not return")
	}
	must(t, w.err)
	return w.r
}

func rolloutNodes(t *testing.T, st store.Store, id int64) map[string]store.RolloutNode {
	t.Helper()
	ns, err := st.ListRolloutNodes(ctxT(t), id)
	must(t, err)
	out := map[string]store.RolloutNode{}
	for _, n := range ns {
		out[n.Node] = n
	}
	return out
}

// TestPushWaitsItsTurn: a push deploy queues behind the environment's
// holder, says who holds it and its place, gets the lease with a higher
// token when the holder releases it, records its hosts' progress under
// that token (a wrong token is refused) and frees the lease when done.
func TestPushWaitsItsTurn(t *testing.T) {
	path := t.TempDir() + "/drover.db"
	st := openStore(t, path)
	clock := newClock()
	c := newControl(t, st, clock)
	ctx := ctxT(t)
	first := enqueue(t, c, "rollout 1", control.EnqueueOptions{})
	l1, err := c.Acquire(ctx, first)
	must(t, err)

	r := beginPush(t, c, "alice@laptop", "web1", "web2")
	if r.State != "queued" || r.Position != 1 || r.HeldBy != "rollout 1" || !r.HeldSince.Equal(l1.Since) || r.Token != 0 {
		t.Fatalf("BeginPush behind a holder = %+v, want queued at 1, held by rollout 1 since %s", r, l1.Since)
	}
	if again, err := c.WaitPush(ctx, r.ID, 0); err != nil || again.State != "queued" || again.Position != 1 {
		t.Fatalf("WaitPush(0) behind a holder = %+v, %v", again, err)
	}
	w := waitPush(ctx, c, r.ID, 30*time.Second)
	clock.sleepers(t, 1)
	select {
	case <-w.done:
		t.Fatalf("WaitPush returned while the lease was held: %+v %v", w.r, w.err)
	default:
	}
	must(t, c.Release(ctx, l1))
	got := w.get(t)
	if got.State != "running" || got.Token <= l1.Token || got.RenewEvery != lease/3 {
		t.Fatalf("WaitPush after release = %+v, want running with a token above %d, renew every %s", got, l1.Token, lease/3)
	}
	sr, err := st.GetRollout(ctx, r.ID)
	must(t, err)
	if sr.State != store.RolloutRunning || sr.Kind != store.RolloutPush || sr.Release != "20261123T120000Z-abc" || sr.Runner != "alice@laptop" || sr.StartedAt.IsZero() {
		t.Fatalf("stored push rollout = %+v", sr)
	}
	ns := rolloutNodes(t, st, r.ID)
	if len(ns) != 2 || ns["web1"].State != store.NodeAssigned || ns["web1"].Token != got.Token {
		t.Fatalf("nodes once running = %+v", ns)
	}

	p := api.PushProgress{Phase: "prepare", Nodes: []api.RolloutNode{{Node: "web1", Action: "prepare", State: store.NodeWorking, Step: "fetch"}, {Node: "stranger", Action: "prepare", State: store.NodeWorking}}}
	if _, err := c.PushProgress(ctx, r.ID, got.Token+1, p); !errors.Is(err, control.ErrLeaseLost) {
		t.Fatalf("progress under another token: %v, want ErrLeaseLost", err)
	}
	_, err = c.PushProgress(ctx, r.ID, got.Token, p)
	must(t, err)
	ns = rolloutNodes(t, st, r.ID)
	if n := ns["web1"]; n.Action != "prepare" || n.State != store.NodeWorking || n.Step != "fetch" || n.Task != 2 {
		t.Fatalf("web1 after progress = %+v", n)
	}
	if _, ok := ns["stranger"]; ok || len(ns) != 2 {
		t.Fatalf("a host the deploy did not name was recorded: %+v", ns)
	}
	if _, err := c.PushProgress(ctx, r.ID, got.Token, api.PushProgress{Nodes: []api.RolloutNode{{Node: "web1", State: "exploded"}}}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("progress with an unknown node state: %v, want ErrInvalid", err)
	}

	// Time passes: progress renews the lease, nobody takes it.
	next := beginPush(t, c, "bob@ci", "web1")
	for range 4 {
		clock.Advance(lease / 2)
		_, err = c.PushProgress(ctx, r.ID, got.Token, api.PushProgress{})
		must(t, err)
		if q, err := c.WaitPush(ctx, next.ID, 0); err != nil || q.State != "queued" || q.HeldBy != "alice@laptop" {
			t.Fatalf("the next deploy behind a renewed push = %+v, %v", q, err)
		}
	}

	report := json.RawMessage(`{"release":"20261123T120000Z-abc"}`)
	done, err := c.PushProgress(ctx, r.ID, got.Token, api.PushProgress{Phase: "activate", Done: true, OK: true, Report: report,
		Nodes: []api.RolloutNode{{Node: "web1", Action: "activate", State: store.NodeDone, Serving: "20261123T120000Z-abc"}, {Node: "web2", Action: "activate", State: store.NodeDone}}})
	must(t, err)
	if done.State != "succeeded" || done.Token != 0 {
		t.Fatalf("done answer = %+v", done)
	}
	sr, err = st.GetRollout(ctx, r.ID)
	must(t, err)
	if sr.State != store.RolloutSucceeded || sr.Phase != "activate" || string(sr.Report) != string(report) || sr.EndedAt.IsZero() {
		t.Fatalf("stored rollout after done = %+v (report %s)", sr, sr.Report)
	}
	if n := rolloutNodes(t, st, r.ID)["web1"]; n.State != store.NodeDone || n.Serving != "20261123T120000Z-abc" || n.Action != "activate" {
		t.Fatalf("web1 after done = %+v", n)
	}
	if q, err := c.WaitPush(ctx, next.ID, 0); err != nil || q.State != "running" {
		t.Fatalf("the next deploy after done = %+v, %v", q, err)
	}
}

// TestPushDeployerVanished: a push deployer that stops reporting loses
// the lease when it lapses; the next deploy proceeds, and the vanished
// one's rollout says the deployer stopped reporting. One that stops
// waiting leaves the queue and its rollout says so.
func TestPushDeployerVanished(t *testing.T) {
	path := t.TempDir() + "/drover.db"
	st := openStore(t, path)
	clock := newClock()
	c := newControl(t, st, clock)
	ctx := ctxT(t)

	gone := beginPush(t, c, "alice@laptop", "web1")
	if gone.State != "running" || gone.Token == 0 {
		t.Fatalf("BeginPush on a free environment = %+v, want running", gone)
	}
	next := beginPush(t, c, "bob@ci", "web1")
	quitter := beginPush(t, c, "carol@laptop", "web1")
	if next.Position != 1 || quitter.Position != 2 {
		t.Fatalf("positions %d, %d; want 1, 2", next.Position, quitter.Position)
	}
	// alice stops reporting; bob keeps asking, carol does not.
	clock.Advance(lease / 2)
	if q, err := c.WaitPush(ctx, next.ID, 0); err != nil || q.State != "queued" {
		t.Fatalf("bob before the lease lapsed: %+v, %v", q, err)
	}
	clock.Advance(lease/2 + time.Second)
	got, err := c.WaitPush(ctx, next.ID, 0)
	must(t, err)
	if got.State != "running" || got.Token <= gone.Token {
		t.Fatalf("bob after alice's lease lapsed = %+v, want running with a token above %d", got, gone.Token)
	}
	sr, err := st.GetRollout(ctx, gone.ID)
	must(t, err)
	if sr.State != store.RolloutFailed || !strings.Contains(sr.Error, "deployer stopped reporting") || sr.EndedAt.IsZero() {
		t.Fatalf("vanished deployer's rollout = %+v, want failed: deployer stopped reporting", sr)
	}
	if _, err := c.PushProgress(ctx, gone.ID, gone.Token, api.PushProgress{}); !errors.Is(err, control.ErrLeaseLost) {
		t.Fatalf("the vanished deployer coming back: %v, want ErrLeaseLost", err)
	} else if !strings.Contains(err.Error(), "bob@ci holds it") {
		t.Fatalf("lost-lease error does not name the new holder: %v", err)
	}

	// carol never asked again: once bob is done, the queue moves past her.
	_, err = c.PushProgress(ctx, next.ID, got.Token, api.PushProgress{Done: true, OK: true})
	must(t, err)
	last := beginPush(t, c, "dave@ci", "web1")
	if last.State != "running" {
		t.Fatalf("a deploy behind one that stopped waiting = %+v, want running", last)
	}
	q, err := c.WaitPush(ctx, quitter.ID, 0)
	must(t, err)
	if q.State != string(store.RolloutCancelled) || !strings.Contains(q.Error, "deployer stopped waiting") {
		t.Fatalf("the deployer that stopped waiting = %+v, want cancelled: deployer stopped waiting", q)
	}
}

// TestPushLeavesTheQueue: a deployer interrupted while it waits leaves
// the queue (token 0 with Done), and the deploy behind it moves up.
func TestPushLeavesTheQueue(t *testing.T) {
	c, _, _ := setup(t)
	ctx := ctxT(t)
	holder := beginPush(t, c, "alice@laptop", "web1")
	left := beginPush(t, c, "bob@ci", "web1")
	behind := beginPush(t, c, "carol@ci", "web1")
	if _, err := c.PushProgress(ctx, left.ID, 0, api.PushProgress{}); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("progress without a token: %v, want ErrInvalid", err)
	}
	out, err := c.PushProgress(ctx, left.ID, 0, api.PushProgress{Done: true})
	must(t, err)
	if out.State != string(store.RolloutCancelled) {
		t.Fatalf("after leaving = %+v, want cancelled", out)
	}
	if q, err := c.WaitPush(ctx, behind.ID, 0); err != nil || q.Position != 1 || q.HeldBy != "alice@laptop" {
		t.Fatalf("the deploy behind = %+v, %v; want position 1 behind alice", q, err)
	}
	st, err := c.Status(ctx, "shop", "production")
	must(t, err)
	if len(st.Queue) != 1 || st.Holder == nil || st.Holder.Token != holder.Token {
		t.Fatalf("queue after leaving = %+v", st)
	}
}

// TestPushVanishedBehindAServerRollout: a push deployer stops reporting
// and a server-run rollout's runner takes the lapsed lease (through the
// store, not WaitPush): Rollouts and Rollout show the push deploy failed,
// the deployer stopped reporting.
func TestPushVanishedBehindAServerRollout(t *testing.T) {
	c, _, clock := setup(t)
	ctx := ctxT(t)
	gone := beginPush(t, c, "alice@laptop", "web1")
	runner := enqueue(t, c, "rollout 9", control.EnqueueOptions{})
	clock.Advance(lease + time.Second)
	if _, ok, err := c.TryAcquire(ctx, runner); err != nil || !ok {
		t.Fatalf("the runner taking the lapsed lease: %v, %v", ok, err)
	}
	one, err := c.Rollout(ctx, gone.ID)
	must(t, err)
	if one.State != string(store.RolloutFailed) || !strings.Contains(one.Error, "deployer stopped reporting") {
		t.Fatalf("Rollout of the vanished push = %+v, want failed: deployer stopped reporting", one)
	}
	all, err := c.Rollouts(ctx, "shop", "", 10)
	must(t, err)
	if len(all) != 1 || all[0].Kind != store.RolloutPush || all[0].State != one.State || len(all[0].Nodes) != 1 {
		t.Fatalf("Rollouts = %+v, want the failed push with its host", all)
	}
}
