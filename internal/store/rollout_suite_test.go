package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/dbtest"
)

// The rollout part of the conformance suite: environments' current release,
// rollouts and their fenced per-node tasks, the resumable queue rule and
// lease takeover.

// running enqueues a ticket for shop/production and acquires the lease for
// it at at; it returns the ticket and its lease.
func running(t *testing.T, st store.Store, holder string, resumable bool) (store.Ticket, store.Lease) {
	t.Helper()
	tk, err := st.EnqueueTicket(ctxT(t), store.Ticket{App: "shop", Env: "production", Holder: holder, CreatedAt: at, Resumable: resumable}, false)
	must(t, err)
	if tk.Resumable != resumable {
		t.Fatalf("EnqueueTicket returned Resumable %v, want %v", tk.Resumable, resumable)
	}
	l, ok := tryAcquire(t, st, tk.ID, at)
	if !ok {
		t.Fatalf("ticket %d (%s) did not get the free lease", tk.ID, holder)
	}
	return tk, l
}

// startRollout creates a release of shop/production and a server rollout
// of it whose resumable ticket holds the environment's lease since at.
func startRollout(tb testing.TB, st store.Store, holder string) (store.Ticket, store.Lease, store.Rollout) {
	tb.Helper()
	ctx := context.Background()
	rel, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	if err != nil {
		tb.Fatal(err)
	}
	tk, err := st.EnqueueTicket(ctx, store.Ticket{App: "shop", Env: "production", Holder: holder, CreatedAt: at, Resumable: true}, false)
	if err != nil {
		tb.Fatal(err)
	}
	l, ok, err := st.TryAcquire(ctx, tk.ID, at, ttl)
	if err != nil || !ok {
		tb.Fatalf("ticket %d (%s): no free lease: ok=%v err=%v", tk.ID, holder, ok, err)
	}
	r, err := st.CreateRollout(ctx, store.Rollout{App: rel.App, Env: rel.Env, Kind: store.RolloutServer, ReleaseID: rel.ID, TicketID: tk.ID,
		Strategy: "rolling", Plan: []byte(`{"strategy":"rolling"}`), CreatedBy: "alice", CreatedAt: at})
	if err != nil {
		tb.Fatal(err)
	}
	return tk, l, r
}

// serverRollout creates a queued server rollout of release rel owned by ticket.
func serverRollout(t *testing.T, st store.Store, rel store.Release, ticket int64) store.Rollout {
	t.Helper()
	r, err := st.CreateRollout(ctxT(t), store.Rollout{App: rel.App, Env: rel.Env, Kind: store.RolloutServer, ReleaseID: rel.ID, TicketID: ticket,
		Strategy: "rolling", Plan: []byte(`{"strategy":"rolling"}`), CreatedBy: "alice", CreatedAt: at})
	must(t, err)
	return r
}

func (s suite) testEnvironments(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	_, err := st.GetEnvironment(ctx, "shop", "production")
	wantErr(t, err, store.ErrNotFound)

	r1, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1", CreatedAt: at})
	must(t, err)
	r2, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v2", CreatedAt: at})
	must(t, err)
	other, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "staging", Spec: "tag:v2", CreatedAt: at})
	must(t, err)
	env, err := st.GetEnvironment(ctx, "shop", "production")
	must(t, err)
	if env.App != "shop" || env.Name != "production" || env.Version != 2 || env.CurrentRelease != 0 || !env.CreatedAt.Equal(at) {
		t.Fatalf("GetEnvironment before any rollout = %+v, want version 2, no current release, created %v", env, at)
	}

	w, err := st.Watch(ctx)
	must(t, err)
	must(t, st.SetCurrentRelease(ctx, "shop", "production", r1.ID))
	env, err = st.GetEnvironment(ctx, "shop", "production")
	must(t, err)
	if env.CurrentRelease != r1.ID || env.Version != 3 {
		t.Fatalf("after SetCurrentRelease(%d): %+v, want it current at version 3", r1.ID, env)
	}
	deadline := time.After(10 * time.Second)
	for got := false; !got; {
		select {
		case c := <-w:
			got = c == store.Change{App: "shop", Env: "production", Version: 3}
		case <-deadline:
			t.Fatal("SetCurrentRelease woke no watcher within 10s")
		}
	}

	// A release of another environment, or none at all, is refused and
	// changes nothing.
	wantErr(t, st.SetCurrentRelease(ctx, "shop", "production", other.ID), store.ErrNotFound)
	wantErr(t, st.SetCurrentRelease(ctx, "shop", "production", 999999), store.ErrNotFound)
	must(t, st.SetCurrentRelease(ctx, "shop", "staging", other.ID))
	must(t, st.SetCurrentRelease(ctx, "shop", "production", r2.ID))

	envs, err := st.ListEnvironments(ctx, "shop")
	must(t, err)
	if len(envs) != 2 || envs[0].Name != "production" || envs[0].CurrentRelease != r2.ID || envs[1].CurrentRelease != other.ID {
		t.Fatalf("ListEnvironments = %+v, want production at %d and staging at %d", envs, r2.ID, other.ID)
	}
}

