package server

import (
	"context"
	"sync"
	"time"

	"github.com/drover/drover/internal/store"
)

// The server keeps the tokens it read. Every agent request carries its
// token: ten thousand agents answered at once send ten thousand
// StartUpgrades, reports and new long-polls within seconds, and reading
// the token for each was a tenth of the server's CPU. The agents' previous
// requests were a long-poll's length (30 s) before, so a cache that forgot
// a token after a few seconds read every one of them again.
//
// A revocation on this server forgets every kept token at once (revoke).
// One made on another replica is found by a sweep every tokenSweep that
// counts the revoked tokens (the count only grows): when it moved, every
// kept token is forgotten. A kept token is trusted while a sweep that found
// no new revocation began less than tokenTTL ago, or it was read less than
// tokenTTL ago: when sweeps fail (the store is unreachable), tokens are
// read again as before, and a revocation elsewhere takes effect within
// tokenTTL either way. A kept token is read again after tokenMaxAge
// whatever the sweeps say.
const (
	tokenTTL    = 3 * time.Second
	tokenSweep  = time.Second
	tokenMaxAge = 10 * time.Minute
)

// maxCachedTokens bounds the cache; past it, it starts again empty.
const maxCachedTokens = 50_000

// tokenCache keeps token lookups by hash; the zero value is ready.
type tokenCache struct {
	mu      sync.Mutex
	m       map[string]cachedToken
	gen     uint64    // moves on every forget: a read begun before it is not kept
	revoked int64     // revoked tokens at the last sweep that counted them
	counted bool      // revoked holds a count
	clean   time.Time // when the last sweep that found no new revocation began
}

type cachedToken struct {
	t    store.Token
	read time.Time
}

// get returns the token of hash, kept or read from st.
func (c *tokenCache) get(ctx context.Context, st store.Store, hash string, now time.Time) (store.Token, error) {
	c.mu.Lock()
	e, ok := c.m[hash]
	trusted := ok && c.trusted(e, now)
	gen := c.gen
	c.mu.Unlock()
	if trusted {
		return e.t, nil
	}
	t, err := st.TokenByHash(ctx, hash)
	if err != nil {
		return t, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return t, nil // a revocation was seen while reading: this read may predate it
	}
	if c.m == nil || len(c.m) >= maxCachedTokens {
		c.m = map[string]cachedToken{}
	}
	c.m[hash] = cachedToken{t: t, read: now}
	return t, nil
}

// trusted says whether e can be used at now without reading it again.
// c.mu is held.
func (c *tokenCache) trusted(e cachedToken, now time.Time) bool {
	if now.Before(e.read) || now.Sub(e.read) >= tokenMaxAge {
		return false
	}
	// Every sweep since e was read found no new revocation (else e would
	// be gone): e holds as of the last one, or as of its read.
	return now.Sub(later(e.read, c.clean)) < tokenTTL
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// forget drops every kept token: a token was revoked.
func (c *tokenCache) forget() {
	c.mu.Lock()
	c.forgetLocked()
	c.mu.Unlock()
}

func (c *tokenCache) forgetLocked() {
	c.m = nil
	c.gen++
}

// sweep counts the revoked tokens in st, begun at start: a count that
// moved since the last one forgets every kept token; one that did not
// vouches for them as of start. A failed count changes nothing.
func (c *tokenCache) sweep(ctx context.Context, st store.Store, start time.Time) error {
	n, err := st.RevokedTokens(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !c.counted:
		// The first count vouches for nothing: revocations before it
		// and after tokens were kept are not in any difference.
		c.forgetLocked()
	case n != c.revoked:
		c.forgetLocked()
	default:
		c.clean = start
	}
	c.revoked, c.counted = n, true
	return nil
}

// sweepTokens sweeps the kept tokens every d until ctx ends.
func (s *Server) sweepTokens(ctx context.Context, d time.Duration) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		if err := s.tokens.sweep(ctx, s.store, s.now()); err != nil && ctx.Err() == nil {
			s.log.Debug("count revoked tokens", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// revoke revokes token id in the store and forgets the cached tokens,
// so that this server refuses it from now on.
func (s *Server) revoke(ctx context.Context, id int64) error {
	err := s.store.RevokeToken(ctx, id)
	s.tokens.forget()
	return err
}
