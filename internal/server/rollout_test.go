package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/servertest"
)

// completed records rel as a release whose rollout finished: the
// environment's current release, what nodes outside a rollout run.
func (e *env) completed(rel store.Release) store.Release {
	e.t.Helper()
	ctx := context.Background()
	rel, err := e.st.CreateRelease(ctx, rel)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.SetCurrentRelease(ctx, rel.App, rel.Env, rel.ID); err != nil {
		e.t.Fatal(err)
	}
	return rel
}

// runningRollout is a server rollout of rel that holds its environment's
// lease, as the runner leaves it in the store.
type runningRollout struct {
	e     *env
	ro    store.Rollout
	token int64
	task  map[string]int64
}

// startRollout records release rel and a running rollout of it (plan
// plan) holding app/env's lease, as a runner would.
func (e *env) startRollout(rel store.Release, plan string) *runningRollout {
	e.t.Helper()
	ctx := context.Background()
	rel, err := e.st.CreateRelease(ctx, rel)
	if err != nil {
		e.t.Fatal(err)
	}
	tk, err := e.st.EnqueueTicket(ctx, store.Ticket{App: rel.App, Env: rel.Env, Holder: "rollout test", Resumable: true}, false)
	if err != nil {
		e.t.Fatal(err)
	}
	l, ok, err := e.st.TryAcquire(ctx, tk.ID, time.Now(), time.Hour)
	if err != nil || !ok {
		e.t.Fatalf("acquire the lease of %s/%s: %v %v", rel.App, rel.Env, ok, err)
	}
	ro, err := e.st.CreateRollout(ctx, store.Rollout{App: rel.App, Env: rel.Env, Kind: store.RolloutServer, ReleaseID: rel.ID, TicketID: tk.ID,
		Strategy: "rolling", Plan: []byte(plan), State: store.RolloutRunning, CreatedBy: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	return &runningRollout{e: e, ro: ro, token: l.Token, task: map[string]int64{}}
}

// assign asks action of node (its next task) and bumps the version, as
// the runner's agent target does.
func (r *runningRollout) assign(node, action string, runOnce ...string) {
	r.e.t.Helper()
	ctx := context.Background()
	n, err := r.e.st.FindNode(ctx, node, r.ro.App, r.ro.Env)
	if err != nil {
		r.e.t.Fatal(err)
	}
	r.task[node]++
	if err := r.e.st.AssignRolloutNodes(ctx, []store.RolloutNode{{RolloutID: r.ro.ID, Node: node, NodeID: n.ID, Task: r.task[node], Action: action,
		RunOnce: runOnce, Token: r.token}}); err != nil {
		r.e.t.Fatal(err)
	}
	if _, err := r.e.st.BumpVersion(ctx, r.ro.App, r.ro.Env); err != nil {
		r.e.t.Fatal(err)
	}
}

// end records the rollout's final state and bumps the version.
func (r *runningRollout) end(state store.RolloutState) {
	r.e.t.Helper()
	ctx := context.Background()
	r.ro.State, r.ro.EndedAt = state, time.Now()
	if err := r.e.st.UpdateRollout(ctx, r.ro); err != nil {
		r.e.t.Fatal(err)
	}
	if _, err := r.e.st.BumpVersion(ctx, r.ro.App, r.ro.Env); err != nil {
		r.e.t.Fatal(err)
	}
}

// node returns node's row of the rollout.
func (r *runningRollout) node(name string) store.RolloutNode {
	r.e.t.Helper()
	nodes, err := r.e.st.ListRolloutNodes(context.Background(), r.ro.ID)
	if err != nil {
		r.e.t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Node == name {
			return n
		}
	}
	r.e.t.Fatalf("rollout %d has no node %s: %+v", r.ro.ID, name, nodes)
	return store.RolloutNode{}
}

func desiredNow(t *testing.T, c *api.Client) (*api.Desired, api.DesiredApp) {
	t.Helper()
	d, err := c.Desired(context.Background(), -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Apps) != 1 {
		t.Fatalf("desired: %+v, want one app", d)
	}
	return d, d.Apps[0]
}

// TestDesiredInRollout: a node the running rollout asked something of gets
// that task (release, action, token, rollout, task, run_once, hotfix); a
// node outside it, one joining mid-rollout, and every node once the
// rollout ended get the environment's last completed release; a node's
// assignment changes its version and wakes its long-poll, another node's
// does not.
func TestDesiredInRollout(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	web1, web2 := e.join("web1"), e.join("web2")
	v1 := e.completed(store.Release{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha})
	_, before := desiredNow(t, web2)
	if before.Release == nil || before.Release.ID != v1.ID || before.Action != api.ActionActivate || before.Rollout != 0 {
		t.Fatalf("before any rollout: %+v, want release %d", before, v1.ID)
	}

	v2sha := strings.Repeat("2", 40)
	r := e.startRollout(store.Release{App: "hello", Env: "demo", Spec: "tag:v2", Commit: v2sha}, `{"hotfix":true}`)
	r.assign("web1", api.ActionPrepare, "migrate")
	_, got := desiredNow(t, web1)
	if got.Release == nil || got.Release.Commit != v2sha || got.Action != api.ActionPrepare || got.Rollout != r.ro.ID || got.Task != 1 ||
		got.Token != r.token || !got.Hotfix || len(got.RunOnce) != 1 || got.RunOnce[0] != "migrate" {
		t.Fatalf("web1 in the rollout: %+v, want task 1 prepare of v2 under token %d with run_once migrate, hotfix", got, r.token)
	}
	d2, got := desiredNow(t, web2)
	if got.Release == nil || got.Release.ID != v1.ID || got.Action != api.ActionActivate || got.Rollout != 0 || got.Task != 0 || got.Token != r.token {
		t.Fatalf("web2 outside the rollout: %+v, want v1 (release %d) to activate under the last token %d", got, v1.ID, r.token)
	}
	web3 := e.join("web3")
	if _, got := desiredNow(t, web3); got.Release == nil || got.Release.ID != v1.ID || got.Rollout != 0 {
		t.Fatalf("web3 joining mid-rollout: %+v, want v1 (release %d), never the half-rolled v2", got, v1.ID)
	}

	// web2 waits on its version; assigning it a task wakes it with a new one.
	type answer struct {
		d   *api.Desired
		err error
	}
	woke := make(chan answer, 1)
	go func() { d, err := web2.Desired(ctx, d2.Version, 20*time.Second); woke <- answer{d, err} }()
	select {
	case a := <-woke:
		t.Fatalf("web2's long-poll returned before anything changed: %+v %v", a.d, a.err)
	case <-time.After(200 * time.Millisecond):
	}
	// Another node's task changes nothing for web2: its poll keeps waiting.
	r.assign("web1", api.ActionActivate)
	select {
	case a := <-woke:
		t.Fatalf("web2's long-poll answered when only web1 got a task: %+v %v", a.d, a.err)
	case <-time.After(500 * time.Millisecond):
	}
	r.assign("web2", api.ActionActivate)
	select {
	case a := <-woke:
		if a.err != nil || a.d.Version == d2.Version || a.d.Apps[0].Rollout != r.ro.ID || a.d.Apps[0].Action != api.ActionActivate || a.d.Apps[0].Task != 1 {
			t.Fatalf("web2 after its assignment: %+v %v, want rollout %d task 1 activate under a new version (was %d)", a.d, a.err, r.ro.ID, d2.Version)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("web2's long-poll did not wake within 10s of its assignment")
	}
	// A paused canary: web2 keeps its task, web3 (not in the canary) v1.
	r.ro.State = store.RolloutPaused
	if err := e.st.UpdateRollout(ctx, r.ro); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.BumpVersion(ctx, "hello", "demo"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the paused rollout to show", func() bool { _, g := desiredNow(t, web2); return g.Rollout == r.ro.ID })
	if _, got := desiredNow(t, web3); got.Release == nil || got.Release.ID != v1.ID || got.Rollout != 0 {
		t.Fatalf("web3 outside a paused canary: %+v, want v1", got)
	}

	// The rollout failed: everyone converges to v1 again.
	r.end(store.RolloutFailed)
	waitFor(t, "web1 to leave the ended rollout", func() bool { _, g := desiredNow(t, web1); return g.Rollout == 0 })
	if _, got := desiredNow(t, web1); got.Release == nil || got.Release.ID != v1.ID || got.Action != api.ActionActivate {
		t.Fatalf("web1 after the rollout failed: %+v, want v1", got)
	}
}

// TestUpgradeMirrorsRolloutTask: a node's upgrade on a rollout task marks
// the task working (with the upgrade), each report refreshes it (the
// heartbeat), and the final
// report records done with what the node serves, or failed with the error.
func TestUpgradeMirrorsRolloutTask(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	web1, web2 := e.join("web1"), e.join("web2")
	e.completed(store.Release{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha})
	r := e.startRollout(store.Release{App: "hello", Env: "demo", Spec: "tag:v2", Commit: strings.Repeat("2", 40)}, `{}`)
	r.assign("web1", api.ActionPrepare)
	r.assign("web2", api.ActionPrepare)
	_, task := desiredNow(t, web1)

	up, err := web1.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: task.Release.ID, App: "hello", Env: "demo", Rollout: task.Rollout, Task: task.Task})
	if err != nil {
		t.Fatal(err)
	}
	if n := r.node("web1"); n.State != store.NodeWorking || n.UpgradeID != up.ID {
		t.Fatalf("web1's task after it started: %+v, want working with upgrade %d", n, up.ID)
	}
	if u, err := e.st.GetUpgrade(ctx, up.ID); err != nil || u.RolloutID != r.ro.ID || u.Task != task.Task {
		t.Fatalf("upgrade %+v %v, want it to record rollout %d task %d", u, err, r.ro.ID, task.Task)
	}

	first := r.node("web1").UpdatedAt
	waitFor(t, "the clock to move", func() bool { return time.Since(first) > 5*time.Millisecond })
	if err := web1.Report(ctx, up.ID, api.Report{Status: api.StatusPreparing, Step: "fetch"}); err != nil {
		t.Fatal(err)
	}
	if n := r.node("web1"); n.State != store.NodeWorking || n.Step != "fetch" || !n.UpdatedAt.After(first) {
		t.Fatalf("web1's task after a progress report: %+v, want working at fetch, updated after %s", n, first)
	}
	if err := web1.Report(ctx, up.ID, api.Report{Status: api.StatusSucceeded, Step: "prepare", Serving: "20261123T000000Z-1111111"}); err != nil {
		t.Fatal(err)
	}
	if n := r.node("web1"); n.State != store.NodeDone || n.Serving != "20261123T000000Z-1111111" {
		t.Fatalf("web1's task after success: %+v, want done serving what it reported", n)
	}

	up2, err := web2.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: task.Release.ID, App: "hello", Env: "demo", Rollout: task.Rollout, Task: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := web2.Report(ctx, up2.ID, api.Report{Status: api.StatusFailed, Step: "build", Error: "make: exit 2"}); err != nil {
		t.Fatal(err)
	}
	if n := r.node("web2"); n.State != store.NodeFailed || n.Error != "make: exit 2" || n.Step != "build" {
		t.Fatalf("web2's task after failure: %+v, want failed at build with the error", n)
	}

	// A late start on an old task changes nothing of the current one.
	r.assign("web2", api.ActionRollback)
	if _, err := web2.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: task.Release.ID, App: "hello", Env: "demo", Rollout: task.Rollout, Task: 1}); err != nil {
		t.Fatal(err)
	}
	if n := r.node("web2"); n.Task != 2 || n.State != store.NodeAssigned || n.UpgradeID != 0 {
		t.Fatalf("web2's task 2 after a late start of task 1: %+v, want it still assigned", n)
	}
	// A rollout of another environment is not the node's to work on.
	other := e.startRollout(store.Release{App: "hello", Env: "other", Spec: "tag:v2", Commit: sha}, `{}`)
	_, err = web2.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: task.Release.ID, App: "hello", Env: "demo", Rollout: other.ro.ID, Task: 1})
	wantStatus(t, "start work on another environment's rollout", err, http.StatusForbidden, "hello/other")
}

