package server_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
)

// gatedStore is a inner SQLite store whose Version (the first read of a
// desired-state lookup) waits for a gate while the gate is shut, as a
// slow database would; it honours its context the way database drivers do.
type gatedStore struct {
	store.Store
	gate chan struct{} // nil: open
}

func (g *gatedStore) Version(ctx context.Context, app, env string) (int64, error) {
	if g.gate != nil {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return g.Store.Version(ctx, app, env)
}

// goroutinesIn counts goroutines running fn (fn is a frame of their
// stack, not only their creator).
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<26)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, line := range strings.Split(g, "\n") {
			if strings.Contains(line, fn+"(") && !strings.HasPrefix(line, "created by") {
				n++
				break
			}
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCancelledLongPollFailsOnlyItself: two agents ask for the same
// app/env while the shared lookup is slow; the first hangs up. The second
// must still get its answer, not the first one's cancellation.
func TestCancelledLongPollFailsOnlyItself(t *testing.T) {
	ctx := context.Background()
	gs := &gatedStore{}
	e := startServer(t, serverOpts{wrap: func(st store.Store) store.Store { gs.Store = st; return gs }})
	a, b := e.join("web1"), e.join("web2")
	e.completed(store.Release{App: "hello", Env: "demo", Spec: "commit:" + sha, Commit: sha})
	gate := make(chan struct{})
	gs.gate = gate
	t.Cleanup(func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
	})

	const inGet = "(*desiredCache).get"
	aCtx, hangUp := context.WithCancel(ctx)
	aDone := make(chan error, 1)
	go func() { _, err := a.Desired(aCtx, -1, 0); aDone <- err }()
	waitFor(t, "agent a's lookup to start", func() bool { return goroutinesIn(inGet) == 1 })
	type answer struct {
		d   *api.Desired
		err error
	}
	bDone := make(chan answer, 1)
	go func() { d, err := b.Desired(ctx, -1, 0); bDone <- answer{d, err} }()
	waitFor(t, "agent b to wait on the same lookup", func() bool { return goroutinesIn(inGet) == 2 })

	hangUp()
	if err := <-aDone; err == nil {
		t.Fatal("agent a's cancelled request succeeded")
	}
	waitFor(t, "the server to drop agent a's request", func() bool { return goroutinesIn(inGet) <= 1 })
	select {
	case r := <-bDone:
		t.Fatalf("agent b was answered while the lookup still waited: %+v, %v", r.d, r.err)
	default:
	}
	close(gate)
	select {
	case r := <-bDone:
		if r.err != nil {
			t.Fatalf("agent b failed because agent a hung up: %v", r.err)
		}
		if len(r.d.Apps) != 1 || r.d.Apps[0].Release == nil || r.d.Apps[0].Release.Commit != sha {
			t.Fatalf("agent b got %+v, want the release", r.d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("agent b got no answer within 10s of the lookup finishing")
	}
}
