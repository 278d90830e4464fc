package cli

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/config"
)

// TestCanaryGatePasses: a URL answering 200 and a command exiting 0 for
// the whole wait promote the canary; the command sees the canary hosts.
func TestCanaryGatePasses(t *testing.T) {
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { asked.Add(1) }))
	t.Cleanup(srv.Close)
	seen := filepath.Join(t.TempDir(), "hosts")
	g := newCanaryGate(&config.Canary{Wait: config.Duration(1500 * time.Millisecond), URL: srv.URL, Command: "echo $DROVER_CANARY_HOSTS > " + seen}, io.Discard)
	start := time.Now()
	if err := g.Wait(context.Background(), []string{"h1", "h2"}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("promoted after %s, before canary.wait", d)
	}
	if n := asked.Load(); n < 2 {
		t.Errorf("the URL was asked %d times, want it checked through the wait", n)
	}
	if b, _ := os.ReadFile(seen); strings.TrimSpace(string(b)) != "h1 h2" {
		t.Errorf("the command saw DROVER_CANARY_HOSTS=%q", b)
	}
}

// TestCanaryGateFails: the URL turning 500 mid-wait aborts the canary with
// its status; a failing command aborts it with its output.
func TestCanaryGateFails(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) > 1 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	t.Cleanup(srv.Close)
	g := newCanaryGate(&config.Canary{Wait: config.Duration(time.Minute), URL: srv.URL}, io.Discard)
	err := g.Wait(context.Background(), []string{"h1"})
	if err == nil || !strings.Contains(err.Error(), "500 Internal Server Error") || !strings.Contains(err.Error(), "check 2") {
		t.Errorf("gate error %v, want the 500 of the second check", err)
	}
	g = newCanaryGate(&config.Canary{Wait: config.Duration(time.Minute), Command: "echo error rate 7% >&2; exit 3"}, io.Discard)
	if err := g.Wait(context.Background(), []string{"h1"}); err == nil || !strings.Contains(err.Error(), "error rate 7%") {
		t.Errorf("gate error %v, want the command's output", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	g = newCanaryGate(&config.Canary{Wait: config.Duration(time.Minute), Command: "true"}, io.Discard)
	if err := g.Wait(ctx, []string{"h1"}); err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("gate error %v, want an interruption", err)
	}
}
