package store

import (
	"context"
	"errors"
	"time"
)

// errTODO marks the rollout methods still to be written (issue 11).
var errTODO = errors.New("store: not implemented yet")

func (s *sqlStore) TakeOverLease(ctx context.Context, id int64, at time.Time, ttl time.Duration) (Lease, error) {
	return Lease{}, errTODO
}

func (s *sqlStore) GetEnvironment(ctx context.Context, app, env string) (Environment, error) {
	return Environment{}, errTODO
}

func (s *sqlStore) SetCurrentRelease(ctx context.Context, app, env string, releaseID int64) error {
	return errTODO
}

func (s *sqlStore) CreateRollout(ctx context.Context, r Rollout) (Rollout, error) {
	return Rollout{}, errTODO
}

func (s *sqlStore) GetRollout(ctx context.Context, id int64) (Rollout, error) {
	return Rollout{}, errTODO
}

func (s *sqlStore) RolloutByTicket(ctx context.Context, ticketID int64) (Rollout, error) {
	return Rollout{}, errTODO
}

func (s *sqlStore) ListRollouts(ctx context.Context, f RolloutFilter) ([]Rollout, error) {
	return nil, errTODO
}

func (s *sqlStore) UpdateRollout(ctx context.Context, r Rollout) error { return errTODO }

func (s *sqlStore) DecideRollout(ctx context.Context, id int64, decision string) (Rollout, error) {
	return Rollout{}, errTODO
}

func (s *sqlStore) AssignRolloutNodes(ctx context.Context, nodes []RolloutNode) error { return errTODO }

func (s *sqlStore) ReportRolloutNode(ctx context.Context, n RolloutNode) (bool, error) {
	return false, errTODO
}

func (s *sqlStore) ListRolloutNodes(ctx context.Context, rolloutID int64) ([]RolloutNode, error) {
	return nil, errTODO
}
