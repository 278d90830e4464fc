package server

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/store"
)

// resumedConns is how many connections ln holds handed back, not yet
// accepted by net/http.
func resumedConns(ln *resumeListener) int {
	ln.mu.Lock()
	defer ln.mu.Unlock()
	return len(ln.resumed)
}

// TestAnsweredHeldUntilWorkersFinish: a connection answered while the
// lot's workers still answer others goes back to net/http (which reads
// the agent's next request) only when the last worker stops, or after
// maxHold; with no worker left it goes back at once.
func TestAnsweredHeldUntilWorkersFinish(t *testing.T) {
	st, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s := New(st, nil)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := s.Listener(tcp, nil).(*resumeListener)
	defer ln.Close()
	l := s.lot
	conn := func() *parked {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return &parked{lot: l, conn: a}
	}

	// Another worker runs: held.
	l.mu.Lock()
	l.workers = 2
	l.mu.Unlock()
	l.hold([]*parked{conn()})
	if n := resumedConns(ln); n != 0 {
		t.Fatalf("%d connections handed back while another worker runs, want 0", n)
	}
	// This worker finds the queue empty and stops; the other one still
	// runs: still held.
	l.work()
	if n := resumedConns(ln); n != 0 {
		t.Fatalf("%d connections handed back with a worker left, want 0", n)
	}
	// The last worker stops: handed back.
	l.work()
	if n := resumedConns(ln); n != 1 {
		t.Fatalf("%d connections handed back after the last worker stopped, want 1", n)
	}

	// A worker that never stops: handed back after maxHold.
	l.mu.Lock()
	l.workers, l.maxHold = 1, 50*time.Millisecond
	l.mu.Unlock()
	l.hold([]*parked{conn()})
	deadline := time.Now().Add(10 * time.Second)
	for resumedConns(ln) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections handed back long after maxHold, want 2", resumedConns(ln))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// failingVersions is a store whose Version fails after fail is set,
// counting the calls: the first read of every desired-state load.
type failingVersions struct {
	store.Store
	fail  atomic.Bool
	calls atomic.Int32
}

func (s *failingVersions) Version(ctx context.Context, app, env string) (int64, error) {
	if s.fail.Load() {
		s.calls.Add(1)
		return 0, errors.New("connection refused (simulated)")
	}
	return s.Store.Version(ctx, app, env)
}

// TestBatchFailsOnceWhenTheStoreFails: a worker's batch of parked
// long-polls whose first lookup fails answers them all with that error
// after that one lookup. Looking each up in turn made the last of 64 wait
// for 64 lookups, each up to 30 s when the store hangs.
func TestBatchFailsOnceWhenTheStoreFails(t *testing.T) {
	inner, err := store.Open(t.Context(), filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	st := &failingVersions{Store: inner}
	s := New(st, nil)
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Listener(tcp, nil).Close()
	n, err := st.RegisterNode(t.Context(), store.Node{Name: "web1", Hostname: "web1", App: "shop", Env: "production"})
	if err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)
	const size = 5
	var batch []*parked
	answers := make(chan string, size)
	for range size {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		p := &parked{lot: s.lot, conn: a, nodes: []store.Node{n}, keys: []string{"shop/production"}, deadline: time.Now().Add(time.Minute), state: parkRunning}
		p.timer = time.AfterFunc(time.Hour, func() {})
		batch = append(batch, p)
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(b), nil)
			if err != nil {
				answers <- err.Error()
				return
			}
			resp.Body.Close()
			answers <- resp.Status
		}()
	}
	s.lot.look(t.Context(), batch)
	for range size {
		if got := <-answers; !strings.HasPrefix(got, "5") {
			t.Fatalf("answer %q, want a server error", got)
		}
	}
	if c := st.calls.Load(); c != 1 {
		t.Fatalf("%d lookups for a batch of %d whose first failed, want 1", c, size)
	}
}
