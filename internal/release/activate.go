package release

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/service"
)

// RunHooks runs the run_once hooks named in runOnce, of one stage, for
// release id on this host: the rollout chose this host for them.
func (e *Engine) RunHooks(ctx context.Context, id, stage string, runOnce []string) error {
	return e.exclusive(ctx, func() error { return e.runOnceHooks(ctx, id, stage, runOnce) })
}

func (e *Engine) runOnceHooks(ctx context.Context, id, stage string, runOnce []string) error {
	st, err := e.state()
	if err != nil {
		return err
	}
	rec := st.find(id)
	if rec == nil {
		return fmt.Errorf("run %s hooks: release %s is not on this host", stage, id)
	}
	return e.runHooks(ctx, st, rec, stage, func(h *config.Hook) bool { return h.RunOnce && e.hookApplies(h, runOnce) })
}

// HotfixSkipped ends the line of the info event a host emits, with step
// hook:NAME and line "hook NAME "+HotfixSkipped, where it leaves a hook
// marked hotfix: skip out of a hotfix release.
const HotfixSkipped = "skipped for --hotfix (hotfix: skip in drover.yml)"

// runHooks runs, as steps of rec, the hooks of stage that want says run
// here, in file order, stopping at the first failure. A hotfix release
// leaves out the hooks marked hotfix: skip.
func (e *Engine) runHooks(ctx context.Context, st *state, rec *Record, stage string, want func(*config.Hook) bool) error {
	dir := e.Layout.Release(rec.ID)
	env := e.hookEnv(rec, dir)
	for _, h := range e.App.HooksFor(stage) {
		if !want(h) {
			continue
		}
		if rec.Hotfix && h.SkipsOnHotfix() {
			e.emit(Event{Kind: EventInfo, Step: "hook:" + h.Name, Line: "hook " + h.Name + " " + HotfixSkipped})
			continue
		}
		if err := e.runStep(ctx, st, rec, "hook:"+h.Name, func(ctx context.Context, out *tail) error {
			return runHook(ctx, h, dir, env, out)
		}); err != nil {
			return err
		}
	}
	return nil
}

// everywhere selects the hooks that are not run_once and whose role this
// host has.
func (e *Engine) everywhere(h *config.Hook) bool { return !h.RunOnce && e.hookApplies(h, nil) }

// Activate switches this host to the prepared release id: before_activate
// hooks, the atomic switch of `current`, service restarts, health checks,
// after_activate hooks. When a restart or health check fails, the host is
// switched back to the release it ran before and restarted, and the error
// says so. Activating the active release again does nothing.
func (e *Engine) Activate(ctx context.Context, id string) error {
	return e.exclusive(ctx, func() error { return e.activate(ctx, id) })
}

