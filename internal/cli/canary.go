package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/transport"
)

// newCanaryGate is the gate of a canary with a check: the command and URL
// of c, asked through c.Wait (rollout.NewCheckGate).
func newCanaryGate(c *config.Canary, out io.Writer) rollout.Gate {
	return rollout.NewCheckGate(c, out)
}

// canaryStatus reads the paused-canary record of every host of e: the
// records found, by host, and the hosts that did not answer.
func canaryStatus(ctx context.Context, e *env, nodes []*transport.Node) (map[string]*release.Canary, []string) {
	resps := transport.Each(ctx, e.plan, nodes, func(r *node.Request) {
		r.Op, r.Action = node.OpCanary, "status"
	}, nil)
	found := map[string]*release.Canary{}
	var unreachable []string
	for i, r := range resps {
		switch {
		case !r.OK:
			unreachable = append(unreachable, nodes[i].Name()+": "+r.Error)
		case r.Canary != nil:
			found[nodes[i].Name()] = r.Canary
		}
	}
	return found, unreachable
}

// Decide promotes (decision "promote") or aborts ("abort") the canary
// paused in o's environment: it writes the decision on the canary hosts,
// where the paused deployer reads it within a second. No paused canary is
// a *UsageError (exit 2).
func Decide(ctx context.Context, o *Common, decision string) error {
	return withHosts(ctx, o, func(e *env, nodes []*transport.Node) error {
		found, unreachable := canaryStatus(ctx, e, nodes)
		var paused *release.Canary
		var on []*transport.Node
		for _, n := range nodes {
			c := found[n.Name()]
			if c == nil {
				continue
			}
			if paused != nil && c.Release != paused.Release {
				return fmt.Errorf("hosts disagree on the paused canary: %s on %s, %s on %s; run drover %s %s again once one deployer is gone (drover releases %s shows them)",
					paused.Release, on[0].Name(), c.Release, n.Name(), decision, e.env.Name, e.env.Name)
			}
			paused = c
			on = append(on, n)
		}
		if paused == nil {
			msg := fmt.Sprintf("no canary of %s is paused: nothing to %s", e.env.Name, decision)
			if len(unreachable) > 0 {
				msg += "; these hosts did not answer: " + strings.Join(unreachable, "; ")
			}
			return &UsageError{errors.New(msg)}
		}
		resps := transport.Each(ctx, e.plan, on, func(r *node.Request) {
			r.Op, r.Action, r.ID = node.OpCanary, decision, paused.Release
		}, nil)
		var failed []string
		var rec *release.Canary
		for i, r := range resps {
			if !r.OK {
				failed = append(failed, on[i].Name()+": "+r.Error)
				continue
			}
			rec = r.Canary
		}
		if rec == nil {
			return fmt.Errorf("could not %s the canary of %s: %s", decision, paused.Release, strings.Join(failed, "; "))
		}
		if rec.Decision != decision {
			return fmt.Errorf("the canary of %s was already decided: %s by %s at %s", rec.Release, rec.Decision, rec.By, rec.At.UTC().Format(time.RFC3339))
		}
		next := "the other hosts follow"
		if decision == release.CanaryAbort {
			next = "the canary hosts go back to their previous release"
		}
		fmt.Fprintf(o.IO.Out, "canary of %s on %s: %s by %s; the deployer (%s) reads it within a second and %s\n",
			rec.Release, strings.Join(rec.Hosts, ", "), decision, rec.By, rec.Deployer, next)
		if len(failed) > 0 {
			fmt.Fprintf(o.IO.Err, "warning: not recorded on %s (the deployer reads any canary host)\n", strings.Join(failed, "; "))
		}
		return nil
	})
}

// printPaused says which canary is paused in e, if any, and how to decide
// it.
func printPaused(ctx context.Context, io IO, e *env, nodes []*transport.Node) {
	found, _ := canaryStatus(ctx, e, nodes)
	seen := map[string]bool{}
	for _, n := range nodes {
		if c := found[n.Name()]; c != nil && !seen[c.Release] {
			seen[c.Release] = true
			fmt.Fprintln(io.Out, node.CanaryHint(c, e.env.Name))
		}
	}
}