// TestRolloutEndpointsAdminOnly: agent tokens are refused on every
// release and rollout endpoint (403), no token is 401, and malformed
// requests are 400 before anything runs.
func TestRolloutEndpointsAdminOnly(t *testing.T) {
	e := newEnv(t)
	web1 := e.join("web1")
	for _, tc := range []struct{ method, path, body string }{
		{"POST", "/api/v1/releases", `{"app":"hello","env":"demo","spec":"tag:v1"}`},
		{"GET", "/api/v1/rollouts?app=hello", ""},
		{"GET", "/api/v1/rollouts/1", ""},
		{"POST", "/api/v1/rollouts/1/cancel", ""},
		{"POST", "/api/v1/rollouts/1/decide", `{"decision":"promote"}`},
		{"POST", "/api/v1/rollouts/decide?app=hello&env=demo", `{"decision":"abort"}`},
		{"GET", "/api/v1/queue?app=hello&env=demo", ""},
	} {
		if code, body := e.raw(tc.method, tc.path, web1.Token, strings.NewReader(tc.body)); code != http.StatusForbidden {
			t.Errorf("agent token: %s %s: %d %s, want 403", tc.method, tc.path, code, body)
		}
		if code, body := e.raw(tc.method, tc.path, "", strings.NewReader(tc.body)); code != http.StatusUnauthorized {
			t.Errorf("no token: %s %s: %d %s, want 401", tc.method, tc.path, code, body)
		}
	}
	for _, tc := range []struct{ method, path, body, says string }{
		{"GET", "/api/v1/rollouts", "", "app"},
		{"GET", "/api/v1/rollouts?app=hello&limit=0", "", "limit"},
		{"GET", "/api/v1/rollouts?app=../x", "", "app"},
		{"GET", "/api/v1/rollouts/x", "", "id"},
		{"POST", "/api/v1/rollouts/1/decide", `{"decision":"maybe"}`, "promote or abort"},
		{"POST", "/api/v1/rollouts/decide?app=hello", `{"decision":"abort"}`, "env"},
		{"POST", "/api/v1/releases", fmt.Sprintf(`{"app":"hello","env":"demo","spec":"tag:v1","config":%q}`, strings.Repeat("a", 300<<10)), "config"},
	} {
		if code, body := e.raw(tc.method, tc.path, e.admin, strings.NewReader(tc.body)); code != http.StatusBadRequest || !strings.Contains(body, tc.says) {
			t.Errorf("%s %s: %d %s, want 400 saying %q", tc.method, tc.path, code, body, tc.says)
		}
	}
}

