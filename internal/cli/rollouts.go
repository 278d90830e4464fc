package cli

// Server-run rollouts from the command line: release create starts one,
// rollouts lists them, rollout show/cancel and promote/abort --rollout act
// on one, status shows the lock, the queue and the running one.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/source"
)

// ReleaseCreateOptions are the inputs of `drover release create`.
type ReleaseCreateOptions struct {
	ClientOptions
	App, Env, Spec, Note string
	Repo                 string // where to resolve the spec; default: drover.yml's repo when its app matches
	Strategy             string // replaces drover.yml's strategy type
	NoWait               bool   // fail when another rollout runs or waits
	Supersede            bool   // replace older queued rollouts
	Hotfix               bool
	Skip                 []string // run_once hooks not to run
	// Wait follows the rollout to its end, printing per-node progress;
	// the command fails when the rollout did not succeed.
	Wait bool
	// Poll is how often Wait reads the rollout (default 1s).
	Poll time.Duration
}

// errRolloutFailed is what --wait returns when the rollout did not succeed.
var errRolloutFailed = errors.New("the rollout did not succeed")

// ReleaseCreate records a release on the server and starts its rollout,
// queued behind the environment's running one. The spec is resolved to a
// commit here when the repository can be reached, and drover.yml at that
// commit is sent with it (the rollout's strategy, load balancer and hooks);
// otherwise the first agent resolves it and the rollout takes the defaults.
func ReleaseCreate(ctx context.Context, o *ReleaseCreateOptions) error {
	spec, err := source.ParseSpec(o.Spec)
	if err != nil {
		return err
	}
	c, err := o.client()
	if err != nil {
		return err
	}
	repo := o.Repo
	if repo == "" {
		if app, err := config.Load(config.DefaultFile); err == nil && app.App == o.App {
			repo = app.Repo
		}
	}
	commit, cfg, err := resolveWithConfig(ctx, o.IO, repo, spec)
	if err != nil {
		return err
	}
	created, err := c.CreateRelease(ctx, api.CreateRelease{App: o.App, Env: o.Env, Spec: spec.String(), Commit: commit, Note: o.Note,
		Config: cfg, Strategy: o.Strategy, NoWait: o.NoWait, Supersede: o.Supersede, Hotfix: o.Hotfix, Skip: o.Skip})
	if err != nil {
		if api.IsStatus(err, 409) && o.NoWait {
			return fmt.Errorf("%w (nothing was recorded)", err)
		}
		return err
	}
	if !o.Wait || created.Rollout == nil {
		if o.IO.Output == "json" {
			return o.IO.JSON(created)
		}
		fmt.Fprintln(o.IO.Out, createdLine(created))
		return nil
	}
	if o.IO.Output != "json" {
		fmt.Fprintln(o.IO.Out, createdLine(created))
	}
	return followRollout(ctx, c, o.IO, created.Rollout.ID, o.Poll)
}

// resolveWithConfig resolves spec in repo's mirror on this machine and
// reads drover.yml at that commit, under the mirror's lock. An unreachable
// repository (or none) is a note: the first agent then resolves the spec
// and the rollout takes the default strategy.
func resolveWithConfig(ctx context.Context, o IO, repo string, spec source.Spec) (commit, cfg string, err error) {
	if repo == "" {
		return "", "", nil
	}
	m := &source.Mirror{Dir: mirrorDir(repo), URL: repo}
	unlock, err := lockMirror(m.Dir)
	if err != nil {
		return "", "", err
	}
	defer unlock()
	if err := m.Fetch(ctx); err != nil {
		fmt.Fprintf(o.Err, "note: cannot fetch %s (%v); the first agent will resolve %s and the rollout takes the default strategy\n", repo, err, spec)
		return "", "", nil
	}
	if commit, err = m.Resolve(ctx, spec); err != nil {
		return "", "", err
	}
	b, err := m.ReadFile(ctx, commit, config.DefaultFile)
	if err != nil {
		fmt.Fprintf(o.Err, "note: no %s at %s in %s (%v); the rollout takes the default strategy\n", config.DefaultFile, short(commit), repo, err)
		return commit, "", nil
	}
	return commit, string(b), nil
}