func (e *Engine) activate(ctx context.Context, id string) error {
	if err := CheckID(id); err != nil {
		return err
	}
	st, err := e.state()
	if err != nil {
		return err
	}
	rec := st.find(id)
	if rec == nil {
		return fmt.Errorf("activate %s: %w: it is not on this host (run `drover prepare` first)", id, ErrNotPrepared)
	}
	active, err := e.Layout.ActiveID()
	if err != nil {
		return err
	}
	switch rec.Status {
	case StatusActive:
		if active == id {
			return nil
		}
	case StatusPrepared, StatusGood, StatusActivating, StatusRolledBack:
	case StatusUnknown:
		// Its directory is all the host knows of it (the state was lost):
		// the operator named it, and its drover.yml says how it runs.
	case StatusFailed:
		// A failure before the switch (a before_activate hook, a lost
		// connection) may be resumed; one after it was reverted and needs
		// a new release.
		if rec.PreparedAt.IsZero() || rec.done("switch") {
			return fmt.Errorf("activate %s: %w: it failed in step %s; deploy a new release", id, ErrNotPrepared, rec.FailedStep)
		}
	default:
		return fmt.Errorf("activate %s: %w: its status is %s", id, ErrNotPrepared, rec.Status)
	}
	if fi, err := os.Stat(e.Layout.Release(id)); err != nil || !fi.IsDir() {
		return fmt.Errorf("activate %s: %w: releases/%s is missing", id, ErrNotPrepared, id)
	}
	// A recorded switch that `current` no longer shows (a rollback or
	// another activation moved it since) is not done: a step counts as
	// done only while what it did still holds.
	moved := rec.done("switch") && active != id
	if rec.Status != StatusActivating && rec.Status != StatusFailed || moved {
		rec.Previous = active
		if active == id {
			rec.Previous = ""
		}
	}
	earlier := rec.Status == StatusGood || rec.Status == StatusRolledBack || rec.Status == StatusActive || rec.Status == StatusUnknown
	// Going back to an earlier release runs its activation afresh.
	if earlier || moved {
		rec.Steps = slices.DeleteFunc(rec.Steps, func(s Step) bool { return isActivationStep(s.Name) || e.isActivationHook(s.Name) })
	}
	// Going back to an earlier release runs its own hooks and services,
	// from the drover.yml it was made with.
	if earlier {
		e = e.forRelease(id)
	}
	before := rec.Status
	rec.Status, rec.FailedStep, rec.Error = StatusActivating, "", ""
	if err := st.save(); err != nil {
		return err
	}
	dir := e.Layout.Release(id)
	if err := e.runHooks(ctx, st, rec, config.StageBeforeActivate, e.everywhere); err != nil {
		return e.fail(st, rec, err)
	}
	if e.BeforeSwitch != nil && !rec.done("switch") {
		if err := e.BeforeSwitch(ctx); err != nil {
			return e.fail(st, rec, err)
		}
	}
	if err := e.runStep(ctx, st, rec, "switch", func(context.Context, *tail) error {
		return e.Layout.switchCurrent(id)
	}); err != nil {
		return e.fail(st, rec, err)
	}
	restarted := false
	if err := e.runStep(ctx, st, rec, "restart", func(ctx context.Context, out *tail) error {
		restarted = true
		return e.restartServices(ctx, rec, dir, out)
	}); err != nil {
		return e.revert(ctx, st, rec, err, restarted, before)
	}
	if rec.Previous != "" && rec.Previous != id {
		e.stopRemoved(ctx, rec.Previous)
	}
	if err := e.runHooks(ctx, st, rec, config.StageAfterActivate, e.everywhere); err != nil {
		// The release is live and healthy; say the hook failed but do not
		// take the release down for it.
		ae := &ActivateError{Release: id, Previous: rec.Previous, Cause: err, AfterActivate: failedHook(err), Revert: e.markActive(st, rec)}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revertGrace)
		defer cancel()
		ae.Serving = e.serving(sctx)
		e.emit(Event{Kind: EventInfo, Step: "activate", Line: "this host " + ae.Serving.String()})
		return ae
	}
	return e.markActive(st, rec)
}

func (e *Engine) isActivationHook(step string) bool {
	for _, stage := range []string{config.StageBeforeActivate, config.StageAfterActivate} {
		for _, h := range e.App.HooksFor(stage) {
			if step == "hook:"+h.Name {
				return true
			}
		}
	}
	return false
}

func (e *Engine) markActive(st *state, rec *Record) error {
	for _, r := range st.releases {
		if r.Status == StatusActive && r.ID != rec.ID {
			r.Status = StatusGood
		}
	}
	rec.Status, rec.ActivatedAt = StatusActive, e.now()
	return st.save()
}

// ActivateError is an activation that failed after `current` was switched.
// Either a restart or health check failed, or the caller cancelled: the host
// was switched back to the release it ran before. Or, when AfterActivate
// names a hook, only that after_activate hook failed: the release stays
// active, as its services run healthy. Serving says what the host runs
// now, as checked at the end.
type ActivateError struct {
	Release       string  // the release that failed to activate
	Previous      string  // the release switched back to (or, after AfterActivate, the one before); "" for a first release
	Cause         error   // why the activation failed (a *StepError, or the caller's cancellation)
	Revert        error   // why switching back (or, after AfterActivate, recording the release active) failed, or nil
	Serving       Serving // what the host runs once drover is done
	AfterActivate string  // the after_activate hook that failed while the release stayed active; "" when the host was switched back
}