func (s suite) testRollouts(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	rel, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	must(t, err)
	_, err = st.CreateRollout(ctx, store.Rollout{App: "shop", Env: "production", Kind: "sideways"})
	wantErr(t, err, store.ErrInvalid)
	_, err = st.CreateRollout(ctx, store.Rollout{Env: "production", Kind: store.RolloutServer})
	wantErr(t, err, store.ErrInvalid)
	_, err = st.GetRollout(ctx, 999999)
	wantErr(t, err, store.ErrNotFound)

	plan := make([]byte, 256) // bytes, not text: every value survives
	for i := range plan {
		plan[i] = byte(i)
	}
	in := store.Rollout{App: "shop", Env: "production", Kind: store.RolloutServer, ReleaseID: rel.ID, Release: "20261122-101500-3f9c2ab",
		TicketID: 41, Strategy: "canary", Plan: plan, CreatedBy: "alice", CreatedAt: at}
	r1, err := st.CreateRollout(ctx, in)
	must(t, err)
	if r1.ID == 0 || r1.State != store.RolloutQueued {
		t.Fatalf("CreateRollout = %+v, want an ID and state queued", r1)
	}
	in.ID, in.State = r1.ID, store.RolloutQueued
	got, err := st.GetRollout(ctx, r1.ID)
	must(t, err)
	if !reflect.DeepEqual(got, in) {
		t.Fatalf("GetRollout = %+v\nwant         %+v", got, in)
	}
	byTicket, err := st.RolloutByTicket(ctx, 41)
	must(t, err)
	if byTicket.ID != r1.ID {
		t.Fatalf("RolloutByTicket(41) = rollout %d, want %d", byTicket.ID, r1.ID)
	}
	_, err = st.RolloutByTicket(ctx, 42)
	wantErr(t, err, store.ErrNotFound)

	// A push rollout of a new environment creates it.
	push, err := st.CreateRollout(ctx, store.Rollout{App: "shop", Env: "staging", Kind: store.RolloutPush, TicketID: 42, Strategy: "all-at-once", CreatedBy: "bob@laptop"})
	must(t, err)
	if push.Plan != nil || push.CreatedAt.IsZero() {
		t.Fatalf("push rollout = %+v, want no plan and a creation time", push)
	}
	r3, err := st.CreateRollout(ctx, store.Rollout{App: "shop", Env: "production", Kind: store.RolloutServer, TicketID: 43, State: store.RolloutRunning})
	must(t, err)

	// Update writes state, phase, error, times, report and runner; not the
	// decision or what was fixed at creation.
	upd := r1
	upd.State, upd.Phase, upd.Error, upd.Runner = store.RolloutFailed, "activate", "web2 failed", "server-b"
	upd.StartedAt, upd.EndedAt, upd.Report = at.Add(time.Second), at.Add(time.Minute), []byte(`{"ok":false}`)
	upd.Decision, upd.Strategy, upd.Plan = "promote", "ignored", []byte("ignored")
	must(t, st.UpdateRollout(ctx, upd))
	got, err = st.GetRollout(ctx, r1.ID)
	must(t, err)
	want := upd
	want.Decision, want.Strategy, want.Plan = "", r1.Strategy, r1.Plan
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after UpdateRollout: %+v\nwant %+v", got, want)
	}
	wantErr(t, st.UpdateRollout(ctx, store.Rollout{ID: 999999, State: store.RolloutRunning}), store.ErrNotFound)
	wantErr(t, st.UpdateRollout(ctx, store.Rollout{ID: r1.ID, State: "exploded"}), store.ErrInvalid)

	// Decisions: only promote or abort, only on a rollout that has not ended.
	_, err = st.DecideRollout(ctx, r3.ID, "maybe")
	wantErr(t, err, store.ErrInvalid)
	_, err = st.DecideRollout(ctx, r1.ID, "promote")
	wantErr(t, err, store.ErrNotQueued)
	_, err = st.DecideRollout(ctx, 999999, "abort")
	wantErr(t, err, store.ErrNotFound)
	d, err := st.DecideRollout(ctx, r3.ID, "abort")
	must(t, err)
	if d.Decision != "abort" || d.ID != r3.ID || d.State != store.RolloutRunning {
		t.Fatalf("DecideRollout = %+v, want rollout %d running with decision abort", d, r3.ID)
	}

	ids := func(f store.RolloutFilter) []int64 {
		t.Helper()
		rs, err := st.ListRollouts(ctx, f)
		must(t, err)
		out := []int64{}
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	for _, tc := range []struct {
		f    store.RolloutFilter
		want []int64
	}{
		{store.RolloutFilter{}, []int64{r3.ID, push.ID, r1.ID}},
		{store.RolloutFilter{App: "shop", Env: "production"}, []int64{r3.ID, r1.ID}},
		{store.RolloutFilter{Env: "staging"}, []int64{push.ID}},
		{store.RolloutFilter{App: "blog"}, []int64{}},
		{store.RolloutFilter{States: []store.RolloutState{store.RolloutQueued, store.RolloutRunning}}, []int64{r3.ID, push.ID}},
		{store.RolloutFilter{States: []store.RolloutState{store.RolloutFailed}}, []int64{r1.ID}},
		{store.RolloutFilter{BeforeID: r3.ID, Limit: 1}, []int64{push.ID}},
		{store.RolloutFilter{Limit: 2}, []int64{r3.ID, push.ID}},
	} {
		if got := ids(tc.f); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ListRollouts(%+v) = %v, want %v", tc.f, got, tc.want)
		}
	}
}