// createdLine is `release N: APP ENV SPEC → COMMIT; rollout M queued (position P)`.
func createdLine(rc *api.ReleaseCreated) string {
	resolved := rc.Commit
	if resolved == "" {
		resolved = "(resolved by the first agent)"
	}
	line := fmt.Sprintf("release %d: %s %s %s → %s", rc.ID, rc.App, rc.Env, rc.Spec, resolved)
	if ro := rc.Rollout; ro != nil {
		line += fmt.Sprintf("; rollout %d %s", ro.ID, ro.State)
		if ro.Position > 0 {
			line += fmt.Sprintf(" (position %d)", ro.Position)
		}
	}
	return line
}

// followRollout prints rollout id's progress until it ends: a line when
// its state or phase changes and one per node whose task changes. It
// fails with errRolloutFailed unless the rollout succeeded; with -o json
// it prints the final rollout.
func followRollout(ctx context.Context, c *api.Client, o IO, id int64, poll time.Duration) error {
	if poll <= 0 {
		poll = time.Second
	}
	human := o.Output != "json"
	var last string
	seen := map[string]string{}
	for {
		ro, err := c.Rollout(ctx, id)
		if err != nil {
			return err
		}
		if human {
			if head := fmt.Sprintf("rollout %d: %s %s", ro.ID, ro.State, ro.Phase); head != last {
				last = head
				line := strings.TrimSpace(head)
				if ro.Position > 0 {
					line += fmt.Sprintf(" (position %d)", ro.Position)
				}
				fmt.Fprintln(o.Out, line)
			}
			for _, n := range ro.Nodes {
				if l := nodeLine(n); seen[n.Node] != l {
					seen[n.Node] = l
					fmt.Fprintln(o.Out, "  "+l)
				}
			}
		}
		if rolloutDone(ro.State) {
			if !human {
				if err := o.JSON(ro); err != nil {
					return err
				}
			}
			if ro.State != "succeeded" {
				msg := fmt.Sprintf("rollout %d of %s/%s %s", ro.ID, ro.App, ro.Env, ro.State)
				if ro.Error != "" {
					msg += ": " + ro.Error
				}
				return fmt.Errorf("%w: %s", errRolloutFailed, msg)
			}
			return nil
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("stopped following rollout %d (it goes on; drover rollout show %d): %w", id, id, ctx.Err())
		case <-t.C:
		}
	}
}

// rolloutDone reports whether a rollout state is final.
func rolloutDone(state string) bool {
	switch state {
	case "succeeded", "failed", "cancelled", "superseded", "aborted":
		return true
	}
	return false
}

// nodeLine is one node's progress: `web1  activate #3  done  serving R`.
func nodeLine(n api.RolloutNode) string {
	l := fmt.Sprintf("%s: %s (task %d) %s", n.Node, n.Action, n.Task, n.State)
	if n.Step != "" {
		l += " at " + n.Step
	}
	if n.Serving != "" {
		l += ", serving " + n.Serving
	}
	if n.Error != "" {
		l += ": " + n.Error
	}
	return l
}

// RolloutsOptions are the inputs of `drover rollouts`.
type RolloutsOptions struct {
	ClientOptions
	App, Env string
	Limit    int
}

// Rollouts lists an app's rollouts, newest first: running ones with their
// nodes' progress, queued ones with their position, finished ones.
func Rollouts(ctx context.Context, o *RolloutsOptions) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	ros, err := c.Rollouts(ctx, o.App, o.Env, o.Limit)
	if err != nil {
		return err
	}
	if o.IO.Output == "json" {
		return o.IO.JSON(ros)
	}
	if len(ros) == 0 {
		fmt.Fprintf(o.IO.Out, "no rollouts of %s\n", strings.TrimSuffix(o.App+"/"+o.Env, "/"))
		return nil
	}
	printRollouts(o.IO.Out, ros)
	return nil
}