// failedHook returns the name of the hook whose step err failed, or "hook"
// when err does not say.
func failedHook(err error) string {
	var se *StepError
	if errors.As(err, &se) {
		if name, ok := strings.CutPrefix(se.Step, "hook:"); ok {
			return name
		}
	}
	return "hook"
}

func (e *ActivateError) Error() string {
	var b strings.Builder
	b.WriteString(e.Cause.Error())
	switch {
	case e.AfterActivate != "":
		fmt.Fprintf(&b, "; the after_activate hook %s failed after %s was switched to and its services started, so it stays active", e.AfterActivate, e.Release)
		if e.Revert != nil {
			fmt.Fprintf(&b, " (recording it active failed: %v)", e.Revert)
		}
		fmt.Fprintf(&b, "; this host now %s; fix what the hook does and run it by hand (`drover exec`), or deploy a new release", e.Serving)
		return b.String()
	case e.Revert != nil:
		fmt.Fprintf(&b, "; switching back to %q also failed: %v", e.Previous, e.Revert)
	case e.Previous == "":
		b.WriteString("; this was the first release, so nothing runs now")
	default:
		fmt.Fprintf(&b, "; switched back to %s", e.Previous)
	}
	if e.Previous != "" || e.Serving.Release != "" {
		fmt.Fprintf(&b, "; this host now %s", e.Serving)
	}
	return b.String()
}

// Unwrap returns the cause of the failed activation.
func (e *ActivateError) Unwrap() error { return e.Cause }

// Serving is what a host runs once an activation or rollback has ended:
// the release `current` points to, and whether every service process runs
// from it and passes its health check.
type Serving struct {
	Release string `json:"release,omitempty"` // where current points; "" when there is no current
	Healthy bool   `json:"healthy"`
	Problem string `json:"problem,omitempty"` // why it is not healthy
}

// String says what runs in words, for summaries and errors.
func (s Serving) String() string {
	switch {
	case s.Release == "":
		return "runs no release"
	case s.Healthy:
		return "serves " + s.Release + " (healthy)"
	}
	return "points at " + s.Release + " but it is not healthy: " + s.Problem
}

// revertGrace is added to the time a revert may take beyond what its
// stops, starts and health checks are configured to take.
const revertGrace = 30 * time.Second

// killWait is how long a stop may wait after SIGKILL (service.Stop's bound).
const killWait = 10 * time.Second

// revertTimeout bounds a revert: for every process, stopping the one that
// runs (its stop grace, then SIGKILL), starting the previous one and its
// health check, plus revertGrace.
func (e *Engine) revertTimeout() time.Duration {
	d := revertGrace
	for _, s := range e.services() {
		per := service.DefaultStopGrace + killWait + service.DefaultHealthTimeout
		if s.StopGrace > 0 {
			per += s.StopGrace - service.DefaultStopGrace
		}
		if s.Health != nil && s.Health.Timeout > 0 {
			per += s.Health.Timeout - service.DefaultHealthTimeout
		}
		d += time.Duration(max(len(s.Ports), 1)) * per
	}
	return d
}

