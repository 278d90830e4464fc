package control

// Nodes, releases and upgrades as the API reads them: the server's
// handlers call these, never the store.

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/store"
)

// Releases lists app/env's releases (either may be "": every one),
// newest first, at most limit (0: no limit).
func (c *Control) Releases(ctx context.Context, app, env string, limit int) ([]store.Release, error) {
	return c.st.ListReleases(ctx, store.ReleaseFilter{App: app, Env: env, Limit: limit})
}

// ReleaseByID returns one release, or an error wrapping store.ErrNotFound.
func (c *Control) ReleaseByID(ctx context.Context, id int64) (store.Release, error) {
	return c.st.GetRelease(ctx, id)
}

// ResolveRelease records commit as what release id's spec resolved to,
// unless a first resolver did already, and returns the commit every node
// must use.
func (c *Control) ResolveRelease(ctx context.Context, id int64, commit string) (string, error) {
	return c.st.ResolveRelease(ctx, id, commit)
}

// RegisterNode records node's apps (one registration per app/env) and,
// for each that names the engine release it runs, which server release
// that is.
func (c *Control) RegisterNode(ctx context.Context, node, hostname, version string, apps []api.NodeApp) error {
	for _, a := range apps {
		n, err := c.st.RegisterNode(ctx, store.Node{Name: node, Hostname: hostname, App: a.App, Env: a.Env, Roles: a.Roles, AgentVersion: version})
		if err != nil {
			return err
		}
		if a.Release == "" {
			continue
		}
		rels, err := c.st.ListReleases(ctx, store.ReleaseFilter{App: a.App, Env: a.Env, Limit: 200})
		if err != nil {
			return err
		}
		for _, rel := range rels {
			if rel.Commit != "" && release.NewID(rel.CreatedAt, rel.Commit) == a.Release {
				if err := c.st.SetNodeRelease(ctx, n.ID, rel.ID); err != nil {
					return err
				}
				break
			}
		}
	}
	return nil
}

// Registration returns what identifies node name's registration in
// app/env (ID, Name, App, Env; nothing else is set), or an error wrapping
// store.ErrNotFound. Every agent request on an app asks it: it is kept
// once read, since a registration is never deleted and its ID never
// changes (a node registering again updates its row).
func (c *Control) Registration(ctx context.Context, name, app, env string) (store.Node, error) {
	k := regKey{name, app, env}
	c.regsMu.Lock()
	id, ok := c.regs[k]
	c.regsMu.Unlock()
	if ok {
		return k.node(id), nil
	}
	n, err := c.st.FindNode(ctx, name, app, env)
	if err != nil {
		return store.Node{}, err
	}
	return c.keepReg(n), nil
}

// registrationByID is Registration of the registration with this ID.
func (c *Control) registrationByID(ctx context.Context, id int64) (store.Node, error) {
	c.regsMu.Lock()
	k, ok := c.regIDs[id]
	c.regsMu.Unlock()
	if ok {
		return k.node(id), nil
	}
	n, err := c.st.GetNode(ctx, id)
	if err != nil {
		return store.Node{}, err
	}
	return c.keepReg(n), nil
}

// keepReg keeps n's identity and returns it.
func (c *Control) keepReg(n store.Node) store.Node {
	k := regKey{n.Name, n.App, n.Env}
	c.regsMu.Lock()
	defer c.regsMu.Unlock()
	if c.regs == nil || len(c.regs) >= maxRegs {
		c.regs, c.regIDs = map[regKey]int64{}, map[int64]regKey{}
	}
	c.regs[k], c.regIDs[n.ID] = n.ID, k
	return k.node(n.ID)
}

// regKey names a registration: node, app, env.
type regKey struct{ name, app, env string }

func (k regKey) node(id int64) store.Node {
	return store.Node{ID: id, Name: k.name, App: k.app, Env: k.env}
}

// maxRegs bounds the registrations kept; past it, it starts again empty.
const maxRegs = 200_000

