package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/source"
	"github.com/drover/drover/internal/store"
)

func toAPI(r store.Release) api.Release { return control.ReleaseToAPI(r) }

func (s *Server) audit(ctx context.Context, p principal, action string, detail any) {
	b, _ := json.Marshal(detail)
	actor := fmt.Sprintf("%s:%d", p.kind, p.token)
	if p.node != "" {
		actor += ":" + p.node
	}
	if _, err := s.store.AppendAudit(ctx, store.AuditEvent{Actor: actor, Action: action, Detail: b}); err != nil {
		s.log.Warn("audit", "err", err)
	}
}

func isHexCommit(c string) bool {
	return len(c) >= 40 && len(c) <= 64 && strings.Trim(strings.ToLower(c), "0123456789abcdef") == ""
}

func (s *Server) createRelease(w http.ResponseWriter, r *http.Request) {
	var req api.CreateRelease
	if !decode(w, r, &req) {
		return
	}
	for _, err := range []error{validName("app", req.App), validName("env", req.Env)} {
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad request", err.Error())
			return
		}
	}
	spec, err := source.ParseSpec(req.Spec)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	if req.Commit != "" && !isHexCommit(req.Commit) {
		writeError(w, http.StatusBadRequest, "bad request", "commit must be a full hex SHA")
		return
	}
	if len(req.Note) > 4096 {
		writeError(w, http.StatusBadRequest, "bad request", "note longer than 4096 bytes")
		return
	}
	if len(req.Config) > maxConfig {
		writeError(w, http.StatusBadRequest, "bad request", fmt.Sprintf("config (drover.yml) longer than %d bytes", maxConfig))
		return
	}
	p := from(r)
	rel, ro, err := s.control.CreateRelease(r.Context(), control.NewRelease{App: req.App, Env: req.Env, Spec: spec.String(), Commit: strings.ToLower(req.Commit), Note: req.Note,
		By: p.String(), Config: []byte(req.Config), Strategy: req.Strategy, NoWait: req.NoWait, Supersede: req.Supersede, Hotfix: req.Hotfix, Skip: req.Skip})
	if errors.Is(err, control.ErrBusy) {
		writeError(w, http.StatusConflict, "conflict", s.busy(r.Context(), req.App, req.Env, err))
		return
	}
	if err != nil {
		s.storeError(w, err)
		return
	}
	s.audit(r.Context(), p, "release.create", map[string]any{"release": rel, "rollout": ro})
	writeJSON(w, http.StatusCreated, api.ReleaseCreated{Release: toAPI(rel), Rollout: ro})
}

// maxConfig is the largest drover.yml a release may carry.
const maxConfig = 256 << 10

// busy says who holds app/env's deploy lease and who waits, for a
// --no-wait release refused with err.
func (s *Server) busy(ctx context.Context, app, env string, err error) string {
	msg := fmt.Sprintf("%s/%s: %v", app, env, err)
	st, serr := s.control.Status(ctx, app, env)
	if serr != nil {
		return msg + "; drop --no-wait to queue behind it"
	}
	if st.Holder != nil {
		msg += fmt.Sprintf("; held by %s (token %d) since %s", st.Holder.Holder, st.Holder.Token, st.Holder.Since.UTC().Format(time.RFC3339))
	}
	if len(st.Queue) > 0 {
		var q []string
		for _, t := range st.Queue {
			q = append(q, fmt.Sprintf("%d. %s", t.Position, t.Holder))
		}
		msg += "; queued: " + strings.Join(q, ", ")
	}
	return msg + "; drop --no-wait to queue behind it"
}

func (s *Server) listReleases(w http.ResponseWriter, r *http.Request) {
	rels, err := s.control.Releases(r.Context(), r.URL.Query().Get("app"), r.URL.Query().Get("env"), 100)
	if err != nil {
		s.storeError(w, err)
		return
	}
	out := make([]api.Release, len(rels))
	for i, rel := range rels {
		out[i] = toAPI(rel)
	}
	writeJSON(w, http.StatusOK, out)
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "bad request", "id must be a positive number")
		return 0, false
	}
	return id, true
}

