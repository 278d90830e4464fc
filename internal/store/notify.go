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

// watchBuffer is how many changes a Watch channel holds before further ones
// are dropped for that receiver (it re-reads Version anyway).
const watchBuffer = 256

type envKey struct{ app, env string }

// hub fans changes out to Watch channels, dropping a change it has already
// delivered (the same version arriving from a local write and from the
// database) and never blocking on a slow receiver.
type hub struct {
	mu     sync.Mutex
	subs   map[chan Change]struct{}
	seen   map[envKey]int64
	closed bool
}

func newHub() *hub {
	return &hub{subs: map[chan Change]struct{}{}, seen: map[envKey]int64{}}
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
	for ch := range h.subs {
		select {
		case ch <- c:
		default: // receiver full: it will re-read Version on the next change
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

func (h *hub) subscribe() (chan Change, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, false
	}
	ch := make(chan Change, watchBuffer)
	h.subs[ch] = struct{}{}
	return ch, true
}

func (h *hub) unsubscribe(ch chan Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[ch]; ok {
		delete(h.subs, ch)
		close(ch)
	}
}

func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for ch := range h.subs {
		delete(h.subs, ch)
		close(ch)
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
	ch, ok := s.hub.subscribe()
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
		s.hub.unsubscribe(ch)
	}()
	return ch, nil
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
