// Package server is drover's control server: the JSON API under /api/v1
// that people, CI and agents use, with bearer-token auth, long-polls that
// wake when a release is created on any replica, and the data kept in a
// store.Store.
package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/store"
)

// Server serves the API from a store.
type Server struct {
	store store.Store
	log   *slog.Logger
	now   func() time.Time
	hub   *hub
	seen  *lastSeen
	mux   *http.ServeMux
	// tokens keeps the tokens read, checked by a sweep (tokens.go).
	tokens tokenCache

	// control is the control plane: desired state, upgrades, releases,
	// rollouts, the deploy lease and queue. Handlers use it, never the
	// store, for them.
	control *control.Control

	// Runner configures the rollouts this server runs (control.RunRollouts,
	// started by Start); set it before Start. With AllowCommands, releases
	// whose drover.yml has the server run commands are accepted too.
	Runner control.RunnerOptions
	// Lease is how long an environment's deploy lease outlives its last
	// renewal (control.Options.Lease): how soon another replica takes over
	// the rollouts of a server that died. 0: lock.DefaultLease. Set it
	// before Start.
	Lease time.Duration

	// MaxWait caps a long-poll's wait.
	MaxWait time.Duration
	// StaleAfter flags nodes not seen for this long.
	StaleAfter time.Duration

	// BodyTimeout bounds how long a request's body may take to arrive: a
	// client that trickles one in is answered 408 and its connection
	// closed. The long-poll has no body and waits as long as it asks.
	BodyTimeout time.Duration
	// WriteTimeout bounds how long a client may take to take its answer,
	// counted after the request's own work (a long-poll's wait).
	WriteTimeout time.Duration
	// MaxConns caps the connections served at once (see Listener); the
	// kernel queues the rest. 0: no cap.
	MaxConns int
	// ReadHeaderTimeout bounds how long a request's headers may take to
	// arrive once it has begun; IdleTimeout how long a kept-alive
	// connection may wait for its next request (HTTPServer).
	ReadHeaderTimeout, IdleTimeout time.Duration
	// JoinRate is how many joins per second one remote address may
	// attempt, with bursts of JoinBurst; JoinRateTotal and JoinBurstTotal
	// bound all addresses together. Past them a join is answered 429 with
	// Retry-After. A rate of 0 turns that limit off.
	JoinRate, JoinRateTotal   float64
	JoinBurst, JoinBurstTotal int

	joinOnce  sync.Once
	joinLimit *rateLimiter
	handler   http.Handler
	lot       *lot // long-polls parked off net/http (park.go)
}

// Defaults of the limits a Server starts with.
const (
	DefaultBodyTimeout    = 30 * time.Second
	DefaultWriteTimeout   = 30 * time.Second
	DefaultMaxConns       = 20000
	DefaultHeaderTimeout  = 10 * time.Second
	DefaultIdleTimeout    = 120 * time.Second
	DefaultJoinRate       = 10
	DefaultJoinBurst      = 100
	DefaultJoinRateTotal  = 100
	DefaultJoinBurstTotal = 1000
)

// New returns a server over st. Start must run for long-polls to wake.
func New(st store.Store, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{store: st, log: log, now: time.Now, hub: newHub(), MaxWait: 60 * time.Second, StaleAfter: 100 * time.Second,
		BodyTimeout: DefaultBodyTimeout, WriteTimeout: DefaultWriteTimeout, MaxConns: DefaultMaxConns,
		ReadHeaderTimeout: DefaultHeaderTimeout, IdleTimeout: DefaultIdleTimeout,
		JoinRate: DefaultJoinRate, JoinBurst: DefaultJoinBurst, JoinRateTotal: DefaultJoinRateTotal, JoinBurstTotal: DefaultJoinBurstTotal}
	ctl, err := control.New(st, control.Options{})
	if err != nil { // the defaults are always valid
		panic(err)
	}
	s.control = ctl
	s.seen = &lastSeen{ids: map[int64]time.Time{}}
	s.lot = newLot(s)
	s.hub.lot = s.lot
	s.routes()
	return s
}

// Start follows the store's changes until ctx ends, waking long-polls on
// this replica whenever any replica changes a desired state. When ctx
// ends, the long-polls parked off net/http are closed (see Close).
func (s *Server) Start(ctx context.Context) error {
	if s.Runner.AllowCommands || s.Lease != 0 {
		// The control plane's options are set between New and Start:
		// build it again with them (nothing used it yet). CreateRelease
		// checks commands against its own setting.
		ctl, err := control.New(s.store, control.Options{AllowCommands: s.Runner.AllowCommands, Lease: s.Lease})
		if err != nil {
			return err
		}
		s.control = ctl
	}
	ch, err := s.store.Watch(ctx)
	if err != nil {
		return fmt.Errorf("watch store: %w", err)
	}
	go func() {
		for c := range ch {
			s.control.Invalidate(c.App, c.Env, c.Version)
			s.hub.wake(c.App, c.Env)
		}
	}()
	go s.seen.flushEvery(ctx, s.store, 2*time.Second, s.log)
	go s.sweepTokens(ctx, tokenSweep)
	go s.runRollouts(ctx)
	s.lot.start(ctx)
	return nil
}