// nodeIn returns the agent's registration in app/env (what identifies it:
// control.Registration), or writes 403.
func (s *Server) nodeIn(w http.ResponseWriter, r *http.Request, app, env string) (store.Node, bool) {
	p := from(r)
	if msg := outOfScope(p.node, p.scope, app, env); msg != "" {
		writeError(w, http.StatusForbidden, "forbidden", msg)
		return store.Node{}, false
	}
	n, err := s.control.Registration(r.Context(), p.node, app, env)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("node %s is not registered for %s/%s", p.node, app, env))
		} else {
			s.storeError(w, err)
		}
		return n, false
	}
	return n, true
}

func (s *Server) resolveRelease(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req api.ResolveRelease
	if !decode(w, r, &req) {
		return
	}
	if !isHexCommit(req.Commit) {
		writeError(w, http.StatusBadRequest, "bad request", "commit must be a full hex SHA")
		return
	}
	rel, err := s.control.ReleaseByID(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if from(r).kind == store.TokenAgent {
		if _, ok := s.nodeIn(w, r, rel.App, rel.Env); !ok {
			return
		}
	}
	commit, err := s.control.ResolveRelease(r.Context(), id, strings.ToLower(req.Commit))
	if err != nil {
		s.storeError(w, err)
		return
	}
	rel.Commit = commit
	writeJSON(w, http.StatusOK, toAPI(rel))
}

// maxScope is the most apps or environments one join token may name.
const maxScope = 100

func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) {
	var req api.CreateJoinToken
	if !decode(w, r, &req) {
		return
	}
	ttl := time.Hour
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > 30*24*time.Hour {
			writeError(w, http.StatusBadRequest, "bad request", "ttl must be a duration between 1s and 720h")
			return
		}
		ttl = d
	}
	if err := checkScope(req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	secret := NewSecret(store.TokenJoin)
	t, err := s.store.CreateToken(r.Context(), store.Token{Kind: store.TokenJoin, Hash: HashToken(secret), Note: req.Note, ExpiresAt: s.now().Add(ttl),
		Apps: req.Apps, Envs: req.Envs, Replace: req.Replace})
	if err != nil {
		s.storeError(w, err)
		return
	}
	s.audit(r.Context(), from(r), "token.join.create", map[string]any{"id": t.ID, "expires_at": t.ExpiresAt, "apps": t.Apps, "envs": t.Envs, "any_app": req.AnyApp, "replace": t.Replace})
	writeJSON(w, http.StatusCreated, api.JoinToken{Token: secret, ID: t.ID, ExpiresAt: t.ExpiresAt, Apps: t.Apps, Envs: t.Envs, Replace: t.Replace})
}

// checkScope validates a join token's scope: apps named, or any app asked
// for explicitly, never both and never neither.
func checkScope(req api.CreateJoinToken) error {
	switch {
	case len(req.Apps) == 0 && !req.AnyApp:
		return errors.New(`a join token needs a scope: name the apps its node may run (join-token create --app shop, repeatable; "apps" in the API), or allow every app with --any-app ("any_app": true)`)
	case len(req.Apps) > 0 && req.AnyApp:
		return errors.New("--app and --any-app contradict each other: give one")
	case len(req.Apps) > maxScope || len(req.Envs) > maxScope:
		return fmt.Errorf("a join token names at most %d apps and %d environments", maxScope, maxScope)
	}
	for _, a := range req.Apps {
		if err := validName("app", a); err != nil {
			return err
		}
	}
	for _, e := range req.Envs {
		if err := validName("env", e); err != nil {
			return err
		}
	}
	if req.Replace != "" {
		if err := validName("node to replace", req.Replace); err != nil {
			return err
		}
	}
	return nil
}

// outOfScope returns why an agent token scoped to scope may not act on
// app/env and how to allow it, or "" when it may.
func outOfScope(node string, scope store.Token, app, env string) string {
	if scope.Allows(app, env) {
		return ""
	}
	return fmt.Sprintf("node %s's token %s; to add it, have an admin create a join token with --app %s --env %s --replace %s and join the node with it",
		node, scopeText(scope, app, env), app, env, node)
}

