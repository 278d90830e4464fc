package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/transport"
)

// canaryGate promotes a canary once its check kept passing for Wait: the
// command exits 0 and the URL answers 2xx, asked every Every. The first
// failure, or an interrupted deploy, rolls the canary back.
type canaryGate struct {
	c     *config.Canary
	every time.Duration
	out   io.Writer
}

func newCanaryGate(c *config.Canary, out io.Writer) *canaryGate {
	wait := time.Duration(c.Wait)
	every := min(max(wait/10, time.Second), 15*time.Second)
	return &canaryGate{c: c, every: every, out: out}
}

// Wait implements rollout.Gate.
func (g *canaryGate) Wait(ctx context.Context, hosts []string) error {
	wait := time.Duration(g.c.Wait)
	fmt.Fprintf(g.out, "canary on %s: checking for %s before the other hosts follow (Ctrl-C rolls the canary back)\n", strings.Join(hosts, ", "), wait)
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(g.every)
	defer tick.Stop()
	for n := 1; ; n++ {
		if err := g.check(ctx, hosts); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("the deploy was interrupted while the canary was checked")
			}
			return fmt.Errorf("the canary check failed after %s (check %d): %w", wait-time.Until(deadline).Round(time.Second), n, err)
		}
		if !time.Now().Before(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the deploy was interrupted while the canary was checked")
		case <-tick.C:
		}
	}
}

// check runs the command and asks the URL once.
func (g *canaryGate) check(ctx context.Context, hosts []string) error {
	ctx, cancel := context.WithTimeout(ctx, max(g.every, 10*time.Second))
	defer cancel()
	if g.c.Command != "" {
		cmd := exec.CommandContext(ctx, "sh", "-c", g.c.Command)
		cmd.Env = append(os.Environ(), "DROVER_CANARY_HOSTS="+strings.Join(hosts, " "))
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("canary.command %q: %w: %s", g.c.Command, err, lastLine(string(out)))
		}
	}
	if g.c.URL != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.c.URL, nil)
		if err != nil {
			return fmt.Errorf("canary.url: %w", err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("canary.url %s: %w", g.c.URL, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("canary.url %s answered %s", g.c.URL, resp.Status)
		}
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
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
