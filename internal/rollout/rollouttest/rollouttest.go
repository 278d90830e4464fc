// Package rollouttest simulates hosts and a load balancer in memory, so
// strategies and load-balancer steps are tested without processes: a Host
// is a rollout.Target with a release history, a "serving" flag and failure
// injection; a Balancer is an lb.Balancer whose members follow the hosts.
// Both write what happens, in order, to a shared Journal.
package rollouttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
)

// Journal is the ordered record of what every simulated host and load
// balancer did: lines like "h1 activate R2", "lb drain h1".
type Journal struct {
	mu    sync.Mutex
	lines []string
}

// Add records one line.
func (j *Journal) Add(format string, args ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.lines = append(j.lines, fmt.Sprintf(format, args...))
}

// Lines returns every line so far.
func (j *Journal) Lines() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.lines)
}

// Matching returns the lines containing s.
func (j *Journal) Matching(s string) []string {
	var out []string
	for _, l := range j.Lines() {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// String is every line, one per line.
func (j *Journal) String() string { return strings.Join(j.Lines(), "\n") }

// Host is one simulated host. Set its failure fields before the rollout
// starts; read its state with Active and Serving.
type Host struct {
	cfg     *config.Host
	journal *Journal

	// FailPrepare makes Prepare fail with this message.
	FailPrepare string
	// FailActivate makes the health check after a switch fail: the host
	// switches back to what it ran before, as the engine does.
	FailActivate bool
	// FailHooks makes RunHooks fail.
	FailHooks bool
	// Unreachable makes every operation fail as if the host never answered.
	Unreachable bool
	// OnActivate, when set, is called as Activate starts (to look at the
	// load balancer at that moment).
	OnActivate func(h *Host)
	// BeforeReady, when set, is called in Activate after the fencing
	// check and before the host is ready to switch (a slow session or
	// before_activate hook).
	BeforeReady func(ctx context.Context, h *Host)
	// FailBeforeSwitch makes Activate fail before the switch with this
	// message, as a failed before_activate hook does: nothing changes.
	FailBeforeSwitch string

	mu       sync.Mutex
	active   string
	serving  bool
	records  []*release.Record
	seq      int64
	token    int64
	held     bool
	switched []time.Time
	canary   *release.Canary
}

// NewHost is a host named name with roles, writing to j. It runs no
// release yet.
func NewHost(j *Journal, name string, roles ...string) *Host {
	return &Host{cfg: &config.Host{Name: name, Roles: roles}, journal: j}
}

// FromConfig is a simulated host for each of hosts, writing to j.
func FromConfig(j *Journal, hosts []*config.Host) []*Host {
	out := make([]*Host, len(hosts))
	for i, h := range hosts {
		out[i] = &Host{cfg: h, journal: j}
	}
	return out
}

// Fleet is n hosts named h1..hn, the first with roles web and db, the
// others web, sharing one journal.
func Fleet(j *Journal, n int) []*Host {
	out := make([]*Host, n)
	for i := range n {
		roles := []string{"web"}
		if i == 0 {
			roles = append(roles, "db")
		}
		out[i] = NewHost(j, fmt.Sprintf("h%d", i+1), roles...)
	}
	return out
}

// Targets returns hosts as rollout targets.
func Targets(hosts []*Host) []rollout.Target {
	out := make([]rollout.Target, len(hosts))
	for i, h := range hosts {
		out[i] = h
	}
	return out
}

// Start makes the host run release id, healthy, as if deployed before.
func (h *Host) Start(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	h.records = append(h.records, &release.Record{ID: id, Seq: h.seq, Commit: "c-" + id, Status: release.StatusActive})
	h.active, h.serving = id, true
}

// Active is the release the host runs.
func (h *Host) Active() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.active
}

// Serving reports whether the host's services are up and healthy.
func (h *Host) Serving() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.serving
}

// SetServing sets the serving flag, as a host going down on its own.
func (h *Host) SetServing(ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.serving = ok
}

// Switches returns when the host's current release changed.
func (h *Host) Switches() []time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.switched)
}