// scopeText says what scope allows and that app/env is not in it.
func scopeText(scope store.Token, app, env string) string {
	apps, envs := "any app", "any environment"
	if len(scope.Apps) > 0 {
		apps = "apps " + strings.Join(scope.Apps, ", ")
	}
	if len(scope.Envs) > 0 {
		envs = "environments " + strings.Join(scope.Envs, ", ")
	}
	return fmt.Sprintf("allows %s in %s, not %s/%s", apps, envs, app, env)
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	toks, err := s.store.ListTokens(r.Context(), store.TokenKind(r.URL.Query().Get("kind")))
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toks)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	if err := s.revoke(r.Context(), id); err != nil {
		s.storeError(w, err)
		return
	}
	s.audit(r.Context(), from(r), "token.revoke", map[string]any{"id": id})
	writeJSON(w, http.StatusOK, map[string]any{"revoked": id})
}

func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	if !s.joinAllowed(w, r) {
		return
	}
	var req api.Join
	if !decode(w, r, &req) {
		return
	}
	if err := validName("node", req.Node); err != nil {
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	if err := s.checkApps(req.Apps); err != nil {
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	if req.JoinToken == "" {
		writeError(w, http.StatusUnauthorized, "unauthorized", "no join token")
		return
	}
	ctx := r.Context()
	hash := HashToken(req.JoinToken)
	// Look before consuming: a join refused for its scope or its name
	// leaves the token usable for the right node.
	jt, err := s.store.TokenByHash(ctx, hash)
	if err == nil && jt.Kind != store.TokenJoin {
		err = store.ErrNotFound
	}
	if err == nil {
		err = jt.Check(s.now())
	}
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusUnauthorized, "unauthorized", "unknown join token")
			return
		}
		s.storeError(w, err)
		return
	}
	for _, a := range req.Apps {
		if !jt.Allows(a.App, a.Env) {
			writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("the join token %s; ask an admin for one made with --app %s --env %s", scopeText(jt, a.App, a.Env), a.App, a.Env))
			return
		}
	}
	if jt.Replace != "" && jt.Replace != req.Node {
		writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("this join token was made to replace node %s; join as %s, or ask an admin for a token without --replace", jt.Replace, jt.Replace))
		return
	}
	live, err := s.liveAgentTokens(ctx, req.Node)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if len(live) > 0 && jt.Replace == "" {
		writeError(w, http.StatusConflict, "conflict", nodeTaken(req.Node, live[0].ID))
		return
	}
	if _, err := s.store.ConsumeJoinToken(ctx, hash, time.Time{}); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusUnauthorized, "unauthorized", "unknown join token")
			return
		}
		s.storeError(w, err)
		return
	}
	secret := NewSecret(store.TokenAgent)
	t, err := s.store.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: req.Node, Hash: HashToken(secret), Note: "joined from " + req.Hostname, Apps: jt.Apps, Envs: jt.Envs})
	if err != nil {
		s.storeError(w, err)
		return
	}
	if jt.Replace != "" {
		for _, old := range live {
			if err := s.revoke(ctx, old.ID); err != nil {
				s.storeError(w, err)
				return
			}
		}
	} else if taken, err := s.joinedMeanwhile(ctx, req.Node, t.ID); err != nil || taken != 0 {
		// Two joins raced for a new name: the older token keeps it.
		_ = s.revoke(ctx, t.ID)
		if err != nil {
			s.storeError(w, err)
			return
		}
		writeError(w, http.StatusConflict, "conflict", nodeTaken(req.Node, taken))
		return
	}
	if err := s.register(ctx, req.Node, req.Hostname, req.AgentVersion, req.Apps); err != nil {
		s.storeError(w, err)
		return
	}
	replaced := []int64{}
	for _, old := range live {
		replaced = append(replaced, old.ID)
	}
	s.audit(ctx, principal{kind: store.TokenAgent, node: req.Node, token: t.ID}, "node.join", map[string]any{"hostname": req.Hostname, "apps": req.Apps, "join_token": jt.ID, "replaced_tokens": replaced})
	writeJSON(w, http.StatusCreated, api.Joined{Node: req.Node, Token: secret})
}

