package server

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover/drover/internal/store"
)

// countingStore counts TokenByHash reads; RevokedTokens fails while
// down is set, as a store cut off.
type countingStore struct {
	store.Store
	reads int
	down  bool
}

func (c *countingStore) TokenByHash(ctx context.Context, hash string) (store.Token, error) {
	c.reads++
	return c.Store.TokenByHash(ctx, hash)
}

func (c *countingStore) RevokedTokens(ctx context.Context) (int64, error) {
	if c.down {
		return 0, errors.New("connection refused (simulated)")
	}
	return c.Store.RevokedTokens(ctx)
}

// TestTokenCache: a kept token is used without reading it again while the
// sweeps find no new revocation, however long ago it was read (an agent's
// previous request was a long-poll's length ago); without a clean sweep,
// for tokenTTL; a revocation through the server forgets it at once, one
// made elsewhere (another replica) at the next sweep; a failing sweep
// vouches for nothing; tokenMaxAge bounds it all.
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
	check := func(what, secret string, wantReads int) store.Token {
		t.Helper()
		got, err := s.tokens.get(ctx, st, HashToken(secret), s.now())
		if err != nil || st.reads != wantReads {
			t.Fatalf("%s: %v, %d store reads, want %d", what, err, st.reads, wantReads)
		}
		return got
	}
	sweep := func() {
		t.Helper()
		if err := s.tokens.sweep(ctx, st, s.now()); err != nil {
			t.Fatal(err)
		}
	}
	// No sweep yet: a read is trusted for tokenTTL.
	check("first use", "secret", 1)
	now = now.Add(tokenTTL - time.Millisecond)
	check("within the TTL", "secret", 1)
	now = now.Add(time.Millisecond)
	check("after the TTL", "secret", 2)

	// The first sweep vouches for nothing; the later ones keep the token
	// trusted for a long-poll's length and more.
	sweep()
	check("after the first sweep", "secret", 3)
	for range 40 {
		now = now.Add(tokenSweep)
		sweep()
	}
	check("40 clean sweeps later", "secret", 3)

	// Sweeps failing: trusted until tokenTTL after the last clean one.
	st.down = true
	now = now.Add(tokenTTL - time.Millisecond)
	if err := s.tokens.sweep(ctx, st, s.now()); err == nil {
		t.Fatal("the failing sweep succeeded")
	}
	check("a failed sweep, within the TTL of the last clean one", "secret", 3)
	now = now.Add(time.Millisecond)
	check("a failed sweep, past the TTL of the last clean one", "secret", 4)
	st.down = false
	sweep()

	// Revoked through this server: read again at once, and refused.
	if err := s.revoke(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if got := check("after a revoke here", "secret", 5); !errors.Is(got.Check(s.now()), store.ErrTokenRevoked) {
		t.Fatalf("after a revoke here: check %v, want revoked", got.Check(s.now()))
	}
	sweep() // counts that revocation: forgets once more

	// Revoked by another replica: trusted until the next sweep.
	tok2, err := st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: "web2", Hash: HashToken("secret2")})
	if err != nil {
		t.Fatal(err)
	}
	check("another token", "secret2", 6)
	now = now.Add(tokenSweep)
	sweep()
	if err := inner.RevokeToken(ctx, tok2.ID); err != nil {
		t.Fatal(err)
	}
	if got := check("revoked elsewhere, before a sweep", "secret2", 6); got.Check(s.now()) != nil {
		t.Fatalf("revoked elsewhere, before a sweep: %v, want the kept token", got.Check(s.now()))
	}
	now = now.Add(tokenSweep)
	sweep()
	if got := check("revoked elsewhere, after a sweep", "secret2", 7); !errors.Is(got.Check(s.now()), store.ErrTokenRevoked) {
		t.Fatalf("after the sweep of a revoke elsewhere: %v, want revoked", got.Check(s.now()))
	}

	// tokenMaxAge: read again however clean the sweeps.
	for range int(tokenMaxAge / tokenSweep) {
		now = now.Add(tokenSweep)
		sweep()
	}
	check("tokenMaxAge later", "secret2", 8)
}
