package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifyChannel is the PostgreSQL NOTIFY channel replicas share.
const notifyChannel = "drover_changes"

// maxPending is how many environments a slow receiver may have pending
// before they are folded into one "anything may have changed" Change.
const maxPending = 4096

type envKey struct{ app, env string }

// hub fans changes out to Watch channels, dropping a change it has already
// delivered (the same version arriving from a local write and from the
// database) and never blocking on a slow receiver. A receiver that does not
// keep up loses no environment: its pending changes are coalesced, one per
// environment at the newest version, and delivered when it reads again.
type hub struct {
	mu     sync.Mutex
	subs   map[*watcher]struct{}
	seen   map[envKey]int64
	closed bool
}

// watcher is one Watch subscription: a level-triggered set of pending
// changes and the goroutine that hands them to the receiver's channel.
type watcher struct {
	out    chan Change
	signal chan struct{} // capacity 1: "pending is not empty"
	done   chan struct{} // closed by unsubscribe
	exited chan struct{} // closed when the forwarder has closed out

	mu      sync.Mutex
	pending map[envKey]int64
	all     bool // a resync or too many pending: send Change{}
}

func newHub() *hub {
	return &hub{subs: map[*watcher]struct{}{}, seen: map[envKey]int64{}}
}

// publish delivers c unless a version at least as new was delivered
// already. A Change with empty App (resync) is always delivered.
func (h *hub) publish(c Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c.App != "" {
		k := envKey{c.App, c.Env}
		if c.Version <= h.seen[k] {
			return
		}
		h.seen[k] = c.Version
	}
	for w := range h.subs {
		w.add(c)
	}
}

// add records c as pending for the receiver and signals its forwarder; it
// never blocks on the receiver.
func (w *watcher) add(c Change) {
	w.mu.Lock()
	switch k := (envKey{c.App, c.Env}); {
	case c.App == "" || w.all:
		w.all, w.pending = true, map[envKey]int64{}
	case len(w.pending) >= maxPending && w.pending[k] == 0:
		w.all, w.pending = true, map[envKey]int64{}
	default:
		w.pending[k] = max(w.pending[k], c.Version)
	}
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default: // already signalled: the forwarder will take this one too
	}
}

// take returns and clears the pending changes.
func (w *watcher) take() []Change {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.all {
		w.all, w.pending = false, map[envKey]int64{}
		return []Change{{}}
	}
	out := make([]Change, 0, len(w.pending))
	for k, v := range w.pending {
		out = append(out, Change{App: k.app, Env: k.env, Version: v})
	}
	clear(w.pending)
	return out
}

// forward hands pending changes to the receiver until unsubscribed.
func (w *watcher) forward() {
	defer close(w.exited)
	defer close(w.out)
	for {
		select {
		case <-w.done:
			return
		case <-w.signal:
		}
		for _, c := range w.take() {
			select {
			case w.out <- c:
			case <-w.done:
				return
			}
		}
	}
}

// observe records versions without delivering them: the starting point of
// a poller, so existing environments do not look like changes.
func (h *hub) observe(c Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := envKey{c.App, c.Env}
	if c.Version > h.seen[k] {
		h.seen[k] = c.Version
	}
}

func (h *hub) subscribe() (*watcher, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, false
	}
	w := &watcher{out: make(chan Change), signal: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{}), pending: map[envKey]int64{}}
	h.subs[w] = struct{}{}
	go w.forward()
	return w, true
}

func (h *hub) unsubscribe(w *watcher) {
	h.mu.Lock()
	_, ok := h.subs[w]
	delete(h.subs, w)
	h.mu.Unlock()
	if ok {
		close(w.done)
		<-w.exited
	}
}

func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	subs := h.subs
	h.subs = map[*watcher]struct{}{}
	h.mu.Unlock()
	for w := range subs {
		close(w.done)
		<-w.exited
	}
}

// Watch subscribes to changes. The first call starts the store's watcher:
// a LISTEN connection on PostgreSQL, a poller of the environments table on
// MySQL and SQLite (every PollInterval; SQLite also delivers this Store's
// own writes at once).
func (s *sqlStore) Watch(ctx context.Context) (<-chan Change, error) {
	if err := s.startWatcher(ctx); err != nil {
		return nil, fmt.Errorf("store: watch: %w", err)
	}
	w, ok := s.hub.subscribe()
	if !ok {
		return nil, fmt.Errorf("store: watch: %w", ErrClosed)
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-ctx.Done():
		case <-s.ctx.Done():
		}
		s.hub.unsubscribe(w)
	}()
	return w.out, nil
}

// startWatcher starts the watcher goroutine once and returns when its
// subscription is live, so a change committed after Watch returns is seen.
func (s *sqlStore) startWatcher(ctx context.Context) error {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if s.watchReady {
		return nil
	}
	if s.ctx.Err() != nil {
		return ErrClosed
	}
	switch s.dialect {
	case Postgres:
		conn, err := s.listen(ctx)
		if err != nil {
			return err
		}
		s.wg.Add(1)
		go s.listenLoop(conn)
	default:
		if err := s.poll(ctx, s.hub.observe); err != nil {
			return err
		}
		s.wg.Add(1)
		go s.pollLoop()
	}
	s.watchReady = true
	return nil
}

// poll reads every environment's version and hands each to fn.
func (s *sqlStore) poll(ctx context.Context, fn func(Change)) error {
	rows, err := s.db.QueryContext(ctx, "SELECT app, name, version FROM environments")
	if err != nil {
		return fmt.Errorf("poll versions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c Change
		if err := rows.Scan(&c.App, &c.Env, &c.Version); err != nil {
			return fmt.Errorf("poll versions: %w", err)
		}
		fn(c)
	}
	return rows.Err()
}

func (s *sqlStore) pollLoop() {
	defer s.wg.Done()
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	failed := false
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, 10*PollInterval)
		err := s.poll(ctx, s.hub.publish)
		cancel()
		if err != nil {
			failed = true
			continue
		}
		if failed { // changes may have come and gone while we could not look
			failed = false
			s.hub.publish(Change{})
		}
	}
}

// listen opens the dedicated LISTEN connection.
func (s *sqlStore) listen(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.pgURL)
	if err != nil {
		return nil, fmt.Errorf("listen connection: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("LISTEN %s: %w", notifyChannel, err)
	}
	return conn, nil
}

// listenLoop delivers notifications until Close, reconnecting with backoff
// when the connection breaks and then telling receivers to re-read
// (notifications sent meanwhile are lost).
func (s *sqlStore) listenLoop(conn *pgx.Conn) {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for {
		for conn == nil {
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			var err error
			if conn, err = s.listen(s.ctx); err != nil {
				conn = nil
				backoff = min(2*backoff, 5*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
			s.hub.publish(Change{})
		}
		n, err := conn.WaitForNotification(s.ctx)
		if err != nil {
			conn.Close(context.Background())
			conn = nil
			if s.ctx.Err() != nil {
				return
			}
			continue
		}
		var c Change
		if json.Unmarshal([]byte(n.Payload), &c) == nil {
			s.hub.publish(c)
		}
	}
}