// nodeTaken says why a join may not take a node name and how to replace it.
func nodeTaken(node string, token int64) string {
	return fmt.Sprintf("node %s is already joined (agent token %d is live); a join token cannot take over a live node. To replace that machine, have an admin run `drover server join-token create --replace %s --app ...` and join with that token; to free the name instead, revoke token %d (POST /api/v1/tokens/%d/revoke)",
		node, token, node, token, token)
}

// liveAgentTokens returns the agent tokens of node that still work.
func (s *Server) liveAgentTokens(ctx context.Context, node string) ([]store.Token, error) {
	toks, err := s.store.AgentTokens(ctx, node)
	if err != nil {
		return nil, err
	}
	var live []store.Token
	now := s.now()
	for _, t := range toks {
		if t.Check(now) == nil {
			live = append(live, t)
		}
	}
	return live, nil
}

// joinedMeanwhile returns the ID of a live agent token of node older than
// ours (a concurrent join that won), or 0.
func (s *Server) joinedMeanwhile(ctx context.Context, node string, ours int64) (int64, error) {
	live, err := s.liveAgentTokens(ctx, node)
	if err != nil {
		return 0, err
	}
	for _, t := range live {
		if t.ID < ours {
			return t.ID, nil
		}
	}
	return 0, nil
}

func (s *Server) checkApps(apps []api.NodeApp) error {
	if len(apps) == 0 || len(apps) > 100 {
		return errors.New("an agent runs 1 to 100 apps")
	}
	for _, a := range apps {
		if err := validName("app", a.App); err != nil {
			return err
		}
		if err := validName("env", a.Env); err != nil {
			return err
		}
		for _, role := range a.Roles {
			if err := validName("role", role); err != nil {
				return err
			}
		}
	}
	return nil
}

// register records the node's apps, and which server release each runs.
func (s *Server) register(ctx context.Context, node, hostname, version string, apps []api.NodeApp) error {
	return s.control.RegisterNode(ctx, node, hostname, version, apps)
}