// TestReleaseRolloutOverAPI: a release created over the API is rolled out
// by the server's own runner across two agents that work through the API;
// once it succeeded, the rollout lists as succeeded with both nodes done
// and every node's desired state is the new release outside any rollout.
// A second release queued behind a held lease is refused with --no-wait
// (409 naming the holder), can be cancelled while queued, and a bad
// strategy is a 400.
func TestReleaseRolloutOverAPI(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin := e.client(e.admin)
	agents := []*api.Client{e.join("web1"), e.join("web2")}
	rc, err := admin.CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha})
	if err != nil {
		t.Fatal(err)
	}
	if rc.ID == 0 || rc.Rollout == nil || rc.Rollout.ID == 0 || (rc.Rollout.State != "queued" && rc.Rollout.State != "running") {
		t.Fatalf("release created: %+v rollout %+v, want the release and its queued or running rollout", rc.Release, rc.Rollout)
	}
	var errs []<-chan error
	for _, a := range agents {
		errs = append(errs, servertest.Agent(ctx, a, func(d api.DesiredApp) bool {
			return d.Rollout == 0 && d.Release != nil && d.Release.ID == rc.ID
		}))
	}
	for i, errc := range errs {
		if err := <-errc; err != nil {
			t.Fatalf("agent web%d: %v", i+1, err)
		}
	}
	ro, err := admin.Rollout(ctx, rc.Rollout.ID)
	if err != nil || ro.State != "succeeded" || len(ro.Nodes) != 2 {
		t.Fatalf("rollout after both nodes converged: %+v %v, want succeeded over 2 nodes", ro, err)
	}
	for _, n := range ro.Nodes {
		if n.State != "done" || n.Serving != servertest.Serving(rc.Release) {
			t.Errorf("node %+v, want done serving %s", n, servertest.Serving(rc.Release))
		}
	}
	list, err := admin.Rollouts(ctx, "hello", "demo", 5)
	if err != nil || len(list) != 1 || list[0].ID != ro.ID {
		t.Fatalf("rollouts: %+v %v, want the one rollout", list, err)
	}

	// Hold the environment's lease as a push deployer would.
	tk, err := e.st.EnqueueTicket(ctx, store.Ticket{App: "hello", Env: "demo", Holder: "alice@laptop"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := e.st.TryAcquire(ctx, tk.ID, time.Now(), time.Hour); err != nil || !ok {
		t.Fatalf("hold the lease: %v %v", ok, err)
	}
	before, _ := e.st.ListReleases(ctx, store.ReleaseFilter{})
	_, err = admin.CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v2", Commit: sha, NoWait: true})
	wantStatus(t, "--no-wait while alice deploys", err, http.StatusConflict, "alice@laptop", "--no-wait")
	_, err = admin.CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v2", Commit: sha, Strategy: "sideways"})
	wantStatus(t, "an unknown strategy", err, http.StatusBadRequest, "sideways")
	if after, _ := e.st.ListReleases(ctx, store.ReleaseFilter{}); len(after) != len(before) {
		t.Errorf("refused releases were recorded: %d → %d", len(before), len(after))
	}
	queued, err := admin.CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v2", Commit: sha})
	if err != nil || queued.Rollout == nil || queued.Rollout.State != "queued" || queued.Rollout.Position != 1 {
		t.Fatalf("release behind alice: %+v %v, want its rollout queued at position 1", queued.Rollout, err)
	}
	q, err := admin.Queue(ctx, "hello", "demo")
	if err != nil || q.Holder == nil || q.Holder.Holder != "alice@laptop" || len(q.Queue) != 1 {
		t.Fatalf("queue: %+v %v, want alice holding and one rollout queued", q, err)
	}
	cancelled, err := admin.CancelRollout(ctx, queued.Rollout.ID)
	if err != nil || cancelled.State != "cancelled" {
		t.Fatalf("cancel the queued rollout: %+v %v", cancelled, err)
	}
	_, err = admin.CancelRollout(ctx, ro.ID)
	wantStatus(t, "cancel a finished rollout", err, http.StatusConflict)
	_, err = admin.Decide(ctx, 9999, "promote")
	wantStatus(t, "decide an unknown rollout", err, http.StatusNotFound)
	_, err = admin.DecideEnv(ctx, "hello", "demo", "abort")
	wantStatus(t, "abort with no canary running", err, http.StatusNotFound, "no running canary")
}
