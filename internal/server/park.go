package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/drover/drover/internal/store"
)

// The parking lot keeps agents' long-polls whose answer is not ready
// without a goroutine or a buffer each. net/http would hold a parked
// long-poll in its connection's goroutine, with a second goroutine reading
// in the background and ~20 KB of buffers: ten thousand agents cost
// hundreds of megabytes to do nothing. Instead the handler takes the
// connection from net/http (Hijack) and leaves a small record here: the
// connection, the agent's registrations, the version it knows and its
// deadline. A store change wakes the record through the hub, its deadline
// through a timer; then one of a few workers looks again, and if the
// answer changed (or the wait ended) writes it and hands the connection
// back to net/http (resumeListener) for the agent's next request.
//
// A parked connection is not read: an agent that hangs up is noticed when
// its answer is written or at its deadline. Until then its connection
// holds its MaxConns slot, for MaxWait at most.

// workersPerCPU sizes the lot's worker pool (see lot).
const workersPerCPU = 16

// parked is a long-poll waiting in the lot.
type parked struct {
	lot      *lot
	conn     net.Conn
	buf      []byte // bytes the agent sent after the long-poll's request (pipelined), read by net/http before the connection
	nodes    []store.Node
	keys     []string // the app/envs it waits on
	known    int64    // the desired state's version the agent has
	deadline time.Time
	timer    *time.Timer // wakes it at the deadline

	// Guarded by lot.mu.
	state parkState
	again bool // woken while arming or being looked at: look again
}

type parkState uint8

const (
	parkArming  parkState = iota // the handler is handing it over
	parkWaiting                  // waiting for a wake or its deadline, no goroutine
	parkQueued                   // woken, in the workers' queue
	parkRunning                  // a worker is looking at it
	parkDone                     // answered or closed, out of the lot
)

func (p *parked) wake() { p.lot.schedule(p) }

// lot holds the parked long-polls and the workers that answer them.
//
// Workers start when answers are queued and stop when the queue is empty,
// at most maxWorkers at once: 16 per CPU rather than one, so that a few
// agents slow to take their answer (a write may wait up to WriteTimeout)
// do not hold up the others', and so that the answers get their share of
// the CPUs next to the requests they set off (each agent asks again at
// once; Go schedules all goroutines alike).
type lot struct {
	s          *Server
	maxWorkers int

	mu      sync.Mutex
	ctx     context.Context // the server's (Start): lookups end with it
	ln      *resumeListener // where answered connections go back; nil: nothing parks
	closed  bool
	parked  map[*parked]struct{}
	queue   []*parked
	workers int // running; each stops when the queue is empty
}

func newLot(s *Server) *lot {
	return &lot{s: s, maxWorkers: workersPerCPU * runtime.GOMAXPROCS(0), ctx: context.Background(), parked: map[*parked]struct{}{}}
}

// start ties the lot to the server's life: when ctx ends, it closes.
func (l *lot) start(ctx context.Context) {
	l.mu.Lock()
	l.ctx = ctx
	l.mu.Unlock()
	context.AfterFunc(ctx, l.close)
}

func (l *lot) setListener(ln *resumeListener) {
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
}

// park takes over the long-poll of w and r, whose answer is not ready:
// it hijacks the connection and parks it with p's wait, subscribed to the
// hub in place of ch (subscribed when the hub had counted since wakes).
// It reports false, w untouched, when it cannot; the caller then waits as
// before.
func (l *lot) park(w http.ResponseWriter, r *http.Request, ch wakeChan, since uint64, p parked) bool {
	// Only a plain HTTP/1.1 GET whose connection stays open parks: the
	// answer is written by hand and the connection reused, which HTTP/2,
	// HTTP/1.0, HEAD, a body left to read or Connection: close would break.
	if r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Method != http.MethodGet || r.Close || r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		return false
	}
	l.mu.Lock()
	ready := l.ln != nil && !l.closed
	l.mu.Unlock()
	if !ready {
		return false
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if errors.Is(err, http.ErrNotSupported) {
		return false
	}
	if err != nil { // net/http let go of the connection but failed to hand it over
		l.s.log.Warn("long-poll: take the connection from net/http", "err", err)
		if conn != nil {
			conn.Close()
		}
		return true
	}
	rec := &p
	rec.lot, rec.conn, rec.buf = l, conn, buffered(rw.Reader)
	if rc, ok := conn.(*resumedConn); ok {
		// Parked again: keep the connection under the wrapper, and what
		// the wrapper still held after what net/http read.
		rec.conn, rec.buf = rc.Conn, append(rec.buf, rc.buf...)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		conn.Close()
		return true
	}
	l.parked[rec] = struct{}{}
	rec.timer = time.AfterFunc(time.Until(rec.deadline), rec.wake)
	l.mu.Unlock()
	// A change may have come since the handler subscribed, its wake
	// meant for ch: then look once more.
	woken := l.s.hub.handOver(ch, rec, rec.keys, since)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case rec.state == parkDone: // closed meanwhile, maybe before the hub had it
		l.s.hub.remove(rec, rec.keys)
	case woken || rec.again:
		rec.state = parkQueued
		l.enqueue(rec)
	default:
		rec.state = parkWaiting
	}
	return true
}

