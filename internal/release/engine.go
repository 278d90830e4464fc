// Package release is drover's node-side engine: it lays out deploy_to,
// materialises a commit into a new release directory, links shared paths,
// runs hooks, switches `current` atomically, restarts services, rolls back,
// cleans up and resumes. It knows nothing of SSH, HTTP or databases: push
// mode and the agent call the same code.
package release

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/service"
	"github.com/drover/drover/internal/source"
)

// Engine runs the release steps of one app on this host.
type Engine struct {
	App    *config.File
	Layout Layout
	Env    string   // environment name, for DROVER_ENV
	Host   string   // this host's name in drover.yml, for DROVER_HOST
	Roles  []string // this host's roles: hooks with a role run only where it matches
	Export string   // source.ExportArchive (default) or source.ExportCheckout

	// Emit receives progress events; nil drops them.
	Emit   func(Event)
	Logger *slog.Logger
	Now    func() time.Time

	// CrashAt names a point ("before:STEP" or "after:STEP") where the engine
	// kills itself with SIGKILL. Crash tests set it through DROVER_CRASH_AT.
	CrashAt string

	// BeforeSwitch, when set, is called by Activate once everything that
	// comes before the switch of `current` is done (the checks, the state
	// recorded, the before_activate hooks), and the switch waits for it: an
	// error fails the activation before anything changed, as a failed
	// before_activate hook does (the release stays resumable). The node
	// protocol uses it to switch every host of an all-at-once rollout at
	// once.
	BeforeSwitch func(ctx context.Context) error

	// syncFS makes the files under a release dir durable; nil means
	// syncfs(2) on its filesystem. Tests wrap it to check the order.
	syncFS func(dir string) error
}

// New returns an engine for app on this host, rooted at app.DeployTo.
func New(app *config.File, env, host string, roles []string) *Engine {
	return &Engine{App: app, Layout: Layout{Root: app.DeployTo}, Env: env, Host: host, Roles: roles}
}

// StepError says which step of an upgrade failed, and shows the last lines
// of its output.
type StepError struct {
	Release string
	Step    string
	Err     error
	Tail    []string
}

