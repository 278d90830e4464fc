// Package agent is the pull loop of `drover agent`: it joins the control
// server, long-polls for the release each configured app should run, runs
// the release engine to get there, and reports every step. The node needs
// no inbound port. When the server goes away the node keeps its running
// release and retries with backoff and jitter.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
)

// Agent keeps this node's apps at their desired releases.
type Agent struct {
	Config  *config.Agent
	Version string
	Logger  *slog.Logger
	// Wait is the long-poll period (default 30s).
	Wait time.Duration
	// MaxBackoff caps the wait between retries when the server is away.
	MaxBackoff time.Duration

	// ReportWait bounds how long Once retries an upgrade's final report
	// while the server is away (default 30s). The daemon keeps retrying in
	// the background without holding up the poll loop.
	ReportWait time.Duration

	// Heartbeat is how often an upgrade is reported while it runs, even
	// when no step changed (default 5s; the server fails a node that stops
	// reporting for its node timeout).
	Heartbeat time.Duration

	client     *api.Client
	background bool // final reports are sent in the background (Run)
	reports    sync.WaitGroup
	mu         sync.Mutex
	failed     map[string]work           // app/env → work that failed here; not retried until it changes
	reported   map[string]work           // app/env → the finished rollout task this process reported
	pending    map[string]*pendingReport // app/env → final report still being sent
	tasks      *tasksFile                // state_dir/rollouts.json, once read
}

// work names what a desired state asks: a release, and in a rollout its
// task.
type work struct{ release, rollout, task int64 }

func workOf(d api.DesiredApp) work {
	return work{release: d.Release.ID, rollout: d.Rollout, task: d.Task}
}