func printRollouts(out io.Writer, ros []api.Rollout) {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tENV\tKIND\tSTATE\tRELEASE\tSTRATEGY\tPHASE\tNODES\tBY\tCREATED")
	for _, ro := range ros {
		state := ro.State
		if ro.Position > 0 {
			state += fmt.Sprintf(" #%d", ro.Position)
		}
		rel := ro.Release
		if rel == "" && ro.ReleaseID != 0 {
			rel = fmt.Sprintf("release %d", ro.ReleaseID)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ro.ID, ro.Env, ro.Kind, state, dash(rel), dash(ro.Strategy), dash(ro.Phase),
			nodeCounts(ro.Nodes), ro.CreatedBy, ro.CreatedAt.UTC().Format(time.RFC3339))
	}
	tw.Flush()
	for _, ro := range ros {
		if (ro.State == "running" || ro.State == "paused") && len(ro.Nodes) > 0 {
			fmt.Fprintf(out, "\nrollout %d (%s/%s, %s):\n", ro.ID, ro.App, ro.Env, ro.State)
			for _, n := range ro.Nodes {
				fmt.Fprintln(out, "  "+nodeLine(n))
			}
		}
	}
}

// nodeCounts is `2 done, 1 working` over a rollout's nodes.
func nodeCounts(nodes []api.RolloutNode) string {
	if len(nodes) == 0 {
		return "-"
	}
	var order []string
	count := map[string]int{}
	for _, n := range nodes {
		if count[n.State] == 0 {
			order = append(order, n.State)
		}
		count[n.State]++
	}
	parts := make([]string, len(order))
	for i, s := range order {
		parts[i] = fmt.Sprintf("%d %s", count[s], s)
	}
	return strings.Join(parts, ", ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// RolloutOptions are the inputs of `drover rollout show|cancel ID` and
// `drover promote|abort --rollout ID`.
type RolloutOptions struct {
	ClientOptions
	ID int64
}

// RolloutShow prints one rollout with every node's progress.
func RolloutShow(ctx context.Context, o *RolloutOptions) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	ro, err := c.Rollout(ctx, o.ID)
	if err != nil {
		return err
	}
	return printRollout(o.IO, ro)
}

func printRollout(o IO, ro *api.Rollout) error {
	if o.Output == "json" {
		return o.JSON(ro)
	}
	fmt.Fprintf(o.Out, "rollout %d of %s/%s (%s, %s): %s", ro.ID, ro.App, ro.Env, ro.Kind, dash(ro.Strategy), ro.State)
	if ro.Position > 0 {
		fmt.Fprintf(o.Out, ", position %d in the queue", ro.Position)
	}
	if ro.Phase != "" {
		fmt.Fprintf(o.Out, ", %s", ro.Phase)
	}
	fmt.Fprintln(o.Out)
	if ro.Release != "" || ro.ReleaseID != 0 {
		fmt.Fprintf(o.Out, "release: %s (server release %d)\n", dash(ro.Release), ro.ReleaseID)
	}
	if ro.Runner != "" {
		fmt.Fprintf(o.Out, "run by: %s (token %d)\n", ro.Runner, ro.Token)
	}
	fmt.Fprintf(o.Out, "created by %s at %s\n", ro.CreatedBy, ro.CreatedAt.UTC().Format(time.RFC3339))
	if ro.Error != "" {
		fmt.Fprintf(o.Out, "error: %s\n", ro.Error)
	}
	for _, n := range ro.Nodes {
		fmt.Fprintln(o.Out, "  "+nodeLine(n))
	}
	return nil
}

// RolloutCancel cancels a queued rollout.
func RolloutCancel(ctx context.Context, o *RolloutOptions) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	ro, err := c.CancelRollout(ctx, o.ID)
	if err != nil {
		if api.IsStatus(err, 409) {
			return fmt.Errorf("%w; only a queued rollout can be cancelled (a running canary: drover abort --rollout %d)", err, o.ID)
		}
		return err
	}
	if o.IO.Output == "json" {
		return o.IO.JSON(ro)
	}
	fmt.Fprintf(o.IO.Out, "rollout %d of %s/%s: %s\n", ro.ID, ro.App, ro.Env, ro.State)
	return nil
}