// Close closes the connections of the long-polls parked off net/http,
// and those answered but not yet taken back by the http.Server: neither
// is tracked by http.Server, so its Close and Shutdown leave them. Call
// it after those; long-polls that come later wait the way any request
// does. The end of Start's context closes them too.
func (s *Server) Close() { s.lot.close() }

// runRollouts runs this server's share of rollouts until ctx ends. A
// runner that stops with an error is logged, never fatal: the API keeps
// serving (agents still converge to each environment's current release).
func (s *Server) runRollouts(ctx context.Context) {
	opts := s.Runner
	if opts.Logger == nil {
		opts.Logger = s.log
	}
	if opts.StaleAfter == 0 {
		opts.StaleAfter = s.StaleAfter // what drover status flags stale is left out
	}
	if err := s.control.RunRollouts(ctx, opts); err != nil && ctx.Err() == nil {
		s.log.Error("rollout runner stopped; releases are recorded but not rolled out by this server", "err", err)
	}
}

// Control is the control plane the server serves (tests, the dashboard).
func (s *Server) Control() *control.Control { return s.control }

// lastSeen batches nodes' last-seen times: a long-poll answer only notes
// the time, and one goroutine writes them every few seconds, so a thousand
// agents waking at once cost no thousand writes on the request path.
type lastSeen struct {
	mu  sync.Mutex
	ids map[int64]time.Time
}

// note records that nodes were seen at at.
func (l *lastSeen) note(at time.Time, nodes []store.Node) {
	l.mu.Lock()
	for _, n := range nodes {
		l.ids[n.ID] = at
	}
	l.mu.Unlock()
}

func (l *lastSeen) flush(ctx context.Context, st store.Store, log *slog.Logger) {
	l.mu.Lock()
	ids := l.ids
	l.ids = map[int64]time.Time{}
	l.mu.Unlock()
	// One write per few hundred nodes: ten thousand separate commits every
	// flush kept SQLite's one writer busy and everything else waiting.
	if err := st.TouchNodes(ctx, ids); err != nil && ctx.Err() == nil {
		log.Warn("record last seen", "nodes", len(ids), "err", err)
	}
}

func (l *lastSeen) flushEvery(ctx context.Context, st store.Store, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			l.flush(context.Background(), st, log)
			return
		case <-t.C:
			l.flush(ctx, st, log)
		}
	}
}

// Handler returns the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	admin := func(h http.HandlerFunc) http.Handler { return s.auth(h, store.TokenAdmin) }
	agent := func(h http.HandlerFunc) http.Handler { return s.auth(h, store.TokenAgent) }
	either := func(h http.HandlerFunc) http.Handler { return s.auth(h, store.TokenAdmin, store.TokenAgent) }
	m.Handle("POST /api/v1/releases", admin(s.createRelease))
	m.Handle("GET /api/v1/releases", admin(s.listReleases))
	m.Handle("POST /api/v1/releases/{id}/resolve", either(s.resolveRelease))
	m.Handle("POST /api/v1/join-tokens", admin(s.createJoinToken))
	m.Handle("GET /api/v1/tokens", admin(s.listTokens))
	m.Handle("POST /api/v1/tokens/{id}/revoke", admin(s.revokeToken))
	m.HandleFunc("POST /api/v1/agents/join", s.join)
	m.Handle("POST /api/v1/agents/hello", agent(s.hello))
	m.Handle("GET /api/v1/agents/desired", agent(s.desired))
	m.Handle("POST /api/v1/upgrades", agent(s.startUpgrade))
	m.Handle("POST /api/v1/upgrades/{id}/report", agent(s.report))
	m.Handle("GET /api/v1/upgrades", admin(s.listUpgrades))
	m.Handle("GET /api/v1/nodes", admin(s.listNodes))
	m.Handle("GET /api/v1/status", admin(s.status))
	m.Handle("GET /api/v1/queue", admin(s.queue))
	m.Handle("GET /api/v1/rollouts", admin(s.listRollouts))
	m.Handle("GET /api/v1/rollouts/{id}", admin(s.getRollout))
	m.Handle("POST /api/v1/rollouts/{id}/cancel", admin(s.cancelRollout))
	m.Handle("POST /api/v1/rollouts/{id}/decide", admin(s.decideRollout))
	m.Handle("POST /api/v1/rollouts/decide", admin(s.decideEnv))
	// Push deploys sharing the queue (push.go).
	m.Handle("POST /api/v1/push", admin(s.beginPush))
	m.Handle("POST /api/v1/push/{id}/wait", admin(s.waitPush))
	m.Handle("POST /api/v1/push/{id}/progress", admin(s.pushProgress))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/api/") {
			writeError(w, http.StatusNotFound, "not found", "")
			return
		}
		// Unknown API paths need a token too: say 401 before 404.
		if _, err := s.principal(r); err != nil {
			writeError(w, http.StatusUnauthorized, "unauthorized", err.Error())
			return
		}
		writeError(w, http.StatusNotFound, "not found", r.Method+" "+r.URL.Path)
	})
	s.mux = m
	s.handler = s.deadlines(m)
}