// testRolloutNodes assigns, reassigns and reports node tasks, and checks
// the fence: nothing is written under a token that is not the lease's.
func (s suite) testRolloutNodes(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	tk, l, r := startRollout(t, st, "rollout")
	rel, err := st.GetRelease(ctx, r.ReleaseID)
	must(t, err)
	list := func() []store.RolloutNode {
		t.Helper()
		ns, err := st.ListRolloutNodes(ctx, r.ID)
		must(t, err)
		return ns
	}
	if ns := list(); len(ns) != 0 {
		t.Fatalf("nodes of a new rollout: %+v", ns)
	}

	before := time.Now().Add(-time.Second)
	web2 := store.RolloutNode{RolloutID: r.ID, Node: "web2", NodeID: 2, Task: 1, Action: "prepare", RunOnce: []string{"migrate"}, Token: l.Token}
	web1 := store.RolloutNode{RolloutID: r.ID, Node: "web1", NodeID: 1, Task: 1, Action: "prepare", Token: l.Token,
		State: store.NodeWorking, Step: "stale", Error: "stale", Serving: "stale", UpgradeID: 7}
	must(t, st.AssignRolloutNodes(ctx, []store.RolloutNode{web2, web1}))
	ns := list()
	if len(ns) != 2 || ns[0].Node != "web1" || ns[1].Node != "web2" {
		t.Fatalf("ListRolloutNodes = %+v, want web1 and web2 in order", ns)
	}
	for _, n := range ns {
		if n.UpdatedAt.Before(before) || time.Since(n.UpdatedAt) > time.Minute {
			t.Fatalf("node %s updated at %v, want now", n.Node, n.UpdatedAt)
		}
	}
	// Step, Error, Serving and UpgradeID are cleared; State as given.
	web1.Step, web1.Error, web1.Serving, web1.UpgradeID, web1.UpdatedAt = "", "", "", 0, ns[0].UpdatedAt
	web2.State, web2.UpdatedAt = store.NodeAssigned, ns[1].UpdatedAt
	if !reflect.DeepEqual(ns, []store.RolloutNode{web1, web2}) {
		t.Fatalf("ListRolloutNodes = %+v\nwant %+v", ns, []store.RolloutNode{web1, web2})
	}
	if got, err := st.GetRolloutNode(ctx, r.ID, "web2"); err != nil || !reflect.DeepEqual(got, ns[1]) {
		t.Fatalf("GetRolloutNode(web2) = %+v, %v\nwant %+v", got, err, ns[1])
	}
	if _, err := st.GetRolloutNode(ctx, r.ID, "web9"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("GetRolloutNode of a node not in the rollout: %v, want ErrNotFound", err)
	}

	// Reports for the current task land; the row keeps the request.
	ok, err := st.ReportRolloutNode(ctx, store.RolloutNode{RolloutID: r.ID, Node: "web2", Task: 1, State: store.NodeDone, Step: "prepare", Serving: "rel-1", UpgradeID: 9})
	must(t, err)
	if !ok {
		t.Fatal("report for the current task was refused")
	}
	_, err = st.ReportRolloutNode(ctx, store.RolloutNode{RolloutID: r.ID, Node: "web2", Task: 1, State: "bored"})
	wantErr(t, err, store.ErrInvalid)
	// A progress report overtaken by the result does not undo it.
	ok, err = st.ReportRolloutNode(ctx, store.RolloutNode{RolloutID: r.ID, Node: "web2", Task: 1, State: store.NodeWorking, Step: "fetch"})
	must(t, err)
	if ok {
		t.Fatal("a progress report after the task's result was accepted")
	}
	ns = list()
	if n := ns[1]; n.State != store.NodeDone || n.Step != "prepare" || n.Serving != "rel-1" || n.UpgradeID != 9 || n.Action != "prepare" || !reflect.DeepEqual(n.RunOnce, []string{"migrate"}) {
		t.Fatalf("web2 after its report: %+v", n)
	}

	// A new task replaces the old one; a late report for the old task
	// changes nothing.
	web2b := store.RolloutNode{RolloutID: r.ID, Node: "web2", NodeID: 2, Task: 2, Action: "rollback", To: "rel-0", Token: l.Token}
	must(t, st.AssignRolloutNodes(ctx, []store.RolloutNode{web2b}))
	ok, err = st.ReportRolloutNode(ctx, store.RolloutNode{RolloutID: r.ID, Node: "web2", Task: 1, State: store.NodeFailed, Error: "late"})
	must(t, err)
	if ok {
		t.Fatal("a late report for task 1 was accepted after task 2 was assigned")
	}
	ok, err = st.ReportRolloutNode(ctx, store.RolloutNode{RolloutID: r.ID, Node: "web9", Task: 1, State: store.NodeDone})
	must(t, err)
	if ok {
		t.Fatal("a report for a node the rollout never asked was accepted")
	}
	n := list()[1]
	if n.Task != 2 || n.Action != "rollback" || n.To != "rel-0" || n.State != store.NodeAssigned || n.Error != "" || n.Serving != "" || n.UpgradeID != 0 || n.RunOnce != nil {
		t.Fatalf("web2 after reassignment and a late report: %+v", n)
	}

	// The fence: a wrong token, a mixed batch, or a rollout whose ticket
	// does not hold the lease write nothing.
	fenced := func(what string, nodes []store.RolloutNode) {
		t.Helper()
		beforeNodes := list()
		err := st.AssignRolloutNodes(ctx, nodes)
		if !errors.Is(err, store.ErrLeaseLost) {
			t.Fatalf("%s: AssignRolloutNodes err = %v, want ErrLeaseLost", what, err)
		}
		if after := list(); !reflect.DeepEqual(after, beforeNodes) {
			t.Fatalf("%s: refused assignment wrote %+v (before %+v)", what, after, beforeNodes)
		}
	}
	stale := store.RolloutNode{RolloutID: r.ID, Node: "web1", Task: 2, Action: "activate", Token: l.Token - 1}
	fresh := store.RolloutNode{RolloutID: r.ID, Node: "web3", Task: 1, Action: "prepare", Token: l.Token}
	fenced("old token", []store.RolloutNode{stale})
	fenced("one old token among good ones", []store.RolloutNode{fresh, stale})
	other := serverRollout(t, st, rel, tk.ID+1000)
	fenced("rollout without the lease", []store.RolloutNode{{RolloutID: other.ID, Node: "web1", Task: 1, Action: "prepare", Token: l.Token}})
	err = st.AssignRolloutNodes(ctx, []store.RolloutNode{fresh, {RolloutID: other.ID, Node: "web4", Token: l.Token}})
	wantErr(t, err, store.ErrInvalid)
	err = st.AssignRolloutNodes(ctx, []store.RolloutNode{fresh, fresh})
	wantErr(t, err, store.ErrInvalid)
	err = st.AssignRolloutNodes(ctx, []store.RolloutNode{{RolloutID: 999999, Node: "web1", Token: l.Token}})
	wantErr(t, err, store.ErrNotFound)

	// Once released, the lease fences the runner out; so does a new
	// holder's lease.
	must(t, st.ReleaseLease(ctx, l, at.Add(time.Second)))
	fenced("released lease", []store.RolloutNode{fresh})
	tk2, l2 := running(t, st, "next", true)
	r2 := serverRollout(t, st, rel, tk2.ID)
	fenced("another ticket's lease", []store.RolloutNode{fresh})
	must(t, st.AssignRolloutNodes(ctx, []store.RolloutNode{{RolloutID: r2.ID, Node: "web1", Task: 1, Action: "activate", Token: l2.Token}}))
	fenced("previous token on the new rollout", []store.RolloutNode{{RolloutID: r2.ID, Node: "web1", Task: 2, Action: "activate", Token: l.Token}})
}

