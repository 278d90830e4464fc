package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The deploy queue. Every write to an environment's tickets or lease runs
// in one transaction that first locks the environment's deploy_leases row
// (SELECT ... FOR UPDATE on PostgreSQL and MySQL, an IMMEDIATE transaction on
// SQLite) and reads under READ COMMITTED, so the row lock is a per-environment
// mutex shared by every replica: two replicas racing for the head serialise,
// ticket IDs are handed out in queue order, and the fencing token (the row's
// token column, only ever incremented) never repeats.

const ticketCols = "id, app, env, holder, state, created_at, touched_at, token, acquired_at, expires_at, ended_at, superseded_by, resumable"

type ticketRow struct {
	Ticket
	touched time.Time
}

func scanTicket(sc interface{ Scan(...any) error }) (ticketRow, error) {
	var t ticketRow
	var state string
	var acquired, expires, ended sql.NullTime
	err := sc.Scan(&t.ID, &t.App, &t.Env, &t.Holder, &state, &t.CreatedAt, &t.touched, &t.Token, &acquired, &expires, &ended, &t.SupersededBy, &t.Resumable)
	t.State, t.CreatedAt, t.touched = TicketState(state), t.CreatedAt.UTC(), t.touched.UTC()
	t.AcquiredAt, t.ExpiresAt, t.EndedAt = fromNull(acquired), fromNull(expires), fromNull(ended)
	return t, err
}

// queueTx runs fn in a READ COMMITTED transaction (SQLite: IMMEDIATE, which
// serialises writers anyway), retried on deadlock.
func (s *sqlStore) queueTx(ctx context.Context, fn func(tx *storeTx) error) error {
	var opts *sql.TxOptions
	if s.dialect != SQLite {
		opts = &sql.TxOptions{Isolation: sql.LevelReadCommitted}
	}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = s.txOpts(ctx, opts, fn)
		if classify(err) != errRetry {
			return err
		}
	}
	return err
}

// lockLease locks app/env's lease row for the rest of tx and returns it
// (TicketID 0 when free; Token is the last one handed out).
func (s *sqlStore) lockLease(ctx context.Context, tx *storeTx, app, env string) (Lease, error) {
	forUpdate := " FOR UPDATE"
	if s.dialect == SQLite {
		forUpdate = ""
	}
	l := Lease{App: app, Env: env}
	var since, expires sql.NullTime
	err := tx.QueryRowContext(ctx, s.q("SELECT ticket_id, holder, token, since, expires_at FROM deploy_leases WHERE app = ? AND env = ?"+forUpdate), app, env).
		Scan(&l.TicketID, &l.Holder, &l.Token, &since, &expires)
	l.Since, l.ExpiresAt = fromNull(since), fromNull(expires)
	return l, err
}

func (s *sqlStore) ticket(ctx context.Context, db queryer, id int64) (ticketRow, error) {
	return scanTicket(db.QueryRowContext(ctx, s.q("SELECT "+ticketCols+" FROM deploy_tickets WHERE id = ?"), id))
}

// lockTicket reads ticket id's environment, locks its lease row and reads
// the ticket again under the lock.
func (s *sqlStore) lockTicket(ctx context.Context, tx *storeTx, id int64) (ticketRow, Lease, error) {
	t, err := s.ticket(ctx, tx, id)
	if err != nil {
		return ticketRow{}, Lease{}, err
	}
	l, err := s.lockLease(ctx, tx, t.App, t.Env)
	if err != nil {
		return ticketRow{}, Lease{}, err
	}
	t, err = s.ticket(ctx, tx, id)
	return t, l, err
}

