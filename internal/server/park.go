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

	"github.com/drover/drover/internal/api"
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
	maxHold    time.Duration

	mu      sync.Mutex
	ctx     context.Context // the server's (Start): lookups end with it
	ln      *resumeListener // where answered connections go back; nil: nothing parks
	closed  bool
	parked  map[*parked]struct{}
	queue   []*parked
	workers int // running; each stops when the queue is empty

	// Connections answered while workers run: see hold. heldTimer gives
	// them back after maxHold at the latest.
	held      []*parked
	heldTimer *time.Timer
}

// maxHold bounds how long an answered connection waits for the workers to
// finish before net/http reads its next request (lot.maxHold).
const maxHold = time.Second

func newLot(s *Server) *lot {
	return &lot{s: s, maxWorkers: workersPerCPU * runtime.GOMAXPROCS(0), maxHold: maxHold, ctx: context.Background(), parked: map[*parked]struct{}{}}
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

// schedule has a worker look at each of ps (woken or at its deadline).
func (l *lot) schedule(ps ...*parked) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range ps {
		switch p.state {
		case parkArming, parkRunning:
			p.again = true
		case parkWaiting:
			p.state = parkQueued
			l.enqueue(p)
		}
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

// lookBatch is how many queued long-polls a worker takes at once: each
// answer took five turns of shared locks (the queue, the lot, the hub,
// last-seen, the held list), and with tens of workers on a few CPUs the
// workers spent a third of their time waiting on those locks while ten
// thousand agents waited for their answer. A batch takes each lock once.
const lookBatch = 64

// work looks at queued long-polls until the queue is empty.
func (l *lot) work() {
	batch := make([]*parked, 0, lookBatch)
	for {
		batch = batch[:0]
		l.mu.Lock()
		for len(l.queue) > 0 && len(batch) < lookBatch {
			p := l.queue[0]
			l.queue[0] = nil
			l.queue = l.queue[1:]
			if p.state != parkQueued { // closed while queued
				continue
			}
			p.state, p.again = parkRunning, false
			batch = append(batch, p)
		}
		if len(batch) == 0 {
			// The last worker out hands the answered connections back.
			l.workers--
			var held []*parked
			if l.workers == 0 {
				held = l.takeHeld()
			}
			l.mu.Unlock()
			l.resume(held)
			return
		}
		ctx := l.ctx
		l.mu.Unlock()
		l.look(ctx, batch)
	}
}

// look answers each long-poll of batch whose desired state changed or
// whose wait ended, as the handler would, and parks the others again.
func (l *lot) look(ctx context.Context, batch []*parked) {
	s := l.s
	now := time.Now()
	type answer struct {
		p   *parked
		d   *api.Desired
		err error
	}
	var ready []answer
	var failed error
	waiting := batch[:0] // reuses batch: each is read before it is written
	for _, p := range batch {
		// A stuck store holds a look no longer than control's own
		// bound on the environment's load (30 s). Once a lookup of the
		// batch failed, the rest get the same error at once rather than
		// a lookup each one after the other (64 x 30 s): their agents
		// ask again, as after any store error.
		var d *api.Desired
		err := failed
		if err == nil {
			d, err = s.desiredOf(ctx, p.nodes)
			failed = err
		}
		if err == nil && d.Version == p.known && now.Before(p.deadline) {
			waiting = append(waiting, p)
			continue
		}
		ready = append(ready, answer{p, d, err})
	}
	taken := ready[:0]
	l.mu.Lock()
	for _, p := range waiting {
		switch {
		case p.state != parkRunning: // closed meanwhile
		case p.again:
			p.state = parkQueued
			l.queue = append(l.queue, p) // a worker takes it again
		default:
			p.state = parkWaiting
		}
	}
	for _, a := range ready {
		if a.p.state == parkDone { // closed meanwhile
			continue
		}
		a.p.state = parkDone
		delete(l.parked, a.p)
		taken = append(taken, a)
	}
	l.mu.Unlock()
	if len(taken) == 0 {
		return
	}
	gone := make([]*parked, len(taken))
	var seen []store.Node
	for i, a := range taken {
		a.p.timer.Stop()
		gone[i] = a.p
		if a.err == nil {
			seen = append(seen, a.p.nodes...)
		}
	}
	s.hub.removeAll(gone)
	if ctx.Err() != nil { // the server is stopping
		for _, p := range gone {
			p.conn.Close()
		}
		return
	}
	s.touch(seen)
	answered := make([]*parked, 0, len(taken))
	for _, a := range taken {
		var r reply
		if a.err != nil {
			s.storeError(&r, a.err)
		} else {
			writeJSON(&r, http.StatusOK, a.d)
		}
		if l.write(a.p, &r) {
			answered = append(answered, a.p)
		}
	}
	l.hold(answered)
}

// write writes a to p's connection; a failed write closes it.
func (l *lot) write(p *parked, a *reply) bool {
	if d := l.s.WriteTimeout; d > 0 {
		_ = p.conn.SetWriteDeadline(time.Now().Add(d))
	}
	if _, err := p.conn.Write(a.bytes(time.Now())); err != nil {
		l.s.log.Debug("long-poll: answer", "remote", p.conn.RemoteAddr(), "err", err)
		p.conn.Close()
		return false
	}
	_ = p.conn.SetWriteDeadline(time.Time{})
	return true
}

// hold keeps the connections a worker answered until the last worker
// stops, every queued long-poll looked at (or maxHold passed), then they
// go back to net/http for the agents' next requests.
//
// Every agent answered sends its next requests at once: a release answered
// to ten thousand agents brings ten thousand StartUpgrades, reports, hellos
// and new long-polls while most of the fleet still waits for its answer.
// Go schedules every goroutine alike, so the workers writing the answers
// queued behind thousands of request goroutines and stalled for hundreds
// of milliseconds at a time. Held, an answered agent's next request waits
// in its socket until the rest of the fleet has its answer; the rollout
// waits for every node anyway.
func (l *lot) hold(answered []*parked) {
	if len(answered) == 0 {
		return
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		for _, p := range answered {
			p.conn.Close()
		}
		return
	}
	l.held = append(l.held, answered...)
	if l.heldTimer == nil {
		l.heldTimer = time.AfterFunc(l.maxHold, func() {
			l.mu.Lock()
			held := l.takeHeld()
			l.mu.Unlock()
			l.resume(held)
		})
	}
	l.mu.Unlock()
}

// takeHeld empties the held connections. l.mu is held.
func (l *lot) takeHeld() []*parked {
	held := l.held
	l.held = nil
	if l.heldTimer != nil {
		l.heldTimer.Stop()
		l.heldTimer = nil
	}
	return held
}

// resume hands the connections of held back to net/http.
func (l *lot) resume(held []*parked) {
	if len(held) == 0 {
		return
	}
	l.mu.Lock()
	ln := l.ln // set: nothing parks without a listener
	l.mu.Unlock()
	for _, p := range held {
		ln.resume(p.conn, p.buf, l.s.IdleTimeout)
	}
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
	held := l.takeHeld()
	ln := l.ln
	l.mu.Unlock()
	for p := range recs {
		p.timer.Stop()
		l.s.hub.remove(p, p.keys)
		p.conn.Close()
	}
	for _, p := range held {
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