// testQueueResumable checks the queue rule for resumable tickets: their
// lapsed lease is not expired by the next ticket but taken over, with a new
// token that fences the old runner out.
func (s suite) testQueueResumable(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	tk, l, r := startRollout(t, st, "rollout 1")
	next, err := st.EnqueueTicket(ctx, store.Ticket{App: "shop", Env: "production", Holder: "bob@laptop", CreatedAt: at}, false)
	must(t, err)
	got := wantState(t, st, tk.ID, store.TicketRunning)
	if !got.Resumable {
		t.Fatalf("GetTicket = %+v, want Resumable", got)
	}

	// Takeover before the lease lapsed: someone runs it.
	_, err = st.TakeOverLease(ctx, tk.ID, at.Add(5*time.Second), ttl)
	wantErr(t, err, store.ErrLeaseLost)

	// The lease lapsed long ago; the next ticket keeps waiting.
	late := at.Add(10 * ttl)
	cur, ok := tryAcquire(t, st, next.ID, late)
	if ok || cur.TicketID != tk.ID {
		t.Fatalf("next ticket behind a lapsed resumable lease: %+v ok=%v, want to wait for ticket %d", cur, ok, tk.ID)
	}
	wantState(t, st, tk.ID, store.TicketRunning)
	status, err := st.QueueStatus(ctx, "shop", "production")
	must(t, err)
	if status.Lease == nil || status.Lease.TicketID != tk.ID || len(status.Queue) != 1 || status.Queue[0].ID != next.ID {
		t.Fatalf("queue while waiting for a takeover: %+v", status)
	}

	l2, err := st.TakeOverLease(ctx, tk.ID, late, ttl)
	must(t, err)
	if l2.Token != l.Token+1 || l2.TicketID != tk.ID || !l2.ExpiresAt.Equal(late.Add(ttl)) || l2.Holder != "rollout 1" {
		t.Fatalf("TakeOverLease = %+v, want token %d until %v", l2, l.Token+1, late.Add(ttl))
	}
	_, err = st.TakeOverLease(ctx, tk.ID, late, ttl)
	wantErr(t, err, store.ErrLeaseLost)
	// The old runner is fenced out: no renewal, no assignment.
	_, err = st.RenewLease(ctx, l, late, ttl)
	wantErr(t, err, store.ErrLeaseLost)
	wantErr(t, st.AssignRolloutNodes(ctx, []store.RolloutNode{{RolloutID: r.ID, Node: "web1", Task: 1, Action: "prepare", Token: l.Token}}), store.ErrLeaseLost)
	must(t, st.AssignRolloutNodes(ctx, []store.RolloutNode{{RolloutID: r.ID, Node: "web1", Task: 1, Action: "prepare", Token: l2.Token}}))
	tkNow := wantState(t, st, tk.ID, store.TicketRunning)
	if tkNow.Token != l2.Token || !tkNow.ExpiresAt.Equal(l2.ExpiresAt) {
		t.Fatalf("ticket after takeover: %+v, want token %d", tkNow, l2.Token)
	}
	l2, err = st.RenewLease(ctx, l2, late.Add(time.Second), ttl)
	must(t, err)

	// A queued resumable ticket nobody tried for long is not expired: any
	// runner picks it up later. A plain one is, as before.
	enq := func(holder string, resumable bool) store.Ticket {
		t.Helper()
		tk, err := st.EnqueueTicket(ctx, store.Ticket{App: "shop", Env: "production", Holder: holder, CreatedAt: late, Resumable: resumable}, false)
		must(t, err)
		return tk
	}
	queuedRollout, gone, alive := enq("rollout 2", true), enq("gone", false), enq("alive", false)
	status, err = st.QueueStatus(ctx, "shop", "production")
	must(t, err)
	if len(status.Queue) != 4 || status.Queue[0].Resumable || !status.Queue[1].Resumable || status.Queue[1].ID != queuedRollout.ID || status.Queue[2].Resumable {
		t.Fatalf("queue %+v, want bob's plain ticket, then rollout 2 resumable, then plain ones", status.Queue)
	}
	must(t, st.ReleaseLease(ctx, l2, late.Add(2*time.Second)))
	muchLater := late.Add(100 * ttl)
	if _, ok := tryAcquire(t, st, alive.ID, muchLater); ok {
		t.Fatal("a later ticket jumped a queued resumable one")
	}
	wantState(t, st, next.ID, store.TicketExpired)
	wantState(t, st, queuedRollout.ID, store.TicketQueued)
	wantState(t, st, gone.ID, store.TicketQueued) // behind the head: not looked at yet
	l3, ok := tryAcquire(t, st, queuedRollout.ID, muchLater)
	if !ok || l3.Token != l2.Token+1 {
		t.Fatalf("queued resumable ticket at the head: %+v ok=%v, want the lease with token %d", l3, ok, l2.Token+1)
	}
	must(t, st.ReleaseLease(ctx, l3, muchLater))

	// TakeOverLease refuses tickets that are not running and resumable.
	_, err = st.TakeOverLease(ctx, alive.ID, muchLater, ttl)
	wantErr(t, err, store.ErrLeaseLost)
	l4, ok := tryAcquire(t, st, alive.ID, muchLater)
	if !ok {
		t.Fatal("live plain ticket did not get the free lease")
	}
	wantState(t, st, gone.ID, store.TicketExpired)
	_, err = st.TakeOverLease(ctx, alive.ID, muchLater.Add(time.Hour), ttl)
	wantErr(t, err, store.ErrLeaseLost)
	_, err = st.TakeOverLease(ctx, 999999, muchLater, ttl)
	wantErr(t, err, store.ErrNotFound)
	// ...and a lapsed plain holder still expires for the next ticket.
	third := enq("rollout 3", true)
	l5, ok := tryAcquire(t, st, third.ID, muchLater.Add(time.Hour))
	if !ok || l5.Token != l4.Token+1 {
		t.Fatalf("resumable ticket behind a lapsed push deploy: %+v ok=%v, want token %d", l5, ok, l4.Token+1)
	}
	wantState(t, st, alive.ID, store.TicketExpired)
}