// maxBody is the largest request body the API reads.
const maxBody = 1 << 20

// principal is who a request comes from.
type principal struct {
	kind  store.TokenKind
	node  string
	token int64
	scope store.Token // an agent token's Apps and Envs
}

// allows reports whether an agent's token scope covers app/env (admins
// are not scoped).
func (p principal) allows(app, env string) bool {
	return p.kind == store.TokenAdmin || p.scope.Allows(app, env)
}

// String names the principal for records: "admin token 3".
func (p principal) String() string { return fmt.Sprintf("%s token %d", p.kind, p.token) }

type ctxKey struct{}

func from(r *http.Request) principal { p, _ := r.Context().Value(ctxKey{}).(principal); return p }

// HashToken is how a token secret is stored: hex SHA-256.
func HashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// NewSecret returns a new random token secret with a readable prefix.
func NewSecret(kind store.TokenKind) string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return "drv_" + string(kind) + "_" + hex.EncodeToString(b)
}

var errNoToken = errors.New("no bearer token: send Authorization: Bearer TOKEN")

// offStack runs fn on a goroutine of its own and waits for it. Store
// calls (the SQLite driver especially) grow a goroutine's stack to tens of
// kilobytes; a long-poll then parks its connection's goroutine for half a
// minute. Running the calls elsewhere keeps ten thousand parked
// goroutines at their small starting stacks.
func offStack(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	<-done
}

func (s *Server) principal(r *http.Request) (p principal, err error) {
	offStack(func() { p, err = s.lookupPrincipal(r) })
	return p, err
}

func (s *Server) lookupPrincipal(r *http.Request) (principal, error) {
	h := r.Header.Get("Authorization")
	secret, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || secret == "" {
		return principal{}, errNoToken
	}
	t, err := s.tokens.get(r.Context(), s.store, HashToken(strings.TrimSpace(secret)), s.now())
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return principal{}, errors.New("unknown token")
		}
		return principal{}, err
	}
	if err := t.Check(s.now()); err != nil {
		return principal{}, fmt.Errorf("token %d: %w", t.ID, err)
	}
	return principal{kind: t.Kind, node: t.Node, token: t.ID, scope: store.Token{Apps: t.Apps, Envs: t.Envs}}, nil
}

// auth lets a request through when its token is of one of kinds.
func (s *Server) auth(h http.HandlerFunc, kinds ...store.TokenKind) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := s.principal(r)
		if err != nil {
			writeError(w, http.StatusUnauthorized, "unauthorized", err.Error())
			return
		}
		allowed := false
		for _, k := range kinds {
			allowed = allowed || p.kind == k
		}
		if !allowed {
			writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("a %s token cannot do this", p.kind))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, p)))
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg, detail string) {
	writeJSON(w, code, map[string]string{"error": msg, "detail": detail})
}

// decode reads a JSON body strictly: unknown fields, trailing data and
// oversize bodies are errors (400, 413).
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if r.Body == nil {
		writeError(w, http.StatusBadRequest, "bad request", "empty body")
		return false
	}
	if r.ContentLength > maxBody {
		writeError(w, http.StatusRequestEntityTooLarge, "request body too large", fmt.Sprintf("at most %d bytes", maxBody))
		return false
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestTimeout, "request body too slow", "the body did not arrive in time; send it at once")
		return false
	}
	more := err == nil && dec.More()
	bodyRead(w)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "request body too large", fmt.Sprintf("at most %d bytes", maxBody))
			return false
		}
		writeError(w, http.StatusBadRequest, "bad request", "malformed JSON: "+err.Error())
		return false
	}
	if more {
		writeError(w, http.StatusBadRequest, "bad request", "trailing data after the JSON object")
		return false
	}
	return true
}

