package control

// The upgrade lifecycle: a node starts work on a release (inside a rollout,
// on one task of it), reports its steps and logs as it goes and ends
// succeeded or failed. Reports on a rollout task are mirrored into the
// rollout's RolloutNode row, which the runner waits on; every report
// refreshes the row's UpdatedAt, the heartbeat the runner's node timeout
// reads, and is put on the board of the run on this replica at once (nodeReported).

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
)

// Errors of the upgrade lifecycle callers branch on (with errors.Is).
var (
	// ErrForbidden: the node may not act on what it names (a release or
	// rollout of another environment, an upgrade of another node).
	ErrForbidden = errors.New("forbidden")
	// ErrFinished: the upgrade ended; it takes no more reports.
	ErrFinished = errors.New("the upgrade is finished")
	// ErrInvalid: the request is malformed (an unknown status, a step
	// without a name).
	ErrInvalid = store.ErrInvalid
)

// StartUpgrade records that node n starts the work req names: release
// req.ReleaseID, which must be one of n's environment's, and inside a
// rollout task req.Task of rollout req.Rollout, whose RolloutNode becomes
// working with this upgrade's ID (a task already done or failed keeps its
// state: an agent that reports a finished task again changes no outcome;
// a rollout the server does not know, or a task that is no longer the
// node's, only records the upgrade).
// An unfinished upgrade of n was interrupted (the agent restarted): it is
// closed as failed so status shows the one that runs now.
func (c *Control) StartUpgrade(ctx context.Context, n store.Node, req api.StartUpgrade) (store.Upgrade, store.Release, error) {
	done, err := c.admit(ctx)
	if err != nil {
		return store.Upgrade{}, store.Release{}, err
	}
	defer done()
	rel, err := c.st.GetRelease(ctx, req.ReleaseID)
	if err != nil {
		return store.Upgrade{}, store.Release{}, fmt.Errorf("release %d: %w", req.ReleaseID, err)
	}
	if rel.App != n.App || rel.Env != n.Env {
		return store.Upgrade{}, store.Release{}, fmt.Errorf("%w: release %d belongs to %s/%s, not %s/%s", ErrForbidden, rel.ID, rel.App, rel.Env, n.App, n.Env)
	}
	var task *store.RolloutNode
	if req.Rollout != 0 {
		// A rollout this server does not know asks nothing of the node:
		// the upgrade is recorded, nothing is mirrored.
		k, err := c.rolloutEnv(ctx, req.Rollout)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return store.Upgrade{}, store.Release{}, fmt.Errorf("rollout %d: %w", req.Rollout, err)
		case k.app != n.App || k.env != n.Env:
			return store.Upgrade{}, store.Release{}, fmt.Errorf("%w: rollout %d belongs to %s/%s, not %s/%s", ErrForbidden, req.Rollout, k.app, k.env, n.App, n.Env)
		default:
			if task, err = c.rolloutNode(ctx, req.Rollout, n.Name); err != nil {
				return store.Upgrade{}, store.Release{}, err
			}
		}
	}
	now := c.clock.Now()
	if prev, err := c.st.ListUpgrades(ctx, store.UpgradeFilter{NodeID: n.ID, Limit: 5}); err == nil {
		for _, p := range prev {
			if !p.Status.Done() {
				p.Status, p.Error, p.EndedAt = store.UpgradeFailed, "interrupted: the agent started another upgrade (it restarted)", now
				_ = c.st.UpdateUpgrade(ctx, p)
			}
		}
	}
	u, err := c.st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: rel.ID, Status: store.UpgradePending, StartedAt: now,
		RolloutID: req.Rollout, Task: req.Task})
	if err != nil {
		return store.Upgrade{}, store.Release{}, err
	}
	if task != nil && task.Task == req.Task {
		rn := *task
		if rn.State != store.NodeDone && rn.State != store.NodeFailed {
			rn.State, rn.Step, rn.Error = store.NodeWorking, "", ""
		}
		rn.UpgradeID = u.ID
		changed, err := c.st.ReportRolloutNode(ctx, rn)
		if err != nil {
			return store.Upgrade{}, store.Release{}, err
		}
		if changed {
			c.nodeReported(rn)
		}
	}
	return u, rel, nil
}

