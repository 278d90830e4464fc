package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/testenv/servertest"
)

// TestPushAPI: a push deployer queues through the API, long-polls for the
// lease (the wait is capped by MaxWait), reports under its token, gets 409
// under another, and frees the lease when done. Agents may not.
func TestPushAPI(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.client(e.admin)
	begin := api.BeginPush{App: "hello", Env: "demo", Holder: "alice@laptop", Release: "r1", Strategy: "all-at-once", Hosts: []string{"web1"}}
	first, err := admin.BeginPush(ctx, begin)
	if err != nil || first.State != "running" || first.Token == 0 || first.RenewEvery <= 0 {
		t.Fatalf("BeginPush on a free environment: %+v, %v", first, err)
	}
	begin.Holder = "bob@ci"
	second, err := admin.BeginPush(ctx, begin)
	if err != nil || second.State != "queued" || second.Position != 1 || second.HeldBy != "alice@laptop" {
		t.Fatalf("BeginPush behind alice: %+v, %v", second, err)
	}
	start := time.Now()
	w, err := admin.WaitPush(ctx, second.ID, time.Hour) // capped at MaxWait (5s)
	if err != nil || w.State != "queued" || time.Since(start) > 30*time.Second {
		t.Fatalf("WaitPush behind a holder: %+v, %v after %s", w, err, time.Since(start))
	}
	if _, err := admin.PushProgress(ctx, first.ID, first.Token+1, api.PushProgress{}); !api.IsStatus(err, http.StatusConflict) || !strings.Contains(err.Error(), "alice@laptop") {
		t.Fatalf("progress under another token: %v, want 409 naming the holder", err)
	}
	if _, err := admin.PushProgress(ctx, first.ID, first.Token, api.PushProgress{Nodes: []api.RolloutNode{{Node: "web1", State: "bogus"}}}); !api.IsStatus(err, http.StatusBadRequest) {
		t.Fatalf("progress with a bad node state: %v, want 400", err)
	}
	done, err := admin.PushProgress(ctx, first.ID, first.Token, api.PushProgress{Phase: "activate", Done: true, OK: true,
		Nodes: []api.RolloutNode{{Node: "web1", Action: "activate", State: "done", Serving: "r1"}}})
	if err != nil || done.State != "succeeded" {
		t.Fatalf("progress done: %+v, %v", done, err)
	}
	if w, err = admin.WaitPush(ctx, second.ID, 5*time.Second); err != nil || w.State != "running" || w.Token <= first.Token {
		t.Fatalf("WaitPush after alice is done: %+v, %v", w, err)
	}

	agent := e.join("web1")
	if _, err := agent.BeginPush(ctx, begin); !api.IsStatus(err, http.StatusForbidden) {
		t.Errorf("an agent began a push deploy: %v, want 403", err)
	}
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"POST", "/api/v1/push/1/wait", http.StatusUnauthorized},
		{"POST", "/api/v1/push/1/progress?token=1", http.StatusUnauthorized},
	} {
		if code, body := e.raw(tc.method, tc.path, "", nil); code != tc.code {
			t.Errorf("%s %s without a token: %d %s, want %d", tc.method, tc.path, code, body, tc.code)
		}
	}
	if code, body := e.raw("POST", "/api/v1/push/1/progress?token=x", e.admin, strings.NewReader("{}")); code != http.StatusBadRequest {
		t.Errorf("progress with a bad token: %d %s, want 400", code, body)
	}
	if code, body := e.raw("POST", "/api/v1/push", e.admin, strings.NewReader(`{"app":"../x","env":"demo","holder":"a","hosts":["h"]}`)); code != http.StatusBadRequest {
		t.Errorf("push with a bad app name: %d %s, want 400", code, body)
	}
	if code, body := e.raw("POST", "/api/v1/push/99/wait", e.admin, nil); code != http.StatusNotFound {
		t.Errorf("wait on an unknown push: %d %s, want 404", code, body)
	}
}

// TestPushAndServerRolloutQueue: push deploys and a server-run rollout of
// one environment take the lease in the order they asked: the rollout
// waits for the push deploy ahead of it, and the push deploy behind it
// waits until the rollout (across an agent) has finished.
func TestPushAndServerRolloutQueue(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	admin := e.client(e.admin)
	agent := e.join("web1")
	begin := api.BeginPush{App: "hello", Env: "demo", Holder: "alice@laptop", Hosts: []string{"web1"}}
	alice, err := admin.BeginPush(ctx, begin)
	if err != nil || alice.State != "running" {
		t.Fatalf("alice's push: %+v, %v", alice, err)
	}
	rc, err := admin.CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha})
	if err != nil || rc.Rollout == nil || rc.Rollout.State != "queued" || rc.Rollout.Position != 1 {
		t.Fatalf("a release behind alice's push: %+v, %v; want its rollout queued at 1", rc, err)
	}
	begin.Holder = "bob@ci"
	bob, err := admin.BeginPush(ctx, begin)
	if err != nil || bob.State != "queued" || bob.Position != 2 || bob.HeldBy != "alice@laptop" {
		t.Fatalf("bob's push behind alice and the rollout: %+v, %v", bob, err)
	}
	if _, err := admin.PushProgress(ctx, alice.ID, alice.Token, api.PushProgress{Done: true, OK: true}); err != nil {
		t.Fatal(err)
	}
	// The runner takes the lease; with no agent working yet the rollout
	// holds it, and bob waits behind it.
	for {
		w, err := admin.WaitPush(ctx, bob.ID, time.Second)
		if err != nil || w.State != "queued" {
			t.Fatalf("bob while the rollout runs: %+v, %v; want queued", w, err)
		}
		if w.Position == 1 && w.HeldBy != "" && w.HeldBy != "alice@laptop" {
			break
		}
	}
	if ro, err := admin.Rollout(ctx, rc.Rollout.ID); err != nil || ro.State != "running" {
		t.Fatalf("the server rollout after alice's push: %+v, %v; want running", ro, err)
	}
	errc := servertest.Agent(ctx, agent, func(d api.DesiredApp) bool { return d.Rollout == 0 && d.Release != nil && d.Release.ID == rc.ID })
	var got *api.Rollout
	for got == nil || got.State == "queued" {
		if got, err = admin.WaitPush(ctx, bob.ID, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("agent: %v", err)
	}
	ro, err := admin.Rollout(ctx, rc.Rollout.ID)
	if err != nil || ro.State != "succeeded" || got.State != "running" || ro.EndedAt.After(got.StartedAt) {
		t.Fatalf("the rollout %+v (%v) and bob's push %+v: want the rollout succeeded before bob started", ro, err, got)
	}
}
