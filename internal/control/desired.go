package control

// Desired state: what each node should do now, read by ten thousand
// long-polling agents at once. Every environment's answer is loaded once
// per change and shared by all its waiters; the server
// drops it (Invalidate) on every store change, which every replica sees
// through store.Watch.

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
)

// lookupTimeout bounds one shared lookup of an environment's desired state.
const lookupTimeout = 30 * time.Second

// Desired is the desired state of a node's registrations (one per app/env):
// inside a running (or paused) server rollout of the environment that has a
// task for the node, that task; else the environment's last completed
// release (CurrentRelease) with Action activate and Rollout 0, so a node
// joining mid-rollout, coming back, left out of a canary, or whose task
// failed never gets a half-rolled release.
//
// Version is a digest of this node's answer, not a counter: it changes
// exactly when the answer changes, so a long-poll woken by a change to its
// environment that asks nothing new of this node (another node's task in a
// rolling rollout, a release queued behind the running one) keeps waiting
// instead of answering ten thousand agents with what they have. Agents
// compare it for equality only. It is never negative, so never the -1 an
// agent starts with.
func (c *Control) Desired(ctx context.Context, nodes []store.Node) (*api.Desired, error) {
	d := &api.Desired{Apps: make([]api.DesiredApp, 0, len(nodes))}
	for _, n := range nodes {
		e, err := c.desired.get(ctx, c.st, n.App, n.Env)
		if err != nil {
			return nil, fmt.Errorf("desired state of %s/%s: %w", n.App, n.Env, err)
		}
		d.Apps = append(d.Apps, e.answer(n))
	}
	d.Version = answerVersion(d.Apps)
	return d, nil
}

// answerVersion digests everything an agent acts on in apps. Outside a
// rollout the fencing token is left out: a lease taken for a rollout that
// asks nothing of the node yet moves only the token, and answering every
// agent of the environment for that (each then polls again, all at once,
// while the rollout starts) is work for nothing. The agent learns the
// token with its next answer that is news; it fences what it acts on, and
// a lower token it has not seen refuses nothing it would act on.
func answerVersion(apps []api.DesiredApp) int64 {
	h := fnv.New64a()
	for _, a := range apps {
		var id int64
		var commit string
		if a.Release != nil {
			id, commit = a.Release.ID, a.Release.Commit
		}
		token := a.Token
		if a.Rollout == 0 {
			token = 0
		}
		fmt.Fprintf(h, "%s\x00%s\x00%d\x00%s\x00%s\x00%d\x00%d\x00%d\x00%s\x00%q\x00%s\x00%t\n",
			a.App, a.Env, id, commit, a.Action, token, a.Rollout, a.Task, a.Stage, a.RunOnce, a.To, a.Hotfix)
	}
	return int64(h.Sum64() >> 1)
}

// Invalidate drops what Desired cached of app/env (app "": everything)
// unless it shows version or later already (version 0: whatever it shows);
// the server calls it on every store change, before waking its long-polls.
func (c *Control) Invalidate(app, env string, version int64) {
	c.desired.invalidate(app, env, version)
}

// desiredCache holds each environment's loaded desired state; the zero
// value is ready to use.
type desiredCache struct {
	mu      sync.Mutex
	entries map[envKey]*envDesired
	// seen is the newest version each environment was invalidated at,
	// gen counts invalidations of everything: advance never installs an
	// entry older than a change already announced.
	seen map[envKey]int64
	gen  int64
	// advanced is closed when advance installs an entry: waiters of a
	// load take the installed entry instead of waiting on.
	advanced chan struct{}
}

// envDesired is one environment's desired state as loaded; done is closed
// when the load that fills it has finished.
type envDesired struct {
	done    chan struct{}
	gen     int64 // desiredCache.gen when it was made
	err     error
	version int64        // the environment's (0: it does not exist yet)
	current *api.Release // the environment's last completed release
	token   int64        // the environment's last fencing token

	// The running or paused server rollout, if any, and its tasks by node
	// name.
	ro    rolloutAnswer
	tasks map[string]store.RolloutNode
}

// rolloutAnswer is what every task of a server rollout tells its node
// besides the task itself.
type rolloutAnswer struct {
	id      int64
	release *api.Release
	hotfix  bool
}