// queued returns app/env's queued tickets, oldest first.
func (s *sqlStore) queued(ctx context.Context, db queryer, app, env string) ([]ticketRow, error) {
	rows, err := db.QueryContext(ctx, s.q("SELECT "+ticketCols+" FROM deploy_tickets WHERE app = ? AND env = ? AND state = ? ORDER BY id"), app, env, string(TicketQueued))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ticketRow
	for rows.Next() {
		t, err := scanTicket(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

func position(q []ticketRow, id int64) int {
	for i, t := range q {
		if t.ID == id {
			return i + 1
		}
	}
	return 0
}

// end moves ticket id from state from to a final state at at.
func (s *sqlStore) end(ctx context.Context, tx *storeTx, id int64, from, to TicketState, at time.Time) error {
	_, err := s.exec(ctx, tx, "UPDATE deploy_tickets SET state = ?, ended_at = ? WHERE id = ? AND state = ?", string(to), at, id, string(from))
	return err
}

func (s *sqlStore) EnqueueTicket(ctx context.Context, t Ticket, supersede bool) (Ticket, error) {
	op := fmt.Sprintf("enqueue deploy of %s/%s for %s", t.App, t.Env, t.Holder)
	if err := errors.Join(need("app", t.App), need("env", t.Env), need("holder", t.Holder)); err != nil {
		return Ticket{}, wrap(op, err)
	}
	at := norm(t.CreatedAt)
	ignore := " ON CONFLICT DO NOTHING"
	if s.dialect == MySQL {
		ignore = " ON DUPLICATE KEY UPDATE app = app"
	}
	var out Ticket
	err := s.queueTx(ctx, func(tx *storeTx) error {
		if err := s.ensureEnv(ctx, tx, t.App, t.Env, at); err != nil {
			return err
		}
		if _, err := s.exec(ctx, tx, "INSERT INTO deploy_leases (app, env) VALUES (?, ?)"+ignore, t.App, t.Env); err != nil {
			return err
		}
		if _, err := s.lockLease(ctx, tx, t.App, t.Env); err != nil {
			return err
		}
		id, err := s.insert(ctx, tx, "INSERT INTO deploy_tickets (app, env, holder, state, created_at, touched_at, resumable) VALUES (?, ?, ?, ?, ?, ?, ?)",
			t.App, t.Env, t.Holder, string(TicketQueued), at, at, t.Resumable)
		if err != nil {
			return err
		}
		if supersede {
			if _, err := s.exec(ctx, tx, "UPDATE deploy_tickets SET state = ?, superseded_by = ?, ended_at = ? WHERE app = ? AND env = ? AND state = ? AND id < ?",
				string(TicketSuperseded), id, at, t.App, t.Env, string(TicketQueued), id); err != nil {
				return err
			}
		}
		q, err := s.queued(ctx, tx, t.App, t.Env)
		if err != nil {
			return err
		}
		out = Ticket{ID: id, App: t.App, Env: t.Env, Holder: t.Holder, State: TicketQueued, Position: position(q, id), CreatedAt: at, Resumable: t.Resumable}
		return nil
	})
	return out, wrap(op, err)
}

func (s *sqlStore) TryAcquire(ctx context.Context, id int64, at time.Time, ttl time.Duration) (Lease, bool, error) {
	op := fmt.Sprintf("acquire deploy lease for ticket %d", id)
	if ttl <= 0 {
		return Lease{}, false, wrap(op, fmt.Errorf("%w: lease duration %s", ErrInvalid, ttl))
	}
	at = norm(at)
	var out Lease
	var got bool
	err := s.queueTx(ctx, func(tx *storeTx) error {
		out, got = Lease{}, false
		t, cur, err := s.lockTicket(ctx, tx, id)
		if err != nil {
			return err
		}
		switch t.State {
		case TicketQueued:
		case TicketRunning:
			if cur.TicketID == id && cur.Token == t.Token {
				out, got = cur, true
				return nil
			}
			return ErrLeaseLost
		case TicketCancelled:
			return ErrCancelled
		case TicketSuperseded:
			return fmt.Errorf("%w (ticket %d)", ErrSuperseded, t.SupersededBy)
		case TicketExpired:
			return ErrLeaseLost
		default:
			return fmt.Errorf("%w: ticket %d is %s", ErrNotQueued, id, t.State)
		}
		if _, err := s.exec(ctx, tx, "UPDATE deploy_tickets SET touched_at = ? WHERE id = ?", at, id); err != nil {
			return err
		}
		q, err := s.queued(ctx, tx, t.App, t.Env)
		if err != nil {
			return err
		}
		// The head is the oldest queued ticket whose waiter is alive;
		// waiters that stopped trying (a crashed deployer) are expired.
		// A Resumable ticket has no single waiter (any replica's runner
		// picks it up), so it stays queued until it runs or is cancelled.
		var head int64
		for _, o := range q {
			if o.ID != id && !o.Resumable && !at.Before(o.touched.Add(ttl)) {
				if err := s.end(ctx, tx, o.ID, TicketQueued, TicketExpired, at); err != nil {
					return err
				}
				continue
			}
			head = o.ID
			break
		}
		held := cur.TicketID != 0 && at.Before(cur.ExpiresAt)
		if cur.TicketID != 0 && !held {
			// A lapsed Resumable holder is not expired: its rollout is
			// continued by whoever calls TakeOverLease, so the queue waits.
			holder, err := s.ticket(ctx, tx, cur.TicketID)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			held = err == nil && holder.Resumable && holder.State == TicketRunning
		}
		if head != id || held {
			if cur.TicketID != 0 {
				out = cur
			}
			return nil
		}
		if cur.TicketID != 0 { // expired: its holder loses it now
			if err := s.end(ctx, tx, cur.TicketID, TicketRunning, TicketExpired, at); err != nil {
				return err
			}
		}
		out = Lease{App: t.App, Env: t.Env, TicketID: id, Holder: t.Holder, Token: cur.Token + 1, Since: at, ExpiresAt: at.Add(ttl)}
		if _, err := s.exec(ctx, tx, "UPDATE deploy_leases SET ticket_id = ?, holder = ?, token = ?, since = ?, expires_at = ? WHERE app = ? AND env = ?",
			id, t.Holder, out.Token, at, out.ExpiresAt, t.App, t.Env); err != nil {
			return err
		}
		if _, err := s.exec(ctx, tx, "UPDATE deploy_tickets SET state = ?, token = ?, acquired_at = ?, expires_at = ? WHERE id = ?",
			string(TicketRunning), out.Token, at, out.ExpiresAt, id); err != nil {
			return err
		}
		got = true
		return nil
	})
	if err != nil {
		return Lease{}, false, wrap(op, err)
	}
	return out, got, nil
}

// lockHeld locks l's environment and fails with ErrLeaseLost unless l
// still holds its lease.
func (s *sqlStore) lockHeld(ctx context.Context, tx *storeTx, l Lease) error {
	cur, err := s.lockLease(ctx, tx, l.App, l.Env)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrLeaseLost
	}
	if err != nil {
		return err
	}
	if cur.TicketID == 0 || cur.TicketID != l.TicketID || cur.Token != l.Token {
		holder := "nobody"
		if cur.TicketID != 0 {
			holder = fmt.Sprintf("%s (ticket %d, token %d)", cur.Holder, cur.TicketID, cur.Token)
		}
		return fmt.Errorf("%w: token %d of ticket %d; the lease is now held by %s", ErrLeaseLost, l.Token, l.TicketID, holder)
	}
	return nil
}

func (s *sqlStore) RenewLease(ctx context.Context, l Lease, at time.Time, ttl time.Duration) (Lease, error) {
	op := fmt.Sprintf("renew deploy lease of %s/%s", l.App, l.Env)
	if ttl <= 0 {
		return Lease{}, wrap(op, fmt.Errorf("%w: lease duration %s", ErrInvalid, ttl))
	}
	at = norm(at)
	err := s.queueTx(ctx, func(tx *storeTx) error {
		if err := s.lockHeld(ctx, tx, l); err != nil {
			return err
		}
		if _, err := s.exec(ctx, tx, "UPDATE deploy_leases SET expires_at = ? WHERE app = ? AND env = ?", at.Add(ttl), l.App, l.Env); err != nil {
			return err
		}
		_, err := s.exec(ctx, tx, "UPDATE deploy_tickets SET expires_at = ? WHERE id = ?", at.Add(ttl), l.TicketID)
		return err
	})
	if err != nil {
		return Lease{}, wrap(op, err)
	}
	l.ExpiresAt = at.Add(ttl)
	return l, nil
}

func (s *sqlStore) ReleaseLease(ctx context.Context, l Lease, at time.Time) error {
	op := fmt.Sprintf("release deploy lease of %s/%s", l.App, l.Env)
	at = norm(at)
	err := s.queueTx(ctx, func(tx *storeTx) error {
		if err := s.lockHeld(ctx, tx, l); err != nil {
			return err
		}
		if _, err := s.exec(ctx, tx, "UPDATE deploy_leases SET ticket_id = 0, holder = '', since = NULL, expires_at = NULL WHERE app = ? AND env = ?", l.App, l.Env); err != nil {
			return err
		}
		return s.end(ctx, tx, l.TicketID, TicketRunning, TicketDone, at)
	})
	return wrap(op, err)
}

func (s *sqlStore) CancelTicket(ctx context.Context, id int64, at time.Time) (Ticket, error) {
	op := fmt.Sprintf("cancel ticket %d", id)
	at = norm(at)
	var out Ticket
	err := s.queueTx(ctx, func(tx *storeTx) error {
		t, _, err := s.lockTicket(ctx, tx, id)
		if err != nil {
			return err
		}
		switch t.State {
		case TicketCancelled:
		case TicketQueued:
			if err := s.end(ctx, tx, id, TicketQueued, TicketCancelled, at); err != nil {
				return err
			}
			t.State, t.EndedAt = TicketCancelled, at
		default:
			return fmt.Errorf("%w: it is %s (a running deploy is stopped by its holder or by abort)", ErrNotQueued, t.State)
		}
		out = t.Ticket
		return nil
	})
	return out, wrap(op, err)
}

func (s *sqlStore) GetTicket(ctx context.Context, id int64) (Ticket, error) {
	op := fmt.Sprintf("get ticket %d", id)
	t, err := s.ticket(ctx, s.db, id)
	if err != nil {
		return Ticket{}, wrap(op, err)
	}
	if t.State == TicketQueued {
		q, err := s.queued(ctx, s.db, t.App, t.Env)
		if err != nil {
			return Ticket{}, wrap(op, err)
		}
		t.Position = position(q, id)
	}
	return t.Ticket, nil
}

func (s *sqlStore) QueueStatus(ctx context.Context, app, env string) (QueueStatus, error) {
	op := fmt.Sprintf("deploy queue of %s/%s", app, env)
	out := QueueStatus{App: app, Env: env, Queue: []Ticket{}}
	var l Lease
	var since, expires sql.NullTime
	err := s.db.QueryRowContext(ctx, s.q("SELECT ticket_id, holder, token, since, expires_at FROM deploy_leases WHERE app = ? AND env = ?"), app, env).
		Scan(&l.TicketID, &l.Holder, &l.Token, &since, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return out, nil
	}
	if err != nil {
		return QueueStatus{}, wrap(op, err)
	}
	out.LastToken = l.Token
	if l.TicketID != 0 {
		l.App, l.Env, l.Since, l.ExpiresAt = app, env, fromNull(since), fromNull(expires)
		out.Lease = &l
	}
	q, err := s.queued(ctx, s.db, app, env)
	if err != nil {
		return QueueStatus{}, wrap(op, err)
	}
	for i, t := range q {
		t.Position = i + 1
		out.Queue = append(out.Queue, t.Ticket)
	}
	return out, nil
}