// Nodes lists registrations filtered by f.
func (c *Control) Nodes(ctx context.Context, f store.NodeFilter) ([]store.Node, error) {
	return c.st.ListNodes(ctx, f)
}

// Upgrade returns upgrade id with its steps and what identifies the
// registration it belongs to (Registration).
func (c *Control) Upgrade(ctx context.Context, id int64) (store.Upgrade, store.Node, error) {
	u, err := c.st.GetUpgrade(ctx, id)
	if err != nil {
		return u, store.Node{}, err
	}
	n, err := c.registrationByID(ctx, u.NodeID)
	return u, n, err
}

// Upgrades lists app/env's latest upgrades (at most limit), newest first,
// with their steps and logs.
func (c *Control) Upgrades(ctx context.Context, app, env string, limit int) ([]api.Upgrade, error) {
	ups, err := c.st.ListUpgrades(ctx, store.UpgradeFilter{App: app, Env: env, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := []api.Upgrade{}
	names := map[int64]store.Node{}
	for _, u := range ups {
		full, err := c.st.GetUpgrade(ctx, u.ID)
		if err != nil {
			return nil, err
		}
		n, ok := names[u.NodeID]
		if !ok {
			n, _ = c.st.GetNode(ctx, u.NodeID)
			names[u.NodeID] = n
		}
		au := api.Upgrade{ID: u.ID, Node: n.Name, ReleaseID: u.ReleaseID, App: n.App, Env: n.Env, Status: string(u.Status), Step: u.CurrentStep, Error: u.Error, StartedAt: u.StartedAt, EndedAt: u.EndedAt}
		for _, st := range full.Steps {
			as := api.Step{Name: st.Name, Status: st.Status, Started: st.StartedAt, Log: st.Log}
			if !st.EndedAt.IsZero() {
				as.Elapsed = st.EndedAt.Sub(st.StartedAt)
			}
			au.Steps = append(au.Steps, as)
		}
		out = append(out, au)
	}
	return out, nil
}

// NodeStatus is one line per node of app/env: what it runs and how its
// latest upgrade goes; a node not seen for staleAfter is Stale.
func (c *Control) NodeStatus(ctx context.Context, app, env string, staleAfter time.Duration) ([]api.NodeStatus, error) {
	nodes, err := c.st.ListNodes(ctx, store.NodeFilter{App: app, Env: env})
	if err != nil {
		return nil, err
	}
	out := []api.NodeStatus{}
	now := c.clock.Now()
	rels := map[int64]store.Release{}
	relOf := func(id int64) store.Release {
		if rel, ok := rels[id]; ok || id == 0 {
			return rel
		}
		rel, _ := c.st.GetRelease(ctx, id)
		rels[id] = rel
		return rel
	}
	for _, n := range nodes {
		ns := api.NodeStatus{Node: n.Name, Hostname: n.Hostname, App: n.App, Env: n.Env, Roles: n.Roles, LastSeen: n.LastSeen, Agent: n.AgentVersion,
			Stale: now.Sub(n.LastSeen) > staleAfter, Status: "-"}
		if n.CurrentRelease != 0 {
			rel := relOf(n.CurrentRelease)
			ns.Commit = rel.Commit
			if rel.Commit != "" {
				ns.Release = release.NewID(rel.CreatedAt, rel.Commit)
			}
		}
		ups, err := c.st.ListUpgrades(ctx, store.UpgradeFilter{NodeID: n.ID, Limit: 1})
		if err != nil {
			return nil, err
		}
		if len(ups) > 0 {
			u := ups[0]
			ns.Status, ns.Step, ns.Error, ns.Target, ns.Since = string(u.Status), u.CurrentStep, u.Error, u.ReleaseID, u.StartedAt
		}
		out = append(out, ns)
	}
	slices.SortFunc(out, func(a, b api.NodeStatus) int { return strings.Compare(a.App+a.Env+a.Node, b.App+b.Env+b.Node) })
	return out, nil
}