// revert switches back to the release that ran before rec after a failed
// or cancelled restart, and restarts it when the failed restart had begun.
// It runs on a context detached from the caller's cancellation and bounded
// by revertTimeout: a deployer that is interrupted (Ctrl-C, SIGTERM, a lost
// lock or session) must not leave the host with nothing listening. The
// release switched back to is recorded active again; rec is recorded
// failed, or, when the caller cancelled, as it was before (its status
// before), so that it may be activated again. The *ActivateError it
// returns says what the host serves afterwards.
func (e *Engine) revert(ctx context.Context, st *state, rec *Record, cause error, restarted bool, before Status) error {
	cancelled := ctx.Err() != nil
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.revertTimeout())
	defer cancel()
	rec.Status = StatusFailed
	if cancelled {
		rec.Status = resumableStatus(before)
		rec.Steps = slices.DeleteFunc(rec.Steps, func(s Step) bool { return isActivationStep(s.Name) || e.isActivationHook(s.Name) })
	}
	prev := rec.Previous
	var rerr error
	if prev == "" {
		e.emit(Event{Kind: EventInfo, Step: "revert", Line: "no earlier release: stopping services and removing current"})
		rerr = errors.Join(e.stopServices(ctx), e.Layout.removeCurrent())
	} else {
		e.emit(Event{Kind: EventInfo, Step: "revert", Line: "switching back to " + prev})
		rerr = e.Layout.switchCurrent(prev)
		pr := st.find(prev)
		if rerr == nil && pr != nil {
			// current points at it again (a rollback had marked it
			// rolled back from before it switched).
			pr.Status = StatusActive
		}
		if rerr == nil && restarted {
			// The release switched back to runs its own services, not the
			// ones of the release that failed.
			rerr = e.forRelease(prev).restartServices(ctx, pr, e.Layout.Release(prev), lineWriter(func(l string) {
				e.emit(Event{Kind: EventOutput, Step: "revert", Line: l})
			}))
		}
	}
	if serr := st.save(); serr != nil {
		rerr = errors.Join(rerr, serr)
	}
	ae := &ActivateError{Release: rec.ID, Previous: prev, Cause: cause, Revert: rerr, Serving: e.serving(ctx)}
	e.emit(Event{Kind: EventInfo, Step: "revert", Line: "this host " + ae.Serving.String()})
	return ae
}

// resumableStatus is the status of a release whose activation was
// cancelled and reverted, from its status before the activation began.
func resumableStatus(before Status) Status {
	switch before {
	case StatusGood, StatusRolledBack:
		return before
	case StatusActive:
		return StatusGood
	}
	return StatusPrepared
}

// servingCheck bounds the health check serving runs on each process: the
// processes were just restarted and checked, or never stopped.
const servingCheck = 5 * time.Second

