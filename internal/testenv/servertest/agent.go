package servertest

import (
	"context"
	"time"

	"github.com/drover/drover/internal/api"
)

// Agent plays a node's agent over the API with its agent client c: it
// long-polls its desired state and does every new rollout task at once,
// reporting success and serving "r" + the release's short commit, until
// until(the node's desired state) holds (nil error) or ctx ends or a call
// fails. It stands in for the real agent where a test is about the server.
func Agent(ctx context.Context, c *api.Client, until func(api.DesiredApp) bool) <-chan error {
	return agent(ctx, c, until, api.Report{Status: api.StatusSucceeded})
}

// FailingAgent is Agent reporting every task failed at step "build".
func FailingAgent(ctx context.Context, c *api.Client, until func(api.DesiredApp) bool) <-chan error {
	return agent(ctx, c, until, api.Report{Status: api.StatusFailed, Step: "build", Error: "make: exit 2"})
}

func agent(ctx context.Context, c *api.Client, until func(api.DesiredApp) bool, report api.Report) <-chan error {
	errc := make(chan error, 1)
	go func() {
		known := int64(-1)
		did := map[[2]int64]bool{}
		for ctx.Err() == nil {
			d, err := c.Desired(ctx, known, 5*time.Second)
			if err != nil {
				errc <- err
				return
			}
			known = d.Version
			a := d.Apps[0]
			if until(a) {
				errc <- nil
				return
			}
			if a.Rollout == 0 || did[[2]int64{a.Rollout, a.Task}] {
				continue
			}
			did[[2]int64{a.Rollout, a.Task}] = true
			up, err := c.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: a.Release.ID, App: a.App, Env: a.Env, Rollout: a.Rollout, Task: a.Task})
			if err != nil {
				errc <- err
				return
			}
			r := report
			if r.Status == api.StatusSucceeded {
				r.Step, r.Serving = a.Action, Serving(*a.Release)
			}
			if err := c.Report(ctx, up.ID, r); err != nil {
				errc <- err
				return
			}
		}
		errc <- ctx.Err()
	}()
	return errc
}

// Serving is what Agent reports serving after a task on release r.
func Serving(r api.Release) string { return "r" + r.Commit[:min(7, len(r.Commit))] }
