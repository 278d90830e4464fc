package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/service"
)

// Server runs requests against the release engine of this host.
type Server struct {
	Version string       // drover's version, reported by ping
	Logger  *slog.Logger // where the engine logs
	CrashAt string       // crash point for tests (DROVER_CRASH_AT); only a -tags droverdebug build honours it
}

// Serve reads one request from in, runs it and writes events and the result
// to out as JSON lines.
func (s *Server) Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	br := bufio.NewReaderSize(in, 64<<10)
	line, err := br.ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		return fmt.Errorf("read request: %w", err)
	}
	var req Request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	w := newWriter(out)
	if err := dec.Decode(&req); err != nil {
		return w.result(&Response{Error: "bad request: " + err.Error()})
	}
	if req.Protocol != ProtocolVersion {
		return w.result(&Response{Error: fmt.Sprintf("protocol %d not understood by drover %s on this host (speaks %d)", req.Protocol, s.Version, ProtocolVersion)})
	}
	resp := s.handle(ctx, &req, br, w)
	return w.result(resp)
}

// writer serialises messages from concurrent event emitters. Events go
// through a bounded queue that one goroutine writes out, so a deployer that
// stops reading while its connection stays open (a laptop shut with its
// TCP connection alive) never stalls the work: when the queue is full,
// events are dropped and counted, and a line saying how many follows once
// the deployer reads again. The first failed write (the deployer died, its
// connection dropped: stdout is a broken pipe) detaches it: later messages
// are dropped, and onDetach runs once, so the work in progress finishes
// instead of dying with its output.
type writer struct {
	enc *json.Encoder

	errMu    sync.Mutex // guards err and onDetach
	err      error
	onDetach func()

	mu      sync.Mutex // guards sends on queue and closed; drain never takes it
	queue   chan message
	closed  bool          // the result is being sent: no more events
	drained chan struct{} // closed when the queue's writer ends
	dropped atomic.Int64  // events dropped since the last one sent
}

// eventQueue is how many events may wait for a slow deployer.
const eventQueue = 4096

func newWriter(out io.Writer) *writer {
	w := &writer{enc: json.NewEncoder(out), queue: make(chan message, eventQueue), drained: make(chan struct{})}
	go w.drain()
	return w
}

// drain writes queued events until the queue closes.
func (w *writer) drain() {
	defer close(w.drained)
	for m := range w.queue {
		if n := w.dropped.Swap(0); n > 0 {
			note := release.Event{Kind: release.EventInfo, Step: m.Event.Step, Line: fmt.Sprintf("… %d lines of output were not sent: the deployer was not reading", n)}
			_ = w.write(message{Event: &note})
		}
		_ = w.write(m)
	}
}

// write encodes one message; a failure detaches the writer.
func (w *writer) write(m message) error {
	if err := w.failed(); err != nil {
		return err
	}
	err := w.enc.Encode(m) // drain, then result: never two at once
	if err == nil {
		return nil
	}
	w.errMu.Lock()
	if w.err != nil {
		w.errMu.Unlock()
		return w.err
	}
	w.err = fmt.Errorf("deployer detached: %w", err)
	detach := w.onDetach
	w.errMu.Unlock()
	if detach != nil {
		detach()
	}
	return err
}

// detached runs fn when the writer detaches, at once if it already has.
func (w *writer) detached(fn func()) {
	w.errMu.Lock()
	if w.err == nil {
		w.onDetach = fn
		w.errMu.Unlock()
		return
	}
	w.errMu.Unlock()
	fn()
}

// failed returns the error that detached the writer, if any.
func (w *writer) failed() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// event queues ev for the deployer, or drops it when the queue is full.
func (w *writer) event(ev release.Event) {
	if w.failed() != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	select {
	case w.queue <- message{Event: &ev}:
	default:
		w.dropped.Add(1)
	}
}

// send writes a message that must not be dropped (a lock notice): after
// the events queued before it.
func (w *writer) send(m message) error {
	if err := w.failed(); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errors.New("session already answered")
	}
	w.queue <- m // blocks while the queue is full; drain needs no lock
	return nil
}

// result writes the response after every queued event, and ends the queue.
func (w *writer) result(r *Response) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.queue)
	}
	w.mu.Unlock()
	<-w.drained
	return w.write(message{Result: r})
}

func errResponse(err error) *Response {
	r := &Response{Error: err.Error()}
	var se *release.StepError
	if errors.As(err, &se) {
		r.Step, r.Tail = se.Step, se.Tail
	}
	var ee *release.ExitError
	if errors.As(err, &ee) {
		r.ExitCode = ee.Code
	}
	var ae *release.ActivateError
	if errors.As(err, &ae) {
		r.Active, r.Serving = ae.Serving.Release, &ae.Serving
	}
	var he *lock.HeldError
	if errors.As(err, &he) {
		r.Held, r.Holder = true, &he.Holder
	}
	return r
}

// mutating reports whether req changes the host, and so must hold the
// deploy lock: by its fencing token, or by taking the lock for its duration.
func mutating(req *Request) bool {
	switch req.Op {
	case OpPrepare, OpHooks, OpActivate, OpRollback, OpCleanup, OpExec:
		return true
	case OpService:
		return req.Action != "status"
	}
	return false
}