// testTakeOverRace races replicas (two Store instances on one database) to
// take over one lapsed lease: exactly one wins each round.
func (s suite) testTakeOverRace(t *testing.T) {
	st, url := s.open(t)
	replica := s.openURL(t, url)
	ctx := ctxT(t)
	tk, l := running(t, st, "rollout 1", true)
	const rounds, racers = 5, 16
	when := at
	token := l.Token
	for round := range rounds {
		when = when.Add(2 * ttl)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		leases := make([]store.Lease, racers)
		errs := make([]error, racers)
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				db := st
				if i%2 == 1 {
					db = replica
				}
				<-gate
				leases[i], errs[i] = db.TakeOverLease(ctx, tk.ID, when, ttl)
			}()
		}
		close(gate)
		wg.Wait()
		wins := 0
		for i, err := range errs {
			switch {
			case err == nil:
				wins++
				if leases[i].Token != token+1 {
					t.Fatalf("round %d: winner got token %d, want %d", round, leases[i].Token, token+1)
				}
			case errors.Is(err, store.ErrLeaseLost):
			default:
				t.Fatalf("round %d: unexpected error %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d of %d replicas took the lease over, want exactly 1", round, wins, racers)
		}
		token++
	}
	status, err := st.QueueStatus(ctx, "shop", "production")
	must(t, err)
	if status.LastToken != token || status.Lease == nil || status.Lease.Token != token {
		t.Fatalf("status after %d takeovers: %+v, want token %d", rounds, status, token)
	}
}

