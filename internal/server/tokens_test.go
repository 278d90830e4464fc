package server

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover/drover/internal/store"
)

// countingStore counts TokenByHash reads.
type countingStore struct {
	store.Store
	reads int
}

func (c *countingStore) TokenByHash(ctx context.Context, hash string) (store.Token, error) {
	c.reads++
	return c.Store.TokenByHash(ctx, hash)
}

// TestTokenCache: a token is read from the store once per tokenTTL; a
// revocation through the server forgets it at once; a revocation made
// elsewhere (another replica) is seen once tokenTTL passed.
func TestTokenCache(t *testing.T) {
	ctx := context.Background()
	inner, err := store.Open(ctx, filepath.Join(t.TempDir(), "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	st := &countingStore{Store: inner}
	s := New(st, nil)
	now := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	tok, err := st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: "web1", Hash: HashToken("secret")})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, wantReads int) store.Token {
		t.Helper()
		got, err := s.tokens.get(ctx, st, HashToken("secret"), s.now())
		if err != nil || st.reads != wantReads {
			t.Fatalf("%s: %v, %d store reads, want %d", what, err, st.reads, wantReads)
		}
		return got
	}
	check("first use", 1)
	now = now.Add(tokenTTL - time.Millisecond)
	check("within the TTL", 1)
	now = now.Add(time.Millisecond)
	check("after the TTL", 2)

	// Revoked through this server: read again at once, and refused.
	if err := s.revoke(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if got := check("after a revoke here", 3); !errors.Is(got.Check(s.now()), store.ErrTokenRevoked) {
		t.Fatalf("after a revoke here: check %v, want revoked", got.Check(s.now()))
	}

	// Revoked by another replica: trusted until tokenTTL passed.
	tok2, err := st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: "web2", Hash: HashToken("secret2")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.tokens.get(ctx, st, HashToken("secret2"), s.now()); err != nil {
		t.Fatal(err)
	}
	if err := inner.RevokeToken(ctx, tok2.ID); err != nil {
		t.Fatal(err)
	}
	got, _ := s.tokens.get(ctx, st, HashToken("secret2"), s.now())
	if got.Check(s.now()) != nil {
		t.Fatalf("within the TTL of a revoke elsewhere: %v, want the cached token", got.Check(s.now()))
	}
	now = now.Add(tokenTTL)
	got, _ = s.tokens.get(ctx, st, HashToken("secret2"), s.now())
	if !errors.Is(got.Check(s.now()), store.ErrTokenRevoked) {
		t.Fatalf("after the TTL of a revoke elsewhere: %v, want revoked", got.Check(s.now()))
	}
}
