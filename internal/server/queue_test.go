package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/drover/drover/internal/control"
)

// TestQueueStatus reads an environment's deploy lock and queue through the
// API while a second replica's control plane holds and queues deploys.
func TestQueueStatus(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	ctl, err := control.New(e.st, control.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t1, err := ctl.Enqueue(ctx, "hello", "demo", "alice@laptop", control.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l1, err := ctl.Acquire(ctx, t1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Enqueue(ctx, "hello", "demo", "rollout 7", control.EnqueueOptions{}); err != nil {
		t.Fatal(err)
	}

	code, body := e.raw("GET", "/api/v1/queue?app=hello&env=demo", e.admin, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/queue: %d %s", code, body)
	}
	var st control.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if st.Holder == nil || st.Holder.Holder != "alice@laptop" || st.Holder.Token != l1.Token || !st.Holder.ExpiresAt.Equal(l1.ExpiresAt) ||
		st.Expired || len(st.Queue) != 1 || st.Queue[0].Holder != "rollout 7" || st.Queue[0].Position != 1 {
		t.Fatalf("queue status %s, want alice holding token %d and rollout 7 first in line", body, l1.Token)
	}

	for _, tc := range []struct {
		path, token string
		code        int
	}{
		{"/api/v1/queue?app=hello&env=demo", "", http.StatusUnauthorized},
		{"/api/v1/queue?app=hello", e.admin, http.StatusBadRequest},
		{"/api/v1/queue?app=../x&env=demo", e.admin, http.StatusBadRequest},
	} {
		if code, body := e.raw("GET", tc.path, tc.token, nil); code != tc.code {
			t.Errorf("GET %s: %d %s, want %d", tc.path, code, body, tc.code)
		}
	}
	code, body = e.raw("GET", "/api/v1/queue?app=hello&env=never", e.admin, nil)
	var free control.Status
	if code != http.StatusOK || json.Unmarshal([]byte(body), &free) != nil || free.Holder != nil || len(free.Queue) != 0 {
		t.Fatalf("queue of an environment never deployed: %d %s, want free and empty", code, body)
	}
}