// DecideRollout promotes or aborts (decision) a server-run canary rollout.
func DecideRollout(ctx context.Context, o *RolloutOptions, decision string) error {
	c, err := o.client()
	if err != nil {
		return err
	}
	ro, err := c.Decide(ctx, o.ID, decision)
	if err != nil {
		return err
	}
	if o.IO.Output == "json" {
		return o.IO.JSON(ro)
	}
	fmt.Fprintf(o.IO.Out, "rollout %d of %s/%s: %s recorded (%s)\n", ro.ID, ro.App, ro.Env, decision, ro.State)
	return nil
}

// envState is one environment's deploy lock, queue and running rollouts,
// for `drover status`.
type envState struct {
	App, Env string
	Queue    *api.Queue
	Running  []api.Rollout
}

// envStatus reads the lock, queue and running rollouts of env, or of every
// environment of app that nodes show when env is "".
func envStatus(ctx context.Context, c *api.Client, app, env string, nodes []api.NodeStatus) ([]envState, error) {
	envs := []string{}
	if env != "" {
		envs = append(envs, env)
	} else {
		for _, n := range nodes {
			if !slices.Contains(envs, n.Env) {
				envs = append(envs, n.Env)
			}
		}
		slices.Sort(envs)
	}
	var out []envState
	for _, e := range envs {
		q, err := c.Queue(ctx, app, e)
		if err != nil {
			return nil, err
		}
		ros, err := c.Rollouts(ctx, app, e, 10)
		if err != nil {
			return nil, err
		}
		st := envState{App: app, Env: e, Queue: q}
		for _, ro := range ros {
			if ro.State == "running" || ro.State == "paused" {
				st.Running = append(st.Running, ro)
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// printEnvStatus prints, per environment, who holds the deploy lock, who
// waits, and the running rollout's per-node progress.
func printEnvStatus(out io.Writer, envs []envState) {
	now := time.Now()
	for _, e := range envs {
		fmt.Fprintf(out, "\n%s/%s: ", e.App, e.Env)
		if h := e.Queue.Holder; h != nil {
			fmt.Fprintf(out, "lock held by %s (token %d) for %s", h.Holder, h.Token, age(now.Sub(h.Since)))
			if e.Queue.Expired {
				fmt.Fprint(out, ", lease EXPIRED (the next deploy or another server takes it over)")
			}
			fmt.Fprintln(out)
		} else {
			fmt.Fprintln(out, "lock free")
		}
		if len(e.Queue.Queue) == 0 {
			fmt.Fprintln(out, "  queue: empty")
		} else {
			var q []string
			for _, t := range e.Queue.Queue {
				q = append(q, fmt.Sprintf("%d. %s (waiting %s)", t.Position, t.Holder, age(now.Sub(t.CreatedAt))))
			}
			fmt.Fprintln(out, "  queue: "+strings.Join(q, ", "))
		}
		for _, ro := range e.Running {
			fmt.Fprintf(out, "  rollout %d (%s, %s): %s %s\n", ro.ID, dash(ro.Strategy), dash(ro.Release), ro.State, ro.Phase)
			for _, n := range ro.Nodes {
				fmt.Fprintln(out, "    "+nodeLine(n))
			}
		}
	}
}