func (e *StepError) Error() string {
	return fmt.Sprintf("release %s: step %s: %v", e.Release, e.Step, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// ErrNotPrepared is returned when activating a release that is not complete.
var ErrNotPrepared = errors.New("release is not prepared")

func (e *Engine) now() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

// sync makes every file of release dir durable before it is recorded
// prepared.
func (e *Engine) sync(dir string) error {
	if e.syncFS != nil {
		return e.syncFS(dir)
	}
	return syncFS(dir)
}

func (e *Engine) log() *slog.Logger {
	if e.Logger != nil {
		return e.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (e *Engine) emit(ev Event) {
	if e.Emit != nil {
		ev.Time = e.now()
		e.Emit(ev)
	}
}

func (e *Engine) crash(point string) {
	if e.CrashAt != "" && e.CrashAt == point {
		e.log().Warn("crash point reached, killing self", "point", point)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not deliverable late; never return
	}
}

// ensureLayout creates the directories of deploy_to that are missing.
func (e *Engine) ensureLayout() error {
	for _, d := range []string{e.Layout.Releases(), e.Layout.Shared(), e.Layout.State()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

func (e *Engine) statePath() string { return filepath.Join(e.Layout.State(), "releases.json") }

// state returns the recorded releases of this host, with a record of
// status unknown for each directory under releases/ that it lacks (the one
// current points to recorded active). The next save keeps them.
func (e *Engine) state() (*state, error) {
	st, err := loadState(e.statePath())
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(e.Layout.Releases())
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", e.Layout.Releases(), err)
	}
	active, err := e.Layout.ActiveID()
	if err != nil {
		return nil, err
	}
	for _, de := range entries { // ReadDir sorts by name: the IDs' order is the best left
		if !de.IsDir() || !ValidID(de.Name()) || st.find(de.Name()) != nil {
			continue
		}
		rec := &Record{ID: de.Name(), Status: StatusUnknown}
		if fi, err := de.Info(); err == nil {
			rec.CreatedAt = fi.ModTime()
		}
		if de.Name() == active {
			rec.Status = StatusActive
		}
		st.add(rec)
	}
	return st, nil
}

// runStep runs fn as step name of rec unless it already succeeded, records
// the result and saves the state.
func (e *Engine) runStep(ctx context.Context, st *state, rec *Record, name string, fn func(ctx context.Context, out *tail) error) error {
	if rec.done(name) {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	e.crash("before:" + name)
	start := e.now()
	e.emit(Event{Kind: EventStepStart, Step: name})
	out := &tail{max: 20, emit: func(line string) { e.emit(Event{Kind: EventOutput, Step: name, Line: line}) }}
	err := fn(ctx, out)
	out.flush()
	e.crash("after:" + name)
	s := Step{Name: name, OK: err == nil, Started: start, Elapsed: e.now().Sub(start)}
	if err != nil {
		s.Error = err.Error()
	}
	rec.record(s)
	e.emit(Event{Kind: EventStepEnd, Step: name, Elapsed: s.Elapsed, Error: s.Error})
	if err != nil {
		rec.FailedStep, rec.Error = name, err.Error()
		if serr := st.save(); serr != nil {
			e.log().Error("save state", "err", serr)
		}
		return &StepError{Release: rec.ID, Step: name, Err: err, Tail: out.lines}
	}
	return st.save()
}

// PrepareOptions says what to prepare.
type PrepareOptions struct {
	ID       string        // the release ID the rollout chose (NewID)
	Commit   string        // full SHA, resolved once per rollout
	Spec     string        // the version spec it came from, for the record
	By       string        // who deploys
	RunOnce  []string      // the run_once hooks of the prepare stage the rollout chose this host for
	KeepDays time.Duration // pin the release against cleanup this long (prepare --keep-days)
	// Hotfix makes a new release a code-only one (deploy --hotfix): its
	// record says so, and no hook marked hotfix: skip runs for it. A
	// release already recorded keeps what its record says.
	Hotfix bool
}

// Prepare makes release opts.ID ready to activate without touching what
// runs: fetch, checkout, shared links, prepare hooks. Calling it again for a
// release that failed or was interrupted continues from the step that did
// not finish; for a prepared release it does nothing.
func (e *Engine) Prepare(ctx context.Context, opts PrepareOptions) (rec *Record, err error) {
	err = e.exclusive(ctx, func() error {
		rec, err = e.prepare(ctx, opts)
		return err
	})
	return rec, err
}

func (e *Engine) prepare(ctx context.Context, opts PrepareOptions) (*Record, error) {
	if err := CheckID(opts.ID); err != nil {
		return nil, err
	}
	if opts.Commit == "" {
		return nil, errors.New("prepare: no commit given")
	}
	if err := e.ensureLayout(); err != nil {
		return nil, err
	}
	st, err := e.state()
	if err != nil {
		return nil, err
	}
	rec := st.find(opts.ID)
	switch {
	case rec == nil:
		rec = &Record{ID: opts.ID, Commit: opts.Commit, Spec: opts.Spec, Env: e.Env, By: opts.By, CreatedAt: e.now(), Hotfix: opts.Hotfix}
		st.add(rec)
	case rec.Status == StatusUnknown:
		return nil, fmt.Errorf("prepare %s: releases/%s is on this host but not in its record (status unknown); a release directory is never reused: deploy a new release, or remove it with `drover cleanup ENV --remove %s`", opts.ID, opts.ID, opts.ID)
	case rec.Commit != opts.Commit:
		return nil, fmt.Errorf("prepare %s: this host recorded it for commit %s, not %s; a release directory is never reused", opts.ID, rec.Commit, opts.Commit)
	case rec.Status == StatusPrepared || rec.Status == StatusActive || rec.Status == StatusGood || rec.Status == StatusActivating || rec.Status == StatusRolledBack:
		return rec, nil
	case rec.Status == StatusFailed && !rec.PreparedAt.IsZero():
		// Prepared, then its activation failed: nothing left to prepare.
		return rec, nil
	}
	if opts.KeepDays > 0 {
		rec.KeepUntil = e.now().Add(opts.KeepDays)
	}
	rec.Status, rec.FailedStep, rec.Error = StatusPreparing, "", ""
	if err := st.save(); err != nil {
		return nil, err
	}
	dir := e.Layout.Release(opts.ID)
	mirror := &source.Mirror{Dir: e.Layout.Repo(), URL: e.App.Repo}
	steps := []struct {
		name string
		fn   func(context.Context, *tail) error
	}{
		{"fetch", func(ctx context.Context, _ *tail) error { return mirror.Ensure(ctx, opts.Commit) }},
		{"checkout", func(ctx context.Context, _ *tail) error { return e.checkout(ctx, mirror, opts.Commit, dir) }},
		{"shared", func(context.Context, *tail) error { return e.linkShared(dir) }},
	}
	for _, s := range steps {
		if err := e.runStep(ctx, st, rec, s.name, s.fn); err != nil {
			return rec, e.fail(st, rec, err)
		}
	}
	if err := e.runHooks(ctx, st, rec, config.StagePrepare, func(h *config.Hook) bool { return e.hookApplies(h, opts.RunOnce) }); err != nil {
		return rec, e.fail(st, rec, err)
	}
	if err := e.sync(dir); err != nil {
		return rec, e.fail(st, rec, &StepError{Release: rec.ID, Step: "sync", Err: err})
	}
	rec.Status, rec.PreparedAt = StatusPrepared, e.now()
	return rec, st.save()
}

func isActivationStep(step string) bool {
	return step == "switch" || step == "restart"
}

// fail marks rec failed (unless the context was cancelled, which leaves it
// resumable as it is) and returns err.
func (e *Engine) fail(st *state, rec *Record, err error) error {
	rec.Status = StatusFailed
	if rec.Error == "" {
		rec.Error = err.Error()
	}
	if serr := st.save(); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

func (e *Engine) checkout(ctx context.Context, m *source.Mirror, commit, dir string) error {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if _, err := os.Lstat(dir); err == nil {
		// An earlier attempt got this far but its step was not recorded:
		// the directory holds the same commit (the ID names it), start clean.
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	if err := m.Export(ctx, commit, tmp, e.Export); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dir))
}

// hookApplies reports whether hook h runs on this host: its role matches,
// and a run_once hook only where the rollout chose this host for it.
func (e *Engine) hookApplies(h *config.Hook, runOnce []string) bool {
	if h.RunOnce {
		return slices.Contains(runOnce, h.Name)
	}
	return h.Role == "" || slices.Contains(e.Roles, h.Role)
}

// hookEnv is the environment of hooks and exec'd commands.
func (e *Engine) hookEnv(rec *Record, dir string) []string {
	prev, _ := e.Layout.ActiveID()
	if rec != nil && rec.Previous != "" {
		prev = rec.Previous
	}
	if rec != nil && prev == rec.ID {
		prev = ""
	}
	prevDir := ""
	if prev != "" {
		prevDir = e.Layout.Release(prev)
	}
	id, commit := "", ""
	if rec != nil {
		id, commit = rec.ID, rec.Commit
	}
	return []string{
		"DROVER_APP=" + e.App.App,
		"DROVER_ENV=" + e.Env,
		"DROVER_HOST=" + e.Host,
		"DROVER_ROLES=" + strings.Join(e.Roles, ","),
		"DROVER_DEPLOY_TO=" + e.Layout.Root,
		"DROVER_RELEASE=" + id,
		"DROVER_RELEASE_DIR=" + dir,
		"DROVER_SHARED_DIR=" + e.Layout.Shared(),
		"DROVER_COMMIT=" + commit,
		"DROVER_PREVIOUS_RELEASE=" + prev,
		"DROVER_PREVIOUS_RELEASE_DIR=" + prevDir,
	}
}

// Releases returns the recorded releases, newest first as this host
// recorded them, with the active one
// marked from where `current` points.
func (e *Engine) Releases() ([]*Record, string, error) {
	st, err := e.state()
	if err != nil {
		return nil, "", err
	}
	active, err := e.Layout.ActiveID()
	if err != nil {
		return nil, "", err
	}
	out := slices.Clone(st.releases)
	slices.SortFunc(out, newestFirst)
	return out, active, nil
}

// services returns the services this host runs, as the service package
// describes them.
func (e *Engine) services() []service.Spec {
	var out []service.Spec
	for _, name := range e.App.ServiceNames() {
		s := e.App.Services[name]
		spec := service.Spec{Name: name, Start: s.Start, Ports: s.Ports, Systemd: s.Systemd, StopGrace: s.StopGrace.D(), Socket: s.Socket, Bind: s.Bind, ReusePort: s.ReusePort}
		if s.Health != nil {
			spec.Health = &service.Health{HTTP: s.Health.HTTP, Command: s.Health.Command, Timeout: s.Health.Timeout.D(), Interval: s.Health.Interval.D(),
				MinHealthyTime: s.Health.MinHealthyTime.D()}
		}
		out = append(out, spec)
	}
	return out
}