func (a *Agent) log() *slog.Logger {
	if a.Logger != nil {
		return a.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// Result says what one check did.
type Result struct {
	Upgraded int // upgrades that succeeded
	Failed   int // upgrades that failed
}

// Once checks the server once, runs any upgrade due, and returns (for cron).
func (a *Agent) Once(ctx context.Context) (Result, error) {
	if err := a.connect(ctx); err != nil {
		return Result{}, err
	}
	d, err := a.client.Desired(ctx, -1, 0)
	if err != nil {
		return Result{}, fmt.Errorf("ask the server for the desired state: %w", err)
	}
	return a.apply(ctx, d), nil
}

// Run follows the server until ctx ends: long-poll, upgrade, report.
func (a *Agent) Run(ctx context.Context) error {
	wait := a.Wait
	if wait == 0 {
		wait = 30 * time.Second
	}
	a.background = true
	// Reports still pending get one last attempt each when the agent stops.
	defer a.reports.Wait()
	failures := 0
	version := int64(-1)
	for ctx.Err() == nil {
		if a.client == nil || a.client.Token == "" {
			if err := a.connect(ctx); err != nil {
				if isPermanent(err) {
					return err
				}
				failures++
				a.log().Warn("cannot reach the server; the running releases stay as they are", "err", err, "retry_in", a.sleep(ctx, failures))
				continue
			}
		}
		d, err := a.client.Desired(ctx, version, wait)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if api.IsStatus(err, 401) {
				return fmt.Errorf("the server refused this node's token (revoked?): %w; to join again, remove %s and use a join token made with `drover server join-token create --app APP --replace %s`", err, a.tokenPath(), a.Config.Node)
			}
			failures++
			a.log().Warn("long-poll failed; retrying", "err", err, "retry_in", a.sleep(ctx, failures))
			continue
		}
		if failures > 0 {
			a.log().Info("server is back")
			failures = 0
			_ = a.hello(ctx)
		}
		version = d.Version
		a.apply(ctx, d)
	}
	return nil
}

func isPermanent(err error) bool {
	var jr *joinRefusedError
	return errors.As(err, &jr) || api.IsStatus(err, 401) || api.IsStatus(err, 403) || api.IsStatus(err, 400)
}

// joinRefusedError is a join the server refused for good (the node name is
// taken): retrying cannot help, the operator must act.
type joinRefusedError struct{ err error }

func (e *joinRefusedError) Error() string { return e.err.Error() }
func (e *joinRefusedError) Unwrap() error { return e.err }

// sleep waits a jittered exponential backoff and returns how long.
func (a *Agent) sleep(ctx context.Context, failures int) time.Duration {
	maxB := a.MaxBackoff
	if maxB == 0 {
		maxB = 30 * time.Second
	}
	d := 500 * time.Millisecond << min(failures-1, 10)
	d = min(d, maxB)
	d = d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	return d
}

func (a *Agent) tokenPath() string { return filepath.Join(a.Config.StateDir, "node.token") }

// connect makes the API client, joining with the join token the first time
// and keeping the node token in state_dir.
func (a *Agent) connect(ctx context.Context) error {
	cfg := a.Config
	token := cfg.Token
	if token == "" {
		if b, err := os.ReadFile(a.tokenPath()); err == nil {
			token = strings.TrimSpace(string(b))
		}
	}
	c, err := api.NewClient(cfg.Server, token, cfg.CAFile)
	if err != nil {
		return err
	}
	if token == "" {
		if cfg.JoinToken == "" {
			return fmt.Errorf("%s: no token and no join_token; create one with `drover server join-token create`", cfg.Path)
		}
		host, _ := os.Hostname()
		joined, err := c.Join(ctx, api.Join{JoinToken: cfg.JoinToken, Node: cfg.Node, Hostname: host, AgentVersion: a.Version, Apps: a.nodeApps()})
		if api.IsStatus(err, 409) {
			return &joinRefusedError{fmt.Errorf("join %s as %s: %w; another node already joined under this name: set `node:` in %s to a free name, or, to replace that node, ask an admin for `drover server join-token create --app APP --replace %s`",
				cfg.Server, cfg.Node, err, cfg.Path, cfg.Node)}
		}
		if err != nil {
			return fmt.Errorf("join %s as %s: %w", cfg.Server, cfg.Node, err)
		}
		if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(a.tokenPath(), []byte(joined.Token+"\n"), 0o600); err != nil {
			return fmt.Errorf("keep node token: %w", err)
		}
		c.Token = joined.Token
		a.log().Info("joined the server", "node", cfg.Node, "server", cfg.Server)
	}
	a.client = c
	return a.hello(ctx)
}

func (a *Agent) hello(ctx context.Context) error {
	host, _ := os.Hostname()
	return a.client.Hello(ctx, api.Hello{Hostname: host, AgentVersion: a.Version, Apps: a.nodeApps()})
}

// nodeApps describes the configured apps with what each runs now.
func (a *Agent) nodeApps() []api.NodeApp {
	var out []api.NodeApp
	for _, app := range a.Config.Apps {
		na := api.NodeApp{App: app.App, Env: app.Env, Roles: app.Roles}
		l := release.Layout{Root: app.DeployTo}
		if id, err := l.ActiveID(); err == nil {
			na.Release = id
			if i := strings.LastIndex(id, "-"); i > 0 {
				na.Commit = id[i+1:]
			}
		}
		out = append(out, na)
	}
	return out
}

// apply runs the upgrades the desired state asks for, one app at a time.
func (a *Agent) apply(ctx context.Context, d *api.Desired) Result {
	var res Result
	for _, want := range d.Apps {
		app := a.app(want.App, want.Env)
		if app == nil || want.Release == nil {
			continue
		}
		log := a.log().With("app", want.App, "env", want.Env, "release", want.Release.ID)
		if want.Rollout != 0 {
			log = log.With("rollout", want.Rollout, "task", want.Task, "action", want.Action)
		}
		ok, err := a.fence(want)
		if err != nil {
			res.Failed++
			log.Error("cannot check the desired state's fencing token; nothing done", "err", err)
			continue
		}
		if !ok {
			continue
		}
		key, w := want.App+"/"+want.Env, workOf(want)
		a.mu.Lock()
		skip := a.failed[key] == w || want.Rollout != 0 && a.reported[key] == w
		a.mu.Unlock()
		if skip {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if want.Rollout != 0 {
			// A task finished here is never done again, also after a
			// restart: its recorded outcome is reported again.
			done, err := a.finished(want)
			if err != nil {
				res.Failed++
				log.Error("cannot read the finished tasks; nothing done", "err", err)
				continue
			}
			if done != nil {
				if err := a.replay(ctx, app, want, done); err != nil {
					log.Warn("cannot report a finished task again; retrying at the next desired state", "err", err)
				}
				continue
			}
		}
		// An upgrade that has begun is finished even when the agent is
		// asked to stop (systemd's SIGTERM): stopping halfway would only
		// leave work for the next start. SIGKILL still ends it, safely.
		stopping := context.AfterFunc(ctx, func() {
			log.Warn("stop requested: finishing the upgrade in progress first")
		})
		ran, err := a.upgrade(ctx, app, want)
		stopping()
		switch {
		case err != nil:
			res.Failed++
			log.Error("upgrade failed", "err", err)
			a.mu.Lock()
			if a.failed == nil {
				a.failed = map[string]work{}
			}
			a.failed[key] = w
			a.mu.Unlock()
		case ran:
			res.Upgraded++
		}
	}
	return res
}

// markReported notes that this process reported the finished rollout task
// want: the server asking it again until it moves on is no news.
func (a *Agent) markReported(want api.DesiredApp) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.reported == nil {
		a.reported = map[string]work{}
	}
	a.reported[want.App+"/"+want.Env] = workOf(want)
}

func (a *Agent) app(name, env string) *config.AgentApp {
	for i := range a.Config.Apps {
		if a.Config.Apps[i].App == name && a.Config.Apps[i].Env == env {
			return &a.Config.Apps[i]
		}
	}
	return nil
}

// ErrNoConfig is returned when the commit being deployed has no drover.yml.
var ErrNoConfig = errors.New("the commit has no drover.yml")
