package rollout

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/drover/drover/internal/config"
)

// CheckGate is the Gate of a canary with a check (strategy.canary): it
// promotes the canary once its check kept passing for Wait: the command
// exits 0 and the URL answers 2xx, asked every tenth of Wait (between 1s
// and 15s). The first failure, or an interrupted deploy, rolls the canary
// back. Push deploys and the control server use the same gate.
type CheckGate struct {
	c     *config.Canary
	every time.Duration
	out   io.Writer
}

// NewCheckGate is the gate of canary check c; it tells out (nil: nobody)
// when the check starts.
func NewCheckGate(c *config.Canary, out io.Writer) *CheckGate {
	if out == nil {
		out = io.Discard
	}
	wait := time.Duration(c.Wait)
	every := min(max(wait/10, time.Second), 15*time.Second)
	return &CheckGate{c: c, every: every, out: out}
}

// Wait implements Gate.
func (g *CheckGate) Wait(ctx context.Context, hosts []string) error {
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
func (g *CheckGate) check(ctx context.Context, hosts []string) error {
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
