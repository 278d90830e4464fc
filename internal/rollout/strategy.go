package rollout

import (
	"context"
	"fmt"

	"github.com/drover/drover/internal/config"
)

// strategy activates a rollout's prepared hosts, once every host prepared
// and the before_activate run_once hooks ran. It records each host's
// outcome in the run and, when the rollout failed, says so in rep.Err.
type strategy interface {
	activate(ctx context.Context, r *run, rep *Report)
}

// newStrategy is the strategy of plan for n hosts, or an error that says
// what is wrong with its settings.
func newStrategy(plan *Plan, n int) (strategy, error) {
	s := plan.Strategy
	switch s.Type {
	case "", config.StrategyAllAtOnce, config.StrategyTwoPhase:
		return allAtOnce{}, nil
	case config.StrategySerial:
		s.Batch = config.Count(1)
		return newRolling(plan, s, n), nil
	case config.StrategyRolling:
		return newRolling(plan, s, n), nil
	case config.StrategyCanary:
		// Without a gate only an operator's decision ends the pause.
		return &canary{rolling: newRolling(plan, s, n), gate: plan.Gate}, nil
	}
	return nil, fmt.Errorf("unknown strategy %q; use all-at-once (also called two-phase), rolling, serial or canary", s.Type)
}
