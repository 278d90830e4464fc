package server

import (
	"net"
	"path/filepath"
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
	conn := func() heldConn {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return heldConn{conn: a}
	}

	// Another worker runs: held.
	l.mu.Lock()
	l.workers = 2
	l.mu.Unlock()
	l.hold([]heldConn{conn()})
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
	l.hold([]heldConn{conn()})
	deadline := time.Now().Add(10 * time.Second)
	for resumedConns(ln) != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections handed back long after maxHold, want 2", resumedConns(ln))
		}
		time.Sleep(5 * time.Millisecond)
	}
}
