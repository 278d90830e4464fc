package server

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// Listener returns the listener to serve HTTPServer on: ln capped at
// MaxConns connections, under TLS when tlsConfig is not nil, and giving
// back to net/http the connections of long-polls the parking lot answered
// (park.go), for their next request. The cap counts a TCP connection once
// from its accept to its close, however often it parks. TLS sits between
// the two, so a connection given back is not wrapped in TLS again. Build
// one Listener per Server: answered long-polls go back to the last one.
func (s *Server) Listener(ln net.Listener, tlsConfig *tls.Config) net.Listener {
	if s.MaxConns > 0 {
		ln = &limitListener{Listener: ln, slots: make(chan struct{}, s.MaxConns), done: make(chan struct{})}
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	rl := &resumeListener{Listener: ln, accepted: make(chan accepted), ready: make(chan struct{}, 1), done: make(chan struct{})}
	s.lot.setListener(rl)
	return rl
}

// resumeListener accepts new connections from the listener under it, and
// the connections the parking lot hands back. Accept blocks on the one
// below, so a pump goroutine accepts from it while Accept waits on both.
type resumeListener struct {
	net.Listener
	pumpOnce  sync.Once
	accepted  chan accepted
	ready     chan struct{} // a connection was handed back
	done      chan struct{}
	closeOnce sync.Once

	mu      sync.Mutex
	resumed []net.Conn
	closed  bool
}

type accepted struct {
	c   net.Conn
	err error
}

func (l *resumeListener) Accept() (net.Conn, error) {
	l.pumpOnce.Do(func() { go l.pump() })
	for {
		if c := l.next(); c != nil {
			return c, nil
		}
		select {
		case a := <-l.accepted:
			return a.c, a.err
		case <-l.ready:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
}

// pump passes the lower listener's accepts (and errors, which
// http.Server judges) to Accept, until the listener is closed.
func (l *resumeListener) pump() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- accepted{c, err}:
		case <-l.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (l *resumeListener) next() net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.resumed) == 0 {
		return nil
	}
	c := l.resumed[0]
	l.resumed[0] = nil
	l.resumed = l.resumed[1:]
	return c
}

// resume hands c back to net/http, buf to be read before it, its first
// request let wait idle as on any kept-alive connection.
func (l *resumeListener) resume(c net.Conn, buf []byte, idle time.Duration) {
	rc := &resumedConn{Conn: c, buf: buf, idle: idle, waiting: len(buf) == 0}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		c.Close()
		return
	}
	l.resumed = append(l.resumed, rc)
	l.mu.Unlock()
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

// closeResumed closes the connections handed back but not accepted, and
// any handed back from now on.
func (l *resumeListener) closeResumed() {
	l.mu.Lock()
	cs := l.resumed
	l.resumed, l.closed = nil, true
	l.mu.Unlock()
	for _, c := range cs {
		c.Close()
	}
}

func (l *resumeListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.closeResumed()
	})
	return l.Listener.Close()
}

// resumedConn is a connection handed back to net/http after a parked
// long-poll's answer. net/http takes it for a new connection, whose first
// request must arrive within ReadHeaderTimeout; but this is a kept-alive
// connection, and an agent may work for minutes before its next request.
// So until the first byte comes, the read waits as long as an idle
// connection may (IdleTimeout), and the deadline net/http set counts from
// that byte. Under TLS, net/http takes it for a plain connection (the
// handshake is long done; a request on it has no r.TLS, which the API
// does not read).
type resumedConn struct {
	net.Conn
	buf  []byte // read first: what the agent sent after its long-poll
	idle time.Duration

	mu      sync.Mutex
	waiting bool          // for the first byte
	asked   time.Duration // the read deadline net/http set while waiting, from when it set it; 0: none
}

func (c *resumedConn) Read(p []byte) (int, error) {
	// net/http reads from one goroutine at a time, so buf needs no lock.
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		if len(c.buf) == 0 {
			c.buf = nil
		}
		return n, nil
	}
	c.mu.Lock()
	waiting := c.waiting
	c.mu.Unlock()
	if !waiting {
		return c.Conn.Read(p)
	}
	var idle time.Time
	if c.idle > 0 {
		idle = time.Now().Add(c.idle)
	}
	_ = c.Conn.SetReadDeadline(idle)
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.waiting = false
	var asked time.Time
	if c.asked > 0 {
		asked = time.Now().Add(c.asked)
	}
	c.mu.Unlock()
	_ = c.Conn.SetReadDeadline(asked)
	return n, err
}

func (c *resumedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	if c.waiting {
		c.asked = 0
		if !t.IsZero() {
			c.asked = max(time.Until(t), 1)
		}
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

func (c *resumedConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.Conn.SetWriteDeadline(t))
}