// testFenceAcrossReplicas lets an old runner on one replica assign nodes
// in a loop (paced, so SQLite's waiting writer gets its turn) while another
// replica takes its lapsed lease over: assignments succeed until the
// takeover, and the first one that starts after the takeover returned is
// refused; the new runner's go through.
func (s suite) testFenceAcrossReplicas(t *testing.T) {
	st, url := s.open(t)
	replica := s.openURL(t, url)
	ctx := ctxT(t)
	tk, l, r := startRollout(t, st, "rollout 1")
	firstDone := make(chan struct{})
	takenOver := make(chan struct{})
	oldDone := make(chan error, 1)
	go func() {
		pace := time.NewTicker(2 * time.Millisecond)
		defer pace.Stop()
		for task := 1; task <= 5000; task++ {
			after := false
			select {
			case <-takenOver:
				after = true
			default:
			}
			err := assignAll(ctx, st, r, l, 10, task)
			if task == 1 {
				close(firstDone)
			}
			switch {
			case errors.Is(err, store.ErrLeaseLost) && after:
				oldDone <- nil
				return
			case errors.Is(err, store.ErrLeaseLost): // the takeover committed, its call has not returned yet
			case err != nil:
				oldDone <- err
				return
			case after:
				oldDone <- fmt.Errorf("task %d assigned under token %d after the takeover returned", task, l.Token)
				return
			}
			select {
			case <-pace.C:
			case <-ctx.Done():
				oldDone <- ctx.Err()
				return
			}
		}
		oldDone <- errors.New("no takeover within 5000 assignments")
	}()
	<-firstDone
	l2, err := replica.TakeOverLease(ctx, tk.ID, at.Add(2*ttl), ttl)
	close(takenOver)
	must(t, err)
	must(t, <-oldDone)
	must(t, assignAll(ctx, replica, r, l2, 5, 10000))
	ns, err := st.ListRolloutNodes(ctx, r.ID)
	must(t, err)
	for _, n := range ns[:5] {
		if n.Token != l2.Token || n.Task != 10000 {
			t.Fatalf("node %s after the new runner's assignment: %+v", n.Node, n)
		}
	}
}

