package release_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/apptest"
)

// TestSocketDeploysLoseNothing: through the engine, a socket: true service
// moves to a new release, then fails to move to a broken one and is
// switched back, under a steady load that sees no failed request. The same
// without socket: true loses some, so the load can tell.
func TestSocketDeploysLoseNothing(t *testing.T) {
	for _, socket := range []bool{true, false} {
		t.Run(fmt.Sprintf("socket=%v", socket), func(t *testing.T) { deployUnderLoad(t, socket) })
	}
}

func deployUnderLoad(t *testing.T, socket bool) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{Socket: socket})
	e := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e, r1, c1)
	if err := e.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	c2 := a.Repo.Commit("v2", map[string]string{"VERSION": "2\n"})
	r2 := id(2, c2)
	prepare(t, e, r2, c2)
	c3 := a.Repo.Commit("broken", map[string]string{"BROKEN": "yes"})
	r3 := id(3, c3)
	prepare(t, e, r3, c3)

	sent, failed, stop := steadyLoad(t, a.Ports[0])
	if err := e.Activate(ctx, r2); err != nil {
		stop()
		t.Fatal(err)
	}
	err := e.Activate(ctx, r3)
	stop()
	if err == nil || !strings.Contains(err.Error(), "switched back to "+r2) {
		t.Errorf("activate of a broken release: %v; want a failure switched back to %s", err, r2)
	}
	if current(t, a) != r2 {
		t.Errorf("current = %s, want %s", current(t, a), r2)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r2) {
		t.Errorf("port answers %q, want release %s", body, r2)
	}
	t.Logf("%d of %d requests failed", failed.Load(), sent.Load())
	switch {
	case sent.Load() == 0:
		t.Error("the load sent nothing")
	case socket && failed.Load() != 0:
		t.Errorf("%d of %d requests failed across a good and a failed deploy of a socket service", failed.Load(), sent.Load())
	case !socket && failed.Load() == 0:
		t.Errorf("no request of %d failed with plain restarts: the load cannot tell", sent.Load())
	}
}

// steadyLoad sends requests to port from 4 goroutines (2 keep-alive, 2 new
// connections each) until stop, at most 100,000 or for 2 minutes.
func steadyLoad(t *testing.T, port int) (sent, failed *atomic.Int64, stop func()) {
	sent, failed = new(atomic.Int64), new(atomic.Int64)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	var wg sync.WaitGroup
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	for i := range 4 {
		tr := &http.Transport{DisableKeepAlives: i%2 == 1}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer tr.CloseIdleConnections()
			for ctx.Err() == nil && sent.Add(1) <= 100_000 {
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("%s", resp.Status)
					}
				}
				if err != nil && failed.Add(1) <= 3 {
					t.Logf("request failed: %v", err)
				}
			}
		}()
	}
	stop = func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return sent, failed, stop
}