func (s *Server) hello(w http.ResponseWriter, r *http.Request) {
	var req api.Hello
	if !decode(w, r, &req) {
		return
	}
	if err := s.checkApps(req.Apps); err != nil {
		writeError(w, http.StatusBadRequest, "bad request", err.Error())
		return
	}
	p := from(r)
	for _, a := range req.Apps {
		if msg := outOfScope(p.node, p.scope, a.App, a.Env); msg != "" {
			writeError(w, http.StatusForbidden, "forbidden", msg)
			return
		}
	}
	if err := s.register(r.Context(), p.node, req.Hostname, req.AgentVersion, req.Apps); err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// desired answers an agent's long-poll: at once when the version it knows
// is stale, else when a release for one of its apps is created (on any
// replica) or the wait ends.
func (s *Server) desired(w http.ResponseWriter, r *http.Request) {
	p := from(r)
	q := r.URL.Query()
	known, _ := strconv.ParseInt(q.Get("version"), 10, 64)
	wait := time.Duration(0)
	if ws := q.Get("wait"); ws != "" {
		d, err := time.ParseDuration(ws)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, "bad request", "wait must be a duration like 30s")
			return
		}
		wait = min(d, s.MaxWait)
	}
	var nodes []store.Node
	var err error
	offStack(func() { nodes, err = s.control.Nodes(r.Context(), store.NodeFilter{Name: p.node}) })
	if err != nil {
		s.storeError(w, err)
		return
	}
	// Registrations outside the token's scope (made by a token this node
	// replaced) are not this token's to read.
	nodes = slices.DeleteFunc(nodes, func(n store.Node) bool { return !p.allows(n.App, n.Env) })
	if len(nodes) == 0 {
		writeError(w, http.StatusForbidden, "forbidden", "node "+p.node+" has no apps registered within its token's scope; the agent says hello first")
		return
	}
	keys := make([]string, len(nodes))
	for i, n := range nodes {
		keys[i] = n.App + "/" + n.Env
	}
	// Subscribe before the first look, so a change between the look and
	// the wait still wakes it.
	ch := make(wakeChan, 1)
	since := s.hub.add(ch, keys)
	defer s.hub.remove(ch, keys)
	deadline := time.Now().Add(wait)
	var timer *time.Timer
	if wait > 0 {
		timer = time.NewTimer(wait)
		defer timer.Stop()
	}
	for {
		var d *api.Desired
		offStack(func() { d, err = s.desiredOf(r.Context(), nodes) })
		if err != nil {
			if r.Context().Err() != nil {
				return // the agent hung up
			}
			s.storeError(w, err)
			return
		}
		if d.Version != known || wait == 0 {
			s.touch(nodes)
			writeJSON(w, http.StatusOK, d)
			return
		}
		// Not ready: hand the connection to the parking lot, which waits
		// without this goroutine. Where it cannot (HTTP/2, no Listener,
		// shutting down), this goroutine waits.
		if s.lot.park(w, r, ch, since, parked{nodes: nodes, keys: keys, known: known, deadline: deadline}) {
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			s.touch(nodes)
			writeJSON(w, http.StatusOK, d)
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (s *Server) touch(nodes []store.Node) {
	s.seen.note(s.now(), nodes)
}

func (s *Server) desiredOf(ctx context.Context, nodes []store.Node) (*api.Desired, error) {
	return s.control.Desired(ctx, nodes)
}

func (s *Server) startUpgrade(w http.ResponseWriter, r *http.Request) {
	var req api.StartUpgrade
	if !decode(w, r, &req) {
		return
	}
	n, ok := s.nodeIn(w, r, req.App, req.Env)
	if !ok {
		return
	}
	u, rel, err := s.control.StartUpgrade(r.Context(), n, req)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, api.Upgrade{ID: u.ID, Node: n.Name, ReleaseID: rel.ID, App: rel.App, Env: rel.Env, Status: string(u.Status), StartedAt: u.StartedAt})
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) {
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req api.Report
	if !decode(w, r, &req) {
		return
	}
	ctx := r.Context()
	u, n, err := s.control.Upgrade(ctx, id)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if p := from(r); n.Name != p.node {
		writeError(w, http.StatusForbidden, "forbidden", "this upgrade belongs to another node")
		return
	} else if msg := outOfScope(p.node, p.scope, n.App, n.Env); msg != "" {
		writeError(w, http.StatusForbidden, "forbidden", msg)
		return
	}
	if err := s.control.Report(ctx, n, u, req); err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (s *Server) listUpgrades(w http.ResponseWriter, r *http.Request) {
	ups, err := s.control.Upgrades(r.Context(), r.URL.Query().Get("app"), r.URL.Query().Get("env"), 50)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ups)
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	nodes, err := s.control.Nodes(r.Context(), store.NodeFilter{App: r.URL.Query().Get("app"), Env: r.URL.Query().Get("env")})
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, nodes)
}

// status is one line per node: what it runs and how its latest upgrade goes.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	out, err := s.control.NodeStatus(r.Context(), r.URL.Query().Get("app"), r.URL.Query().Get("env"), s.StaleAfter)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// queue answers an environment's deploy lock and queue (read-only): who
// holds the lease, since when, until when, and the waiting deploys in order.
func (s *Server) queue(w http.ResponseWriter, r *http.Request) {
	app, env := r.URL.Query().Get("app"), r.URL.Query().Get("env")
	if err := errors.Join(validName("app", app), validName("env", env)); err != nil {
		writeError(w, http.StatusBadRequest, "bad request", "GET /api/v1/queue?app=APP&env=ENV: "+err.Error())
		return
	}
	st, err := s.control.Status(r.Context(), app, env)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}