// storeError maps a store or control error to an HTTP answer.
func (s *Server) storeError(w http.ResponseWriter, err error) {
	var ce *control.ConfigError
	switch {
	case errors.As(err, &ce):
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
	case errors.Is(err, control.ErrForbidden):
		writeError(w, http.StatusForbidden, "forbidden", err.Error())
	case errors.Is(err, control.ErrFinished), errors.Is(err, control.ErrNotQueued), errors.Is(err, control.ErrLeaseLost):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not found", err.Error())
	case errors.Is(err, store.ErrInvalid):
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, store.ErrTokenUsed), errors.Is(err, store.ErrTokenRevoked), errors.Is(err, store.ErrTokenExpired):
		writeError(w, http.StatusUnauthorized, "unauthorized", err.Error())
	default:
		s.log.Error("store", "err", err)
		writeError(w, http.StatusInternalServerError, "internal error", "see the server's log")
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// validName checks an app, environment or node name; it keeps paths,
// traversal and control characters out of everything stored.
func validName(kind, v string) error {
	if !nameRE.MatchString(v) || strings.Contains(v, "..") {
		return fmt.Errorf("%s %q: use 1-63 lowercase letters, digits, '-', '_' or '.'", kind, v)
	}
	return nil
}

// EnsureAdminToken creates the first admin token when there is none and
// writes its secret to dir/admin.token (mode 0600). It returns the path
// written, or "" when an admin token existed already.
func EnsureAdminToken(ctx context.Context, st store.Store, dir string) (string, error) {
	toks, err := st.ListTokens(ctx, store.TokenAdmin)
	if err != nil {
		return "", err
	}
	for _, t := range toks {
		if !t.Revoked {
			return "", nil
		}
	}
	secret := NewSecret(store.TokenAdmin)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", err
	}
	if _, err := st.CreateToken(ctx, store.Token{Kind: store.TokenAdmin, Hash: HashToken(secret), Note: "first admin token"}); err != nil {
		return "", err
	}
	return path, nil
}

// hub wakes long-polls waiting on an app/env.
type hub struct {
	lot *lot // where the parked long-polls it wakes are queued

	mu    sync.Mutex
	byKey map[string]map[waiter]struct{} // app/env → who waits on it
	wakes uint64                         // wake calls so far (see handOver)
}

// waiter is a long-poll waiting in the hub: a wakeChan while a handler's
// goroutine waits, a *parked once its connection is parked. wake must
// not block.
type waiter interface{ wake() }

// wakeChan is a waiter a goroutine selects on.
type wakeChan chan struct{}

func (c wakeChan) wake() {
	select {
	case c <- struct{}{}:
	default:
	}
}

func newHub() *hub { return &hub{byKey: map[string]map[waiter]struct{}{}} }

// add subscribes w to keys and returns the count of wakes so far.
func (h *hub) add(w waiter, keys []string) (wakes uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.put(w, keys)
	return h.wakes
}

// put subscribes w to keys; h.mu is held.
func (h *hub) put(w waiter, keys []string) {
	for _, k := range keys {
		ws := h.byKey[k]
		if ws == nil {
			ws = map[waiter]struct{}{}
			h.byKey[k] = ws
		}
		ws[w] = struct{}{}
	}
}

// handOver puts to in from's place on keys, in one turn of the lock, and
// reports whether any wake came since add returned wakes for from: such a
// wake may have picked from and reach it only after the handover (a
// long-poll parked, park.go), so to must look again.
func (h *hub) handOver(from, to waiter, keys []string, wakes uint64) (woken bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, k := range keys {
		delete(h.byKey[k], from)
	}
	h.put(to, keys)
	return h.wakes != wakes
}

func (h *hub) remove(w waiter, keys []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.drop(w, keys)
}

// removeAll removes parked long-polls, in one turn of the lock.
func (h *hub) removeAll(ps []*parked) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range ps {
		h.drop(p, p.keys)
	}
}

// drop unsubscribes w from keys; h.mu is held.
func (h *hub) drop(w waiter, keys []string) {
	for _, k := range keys {
		delete(h.byKey[k], w)
		if len(h.byKey[k]) == 0 {
			delete(h.byKey, k)
		}
	}
}

// wake wakes the waiters on app/env, or every waiter when app is "".
// They are woken after the lock is let go: a parked long-poll's wake
// takes the parking lot's lock.
func (h *hub) wake(app, env string) {
	var ws []waiter
	h.mu.Lock()
	h.wakes++
	if app == "" {
		for _, byKey := range h.byKey {
			for w := range byKey {
				ws = append(ws, w)
			}
		}
	} else {
		for w := range h.byKey[app+"/"+env] {
			ws = append(ws, w)
		}
	}
	h.mu.Unlock()
	// Parked long-polls are queued together: one turn of the lot's lock
	// for ten thousand of them, not one each.
	var ps []*parked
	for _, w := range ws {
		if p, ok := w.(*parked); ok {
			ps = append(ps, p)
			continue
		}
		w.wake()
	}
	if len(ps) > 0 {
		h.lot.schedule(ps...)
	}
}