// answerOf is rollout ro's rolloutAnswer; rel is its release.
func answerOf(ro store.Rollout, rel store.Release) rolloutAnswer {
	a := ReleaseToAPI(rel)
	return rolloutAnswer{id: ro.ID, release: &a, hotfix: planHotfix(ro.Plan)}
}

// answer is node n's desired state in this environment.
func (e *envDesired) answer(n store.Node) api.DesiredApp {
	// A failed task takes the node out of the rollout (it reported the
	// failure, or the runner gave up on it): it converges to the last
	// completed release like a node outside the rollout, so an agent that
	// comes back late never does the task outside the rollout's steps.
	if t, ok := e.tasks[n.Name]; ok && (t.NodeID == 0 || t.NodeID == n.ID) && t.State != store.NodeFailed {
		return api.DesiredApp{App: n.App, Env: n.Env, Release: e.ro.release, Action: t.Action, Token: t.Token,
			Rollout: e.ro.id, Task: t.Task, Stage: t.Stage, RunOnce: t.RunOnce, To: t.To, Hotfix: e.ro.hotfix}
	}
	return api.DesiredApp{App: n.App, Env: n.Env, Release: e.current, Action: api.ActionActivate, Token: e.token}
}

// get returns app/env's entry, loading it once for every waiter. The load
// runs on a context of its own: a waiter that gives up (its agent hung up)
// stops waiting for itself only, never fails the others.
func (c *desiredCache) get(ctx context.Context, st store.Store, app, env string) (*envDesired, error) {
	k := envKey{app, env}
	var e *envDesired
	for e == nil {
		c.mu.Lock()
		if c.entries == nil {
			c.entries = map[envKey]*envDesired{}
		}
		if c.advanced == nil {
			c.advanced = make(chan struct{})
		}
		e = c.entries[k]
		if e == nil {
			e = &envDesired{done: make(chan struct{}), gen: c.gen}
			c.entries[k] = e
			go e.load(context.WithoutCancel(ctx), st, app, env)
		}
		advanced := c.advanced
		c.mu.Unlock()
		select {
		case <-e.done:
		case <-advanced:
			e = nil // look again: the entry may be there, loaded
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if e.err != nil {
		c.drop(k, e) // the next waiter tries again
	}
	return e, e.err
}

// load reads what app/env asks of its nodes. A change made meanwhile is
// read again when its Change arrives (Invalidate), so a load never hides
// one. Six queries per environment and change, whatever the number of
// waiters.
func (e *envDesired) load(ctx context.Context, st store.Store, app, env string) {
	defer close(e.done)
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	e.err = e.fill(ctx, st, app, env)
}

func (e *envDesired) fill(ctx context.Context, st store.Store, app, env string) error {
	var err error
	if e.version, err = st.Version(ctx, app, env); err != nil || e.version == 0 {
		return err // version 0: no environment yet, nothing to run
	}
	// The running rollout before the current release: the runner records
	// a rollout's success as the current release first and ends the
	// rollout second, so a node sees the rollout's task or the new current
	// release, never the previous release in between.
	ros, err := st.ListRollouts(ctx, store.RolloutFilter{App: app, Env: env, States: []store.RolloutState{store.RolloutRunning, store.RolloutPaused}})
	if err != nil {
		return err
	}
	// One rollout runs per environment; should two show (a takeover in
	// flight), the newest wins.
	if i := slices.IndexFunc(ros, func(r store.Rollout) bool { return r.Kind == store.RolloutServer }); i >= 0 {
		if err := e.fillRollout(ctx, st, ros[i]); err != nil {
			return err
		}
	}
	en, err := st.GetEnvironment(ctx, app, env)
	if err != nil {
		return err
	}
	if en.CurrentRelease != 0 {
		if e.current, err = apiRelease(ctx, st, en.CurrentRelease); err != nil {
			return err
		}
	}
	qs, err := st.QueueStatus(ctx, app, env)
	if err != nil {
		return err
	}
	e.token = qs.LastToken
	return nil
}

// fillRollout records rollout ro's tasks.
func (e *envDesired) fillRollout(ctx context.Context, st store.Store, ro store.Rollout) error {
	nodes, err := st.ListRolloutNodes(ctx, ro.ID)
	if err != nil || len(nodes) == 0 {
		return err
	}
	rel, err := st.GetRelease(ctx, ro.ReleaseID)
	if err != nil {
		return err
	}
	e.ro = answerOf(ro, rel)
	e.tasks = make(map[string]store.RolloutNode, len(nodes))
	for _, n := range nodes {
		e.tasks[n.Node] = n
	}
	return nil
}

// planHotfix reads the "hotfix" key of a rollout's plan (control's own
// JSON, see plan.go); an unreadable plan is no hotfix.
func planHotfix(plan []byte) bool {
	var p struct {
		Hotfix bool `json:"hotfix"`
	}
	_ = json.Unmarshal(plan, &p)
	return p.Hotfix
}

func apiRelease(ctx context.Context, st store.Store, id int64) (*api.Release, error) {
	r, err := st.GetRelease(ctx, id)
	if err != nil {
		return nil, err
	}
	a := ReleaseToAPI(r)
	return &a, nil
}

// ReleaseToAPI is a stored release on the wire.
func ReleaseToAPI(r store.Release) api.Release {
	return api.Release{ID: r.ID, App: r.App, Env: r.Env, Spec: r.Spec, Commit: r.Commit, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt, Note: r.Note}
}

// drop forgets e if it is still app/env's entry (not a newer one).
func (c *desiredCache) drop(k envKey, e *envDesired) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries[k] == e {
		delete(c.entries, k)
	}
}

func (c *desiredCache) invalidate(app, env string, version int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if app == "" {
		c.entries, c.seen = nil, nil
		c.gen++
		return
	}
	k := envKey{app, env}
	if c.seen == nil {
		c.seen = map[envKey]int64{}
	}
	c.seen[k] = max(c.seen[k], version)
	if e := c.entries[k]; e != nil && version > 0 && e.loaded() && e.version >= version {
		return // advance put it there already
	}
	delete(c.entries, k)
}

// loaded says whether e's load finished without an error.
func (e *envDesired) loaded() bool {
	select {
	case <-e.done:
		return e.err == nil
	default:
		return false
	}
}

// peek returns app/env's loaded entry, or nil.
func (c *desiredCache) peek(app, env string) *envDesired {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[envKey{app, env}]; e != nil && e.loaded() {
		return e
	}
	return nil
}

// advance is the write-through of a task hand-out on the replica that made
// it: base, the entry before the hand-out, plus rows (the tasks written
// for rollout ro under fencing token token) is the environment's desired state at
// version v, the version the hand-out's bump returned, when base shows v-1
// (no other change came between). Then it becomes the entry, and the
// fleet's long-polls are answered without reading 10,000 rows back.
// Otherwise nothing is done: the next Desired loads the entry.
func (c *desiredCache) advance(app, env string, base *envDesired, v int64, ro rolloutAnswer, token int64, rows []store.RolloutNode) {
	if base == nil || base.version != v-1 || base.ro.id != 0 && base.ro.id != ro.id {
		return
	}
	e := &envDesired{done: make(chan struct{}), gen: base.gen, version: v, current: base.current, token: max(base.token, token),
		ro: ro, tasks: make(map[string]store.RolloutNode, max(len(base.tasks), len(rows)))}
	for name, t := range base.tasks {
		e.tasks[name] = t
	}
	for _, r := range rows {
		if r.State == "" {
			r.State = store.NodeAssigned
		}
		r.Step, r.Error, r.Serving, r.UpgradeID = "", "", "", 0
		e.tasks[r.Node] = r
	}
	close(e.done)
	k := envKey{app, env}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch old := c.entries[k]; {
	case c.gen != base.gen, c.seen[k] > v:
		return // a later change was announced: the entry must be loaded
	case old != nil && old.loaded() && old.version >= v:
		return // a load at v or later was quicker
	}
	if c.entries == nil {
		c.entries = map[envKey]*envDesired{}
	}
	c.entries[k] = e
	if c.advanced != nil {
		close(c.advanced)
		c.advanced = nil
	}
}
