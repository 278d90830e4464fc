package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Rollouts, their per-node tasks, lease takeover and an environment's
// current release. Writes that hand work to nodes (AssignRolloutNodes) run
// under the environment's deploy_leases row lock, like the queue, so they are
// fenced by the lease's token on every replica.

func (s *sqlStore) TakeOverLease(ctx context.Context, id int64, at time.Time, ttl time.Duration) (Lease, error) {
	op := fmt.Sprintf("take over deploy lease of ticket %d", id)
	if ttl <= 0 {
		return Lease{}, wrap(op, fmt.Errorf("%w: lease duration %s", ErrInvalid, ttl))
	}
	at = norm(at)
	var out Lease
	err := s.queueTx(ctx, func(tx *storeTx) error {
		t, cur, err := s.lockTicket(ctx, tx, id)
		if err != nil {
			return err
		}
		switch {
		case t.State != TicketRunning:
			return fmt.Errorf("%w: ticket %d is %s, not running", ErrLeaseLost, id, t.State)
		case !t.Resumable:
			return fmt.Errorf("%w: ticket %d (%s) is not resumable", ErrLeaseLost, id, t.Holder)
		case cur.TicketID != id || cur.Token != t.Token:
			return fmt.Errorf("%w: ticket %d no longer holds the lease of %s/%s", ErrLeaseLost, id, t.App, t.Env)
		case at.Before(cur.ExpiresAt):
			return fmt.Errorf("%w: the lease of ticket %d (token %d) runs until %s; someone else runs it", ErrLeaseLost, id, cur.Token, cur.ExpiresAt.Format(time.RFC3339Nano))
		}
		out = Lease{App: t.App, Env: t.Env, TicketID: id, Holder: t.Holder, Token: cur.Token + 1, Since: at, ExpiresAt: at.Add(ttl)}
		if _, err := s.exec(ctx, tx, "UPDATE deploy_leases SET token = ?, since = ?, expires_at = ? WHERE app = ? AND env = ?",
			out.Token, at, out.ExpiresAt, t.App, t.Env); err != nil {
			return err
		}
		_, err = s.exec(ctx, tx, "UPDATE deploy_tickets SET token = ?, expires_at = ? WHERE id = ?", out.Token, out.ExpiresAt, id)
		return err
	})
	if err != nil {
		return Lease{}, wrap(op, err)
	}
	return out, nil
}

// Environments.

const envCols = "app, name, version, created_at, current_release"

func scanEnvironment(sc interface{ Scan(...any) error }) (Environment, error) {
	var e Environment
	err := sc.Scan(&e.App, &e.Name, &e.Version, &e.CreatedAt, &e.CurrentRelease)
	e.CreatedAt = e.CreatedAt.UTC()
	return e, err
}

func (s *sqlStore) GetEnvironment(ctx context.Context, app, env string) (Environment, error) {
	e, err := scanEnvironment(s.db.QueryRowContext(ctx, s.q("SELECT "+envCols+" FROM environments WHERE app = ? AND name = ?"), app, env))
	return e, wrap(fmt.Sprintf("get environment %s/%s", app, env), err)
}

func (s *sqlStore) SetCurrentRelease(ctx context.Context, app, env string, releaseID int64) error {
	op := fmt.Sprintf("set current release of %s/%s to %d", app, env, releaseID)
	var version int64
	err := s.tx(ctx, func(tx *storeTx) error {
		var one int
		err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM releases WHERE id = ? AND app = ? AND env = ?"), releaseID, app, env).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: release %d is not one of %s/%s", ErrNotFound, releaseID, app, env)
		}
		if err != nil {
			return err
		}
		if _, err := s.exec(ctx, tx, "UPDATE environments SET current_release = ? WHERE app = ? AND name = ?", releaseID, app, env); err != nil {
			return err
		}
		version, err = s.bump(ctx, tx, app, env)
		return err
	})
	if err != nil {
		return wrap(op, err)
	}
	s.hub.publish(Change{App: app, Env: env, Version: version})
	return nil
}

// Rollouts.