// stepGate stops an engine at the next step boundary once its deployer has
// detached: the step in progress finishes and is recorded (a half-run
// migration is the worst outcome), the next one does not start, and
// `drover resume` continues from there.
type stepGate struct {
	mu       sync.Mutex
	inStep   bool
	detached bool
	stop     context.CancelCauseFunc
}

// errDetached ends an engine whose deployer went away.
var errDetached = errors.New("the deployer went away (killed, or its connection dropped); stopped after the step in progress, `drover resume` continues")

func (g *stepGate) event(ev release.Event) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch ev.Kind {
	case release.EventStepStart:
		g.inStep = true
	case release.EventStepEnd:
		g.inStep = false
		if g.detached {
			g.stop(errDetached)
		}
	}
}

func (g *stepGate) detach() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.detached = true
	if !g.inStep {
		g.stop(errDetached)
	}
}

// fence makes req's change of the host safe against other deployers: a
// request with a fencing token must hold the deploy lock with it; one
// without takes the lock for its own duration (renewing it as it goes), and
// is refused, naming the holder, when someone else holds it. The returned
// func frees what fence took.
func fence(ctx context.Context, lk *lock.File, req *Request) (func(), error) {
	if req.Token != 0 {
		return func() {}, lk.Check(req.Token)
	}
	h := lock.Holder{Owner: req.By, Command: "drover " + req.Op + " " + req.Env}
	if req.Holder != nil {
		h = *req.Holder
		h.Manual, h.Token = false, 0
	}
	if h.Owner == "" {
		h.Owner = "unknown"
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	held := make(chan error, 1)
	done := make(chan struct{})
	beats := make(chan struct{})
	go func() {
		defer close(done)
		err := lk.Hold(ctx, h, func(lock.Holder) { held <- nil }, beats)
		select {
		case held <- err:
		default:
		}
	}()
	// This request proves its own life while it runs.
	go every(ctx.Done(), heartbeatEvery(h.Lease), func() bool { return send(ctx, beats) })
	if err := <-held; err != nil {
		cancel()
		<-done
		return nil, err
	}
	return func() { cancel(); <-done }, nil
}

func (s *Server) handle(ctx context.Context, req *Request, rest io.Reader, w *writer) *Response {
	if req.Op == OpPing {
		return &Response{OK: true, Version: s.Version}
	}
	if req.App == nil {
		return &Response{Error: "bad request: no app"}
	}
	if req.Holder != nil && (req.Holder.Lease < 0 || req.Holder.Lease > lock.MaxLease) {
		return &Response{Error: fmt.Sprintf("bad request: lock lease %s is out of bounds (0 for the default, at most %s)", req.Holder.Lease, lock.MaxLease)}
	}
	if req.Barrier && req.Op != OpActivate {
		return &Response{Error: fmt.Sprintf("bad request: barrier is for activate only, not %s", req.Op)}
	}
	eng := release.New(req.App, req.Env, req.Host, req.Roles)
	eng.Emit = w.event
	eng.Logger = s.Logger
	eng.Export = req.Export
	switch {
	case !crashPoints && req.CrashAt != "":
		return &Response{Error: "bad request: crash_at is a test hook that only a test build of drover (-tags droverdebug) accepts"}
	case crashPoints && req.CrashAt != "":
		eng.CrashAt = req.CrashAt
	case crashPoints:
		eng.CrashAt = s.CrashAt
	}
	lk := &lock.File{Path: filepath.Join(eng.Layout.State(), "lock")}
	if mutating(req) {
		unfence, err := fence(ctx, lk, req)
		if err != nil {
			return errResponse(err)
		}
		defer unfence()
	}
	if req.Op == OpPrepare || req.Op == OpHooks {
		// Steps of these verbs are the safe points: a deployer that goes
		// away stops the engine after the step in progress. Activate and
		// rollback run to their end, with their own revert on failure.
		gctx, stop := context.WithCancelCause(ctx)
		defer stop(nil)
		g := &stepGate{stop: stop}
		eng.Emit = func(ev release.Event) {
			g.event(ev)
			w.event(ev)
		}
		w.detached(g.detach)
		ctx = gctx
	}
	switch req.Op {
	case OpPrepare:
		rec, err := eng.Prepare(ctx, release.PrepareOptions{ID: req.ID, Commit: req.Commit, Spec: req.Spec, By: req.By, RunOnce: req.RunOnce, KeepDays: req.KeepFor, Hotfix: req.Hotfix})
		if err != nil {
			r := errResponse(err)
			r.Release = rec
			return r
		}
		return &Response{OK: true, Release: rec}
	case OpHooks:
		if err := eng.RunHooks(ctx, req.ID, req.Stage, req.RunOnce); err != nil {
			return errResponse(err)
		}
		return &Response{OK: true}
	case OpActivate:
		if req.Barrier {
			eng.BeforeSwitch = func(ctx context.Context) error { return awaitGo(ctx, rest, w) }
		}
		if err := eng.Activate(ctx, req.ID); err != nil {
			return errResponse(err)
		}
		resp := &Response{OK: true, Active: req.ID}
		if req.Keep > 0 {
			// Cleanup in the same session saves a round trip per host;
			// its failure does not undo a good activation.
			removed, err := eng.Cleanup(ctx, req.Keep)
			resp.Removed = removed
			if err != nil {
				w.event(release.Event{Kind: release.EventInfo, Step: "cleanup", Line: "cleanup failed: " + err.Error()})
			}
		}
		return resp
	case OpRollback:
		to, err := eng.Rollback(ctx, req.To)
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Active: to}
	case OpRollbackTarget:
		to, err := eng.RollbackTarget()
		if err != nil {
			return errResponse(err)
		}
		recs, active, err := eng.Releases()
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Target: to, Releases: recs, Active: active}
	case OpReleases:
		recs, active, err := eng.Releases()
		if err != nil {
			return errResponse(err)
		}
		c, err := eng.Canary().Read()
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Releases: recs, Active: active, Canary: c}
	case OpCanary:
		return canaryOp(eng, lk, req)
	case OpCleanup:
		if req.ID != "" { // one release, by name
			found, err := eng.Remove(ctx, req.ID)
			if err != nil {
				return errResponse(err)
			}
			resp := &Response{OK: true}
			if found {
				resp.Removed = []string{req.ID}
			}
			return resp
		}
		keep := req.Keep
		if keep == 0 {
			keep = req.App.KeepReleases
		}
		removed, err := eng.Cleanup(ctx, keep)
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Removed: removed}
	case OpExec:
		out := release.NewLineWriter(func(l string) { w.event(release.Event{Kind: release.EventOutput, Step: "exec", Line: l}) })
		err := eng.Exclusive(ctx, func() error { return eng.Exec(ctx, req.Command, nil, out, out) })
		out.Flush()
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true}
	case OpService:
		var procs []service.Process
		err := eng.Exclusive(ctx, func() (err error) {
			procs, err = eng.ServiceAction(ctx, req.Action, req.Service, req.Port)
			return err
		})
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Processes: procs}
	case OpLock:
		if req.Holder == nil {
			return &Response{Error: "bad request: lock without holder"}
		}
		return s.hold(ctx, req, lk, rest, w)
	case OpLockManual:
		h := *req.Holder
		h.Manual = true
		held, err := lk.Acquire(h)
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Holder: &held}
	case OpUnlock:
		was, err := lk.Break()
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Holder: was}
	case OpLockStatus:
		h, err := lk.Read()
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Holder: h}
	}
	return &Response{Error: fmt.Sprintf("bad request: unknown op %q", req.Op)}
}

