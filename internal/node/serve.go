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

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
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
	w := &writer{enc: json.NewEncoder(out)}
	if err := dec.Decode(&req); err != nil {
		return w.result(&Response{Error: "bad request: " + err.Error()})
	}
	if req.Protocol != ProtocolVersion {
		return w.result(&Response{Error: fmt.Sprintf("protocol %d not understood by drover %s on this host (speaks %d)", req.Protocol, s.Version, ProtocolVersion)})
	}
	resp := s.handle(ctx, &req, br, w)
	return w.result(resp)
}

// writer serialises messages from concurrent event emitters.
type writer struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *writer) send(m message) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(m)
}

func (w *writer) event(ev release.Event) { _ = w.send(message{Event: &ev}) }

func (w *writer) result(r *Response) error { return w.send(message{Result: r}) }

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
	var he *lock.HeldError
	if errors.As(err, &he) {
		r.Held, r.Holder = true, &he.Holder
	}
	return r
}

func (s *Server) handle(ctx context.Context, req *Request, rest io.Reader, w *writer) *Response {
	if req.Op == OpPing {
		return &Response{OK: true, Version: s.Version}
	}
	if req.App == nil {
		return &Response{Error: "bad request: no app"}
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
	if req.Token != 0 {
		if err := lk.Check(req.Token); err != nil {
			return errResponse(err)
		}
	}
	switch req.Op {
	case OpPrepare:
		rec, err := eng.Prepare(ctx, release.PrepareOptions{ID: req.ID, Commit: req.Commit, Spec: req.Spec, By: req.By, RunOnce: req.RunOnce, KeepDays: req.KeepFor})
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
		return &Response{OK: true, Releases: recs, Active: active}
	case OpCleanup:
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
		err := eng.Exec(ctx, req.Command, nil, out, out)
		out.Flush()
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true}
	case OpService:
		procs, err := eng.ServiceAction(ctx, req.Action, req.Service, req.Port)
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Processes: procs}
	case OpLock:
		if req.Holder == nil {
			return &Response{Error: "bad request: lock without holder"}
		}
		hctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			// The caller holds the lock for as long as it keeps our stdin
			// open: a deployer that dies (Ctrl-C, kill -9, lost connection)
			// closes it, and the lock is released at once.
			_, _ = io.Copy(io.Discard, rest)
			cancel()
		}()
		err := lk.Hold(hctx, *req.Holder, func(h lock.Holder) { _ = w.send(message{Locked: &h}) })
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true}
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