func (s suite) testUpgradeRolloutTask(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	r, n := fixture(t, st, "shop", "production", "web1")
	u, err := st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: r.ID, RolloutID: 12, Task: 3})
	must(t, err)
	plain, err := st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: r.ID})
	must(t, err)
	got, err := st.GetUpgrade(ctx, u.ID)
	must(t, err)
	if got.RolloutID != 12 || got.Task != 3 {
		t.Fatalf("GetUpgrade = %+v, want rollout 12 task 3", got)
	}
	list, err := st.ListUpgrades(ctx, store.UpgradeFilter{NodeID: n.ID})
	must(t, err)
	if len(list) != 2 || list[0].ID != plain.ID || list[0].RolloutID != 0 || list[0].Task != 0 || list[1].RolloutID != 12 || list[1].Task != 3 {
		t.Fatalf("ListUpgrades = %+v, want the plain upgrade then rollout 12 task 3", list)
	}
}

// testMigrateCurrentRelease fills a database at schema version 3 (before
// rollouts) and checks migration 4 makes each environment's latest release
// its current one, so its nodes keep converging to it.
func (s suite) testMigrateCurrentRelease(t *testing.T) {
	url := dbtest.New(t, s.backend)
	ctx := ctxT(t)
	must(t, store.MigrateTo(ctx, url, 3))
	stmts := []string{
		"INSERT INTO apps (name, created_at) VALUES ('shop', '2026-01-02 03:04:05')",
		"INSERT INTO environments (app, name, version, created_at) VALUES ('shop', 'production', 3, '2026-01-02 03:04:05')",
		"INSERT INTO environments (app, name, version, created_at) VALUES ('shop', 'staging', 1, '2026-01-02 03:04:05')",
		"INSERT INTO environments (app, name, version, created_at) VALUES ('shop', 'empty', 0, '2026-01-02 03:04:05')",
		"INSERT INTO releases (id, app, env, spec, created_at) VALUES (1, 'shop', 'production', 'tag:v1', '2026-01-02 03:04:05')",
		"INSERT INTO releases (id, app, env, spec, created_at) VALUES (2, 'shop', 'staging', 'tag:v1', '2026-01-02 03:04:05')",
		"INSERT INTO releases (id, app, env, spec, created_at) VALUES (3, 'shop', 'production', 'tag:v2', '2026-01-02 03:04:05')",
		"INSERT INTO deploy_leases (app, env) VALUES ('shop', 'production')",
		"INSERT INTO deploy_tickets (app, env, holder, state, created_at, touched_at) VALUES ('shop', 'production', 'old', 'queued', '2026-01-02 03:04:05', '2026-01-02 03:04:05')",
	}
	if s.backend == dbtest.SQLite {
		target, err := store.ParseURL(url)
		must(t, err)
		db, err := sql.Open("sqlite", target.DSN)
		must(t, err)
		for _, q := range stmts {
			if _, err := db.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		must(t, db.Close())
	} else {
		if s.backend == dbtest.Postgres {
			stmts = append(stmts, "SELECT setval('releases_id_seq', 3)")
		}
		dbtest.Exec(t, s.backend, url, stmts...)
	}
	applied, err := store.Migrate(ctx, url)
	must(t, err)
	if len(applied) != 1 {
		t.Fatalf("migrating from version 3 applied %v, want one migration", applied)
	}
	st := s.openURL(t, url)
	envs, err := st.ListEnvironments(ctx, "shop")
	must(t, err)
	current := map[string]int64{}
	for _, e := range envs {
		current[e.Name] = e.CurrentRelease
	}
	if want := map[string]int64{"empty": 0, "production": 3, "staging": 2}; !reflect.DeepEqual(current, want) {
		t.Fatalf("current releases after migration %v, want %v", current, want)
	}
	q, err := st.QueueStatus(ctx, "shop", "production")
	must(t, err)
	if len(q.Queue) != 1 || q.Queue[0].Resumable {
		t.Fatalf("old ticket after migration: %+v, want one queued, not resumable", q.Queue)
	}
	r, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v3"})
	must(t, err)
	if r.ID != 4 {
		t.Fatalf("first release after migration got ID %d, want 4", r.ID)
	}
}

// assignAll assigns n nodes of rollout r under l in one call.
func assignAll(ctx context.Context, st store.Store, r store.Rollout, l store.Lease, n, task int) error {
	nodes := make([]store.RolloutNode, n)
	for i := range nodes {
		nodes[i] = store.RolloutNode{RolloutID: r.ID, Node: fmt.Sprintf("node%05d", i), NodeID: int64(i + 1), Task: int64(task),
			Action: "prepare", RunOnce: []string{"migrate"}, Token: l.Token}
	}
	return st.AssignRolloutNodes(ctx, nodes)
}

// testAssignMany assigns 10,000 nodes in one call, twice (insert, then
// replace), on every backend.
func (s suite) testAssignMany(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	_, l, r := startRollout(t, st, "rollout")
	const n = 10000
	for task := 1; task <= 2; task++ {
		start := time.Now()
		must(t, assignAll(ctx, st, r, l, n, task))
		t.Logf("%s: assigning %d nodes (task %d) took %s", s.backend, n, task, time.Since(start).Round(time.Millisecond))
	}
	ns, err := st.ListRolloutNodes(ctx, r.ID)
	must(t, err)
	if len(ns) != n || ns[0].Node != "node00000" || ns[n-1].Node != fmt.Sprintf("node%05d", n-1) || ns[n-1].Task != 2 {
		t.Fatalf("after assigning %d nodes twice: %d rows, first %+v", n, len(ns), ns[0])
	}
}

// BenchmarkAssignRolloutNodes measures one AssignRolloutNodes call of
// 10,000 nodes on each backend (each iteration replaces the previous task).
func BenchmarkAssignRolloutNodes(b *testing.B) {
	for _, backend := range dbtest.Backends {
		b.Run(backend, func(b *testing.B) {
			st, l, r := benchRollout(b, backend)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := assignAll(context.Background(), st, r, l, 10000, i+1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchRollout opens a store of backend with one running rollout.
func benchRollout(b *testing.B, backend string) (store.Store, store.Lease, store.Rollout) {
	st, err := store.Open(context.Background(), dbtest.New(b, backend))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	_, l, r := startRollout(b, st, "rollout")
	return st, l, r
}

// BenchmarkListRolloutNodes reads the 10,000 rows of one rollout: what a
// control server's desired-state load reads after every hand-out.
func BenchmarkListRolloutNodes(b *testing.B) {
	for _, backend := range dbtest.Backends {
		b.Run(backend, func(b *testing.B) {
			st, l, r := benchRollout(b, backend)
			if err := assignAll(context.Background(), st, r, l, 10000, 1); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				rows, err := st.ListRolloutNodes(context.Background(), r.ID)
				if err != nil || len(rows) != 10000 {
					b.Fatalf("%d rows, %v", len(rows), err)
				}
			}
		})
	}
}