// buffered copies what br read past the request, if anything.
func buffered(br *bufio.Reader) []byte {
	if br.Buffered() == 0 {
		return nil
	}
	b, _ := br.Peek(br.Buffered())
	return bytes.Clone(b)
}

// schedule has a worker look at p (woken or at its deadline).
func (l *lot) schedule(p *parked) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch p.state {
	case parkArming, parkRunning:
		p.again = true
	case parkWaiting:
		p.state = parkQueued
		l.enqueue(p)
	}
}

// enqueue queues p for the workers, starting one if fewer than
// maxWorkers run. l.mu is held.
func (l *lot) enqueue(p *parked) {
	l.queue = append(l.queue, p)
	if l.workers < l.maxWorkers {
		l.workers++
		go l.work()
	}
}

// work looks at queued long-polls until the queue is empty.
func (l *lot) work() {
	for {
		l.mu.Lock()
		if len(l.queue) == 0 {
			l.workers--
			l.mu.Unlock()
			return
		}
		p := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		if p.state != parkQueued { // closed while queued
			l.mu.Unlock()
			continue
		}
		p.state, p.again = parkRunning, false
		ctx := l.ctx
		l.mu.Unlock()
		l.look(ctx, p)
	}
}

// look answers p if its desired state changed or its wait ended, as the
// handler would, and parks it again otherwise.
func (l *lot) look(ctx context.Context, p *parked) {
	s := l.s
	// A stuck store holds a look no longer than control's own bound on
	// the environment's load.
	d, err := s.desiredOf(ctx, p.nodes)
	if err == nil && d.Version == p.known && time.Now().Before(p.deadline) {
		l.mu.Lock()
		defer l.mu.Unlock()
		switch {
		case p.state != parkRunning: // closed meanwhile
		case p.again:
			p.state = parkQueued
			l.queue = append(l.queue, p) // this worker takes it
		default:
			p.state = parkWaiting
		}
		return
	}
	if !l.take(p) {
		return
	}
	if ctx.Err() != nil { // the server is stopping
		p.conn.Close()
		return
	}
	var a reply
	if err != nil {
		s.storeError(&a, err)
	} else {
		s.touch(ctx, p.nodes)
		writeJSON(&a, http.StatusOK, d)
	}
	l.answer(p, &a)
}

// take removes p from the lot to answer it; false if it is gone already.
func (l *lot) take(p *parked) bool {
	l.mu.Lock()
	if p.state == parkDone {
		l.mu.Unlock()
		return false
	}
	p.state = parkDone
	delete(l.parked, p)
	l.mu.Unlock()
	p.timer.Stop()
	l.s.hub.remove(p, p.keys)
	return true
}

// answer writes a to p's connection and hands the connection back to
// net/http for the agent's next request; a failed write closes it.
func (l *lot) answer(p *parked, a *reply) {
	if d := l.s.WriteTimeout; d > 0 {
		_ = p.conn.SetWriteDeadline(time.Now().Add(d))
	}
	if _, err := p.conn.Write(a.bytes(time.Now())); err != nil {
		l.s.log.Debug("long-poll: answer", "remote", p.conn.RemoteAddr(), "err", err)
		p.conn.Close()
		return
	}
	_ = p.conn.SetWriteDeadline(time.Time{})
	l.mu.Lock()
	ln := l.ln
	l.mu.Unlock()
	ln.resume(p.conn, p.buf, l.s.IdleTimeout)
}

// close closes every parked connection and those answered but not yet
// taken back by net/http; long-polls no longer park.
func (l *lot) close() {
	l.mu.Lock()
	l.closed = true
	recs := l.parked
	l.parked = map[*parked]struct{}{}
	for p := range recs {
		p.state = parkDone
	}
	ln := l.ln
	l.mu.Unlock()
	for p := range recs {
		p.timer.Stop()
		l.s.hub.remove(p, p.keys)
		p.conn.Close()
	}
	if ln != nil {
		ln.closeResumed()
	}
}

// len is how many long-polls are parked.
func (l *lot) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.parked)
}

// reply is an answer kept in memory (an http.ResponseWriter), so a parked
// long-poll is answered by the same writeJSON and storeError as any
// request, then written to its connection the way net/http writes it.
type reply struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (a *reply) Header() http.Header {
	if a.header == nil {
		a.header = http.Header{}
	}
	return a.header
}

func (a *reply) WriteHeader(code int) {
	if a.code == 0 {
		a.code = code
	}
}

func (a *reply) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	return a.body.Write(b)
}

// bytes is the whole HTTP/1.1 response: status line, headers with Date
// and Content-Length, body.
func (a *reply) bytes(now time.Time) []byte {
	h := a.Header()
	h.Set("Date", now.UTC().Format(http.TimeFormat))
	h.Set("Content-Length", strconv.Itoa(a.body.Len()))
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %03d %s\r\n", a.code, http.StatusText(a.code))
	_ = h.Write(&b)
	b.WriteString("\r\n")
	b.Write(a.body.Bytes())
	return b.Bytes()
}