// serving checks what this host runs: where `current` points, whether every
// process of every service runs from that release, and whether each passes
// one health check.
func (e *Engine) serving(ctx context.Context) Serving {
	active, err := e.Layout.ActiveID()
	if err != nil {
		return Serving{Problem: err.Error()}
	}
	if active == "" {
		return Serving{Problem: "no current release"}
	}
	sv := Serving{Release: active}
	st, err := e.state()
	if err != nil {
		sv.Problem = err.Error()
		return sv
	}
	dir := e.Layout.Release(active)
	m := e.manager(st.find(active), dir)
	var problems []string
	for _, s := range e.forRelease(active).services() {
		if s.Systemd == "" {
			for _, p := range m.Status(s) {
				switch {
				case !p.Running:
					problems = append(problems, fmt.Sprintf("service %s port %d is %s", s.Name, p.Port, p.State))
				case p.ReleaseDir != dir:
					problems = append(problems, fmt.Sprintf("service %s port %d runs %s", s.Name, p.Port, p.ReleaseDir))
				}
			}
		}
		if s.Health == nil {
			continue
		}
		h := *s.Health
		if h.Timeout <= 0 || h.Timeout > servingCheck {
			h.Timeout = servingCheck
		}
		s.Health = &h
		for _, port := range s.Ports {
			if err := m.Check(ctx, s, port); err != nil {
				problems = append(problems, err.Error())
			}
		}
		if len(s.Ports) == 0 {
			if err := m.Check(ctx, s, 0); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	sv.Healthy = len(problems) == 0
	sv.Problem = strings.Join(problems, "; ")
	return sv
}

func (e *Engine) manager(rec *Record, dir string) *service.Manager {
	return &service.Manager{SharedDir: e.Layout.Shared(), Env: e.hookEnv(rec, dir), Logger: e.log()}
}

// restartServices restarts every service from dir, waiting for health.
func (e *Engine) restartServices(ctx context.Context, rec *Record, dir string, out io.Writer) error {
	m := e.manager(rec, dir)
	for _, s := range e.services() {
		fmt.Fprintf(out, "restarting %s\n", s.Name)
		if err := m.Restart(ctx, s, dir); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) stopServices(ctx context.Context) error {
	m := e.manager(nil, "")
	var errs []error
	for _, s := range e.services() {
		errs = append(errs, stopService(ctx, m, s))
	}
	return errors.Join(errs...)
}

// stopService stops every process of s.
func stopService(ctx context.Context, m *service.Manager, s service.Spec) error {
	if s.Systemd != "" {
		return m.Stop(ctx, s, 0)
	}
	var errs []error
	for _, p := range s.Ports {
		errs = append(errs, m.Stop(ctx, s, p))
	}
	if len(s.Ports) == 0 {
		errs = append(errs, m.Stop(ctx, s, 0))
	}
	return errors.Join(errs...)
}

// stopRemoved stops, once the new release runs healthy, the services that
// release prev defined and the new one (e.App) does not: nothing would
// stop them otherwise. It reports each one in an event; a failure to stop
// one is reported, not fatal, as the new release serves.
func (e *Engine) stopRemoved(ctx context.Context, prev string) {
	m := e.manager(nil, "")
	for _, s := range e.forRelease(prev).services() {
		if _, ok := e.App.Services[s.Name]; ok {
			continue
		}
		line := fmt.Sprintf("stopped service %s: release %s ran it and this release does not define it", s.Name, prev)
		if err := stopService(ctx, m, s); err != nil {
			line = fmt.Sprintf("service %s, which release %s ran and this release does not define, did not stop: %v", s.Name, prev, err)
		}
		e.emit(Event{Kind: EventInfo, Step: "restart", Line: line})
	}
}

// appOf returns the app as release id runs it: the deployer's file with
// the hooks, services, shared paths and keep_releases of
// releases/<id>/drover.yml, the file of the commit the release was made
// from. When that file is missing or invalid it falls back to e.App, and
// says so in an event.
func (e *Engine) appOf(id string) *config.File {
	if id == "" {
		return e.App
	}
	path := filepath.Join(e.Layout.Release(id), config.DefaultFile)
	data, err := os.ReadFile(path)
	if err == nil {
		var code *config.File
		if code, err = config.ParseCode(path, data); err == nil {
			return e.App.AtCommit(code)
		}
	}
	e.emit(Event{Kind: EventInfo, Step: "config", Line: fmt.Sprintf("release %s: using the deployer's hooks and services, as its own drover.yml cannot be used: %v", id, err)})
	return e.App
}

// forRelease returns a copy of e that acts with the app of release id
// (appOf).
func (e *Engine) forRelease(id string) *Engine {
	c := *e
	c.App = e.appOf(id)
	return &c
}

// Rollback switches back to release to, or when to is empty to the newest
// good release older than the active one, and restarts services.
func (e *Engine) Rollback(ctx context.Context, to string) (id string, err error) {
	err = e.exclusive(ctx, func() error {
		id, err = e.rollback(ctx, to)
		return err
	})
	return id, err
}

func (e *Engine) rollback(ctx context.Context, to string) (string, error) {
	st, err := e.state()
	if err != nil {
		return "", err
	}
	active, err := e.Layout.ActiveID()
	if err != nil {
		return "", err
	}
	if to == "" {
		to = e.rollbackTarget(st, active)
		if to == "" {
			return "", errors.New("rollback: no earlier good release on this host")
		}
	}
	rec := st.find(to)
	if rec == nil {
		return "", fmt.Errorf("rollback: release %s is not on this host", to)
	}
	if rec.Status != StatusGood && rec.Status != StatusActive && rec.Status != StatusPrepared && rec.Status != StatusRolledBack {
		return "", fmt.Errorf("rollback: release %s is %s, not a good release", to, rec.Status)
	}
	if to == active {
		return to, nil
	}
	if cur := st.find(active); cur != nil {
		cur.Status = StatusRolledBack
	}
	if err := st.save(); err != nil {
		return "", err
	}
	if err := e.forRelease(to).activate(ctx, to); err != nil {
		return "", err
	}
	return to, nil
}

// RollbackTarget returns the release a plain `rollback` would switch to.
func (e *Engine) RollbackTarget() (string, error) {
	st, err := e.state()
	if err != nil {
		return "", err
	}
	active, err := e.Layout.ActiveID()
	if err != nil {
		return "", err
	}
	return e.rollbackTarget(st, active), nil
}

// rollbackTarget is the newest good release this host recorded before the
// active one (by its own record, not by the IDs' timestamps).
func (e *Engine) rollbackTarget(st *state, active string) string {
	if active == "" {
		return ""
	}
	below := int64(math.MaxInt64)
	if cur := st.find(active); cur != nil {
		below = cur.Seq
	}
	best := ""
	var bestSeq int64
	for _, r := range st.releases {
		if r.Status == StatusGood && r.ID != active && r.Seq < below && r.Seq > bestSeq {
			best, bestSeq = r.ID, r.Seq
		}
	}
	if best == "" && active != "" {
		if cur := st.find(active); cur != nil && cur.Previous != "" {
			if p := st.find(cur.Previous); p != nil && p.Status == StatusGood {
				best = p.ID
			}
		}
	}
	return best
}

// Cleanup removes old and failed releases beyond keep. It never removes the
// active release, the rollback target, a pinned release, or one being
// prepared; failed ones go first. It returns the IDs it removed.
func (e *Engine) Cleanup(ctx context.Context, keep int) (removed []string, err error) {
	err = e.exclusive(ctx, func() error {
		removed, err = e.cleanup(ctx, keep)
		return err
	})
	return removed, err
}

func (e *Engine) cleanup(ctx context.Context, keep int) ([]string, error) {
	st, err := e.state()
	if err != nil {
		return nil, err
	}
	active, err := e.Layout.ActiveID()
	if err != nil {
		return nil, err
	}
	protected := map[string]bool{active: true, e.rollbackTarget(st, active): true}
	now := e.now()
	var remove []*Record
	kept := 0
	sorted := slices.Clone(st.releases)
	slices.SortFunc(sorted, newestFirst)
	for _, r := range sorted {
		switch {
		case protected[r.ID] || r.Pinned(now):
			if r.Status != StatusFailed {
				kept++
			}
		case r.Status == StatusUnknown:
			// Not in the record (lost state): only Remove, by name.
		case r.Status == StatusFailed || r.Status == StatusRolledBack:
			remove = append(remove, r)
		case r.Status == StatusPreparing || r.Status == StatusActivating:
			// Interrupted: `resume` may still want it. Count it as failed
			// once it is older than the newest kept release.
			if kept > 0 {
				remove = append(remove, r)
			}
		default:
			if kept < keep {
				kept++
			} else {
				remove = append(remove, r)
			}
		}
	}
	var removed []string
	for _, r := range remove {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		if err := os.RemoveAll(e.Layout.Release(r.ID)); err != nil {
			return removed, fmt.Errorf("cleanup %s: %w", r.ID, err)
		}
		os.RemoveAll(e.Layout.Release(r.ID) + ".tmp")
		st.releases = slices.DeleteFunc(st.releases, func(x *Record) bool { return x.ID == r.ID })
		removed = append(removed, r.ID)
	}
	// A checkout's leftover temp dir goes when its release is recorded
	// (drover made it); a directory no record knows is unknown (state())
	// and stays until named.
	if entries, err := os.ReadDir(e.Layout.Releases()); err == nil {
		for _, de := range entries {
			id, ok := strings.CutSuffix(de.Name(), ".tmp")
			if r := st.find(id); ok && r != nil && r.Status != StatusUnknown {
				if err := os.RemoveAll(e.Layout.Release(de.Name())); err == nil {
					removed = append(removed, de.Name())
				}
			}
		}
	}
	return removed, st.save()
}

// Remove deletes release id from this host, directory and record, whatever
// its status (an unknown one too) — except the active one. It is cleanup
// by name, for what cleanup alone keeps. It reports whether the host had
// the release.
func (e *Engine) Remove(ctx context.Context, id string) (found bool, err error) {
	if err := CheckID(id); err != nil {
		return false, err
	}
	err = e.exclusive(ctx, func() error {
		st, err := e.state()
		if err != nil {
			return err
		}
		active, err := e.Layout.ActiveID()
		if err != nil {
			return err
		}
		if id == active {
			return fmt.Errorf("remove %s: it is the active release (current points to it); activate or roll back to another first", id)
		}
		if st.find(id) == nil {
			return nil
		}
		found = true
		if err := os.RemoveAll(e.Layout.Release(id)); err != nil {
			return fmt.Errorf("remove %s: %w", id, err)
		}
		st.releases = slices.DeleteFunc(st.releases, func(x *Record) bool { return x.ID == id })
		return st.save()
	})
	return found, err
}

// Exec runs command with sh -c in the active release with the DROVER_*
// environment, streaming its output.
func (e *Engine) Exec(ctx context.Context, command string, stdin io.Reader, stdout, stderr io.Writer) error {
	active, err := e.Layout.ActiveID()
	if err != nil {
		return err
	}
	if active == "" {
		return errors.New("exec: no active release on this host (deploy first)")
	}
	st, err := e.state()
	if err != nil {
		return err
	}
	dir := e.Layout.Release(active)
	return runShell(ctx, dir, e.hookEnv(st.find(active), dir), command, stdin, stdout, stderr)
}

// ServiceAction controls one service (or all, when name is empty) on this
// host: start, stop, restart or status. port 0 means every port.
func (e *Engine) ServiceAction(ctx context.Context, action, name string, port int) ([]service.Process, error) {
	active, err := e.Layout.ActiveID()
	if err != nil {
		return nil, err
	}
	st, err := e.state()
	if err != nil {
		return nil, err
	}
	// The services are those of the release current runs.
	if active != "" {
		e = e.forRelease(active)
	}
	dir := e.Layout.Release(active)
	m := e.manager(st.find(active), dir)
	var out []service.Process
	found := false
	for _, s := range e.services() {
		if name != "" && s.Name != name {
			continue
		}
		found = true
		ports := s.Ports
		if port != 0 {
			if !slices.Contains(s.Ports, port) {
				return nil, fmt.Errorf("service %s has no port %d (ports: %v)", s.Name, port, s.Ports)
			}
			ports = []int{port}
		}
		if len(ports) == 0 {
			ports = []int{0}
		}
		if (action == "start" || action == "restart") && active == "" {
			return nil, errors.New("no active release on this host (deploy first)")
		}
		for _, p := range ports {
			var err error
			switch action {
			case "start":
				// Like systemctl start: a port that already runs is
				// left as it is (status shows it), so a start after a
				// partial recovery brings up the rest.
				if err = m.Start(ctx, s, dir, p); errors.Is(err, service.ErrAlreadyRunning) {
					err = nil
				}
			case "stop":
				err = m.Stop(ctx, s, p)
			case "restart":
				s2 := s
				if p != 0 {
					s2.Ports = []int{p}
				}
				err = m.Restart(ctx, s2, dir)
			case "status":
			default:
				return nil, fmt.Errorf("unknown service action %q; use start, stop, restart or status", action)
			}
			if err != nil {
				return nil, err
			}
		}
		for _, p := range m.Status(s) {
			if port == 0 || p.Port == port {
				out = append(out, p)
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("no service named %q (services: %v)", name, e.App.ServiceNames())
	}
	return out, nil
}