const rolloutCols = "id, app, env, kind, release_id, engine_release, ticket_id, strategy, plan, state, phase, error, decision, runner, created_by, created_at, started_at, ended_at, report"

func scanRollout(sc interface{ Scan(...any) error }) (Rollout, error) {
	var r Rollout
	var state string
	var started, ended sql.NullTime
	err := sc.Scan(&r.ID, &r.App, &r.Env, &r.Kind, &r.ReleaseID, &r.Release, &r.TicketID, &r.Strategy, &r.Plan, &state,
		&r.Phase, &r.Error, &r.Decision, &r.Runner, &r.CreatedBy, &r.CreatedAt, &started, &ended, &r.Report)
	r.State, r.CreatedAt, r.StartedAt, r.EndedAt = RolloutState(state), r.CreatedAt.UTC(), fromNull(started), fromNull(ended)
	r.Plan, r.Report = nilIfEmpty(r.Plan), nilIfEmpty(r.Report)
	return r, err
}

// blob stores nil as an empty value (the columns are NOT NULL).
func blob(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func validRolloutState(st RolloutState) error {
	switch st {
	case RolloutQueued, RolloutRunning, RolloutPaused:
		return nil
	}
	if st.Done() {
		return nil
	}
	return fmt.Errorf("%w: rollout state %q", ErrInvalid, st)
}

func (s *sqlStore) CreateRollout(ctx context.Context, r Rollout) (Rollout, error) {
	op := fmt.Sprintf("create %s rollout of %s/%s", r.Kind, r.App, r.Env)
	if err := errors.Join(need("app", r.App), need("env", r.Env)); err != nil {
		return Rollout{}, wrap(op, err)
	}
	if r.Kind != RolloutServer && r.Kind != RolloutPush {
		return Rollout{}, wrap(op, fmt.Errorf("%w: rollout kind %q (want %s or %s)", ErrInvalid, r.Kind, RolloutServer, RolloutPush))
	}
	if r.State == "" {
		r.State = RolloutQueued
	}
	if err := validRolloutState(r.State); err != nil {
		return Rollout{}, wrap(op, err)
	}
	r.CreatedAt = norm(r.CreatedAt)
	r.StartedAt, r.EndedAt = normOrZero(r.StartedAt), normOrZero(r.EndedAt)
	err := s.tx(ctx, func(tx *storeTx) error {
		if err := s.ensureEnv(ctx, tx, r.App, r.Env, r.CreatedAt); err != nil {
			return err
		}
		id, err := s.insert(ctx, tx, "INSERT INTO rollouts (app, env, kind, release_id, engine_release, ticket_id, strategy, plan, state, phase, error, decision, runner, created_by, created_at, started_at, ended_at, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
			r.App, r.Env, r.Kind, r.ReleaseID, r.Release, r.TicketID, r.Strategy, blob(r.Plan), string(r.State), r.Phase, r.Error, r.Decision, r.Runner,
			r.CreatedBy, r.CreatedAt, nullTime(r.StartedAt), nullTime(r.EndedAt), blob(r.Report))
		r.ID = id
		return err
	})
	if err != nil {
		return Rollout{}, wrap(op, err)
	}
	r.Plan, r.Report = nilIfEmpty(r.Plan), nilIfEmpty(r.Report)
	return r, nil
}

func (s *sqlStore) GetRollout(ctx context.Context, id int64) (Rollout, error) {
	r, err := scanRollout(s.db.QueryRowContext(ctx, s.q("SELECT "+rolloutCols+" FROM rollouts WHERE id = ?"), id))
	return r, wrap(fmt.Sprintf("get rollout %d", id), err)
}

func (s *sqlStore) RolloutByTicket(ctx context.Context, ticketID int64) (Rollout, error) {
	r, err := scanRollout(s.db.QueryRowContext(ctx, s.q("SELECT "+rolloutCols+" FROM rollouts WHERE ticket_id = ? ORDER BY id DESC LIMIT 1"), ticketID))
	return r, wrap(fmt.Sprintf("rollout of ticket %d", ticketID), err)
}

func (s *sqlStore) ListRollouts(ctx context.Context, f RolloutFilter) ([]Rollout, error) {
	var where []string
	var args []any
	if f.App != "" {
		where, args = append(where, "app = ?"), append(args, f.App)
	}
	if f.Env != "" {
		where, args = append(where, "env = ?"), append(args, f.Env)
	}
	if len(f.States) > 0 {
		marks := make([]string, len(f.States))
		for i, st := range f.States {
			marks[i], args = "?", append(args, string(st))
		}
		where = append(where, "state IN ("+strings.Join(marks, ", ")+")")
	}
	if f.BeforeID > 0 {
		where, args = append(where, "id < ?"), append(args, f.BeforeID)
	}
	out, err := queryAll(ctx, s.db, scanRollout, s.q("SELECT "+rolloutCols+" FROM rollouts"+whereClause(where)+" ORDER BY id DESC"+limit(f.Limit)), args...)
	return out, wrap("list rollouts", err)
}

// queryAll runs query and scans every row with scan; an empty result is an
// empty slice, not nil.
func queryAll[T any](ctx context.Context, db queryer, scan func(interface{ Scan(...any) error }) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func (s *sqlStore) UpdateRollout(ctx context.Context, r Rollout) error {
	op := fmt.Sprintf("update rollout %d", r.ID)
	if err := validRolloutState(r.State); err != nil {
		return wrap(op, err)
	}
	n, err := s.exec(ctx, s.db, "UPDATE rollouts SET state = ?, phase = ?, error = ?, started_at = ?, ended_at = ?, report = ?, runner = ? WHERE id = ?",
		string(r.State), r.Phase, r.Error, nullTime(r.StartedAt), nullTime(r.EndedAt), blob(r.Report), r.Runner, r.ID)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	return wrap(op, err)
}

func (s *sqlStore) DecideRollout(ctx context.Context, id int64, decision string) (Rollout, error) {
	op := fmt.Sprintf("decide %q on rollout %d", decision, id)
	if decision != "promote" && decision != "abort" {
		return Rollout{}, wrap(op, fmt.Errorf("%w: decision %q (want promote or abort)", ErrInvalid, decision))
	}
	var out Rollout
	err := s.tx(ctx, func(tx *storeTx) error {
		// The conditional UPDATE decides atomically against a rollout
		// ending meanwhile; the read afterwards says which happened.
		done := []any{decision, id}
		marks := []string{}
		for _, st := range []RolloutState{RolloutSucceeded, RolloutFailed, RolloutCancelled, RolloutSuperseded, RolloutAborted} {
			marks, done = append(marks, "?"), append(done, string(st))
		}
		if _, err := s.exec(ctx, tx, "UPDATE rollouts SET decision = ? WHERE id = ? AND state NOT IN ("+strings.Join(marks, ", ")+")", done...); err != nil {
			return err
		}
		r, err := scanRollout(tx.QueryRowContext(ctx, s.q("SELECT "+rolloutCols+" FROM rollouts WHERE id = ?"), id))
		if err != nil {
			return err
		}
		if r.State.Done() {
			return fmt.Errorf("%w: rollout %d already ended (%s)", ErrNotQueued, id, r.State)
		}
		out = r
		return nil
	})
	return out, wrap(op, err)
}

// Rollout nodes.

const rolloutNodeCols = "rollout_id, node, node_id, task, action, stage, run_once, to_release, token, state, step, error, serving, upgrade_id, updated_at"

// assignChunk is how many nodes one INSERT writes: 15 parameters each stays
// far below every backend's limit (SQLite 32766, PostgreSQL and MySQL 65535).
const assignChunk = 500

// pgRolloutNodes are rollout_nodes rows as one array per column, for
// PostgreSQL's unnest.
type pgRolloutNodes struct {
	rollout, nodeID, task, token, upgrade          []int64
	node, action, stage, runOnce, to, state, empty []string
	at                                             []time.Time
}

func (c *pgRolloutNodes) add(n RolloutNode, runOnce string, at time.Time) {
	c.rollout, c.node, c.nodeID, c.task = append(c.rollout, n.RolloutID), append(c.node, n.Node), append(c.nodeID, n.NodeID), append(c.task, n.Task)
	c.action, c.stage, c.runOnce, c.to = append(c.action, n.Action), append(c.stage, n.Stage), append(c.runOnce, runOnce), append(c.to, n.To)
	c.token, c.state, c.empty = append(c.token, n.Token), append(c.state, n.State), append(c.empty, "")
	c.upgrade, c.at = append(c.upgrade, 0), append(c.at, at)
}

// args are the 15 arrays in rolloutNodeCols' order (step, error and
// serving start empty, upgrade_id 0).
func (c *pgRolloutNodes) args() []any {
	return []any{c.rollout, c.node, c.nodeID, c.task, c.action, c.stage, c.runOnce, c.to, c.token, c.state, c.empty, c.empty, c.empty, c.upgrade, c.at}
}

func scanRolloutNode(sc interface{ Scan(...any) error }) (RolloutNode, error) {
	var n RolloutNode
	var runOnce string
	if err := sc.Scan(&n.RolloutID, &n.Node, &n.NodeID, &n.Task, &n.Action, &n.Stage, &runOnce, &n.To, &n.Token, &n.State,
		&n.Step, &n.Error, &n.Serving, &n.UpgradeID, &n.UpdatedAt); err != nil {
		return RolloutNode{}, err
	}
	n.UpdatedAt = n.UpdatedAt.UTC()
	if err := json.Unmarshal([]byte(runOnce), &n.RunOnce); err != nil {
		return RolloutNode{}, fmt.Errorf("rollout %d node %s: run_once %q: %w", n.RolloutID, n.Node, runOnce, err)
	}
	if len(n.RunOnce) == 0 {
		n.RunOnce = nil
	}
	return n, nil
}

func validNodeState(st string) error {
	switch st {
	case NodeAssigned, NodeWorking, NodeDone, NodeFailed:
		return nil
	}
	return fmt.Errorf("%w: node state %q (want %s, %s, %s or %s)", ErrInvalid, st, NodeAssigned, NodeWorking, NodeDone, NodeFailed)
}

func (s *sqlStore) AssignRolloutNodes(ctx context.Context, nodes []RolloutNode) error {
	if len(nodes) == 0 {
		return nil
	}
	rid := nodes[0].RolloutID
	op := fmt.Sprintf("assign %d node(s) of rollout %d", len(nodes), rid)
	at := now()
	args := make([]any, 0, len(nodes)*15)
	var cols pgRolloutNodes
	seen := make(map[string]bool, len(nodes))
	for i, n := range nodes {
		if seen[n.Node] {
			return wrap(op, fmt.Errorf("%w: node %s is listed twice (one task per node and call)", ErrInvalid, n.Node))
		}
		seen[n.Node] = true
		if n.RolloutID != rid {
			return wrap(op, fmt.Errorf("%w: node %s belongs to rollout %d, not %d (assign one rollout at a time)", ErrInvalid, n.Node, n.RolloutID, rid))
		}
		if err := need(fmt.Sprintf("node name of entry %d", i), n.Node); err != nil {
			return wrap(op, err)
		}
		if n.State == "" {
			n.State = NodeAssigned
		}
		if err := validNodeState(n.State); err != nil {
			return wrap(op, fmt.Errorf("node %s: %w", n.Node, err))
		}
		runOnce := []byte("[]")
		if len(n.RunOnce) > 0 {
			runOnce, _ = json.Marshal(n.RunOnce)
		}
		if s.dialect == Postgres {
			cols.add(n, string(runOnce), at)
			continue
		}
		args = append(args, n.RolloutID, n.Node, n.NodeID, n.Task, n.Action, n.Stage, string(runOnce), n.To, n.Token, n.State, "", "", "", int64(0), at)
	}
	upsert := " ON CONFLICT (rollout_id, node) DO UPDATE SET "
	set := func(col string) string { return col + " = excluded." + col }
	if s.dialect == MySQL {
		upsert = " ON DUPLICATE KEY UPDATE "
		set = func(col string) string { return col + " = VALUES(" + col + ")" }
	}
	var sets []string
	for _, col := range strings.Split(rolloutNodeCols, ", ")[2:] {
		sets = append(sets, set(col))
	}
	upsert += strings.Join(sets, ", ")
	const row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
	err := s.queueTx(ctx, func(tx *storeTx) error {
		var app, env string
		var ticket int64
		if err := tx.QueryRowContext(ctx, s.q("SELECT app, env, ticket_id FROM rollouts WHERE id = ?"), rid).Scan(&app, &env, &ticket); err != nil {
			return err
		}
		l, err := s.lockLease(ctx, tx, app, env)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("%w: %s/%s has no deploy lease", ErrLeaseLost, app, env)
		}
		if err != nil {
			return err
		}
		if l.TicketID == 0 || l.TicketID != ticket {
			return fmt.Errorf("%w: the lease of %s/%s is not held by rollout %d's ticket %d (holder: ticket %d)", ErrLeaseLost, app, env, rid, ticket, l.TicketID)
		}
		for _, n := range nodes {
			if n.Token != l.Token {
				return fmt.Errorf("%w: node %s assigned under token %d; the lease of %s/%s has token %d now", ErrLeaseLost, n.Node, n.Token, app, env, l.Token)
			}
		}
		if s.dialect == Postgres {
			// One statement of 15 arrays, whatever the number of nodes:
			// 500-row VALUES lists of 7,500 parameters each took PostgreSQL
			// 170-200 ms to plan and run for 10,000 nodes.
			_, err := tx.ExecContext(ctx, "INSERT INTO rollout_nodes ("+rolloutNodeCols+") SELECT * FROM unnest("+
				"$1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], "+
				"$9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[], $15::timestamptz[])"+upsert, cols.args()...)
			return err
		}
		for start := 0; start < len(nodes); start += assignChunk {
			end := min(start+assignChunk, len(nodes))
			rows := strings.TrimSuffix(strings.Repeat(row+", ", end-start), ", ")
			if _, err := s.exec(ctx, tx, "INSERT INTO rollout_nodes ("+rolloutNodeCols+") VALUES "+rows+upsert, args[start*15:end*15]...); err != nil {
				return err
			}
		}
		return nil
	})
	return wrap(op, err)
}

func (s *sqlStore) ReportRolloutNode(ctx context.Context, n RolloutNode) (bool, error) {
	op := fmt.Sprintf("report node %s on task %d of rollout %d", n.Node, n.Task, n.RolloutID)
	if err := validNodeState(n.State); err != nil {
		return false, wrap(op, err)
	}
	// One conditional UPDATE: a report for a task that is no longer the
	// node's current one matches no row, and neither does a progress
	// report arriving after the task's result.
	query := "UPDATE rollout_nodes SET state = ?, step = ?, error = ?, serving = ?, upgrade_id = ?, updated_at = ? WHERE rollout_id = ? AND node = ? AND task = ?"
	args := []any{n.State, n.Step, n.Error, n.Serving, n.UpgradeID, now(), n.RolloutID, n.Node, n.Task}
	if n.State != NodeDone && n.State != NodeFailed {
		query, args = query+" AND state NOT IN (?, ?)", append(args, NodeDone, NodeFailed)
	}
	c, err := s.exec(ctx, s.db, query, args...)
	if err != nil {
		return false, wrap(op, err)
	}
	return c > 0, nil
}

func (s *sqlStore) GetRolloutNode(ctx context.Context, rolloutID int64, node string) (RolloutNode, error) {
	n, err := scanRolloutNode(s.db.QueryRowContext(ctx, s.q("SELECT "+rolloutNodeCols+" FROM rollout_nodes WHERE rollout_id = ? AND node = ?"), rolloutID, node))
	return n, wrap(fmt.Sprintf("get node %s of rollout %d", node, rolloutID), err)
}

func (s *sqlStore) ListRolloutNodes(ctx context.Context, rolloutID int64) ([]RolloutNode, error) {
	out, err := queryAll(ctx, s.db, scanRolloutNode, s.q("SELECT "+rolloutNodeCols+" FROM rollout_nodes WHERE rollout_id = ? ORDER BY node"), rolloutID)
	return out, wrap(fmt.Sprintf("list nodes of rollout %d", rolloutID), err)
}
