package server

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// This file holds what keeps one client from holding the server: a cap on
// connections, deadlines on request bodies and on answers, and a rate limit
// on joins (the only route a client without a token reaches).

// limitListener caps the connections served at once at MaxConns: past
// it, Accept waits until one closes and the kernel queues the rest. A
// connection holds its slot from its accept until it is closed, through
// any long-polls parked on it (park.go).
type limitListener struct {
	net.Listener
	slots     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its slot back when closed (once, however often Close is
// called).
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// HTTPServer returns the http.Server that serves s's API over Listener:
// ReadHeaderTimeout and IdleTimeout here; body and answer deadlines are
// set per request by the handler, so the long-poll can wait as long as it
// asks.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{Handler: s.Handler(), ReadHeaderTimeout: s.ReadHeaderTimeout, IdleTimeout: s.IdleTimeout}
}

// deadlines bounds how long a request's body may take to arrive
// (BodyTimeout; decode lifts it once the body is read) and how long the
// client may take to take its answer (WriteTimeout, counted from the first
// byte of the answer, so a long-poll's wait is not part of it).
func (s *Server) deadlines(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if s.BodyTimeout > 0 && r.ContentLength != 0 {
			_ = rc.SetReadDeadline(time.Now().Add(s.BodyTimeout))
		}
		if s.WriteTimeout > 0 {
			w = &answerDeadline{ResponseWriter: w, rc: rc, d: s.WriteTimeout}
		}
		next.ServeHTTP(w, r)
	})
}

// answerDeadline sets the write deadline when the answer starts.
type answerDeadline struct {
	http.ResponseWriter
	rc      *http.ResponseController
	d       time.Duration
	started bool
}

func (a *answerDeadline) start() {
	if !a.started {
		a.started = true
		_ = a.rc.SetWriteDeadline(time.Now().Add(a.d))
	}
}

func (a *answerDeadline) WriteHeader(code int) {
	a.start()
	a.ResponseWriter.WriteHeader(code)
}

func (a *answerDeadline) Write(b []byte) (int, error) {
	a.start()
	return a.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection.
func (a *answerDeadline) Unwrap() http.ResponseWriter { return a.ResponseWriter }

// bodyRead lifts the body deadline once the body is in: the work that
// follows may take longer, and an expired read deadline would cancel the
// request's context.
func bodyRead(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
}

// maxLimitedAddrs bounds the per-address buckets kept in memory.
const maxLimitedAddrs = 10000

// rateLimiter is a token bucket per remote address and one for all.
type rateLimiter struct {
	rate, total   float64
	burst, burstT float64

	mu     sync.Mutex
	all    bucket
	byAddr map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// refill brings b up to now and returns its tokens.
func (b *bucket) refill(now time.Time, rate, burst float64) float64 {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+rate*now.Sub(b.last).Seconds())
	}
	b.last = now
	return b.tokens
}

// wait is how long until b has a token (0: it has one now).
func wait(tokens, rate float64) time.Duration {
	if tokens >= 1 {
		return 0
	}
	return time.Duration((1 - tokens) / rate * float64(time.Second))
}

func newRateLimiter(rate float64, burst int, total float64, burstTotal int) *rateLimiter {
	return &rateLimiter{rate: rate, burst: max(1, float64(burst)), total: total, burstT: max(1, float64(burstTotal)), byAddr: map[string]*bucket{}}
}

// allow takes a token for addr, or says how long to wait for one.
func (l *rateLimiter) allow(addr string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b *bucket
	var retry time.Duration
	if l.rate > 0 {
		if b = l.byAddr[addr]; b == nil {
			l.sweep(now)
			b = &bucket{}
			l.byAddr[addr] = b
		}
		retry = max(retry, wait(b.refill(now, l.rate, l.burst), l.rate))
	}
	if l.total > 0 {
		retry = max(retry, wait(l.all.refill(now, l.total, l.burstT), l.total))
	}
	if retry > 0 {
		return false, retry
	}
	if b != nil {
		b.tokens--
	}
	if l.total > 0 {
		l.all.tokens--
	}
	return true, 0
}

// sweep forgets addresses whose bucket is full again (they are as if
// new), and if that is not enough, any, so memory stays bounded; the total
// bucket still holds.
func (l *rateLimiter) sweep(now time.Time) {
	if len(l.byAddr) < maxLimitedAddrs {
		return
	}
	for a, b := range l.byAddr {
		if b.refill(now, l.rate, l.burst) >= l.burst {
			delete(l.byAddr, a)
		}
	}
	for a := range l.byAddr {
		if len(l.byAddr) < maxLimitedAddrs/2 {
			break
		}
		delete(l.byAddr, a)
	}
}

// joinAllowed answers 429 with Retry-After when r is past the join rate.
func (s *Server) joinAllowed(w http.ResponseWriter, r *http.Request) bool {
	s.joinOnce.Do(func() { s.joinLimit = newRateLimiter(s.JoinRate, s.JoinBurst, s.JoinRateTotal, s.JoinBurstTotal) })
	addr, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		addr = r.RemoteAddr
	}
	ok, retry := s.joinLimit.allow(addr, time.Now())
	if ok {
		return true
	}
	secs := int(math.Ceil(retry.Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeError(w, http.StatusTooManyRequests, "too many join attempts", fmt.Sprintf("joins from %s are limited (the server takes %g a second from one address, %g in all); retry after %ds", addr, s.JoinRate, s.JoinRateTotal, secs))
	return false
}
