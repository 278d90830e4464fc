package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
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