// Name implements rollout.Target.
func (h *Host) Name() string { return h.cfg.Name }

// Host implements rollout.Target.
func (h *Host) Host() *config.Host { return h.cfg }

var errUnreachable = errors.New("connection refused (simulated)")

// Lock implements rollout.Target: one holder at a time.
func (h *Host) Lock(ctx context.Context, c rollout.Call, holder lock.Holder) (rollout.Lease, error) {
	if h.Unreachable {
		return nil, errUnreachable
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held {
		return nil, &lock.HeldError{Holder: lock.Holder{Owner: "someone@else", PID: 1}, Now: time.Now()}
	}
	h.held = true
	h.token++
	h.journal.Add("%s lock", h.Name())
	return &lease{h: h, token: h.token, lost: make(chan struct{})}, nil
}

type lease struct {
	h     *Host
	token int64
	lost  chan struct{}
	once  sync.Once
}

func (l *lease) Token() int64          { return l.token }
func (l *lease) Lost() <-chan struct{} { return l.lost }
func (l *lease) Release() error {
	l.once.Do(func() {
		l.h.mu.Lock()
		l.h.held = false
		l.h.mu.Unlock()
		l.h.journal.Add("%s unlock", l.h.Name())
	})
	return nil
}

// fenced refuses a mutating call without the current token.
func (h *Host) fenced(c rollout.Call) error {
	if h.Unreachable {
		return errUnreachable
	}
	if !h.held || c.Token != h.token {
		return &rollout.NodeError{Msg: fmt.Sprintf("%s: fencing token %d is not the lock's (%d)", h.Name(), c.Token, h.token)}
	}
	return nil
}

func (h *Host) record(id string) *release.Record {
	for _, r := range h.records {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// Prepare implements rollout.Target.
func (h *Host) Prepare(ctx context.Context, c rollout.Call, runOnce []string, keepFor time.Duration) (*release.Record, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.fenced(c); err != nil {
		return nil, err
	}
	for _, name := range runOnce {
		h.journal.Add("%s hook %s", h.Name(), name)
	}
	if h.FailPrepare != "" {
		h.journal.Add("%s prepare %s failed", h.Name(), c.Release)
		return nil, &rollout.NodeError{Msg: h.FailPrepare, Step: "build"}
	}
	r := h.record(c.Release)
	if r == nil {
		h.seq++
		r = &release.Record{ID: c.Release, Seq: h.seq, Commit: c.Commit, Spec: c.Spec, Status: release.StatusPrepared}
		h.records = append(h.records, r)
	}
	h.journal.Add("%s prepare %s", h.Name(), c.Release)
	cp := *r
	return &cp, nil
}

// RunHooks implements rollout.Target.
func (h *Host) RunHooks(ctx context.Context, c rollout.Call, stage string, hooks []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.fenced(c); err != nil {
		return err
	}
	for _, name := range hooks {
		h.journal.Add("%s hook %s", h.Name(), name)
	}
	if h.FailHooks {
		return &rollout.NodeError{Msg: "hook failed", Step: "hook " + strings.Join(hooks, ",")}
	}
	return nil
}

// Activate implements rollout.Target: the host switches, restarts and is
// health-checked; with FailActivate it switches back.
func (h *Host) Activate(ctx context.Context, c rollout.Call, keep int) (*release.Serving, error) {
	if f := h.OnActivate; f != nil {
		f(h)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.fenced(c); err != nil {
		return nil, err
	}
	r := h.record(c.Release)
	if r == nil {
		return nil, &rollout.NodeError{Msg: fmt.Sprintf("release %s is not prepared on %s", c.Release, h.Name()), Step: "switch"}
	}
	if f := h.BeforeReady; f != nil {
		h.mu.Unlock()
		f(ctx, h)
		h.mu.Lock()
	}
	if h.FailBeforeSwitch != "" {
		h.journal.Add("%s activate %s failed before the switch", h.Name(), c.Release)
		return nil, &rollout.NodeError{Msg: h.FailBeforeSwitch, Step: "hook:before"}
	}
	if c.Ready != nil {
		h.journal.Add("%s ready", h.Name())
		h.mu.Unlock()
		ok := c.Ready()
		h.mu.Lock()
		if !ok {
			h.journal.Add("%s not switched", h.Name())
			return nil, &rollout.NodeError{Msg: "not switched: the deployer called the switch off"}
		}
	}
	before := h.active
	h.switched = append(h.switched, time.Now())
	if h.FailActivate {
		h.journal.Add("%s activate %s failed, back to %s", h.Name(), c.Release, before)
		r.Status = release.StatusFailed
		sv := &release.Serving{Release: before, Healthy: before != ""}
		h.serving = before != ""
		return nil, &rollout.NodeError{Msg: "health check failed: HTTP 500", Step: "health", Serving: sv}
	}
	if prev := h.record(before); prev != nil {
		prev.Status = release.StatusGood
	}
	if c.Events != nil {
		c.Events(release.Event{Kind: release.EventStepEnd, Step: "switch", Time: time.Now()})
	}
	r.Status, r.Previous = release.StatusActive, before
	h.active, h.serving = c.Release, true
	h.journal.Add("%s activate %s", h.Name(), c.Release)
	return &release.Serving{Release: c.Release, Healthy: true}, nil
}

// Rollback implements rollout.Target.
func (h *Host) Rollback(ctx context.Context, c rollout.Call, to string) (*release.Serving, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.fenced(c); err != nil {
		return nil, err
	}
	r := h.record(to)
	if r == nil {
		return nil, &rollout.NodeError{Msg: fmt.Sprintf("no release %s on %s", to, h.Name())}
	}
	if cur := h.record(h.active); cur != nil {
		cur.Status = release.StatusRolledBack
	}
	r.Status = release.StatusActive
	h.active, h.serving = to, true
	h.switched = append(h.switched, time.Now())
	h.journal.Add("%s rollback %s", h.Name(), to)
	return &release.Serving{Release: to, Healthy: true}, nil
}

// Releases implements rollout.Target.
func (h *Host) Releases(ctx context.Context, c rollout.Call) (*rollout.HostReleases, error) {
	if h.Unreachable {
		return nil, errUnreachable
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := &rollout.HostReleases{Host: h.Name(), Active: h.active}
	for _, r := range h.records {
		cp := *r
		out.Releases = append(out.Releases, &cp)
		if r.Status == release.StatusGood && r.ID != h.active {
			out.Target = r.ID
		}
	}
	return out, nil
}

// Canary implements rollout.Target with the record in memory, as the
// node keeps it in canary.json.
func (h *Host) Canary(ctx context.Context, c rollout.Call, action string, rec *release.Canary) (*release.Canary, error) {
	if h.Unreachable {
		return nil, errUnreachable
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch action {
	case "status":
	case "pause":
		cp := *rec
		h.canary = &cp
		h.journal.Add("%s canary pause %s", h.Name(), rec.Release)
	case release.CanaryPromote, release.CanaryAbort:
		switch {
		case h.canary == nil:
			return nil, &rollout.NodeError{Msg: "no canary is paused here"}
		case c.Release != "" && h.canary.Release != c.Release:
			return nil, &rollout.NodeError{Msg: fmt.Sprintf("the paused canary is release %s, not %s", h.canary.Release, c.Release)}
		case h.canary.Decision == "":
			h.canary.Decision, h.canary.By, h.canary.At = action, c.By, time.Now()
			h.journal.Add("%s canary %s by %s", h.Name(), action, c.By)
		}
	case "clear":
		if h.canary != nil && h.canary.Release == c.Release {
			h.canary = nil
			h.journal.Add("%s canary clear", h.Name())
		}
	default:
		return nil, &rollout.NodeError{Msg: "bad canary action " + action}
	}
	if h.canary == nil {
		return nil, nil
	}
	cp := *h.canary
	return &cp, nil
}

// SetCanary replaces the host's canary record, as one left from an
// earlier rollout.
func (h *Host) SetCanary(c *release.Canary) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.canary = c
}
