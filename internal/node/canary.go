package node

import (
	"fmt"
	"strings"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
)

// CanaryHint is what a paused canary tells whoever looks: the lock's note,
// `drover releases`, the deployer itself.
func CanaryHint(c *release.Canary, env string) string {
	if c.Decision != "" {
		return fmt.Sprintf("canary of %s paused on %s since %s; %s by %s at %s, the deployer acts on it",
			c.Release, strings.Join(c.Hosts, ", "), c.Since.UTC().Format(time.RFC3339), c.Decision, c.By, c.At.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("canary of %s paused on %s since %s; drover promote %s or drover abort %s",
		c.Release, strings.Join(c.Hosts, ", "), c.Since.UTC().Format(time.RFC3339), env, env)
}

// canaryOp runs an OpCanary request. A pause by the deployer also notes
// the paused canary on the deploy lock it holds (req.Token), so that
// whoever finds the lock held learns how to decide it; clear removes it.
func canaryOp(eng *release.Engine, lk *lock.File, req *Request) *Response {
	f := eng.Canary()
	switch req.Action {
	case "status":
		c, err := f.Read()
		if err != nil {
			return errResponse(err)
		}
		return &Response{OK: true, Canary: c}
	case "pause":
		if req.Canary == nil || req.Canary.Release == "" {
			return &Response{Error: "bad request: canary pause without a release"}
		}
		c := *req.Canary
		if c.Since.IsZero() {
			c.Since = time.Now()
		}
		if err := f.Pause(c); err != nil {
			return errResponse(err)
		}
		if req.Token != 0 {
			if err := lk.SetNote(req.Token, CanaryHint(&c, req.Env)); err != nil {
				return errResponse(fmt.Errorf("note the paused canary on the deploy lock: %w", err))
			}
		}
		return &Response{OK: true, Canary: &c}
	case release.CanaryPromote, release.CanaryAbort:
		c, err := f.Decide(req.ID, req.Action, req.By, time.Now())
		if err != nil {
			return &Response{Error: fmt.Sprintf("%s %s: %s", req.Action, req.Host, err)}
		}
		return &Response{OK: true, Canary: c}
	case "clear":
		if err := f.Clear(req.ID); err != nil {
			return errResponse(err)
		}
		if req.Token != 0 {
			_ = lk.SetNote(req.Token, "") // the lock may be gone already: nothing to note
		}
		return &Response{OK: true}
	}
	return &Response{Error: fmt.Sprintf("bad request: canary action %q (pause, status, promote, abort or clear)", req.Action)}
}
