package server

import (
	"context"
	"sync"
	"time"

	"github.com/drover/drover/internal/store"
)

// tokenTTL is how long a token read from the store is trusted without
// reading it again. Every agent request carries its token: ten thousand
// agents answered at once send ten thousand StartUpgrades, reports and new
// long-polls within seconds, and reading the token for each was a tenth of
// the server's CPU then. A revocation on this server takes effect at once
// (revoke forgets every token); on another replica within tokenTTL.
const tokenTTL = 3 * time.Second

// maxCachedTokens bounds the cache; past it, it starts again empty.
const maxCachedTokens = 50_000

// tokenCache keeps recent token lookups by hash; the zero value is ready.
type tokenCache struct {
	mu sync.Mutex
	m  map[string]cachedToken
}

type cachedToken struct {
	t    store.Token
	read time.Time
}

// get returns the token of hash, from the cache when read within
// tokenTTL, else from st.
func (c *tokenCache) get(ctx context.Context, st store.Store, hash string, now time.Time) (store.Token, error) {
	c.mu.Lock()
	e, ok := c.m[hash]
	c.mu.Unlock()
	if ok && now.Sub(e.read) < tokenTTL && !now.Before(e.read) {
		return e.t, nil
	}
	t, err := st.TokenByHash(ctx, hash)
	if err != nil {
		return t, err
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedTokens {
		c.m = map[string]cachedToken{}
	}
	c.m[hash] = cachedToken{t: t, read: now}
	c.mu.Unlock()
	return t, nil
}

// forget drops every cached token: a token was revoked here.
func (c *tokenCache) forget() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}

// revoke revokes token id in the store and forgets the cached tokens,
// so that this server refuses it from now on.
func (s *Server) revoke(ctx context.Context, id int64) error {
	err := s.store.RevokeToken(ctx, id)
	s.tokens.forget()
	return err
}