// hold keeps the deploy lock for the deployer on the other end of rest, as
// long as it heartbeats: every line it sends renews the lease, and a lease
// with no line lapses, whatever TCP says of the connection (a suspended
// laptop, a partition). When the deployer closes its end (done, or dead)
// the lock is freed once no engine works in deploy_to any more: a step a
// dead deployer left running finishes and is recorded under its lock.
func (s *Server) hold(ctx context.Context, req *Request, lk *lock.File, rest io.Reader, w *writer) *Response {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	beats := make(chan struct{})
	go func() {
		br := bufio.NewReader(rest)
		for {
			if _, err := br.ReadBytes('\n'); err != nil {
				break
			}
			if !send(hctx, beats) {
				return
			}
		}
		// The deployer's end closed. Keep the lock, renewed by this
		// host, until no engine works in deploy_to, then free it.
		go func() {
			idler := release.New(req.App, req.Env, req.Host, req.Roles)
			_ = idler.Exclusive(hctx, func() error { return nil })
			cancel()
		}()
		every(hctx.Done(), heartbeatEvery(req.Holder.Lease), func() bool { return send(hctx, beats) })
	}()
	err := lk.Hold(hctx, *req.Holder, func(h lock.Holder) { _ = w.send(message{Locked: &h}) }, beats)
	if err != nil {
		return errResponse(err)
	}
	return &Response{OK: true}
}

// send delivers one beat unless ctx ends first.
func send(ctx context.Context, beats chan<- struct{}) bool {
	select {
	case beats <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// ErrNoGo fails a Barrier activate whose deployer did not give the go: it
// said no (another host failed before it was ready), or its end closed or
// the request was cancelled. The host was not switched.
var ErrNoGo = errors.New("not switched: the deployer called the switch off (another host failed before it was ready, or the deploy was interrupted); nothing changed on this host, `drover resume` continues")

// awaitGo tells the deployer this activate is ready to switch and waits
// for its go line on rest.
func awaitGo(ctx context.Context, rest io.Reader, w *writer) error {
	if err := w.send(message{Ready: true}); err != nil {
		return fmt.Errorf("%w: %v", ErrNoGo, err)
	}
	got := make(chan bool, 1)
	go func() {
		line, err := bufio.NewReader(rest).ReadBytes('\n')
		var g goLine
		got <- (err == nil || len(line) > 0) && json.Unmarshal(line, &g) == nil && g.Go
	}()
	select {
	case ok := <-got:
		if !ok {
			return ErrNoGo
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNoGo, ctx.Err())
	}
}