// admit waits for a slot among the agent writes running at once (see
// defaultAgentWrites); done gives it back.
func (c *Control) admit(ctx context.Context) (done func(), err error) {
	select {
	case c.writes <- struct{}{}:
		return func() { <-c.writes }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// rolloutEnv is the environment of rollout id. A rollout never changes
// environment, so the answer is kept: every node of a rollout asks once per
// task, and the row (with its plan and report, large for a big fleet) is
// read once instead of ten thousand times.
func (c *Control) rolloutEnv(ctx context.Context, id int64) (envKey, error) {
	c.envsMu.Lock()
	k, ok := c.envs[id]
	c.envsMu.Unlock()
	if ok {
		return k, nil
	}
	ro, err := c.st.GetRollout(ctx, id)
	if err != nil {
		return envKey{}, err
	}
	k = envKey{ro.App, ro.Env}
	c.envsMu.Lock()
	if c.envs == nil || len(c.envs) >= maxRolloutEnvs {
		c.envs = map[int64]envKey{} // forget the old ones: they are re-read if asked about
	}
	c.envs[id] = k
	c.envsMu.Unlock()
	return k, nil
}

// maxRolloutEnvs bounds rolloutEnv's memory.
const maxRolloutEnvs = 1024

// rolloutNode returns node's row of rollout id, or nil when the rollout
// asked nothing of it.
func (c *Control) rolloutNode(ctx context.Context, id int64, node string) (*store.RolloutNode, error) {
	rn, err := c.st.GetRolloutNode(ctx, id, node)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, nil
	case err != nil:
		return nil, err
	}
	return &rn, nil
}

// maxStepName is the longest step name a report may carry.
const maxStepName = 200

// Report records node n's progress on its upgrade u: the steps and their
// new log lines, the status, and on success the release the node now
// runs. When u does a rollout task, the task's RolloutNode mirrors it —
// done or failed when the report is final (with Serving and Error),
// working otherwise, UpdatedAt refreshed by every report — and the runner
// waiting on it here wakes at once. ErrForbidden when u is another node's,
// ErrFinished when u ended, ErrInvalid for a malformed report.
func (c *Control) Report(ctx context.Context, n store.Node, u store.Upgrade, req api.Report) error {
	done, err := c.admit(ctx)
	if err != nil {
		return err
	}
	defer done()
	status := store.UpgradeStatus(req.Status)
	if !status.Valid() {
		return fmt.Errorf("%w: unknown status %q", ErrInvalid, req.Status)
	}
	if u.NodeID != n.ID {
		return fmt.Errorf("%w: upgrade %d belongs to another node", ErrForbidden, u.ID)
	}
	if u.Status.Done() {
		return fmt.Errorf("upgrade %d: %w", u.ID, ErrFinished)
	}
	old := map[string]store.Step{}
	for _, st := range u.Steps {
		old[st.Name] = st
	}
	for _, st := range req.Steps {
		if st.Name == "" || len(st.Name) > maxStepName {
			return fmt.Errorf("%w: a step needs a name of at most %d bytes", ErrInvalid, maxStepName)
		}
	}
	for _, st := range req.Steps {
		if err := c.saveStep(ctx, u.ID, st, old[st.Name].Log); err != nil {
			return err
		}
	}
	u.Status, u.CurrentStep, u.Error = status, req.Step, req.Error
	if status.Done() {
		u.EndedAt = c.clock.Now()
	}
	if err := c.st.UpdateUpgrade(ctx, u); err != nil {
		return err
	}
	if status == store.UpgradeSucceeded {
		if err := c.st.SetNodeRelease(ctx, n.ID, u.ReleaseID); err != nil {
			return err
		}
	}
	_ = c.st.TouchNode(ctx, n.ID, c.clock.Now())
	if u.RolloutID == 0 {
		return nil
	}
	rn := store.RolloutNode{RolloutID: u.RolloutID, Node: n.Name, Task: u.Task, State: store.NodeWorking, Step: req.Step, Serving: req.Serving, UpgradeID: u.ID}
	switch status {
	case store.UpgradeSucceeded:
		rn.State = store.NodeDone
	case store.UpgradeFailed:
		rn.State, rn.Error = store.NodeFailed, req.Error
		if rn.Error == "" {
			rn.Error = "failed at step " + req.Step
		}
	}
	changed, err := c.st.ReportRolloutNode(ctx, rn)
	if err != nil {
		return err
	}
	if changed && rn.State == store.NodeFailed {
		// The node leaves the rollout: its desired state is now the last
		// completed release (see Desired); tell every replica's cache.
		if _, err := c.st.BumpVersion(ctx, n.App, n.Env); err != nil {
			return err
		}
	}
	if changed {
		c.nodeReported(rn)
	}
	return nil
}

// saveStep saves one reported step; the agent sends each step's whole log,
// so only what is new since prev is appended.
func (c *Control) saveStep(ctx context.Context, upgradeID int64, st api.Step, prev string) error {
	s := store.Step{UpgradeID: upgradeID, Name: st.Name, Status: st.Status, StartedAt: st.Started}
	if st.Status != "running" {
		s.EndedAt = st.Started.Add(st.Elapsed)
	}
	if err := c.st.SaveStep(ctx, s); err != nil {
		return err
	}
	if len(st.Log) > len(prev) && strings.HasPrefix(st.Log, prev) {
		return c.st.AppendStepLog(ctx, upgradeID, st.Name, st.Log[len(prev):])
	}
	return nil
}
