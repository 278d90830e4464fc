package store

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// openSQLite opens a store on a new SQLite file.
func openSQLite(t testing.TB) *sqlStore {
	t.Helper()
	st, err := Open(context.Background(), "sqlite://"+filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st.(*sqlStore)
}

// keptLen is how many statements s keeps.
func keptLen(s *sqlStore) int {
	s.db.stmts.mu.Lock()
	defer s.db.stmts.mu.Unlock()
	return len(s.db.stmts.stmts)
}

// TestStatementsKept runs more distinct statements than are kept: each
// answers right, the first maxPrepared are kept, a kept one runs again.
func TestStatementsKept(t *testing.T) {
	s := openSQLite(t)
	ctx := context.Background()
	query := func(i int) {
		t.Helper()
		var got int
		if err := s.db.QueryRowContext(ctx, fmt.Sprintf("SELECT ? + %d", i), 1).Scan(&got); err != nil || got != i+1 {
			t.Fatalf("SELECT 1 + %d = %d, %v", i, got, err)
		}
	}
	for i := range maxPrepared + 10 {
		query(i)
	}
	if n := keptLen(s); n != maxPrepared {
		t.Fatalf("%d statements kept, want %d", n, maxPrepared)
	}
	query(3)
	query(maxPrepared + 5)

	// A long statement (a bulk write's) is never kept.
	s2 := openSQLite(t)
	long := "SELECT ?" + strings.Repeat(" + 0", maxPreparedLen/4)
	var got int
	if err := s2.db.QueryRowContext(ctx, long, 7).Scan(&got); err != nil || got != 7 {
		t.Fatalf("long statement: %d, %v", got, err)
	}
	if n := keptLen(s2); n != 0 {
		t.Fatalf("%d statements kept after a %d-byte one, want 0", n, len(long))
	}
}

// TestTxDoesNotWaitForAnotherConnection runs a statement not kept yet in
// a transaction while the transaction holds the pool's only connection:
// preparing it there and then would wait for a second connection forever.
// It is prepared in the background once the connection is free.
func TestTxDoesNotWaitForAnotherConnection(t *testing.T) {
	s := openSQLite(t)
	s.db.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const q = "SELECT ? * 2"
	for range 2 { // not kept, then kept
		err := s.txOpts(ctx, nil, func(tx *storeTx) error {
			var got int
			if err := tx.QueryRowContext(ctx, q, 21).Scan(&got); err != nil || got != 42 {
				return fmt.Errorf("got %d, %v", got, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for keptLen(s) == 0 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
	}
	if _, ok := s.db.stmts.kept(q); !ok {
		t.Fatalf("%q not kept after the transaction", q)
	}
}

// BenchmarkPointReads reads a token and a node by key, as every agent
// request does, with the statements kept and, as the baseline, without.
func BenchmarkPointReads(b *testing.B) {
	for _, keep := range []bool{false, true} {
		b.Run(fmt.Sprintf("kept=%v", keep), func(b *testing.B) {
			s := openSQLite(b)
			if !keep {
				s.db.stmts = nil
			}
			ctx := context.Background()
			tok, err := s.CreateToken(ctx, Token{Kind: TokenAgent, Node: "web1", Hash: "h1"})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.RegisterNode(ctx, Node{Name: "web1", App: "shop", Env: "production", LastSeen: time.Now()}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				t, err := s.TokenByHash(ctx, tok.Hash)
				if err != nil || t.ID != tok.ID {
					b.Fatalf("token %+v, %v", t, err)
				}
				if _, err := s.FindNode(ctx, "web1", "shop", "production"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPoolKeepsConnectionsThroughABurst: connections opened for a burst
// of requests stay open for the next one instead of being closed past a
// few idle ones (each reopened SQLite connection runs its pragmas again
// and prepares every statement anew).
func TestPoolKeepsConnectionsThroughABurst(t *testing.T) {
	s := openSQLite(t)
	ctx := context.Background()
	for range 2 {
		var conns []*sql.Conn
		for range 8 {
			c, err := s.db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		for _, c := range conns {
			c.Close()
		}
	}
	if st := s.db.Stats(); st.MaxIdleClosed != 0 || st.OpenConnections != 8 {
		t.Fatalf("after two bursts of 8: %d connections closed for want of an idle slot, %d open; want 0 and 8", st.MaxIdleClosed, st.OpenConnections)
	}
}
