package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
)

// sqlStore implements Store for every dialect on database/sql; the few
// statements that differ are chosen by dialect.
type sqlStore struct {
	db      *storeDB
	dialect string
	pgURL   string // PostgreSQL: URL of the LISTEN connection

	hub *hub

	ctx    context.Context // lives until Close; owns the watcher goroutine
	cancel context.CancelFunc
	wg     sync.WaitGroup

	watchMu    sync.Mutex
	watchReady bool // the watcher goroutine runs and its subscription is live

	closeOnce sync.Once
	closeErr  error
}

func newSQLStore(db *sql.DB, t Target) *sqlStore {
	ctx, cancel := context.WithCancel(context.Background())
	return &sqlStore{db: newStoreDB(db, t.Dialect), dialect: t.Dialect, pgURL: t.URL, hub: newHub(), ctx: ctx, cancel: cancel}
}

func (s *sqlStore) Dialect() string { return s.dialect }

func (s *sqlStore) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.hub.close()
		if err := s.db.Close(); err != nil {
			s.closeErr = fmt.Errorf("store: close: %w", err)
		}
	})
	return s.closeErr
}

// q rewrites ? placeholders to PostgreSQL's $n. No statement here has a
// literal question mark.
func (s *sqlStore) q(query string) string {
	if s.dialect != Postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// queryer is what *sql.DB and *sql.Tx share.
type queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *sqlStore) exec(ctx context.Context, db queryer, query string, args ...any) (int64, error) {
	res, err := db.ExecContext(ctx, s.q(query), args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// insert runs an INSERT and returns the new row's id.
func (s *sqlStore) insert(ctx context.Context, db queryer, query string, args ...any) (int64, error) {
	if s.dialect == Postgres {
		var id int64
		err := db.QueryRowContext(ctx, s.q(query)+" RETURNING id", args...).Scan(&id)
		return id, err
	}
	res, err := db.ExecContext(ctx, s.q(query), args...)
	if err != nil {
		return 0, err
	}
	return res.LastInsertId()
}

// tx runs fn in a transaction, running it again (up to 5 times in all)
// when the database chose it as a deadlock victim.
func (s *sqlStore) tx(ctx context.Context, fn func(tx *storeTx) error) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		err = s.txOpts(ctx, nil, fn)
		if classify(err) != errRetry {
			return err
		}
	}
	return err
}

// txOpts runs fn in one transaction with opts.
func (s *sqlStore) txOpts(ctx context.Context, opts *sql.TxOptions, fn func(tx *storeTx) error) error {
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// wrap adds the operation and, where the driver's error means one, a
// sentinel error.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("store: %s: %w", op, ErrNotFound)
	}
	for _, sentinel := range []error{ErrNotFound, ErrConflict, ErrTokenUsed, ErrTokenRevoked, ErrTokenExpired, ErrInvalid, ErrPermission, ErrLeaseLost, ErrSuperseded, ErrCancelled, ErrNotQueued} {
		if errors.Is(err, sentinel) {
			return fmt.Errorf("store: %s: %w", op, err)
		}
	}
	switch classify(err) {
	case errUnique:
		return fmt.Errorf("store: %s: %w: %w", op, ErrConflict, err)
	case errForeignKey:
		return fmt.Errorf("store: %s: %w (a record it refers to does not exist): %w", op, ErrNotFound, err)
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

const (
	errOther = iota
	errUnique
	errForeignKey
	errRetry // deadlock or serialization failure: run the transaction again
)

func classify(err error) int {
	var pg *pgconn.PgError
	var my *mysql.MySQLError
	var lite *sqlite.Error
	switch {
	case errors.As(err, &pg):
		switch pg.Code {
		case "23505":
			return errUnique
		case "23503":
			return errForeignKey
		case "40001", "40P01":
			return errRetry
		}
	case errors.As(err, &my):
		switch my.Number {
		case 1062:
			return errUnique
		case 1452, 1216:
			return errForeignKey
		case 1213: // deadlock
			return errRetry
		}
	case errors.As(err, &lite):
		switch lite.Code() {
		case 2067, 1555: // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CONSTRAINT_PRIMARYKEY
			return errUnique
		case 787: // SQLITE_CONSTRAINT_FOREIGNKEY
			return errForeignKey
		}
	}
	return errOther
}

// now is the store's clock for zero times in inputs.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// norm is how every time is stored: UTC, microseconds (what all three
// databases keep).
func norm(t time.Time) time.Time {
	if t.IsZero() {
		return now()
	}
	return t.UTC().Truncate(time.Microsecond)
}

// nullTime stores a zero time as NULL.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Truncate(time.Microsecond)
}

func fromNull(t sql.NullTime) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time.UTC()
}

func need(what, v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("%w: %s is empty", ErrInvalid, what)
	}
	return nil
}

// ensureEnv creates app and app/env when they are new.
func (s *sqlStore) ensureEnv(ctx context.Context, tx queryer, app, env string, at time.Time) error {
	ignore := " ON CONFLICT DO NOTHING"
	prefix := "INSERT INTO "
	if s.dialect == MySQL {
		ignore = " ON DUPLICATE KEY UPDATE name = name"
	}
	if _, err := s.exec(ctx, tx, prefix+"apps (name, created_at) VALUES (?, ?)"+ignore, app, at); err != nil {
		return err
	}
	_, err := s.exec(ctx, tx, prefix+"environments (app, name, version, created_at) VALUES (?, ?, 0, ?)"+ignore, app, env, at)
	return err
}

// bump increments app/env's version inside tx, queues the PostgreSQL
// notification (delivered on commit) and returns the new version.
func (s *sqlStore) bump(ctx context.Context, tx *storeTx, app, env string) (int64, error) {
	if _, err := s.exec(ctx, tx, "UPDATE environments SET version = version + 1 WHERE app = ? AND name = ?", app, env); err != nil {
		return 0, err
	}
	var v int64
	if err := tx.QueryRowContext(ctx, s.q("SELECT version FROM environments WHERE app = ? AND name = ?"), app, env).Scan(&v); err != nil {
		return 0, err
	}
	if s.dialect == Postgres {
		payload, _ := json.Marshal(Change{App: app, Env: env, Version: v})
		if _, err := tx.ExecContext(ctx, "SELECT pg_notify($1, $2)", notifyChannel, string(payload)); err != nil {
			return 0, err
		}
	}
	return v, nil
}

// Releases.

const releaseCols = "id, app, env, spec, resolved_commit, created_by, created_at, note"

func scanRelease(sc interface{ Scan(...any) error }) (Release, error) {
	var r Release
	err := sc.Scan(&r.ID, &r.App, &r.Env, &r.Spec, &r.Commit, &r.CreatedBy, &r.CreatedAt, &r.Note)
	r.CreatedAt = r.CreatedAt.UTC()
	return r, err
}

func (s *sqlStore) CreateRelease(ctx context.Context, r Release) (Release, error) {
	for what, v := range map[string]string{"app": r.App, "env": r.Env, "spec": r.Spec} {
		if err := need(what, v); err != nil {
			return Release{}, wrap("create release", err)
		}
	}
	r.CreatedAt = norm(r.CreatedAt)
	var version int64
	err := s.tx(ctx, func(tx *storeTx) error {
		if err := s.ensureEnv(ctx, tx, r.App, r.Env, r.CreatedAt); err != nil {
			return err
		}
		id, err := s.insert(ctx, tx, "INSERT INTO releases (app, env, spec, resolved_commit, created_by, created_at, note) VALUES (?, ?, ?, ?, ?, ?, ?)",
			r.App, r.Env, r.Spec, r.Commit, r.CreatedBy, r.CreatedAt, r.Note)
		if err != nil {
			return err
		}
		r.ID = id
		version, err = s.bump(ctx, tx, r.App, r.Env)
		return err
	})
	if err != nil {
		return Release{}, wrap(fmt.Sprintf("create release %s/%s %s", r.App, r.Env, r.Spec), err)
	}
	s.hub.publish(Change{App: r.App, Env: r.Env, Version: version})
	return r, nil
}

func (s *sqlStore) GetRelease(ctx context.Context, id int64) (Release, error) {
	r, err := scanRelease(s.db.QueryRowContext(ctx, s.q("SELECT "+releaseCols+" FROM releases WHERE id = ?"), id))
	return r, wrap(fmt.Sprintf("get release %d", id), err)
}

func (s *sqlStore) ListReleases(ctx context.Context, f ReleaseFilter) ([]Release, error) {
	var where []string
	var args []any
	if f.App != "" {
		where, args = append(where, "app = ?"), append(args, f.App)
	}
	if f.Env != "" {
		where, args = append(where, "env = ?"), append(args, f.Env)
	}
	if f.BeforeID > 0 {
		where, args = append(where, "id < ?"), append(args, f.BeforeID)
	}
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+releaseCols+" FROM releases"+whereClause(where)+" ORDER BY id DESC"+limit(f.Limit)), args...)
	if err != nil {
		return nil, wrap("list releases", err)
	}
	defer rows.Close()
	out := []Release{}
	for rows.Next() {
		r, err := scanRelease(rows)
		if err != nil {
			return nil, wrap("list releases", err)
		}
		out = append(out, r)
	}
	return out, wrap("list releases", rows.Err())
}

func whereClause(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

func limit(n int) string {
	if n <= 0 {
		return ""
	}
	return " LIMIT " + strconv.Itoa(n)
}

func (s *sqlStore) LatestRelease(ctx context.Context, app, env string) (Release, error) {
	r, err := scanRelease(s.db.QueryRowContext(ctx, s.q("SELECT "+releaseCols+" FROM releases WHERE app = ? AND env = ? ORDER BY id DESC LIMIT 1"), app, env))
	return r, wrap(fmt.Sprintf("latest release of %s/%s", app, env), err)
}

func (s *sqlStore) ResolveRelease(ctx context.Context, id int64, commit string) (string, error) {
	op := fmt.Sprintf("resolve release %d", id)
	if err := need("commit", commit); err != nil {
		return "", wrap(op, err)
	}
	// The conditional UPDATE is atomic in every backend: of concurrent
	// resolvers exactly one sees resolved_commit = ''; all read the winner.
	if _, err := s.exec(ctx, s.db, "UPDATE releases SET resolved_commit = ? WHERE id = ? AND resolved_commit = ''", commit, id); err != nil {
		return "", wrap(op, err)
	}
	var stored string
	err := s.db.QueryRowContext(ctx, s.q("SELECT resolved_commit FROM releases WHERE id = ?"), id).Scan(&stored)
	return stored, wrap(op, err)
}

// Environments and change notification.

func (s *sqlStore) ListEnvironments(ctx context.Context, app string) ([]Environment, error) {
	query, args := "SELECT "+envCols+" FROM environments", []any{}
	if app != "" {
		query, args = query+" WHERE app = ?", append(args, app)
	}
	rows, err := s.db.QueryContext(ctx, s.q(query+" ORDER BY app, name"), args...)
	if err != nil {
		return nil, wrap("list environments", err)
	}
	defer rows.Close()
	out := []Environment{}
	for rows.Next() {
		e, err := scanEnvironment(rows)
		if err != nil {
			return nil, wrap("list environments", err)
		}
		out = append(out, e)
	}
	return out, wrap("list environments", rows.Err())
}

func (s *sqlStore) Version(ctx context.Context, app, env string) (int64, error) {
	var v int64
	err := s.db.QueryRowContext(ctx, s.q("SELECT version FROM environments WHERE app = ? AND name = ?"), app, env).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return v, wrap(fmt.Sprintf("version of %s/%s", app, env), err)
}

func (s *sqlStore) BumpVersion(ctx context.Context, app, env string) (int64, error) {
	op := fmt.Sprintf("bump version of %s/%s", app, env)
	if err := errors.Join(need("app", app), need("env", env)); err != nil {
		return 0, wrap(op, err)
	}
	var v int64
	err := s.tx(ctx, func(tx *storeTx) error {
		if err := s.ensureEnv(ctx, tx, app, env, now()); err != nil {
			return err
		}
		var err error
		v, err = s.bump(ctx, tx, app, env)
		return err
	})
	if err != nil {
		return 0, wrap(op, err)
	}
	s.hub.publish(Change{App: app, Env: env, Version: v})
	return v, nil
}

// Nodes.

const nodeCols = "id, name, hostname, app, env, roles, agent_version, created_at, last_seen, current_release"

func scanNode(sc interface{ Scan(...any) error }) (Node, error) {
	var n Node
	var roles string
	var cur sql.NullInt64
	if err := sc.Scan(&n.ID, &n.Name, &n.Hostname, &n.App, &n.Env, &roles, &n.AgentVersion, &n.CreatedAt, &n.LastSeen, &cur); err != nil {
		return Node{}, err
	}
	n.CreatedAt, n.LastSeen, n.CurrentRelease = n.CreatedAt.UTC(), n.LastSeen.UTC(), cur.Int64
	if err := json.Unmarshal([]byte(roles), &n.Roles); err != nil {
		return Node{}, fmt.Errorf("node %d: roles %q: %w", n.ID, roles, err)
	}
	if n.Roles == nil {
		n.Roles = []string{}
	}
	return n, nil
}

func (s *sqlStore) RegisterNode(ctx context.Context, n Node) (Node, error) {
	op := fmt.Sprintf("register node %s in %s/%s", n.Name, n.App, n.Env)
	if err := errors.Join(need("node name", n.Name), need("app", n.App), need("env", n.Env)); err != nil {
		return Node{}, wrap(op, err)
	}
	if n.Roles == nil {
		n.Roles = []string{}
	}
	roles, _ := json.Marshal(n.Roles)
	at := norm(n.LastSeen)
	upsert := " ON CONFLICT (name, app, env) DO UPDATE SET hostname = excluded.hostname, roles = excluded.roles, agent_version = excluded.agent_version, last_seen = excluded.last_seen"
	if s.dialect == MySQL {
		upsert = " ON DUPLICATE KEY UPDATE hostname = VALUES(hostname), roles = VALUES(roles), agent_version = VALUES(agent_version), last_seen = VALUES(last_seen)"
	}
	var out Node
	err := s.tx(ctx, func(tx *storeTx) error {
		if err := s.ensureEnv(ctx, tx, n.App, n.Env, at); err != nil {
			return err
		}
		if _, err := s.exec(ctx, tx, "INSERT INTO nodes (name, hostname, app, env, roles, agent_version, created_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"+upsert,
			n.Name, n.Hostname, n.App, n.Env, string(roles), n.AgentVersion, at, at); err != nil {
			return err
		}
		var err error
		out, err = scanNode(tx.QueryRowContext(ctx, s.q("SELECT "+nodeCols+" FROM nodes WHERE name = ? AND app = ? AND env = ?"), n.Name, n.App, n.Env))
		return err
	})
	return out, wrap(op, err)
}

func (s *sqlStore) GetNode(ctx context.Context, id int64) (Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, s.q("SELECT "+nodeCols+" FROM nodes WHERE id = ?"), id))
	return n, wrap(fmt.Sprintf("get node %d", id), err)
}

func (s *sqlStore) FindNode(ctx context.Context, name, app, env string) (Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, s.q("SELECT "+nodeCols+" FROM nodes WHERE name = ? AND app = ? AND env = ?"), name, app, env))
	return n, wrap(fmt.Sprintf("find node %s in %s/%s", name, app, env), err)
}

func (s *sqlStore) ListNodes(ctx context.Context, f NodeFilter) ([]Node, error) {
	var where []string
	var args []any
	for col, v := range map[string]string{"app": f.App, "env": f.Env, "name": f.Name} {
		if v != "" {
			where, args = append(where, col+" = ?"), append(args, v)
		}
	}
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+nodeCols+" FROM nodes"+whereClause(where)+" ORDER BY app, env, name"), args...)
	if err != nil {
		return nil, wrap("list nodes", err)
	}
	defer rows.Close()
	out := []Node{}
	for rows.Next() {
		n, err := scanNode(rows)
		if err != nil {
			return nil, wrap("list nodes", err)
		}
		out = append(out, n)
	}
	return out, wrap("list nodes", rows.Err())
}

func (s *sqlStore) TouchNode(ctx context.Context, id int64, at time.Time) error {
	op := fmt.Sprintf("touch node %d", id)
	n, err := s.exec(ctx, s.db, "UPDATE nodes SET last_seen = ? WHERE id = ?", norm(at), id)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	return wrap(op, err)
}

// touchBatch is how many nodes one TouchNodes transaction updates: enough
// to make ten thousand nodes a handful of commits, few enough that another
// writer (SQLite has one at a time) never waits long.
const touchBatch = 500

func (s *sqlStore) TouchNodes(ctx context.Context, seen map[int64]time.Time) error {
	ids := make([]int64, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	slices.Sort(ids) // the same lock order whoever writes
	for len(ids) > 0 {
		batch := ids[:min(touchBatch, len(ids))]
		ids = ids[len(batch):]
		err := s.tx(ctx, func(tx *storeTx) error {
			stmt, err := tx.PrepareContext(ctx, s.q("UPDATE nodes SET last_seen = ? WHERE id = ?"))
			if err != nil {
				return err
			}
			defer stmt.Close()
			for _, id := range batch {
				if _, err := stmt.ExecContext(ctx, norm(seen[id]), id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return wrap(fmt.Sprintf("touch %d nodes", len(seen)), err)
		}
	}
	return nil
}

func (s *sqlStore) SetNodeRelease(ctx context.Context, nodeID, releaseID int64) error {
	op := fmt.Sprintf("set node %d to release %d", nodeID, releaseID)
	n, err := s.exec(ctx, s.db, "UPDATE nodes SET current_release = ? WHERE id = ?", releaseID, nodeID)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	return wrap(op, err)
}

// Upgrades.

const upgradeCols = "u.id, u.node_id, u.release_id, u.status, u.current_step, u.created_at, u.started_at, u.ended_at, u.error, u.rollout_id, u.task"

func scanUpgrade(sc interface{ Scan(...any) error }) (Upgrade, error) {
	var u Upgrade
	var started, ended sql.NullTime
	var status string
	err := sc.Scan(&u.ID, &u.NodeID, &u.ReleaseID, &status, &u.CurrentStep, &u.CreatedAt, &started, &ended, &u.Error, &u.RolloutID, &u.Task)
	u.Status, u.CreatedAt, u.StartedAt, u.EndedAt = UpgradeStatus(status), u.CreatedAt.UTC(), fromNull(started), fromNull(ended)
	return u, err
}

func (s *sqlStore) CreateUpgrade(ctx context.Context, u Upgrade) (Upgrade, error) {
	op := fmt.Sprintf("create upgrade of node %d to release %d", u.NodeID, u.ReleaseID)
	if u.Status == "" {
		u.Status = UpgradePending
	}
	if !u.Status.Valid() {
		return Upgrade{}, wrap(op, fmt.Errorf("%w: upgrade status %q", ErrInvalid, u.Status))
	}
	u.CreatedAt = norm(u.CreatedAt)
	u.StartedAt, u.EndedAt = normOrZero(u.StartedAt), normOrZero(u.EndedAt)
	id, err := s.insert(ctx, s.db, "INSERT INTO upgrades (node_id, release_id, status, current_step, created_at, started_at, ended_at, error, rollout_id, task) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		u.NodeID, u.ReleaseID, string(u.Status), u.CurrentStep, u.CreatedAt, nullTime(u.StartedAt), nullTime(u.EndedAt), u.Error, u.RolloutID, u.Task)
	if err != nil {
		return Upgrade{}, wrap(op, err)
	}
	u.ID, u.Steps = id, nil
	return u, nil
}

func normOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Microsecond)
}

func (s *sqlStore) GetUpgrade(ctx context.Context, id int64) (Upgrade, error) {
	op := fmt.Sprintf("get upgrade %d", id)
	u, err := scanUpgrade(s.db.QueryRowContext(ctx, s.q("SELECT "+upgradeCols+" FROM upgrades u WHERE u.id = ?"), id))
	if err != nil {
		return Upgrade{}, wrap(op, err)
	}
	rows, err := s.db.QueryContext(ctx, s.q("SELECT name, status, started_at, ended_at, log FROM upgrade_steps WHERE upgrade_id = ? ORDER BY seq"), id)
	if err != nil {
		return Upgrade{}, wrap(op, err)
	}
	defer rows.Close()
	u.Steps = []Step{}
	for rows.Next() {
		st := Step{UpgradeID: id}
		var started, ended sql.NullTime
		if err := rows.Scan(&st.Name, &st.Status, &started, &ended, &st.Log); err != nil {
			return Upgrade{}, wrap(op, err)
		}
		st.StartedAt, st.EndedAt = fromNull(started), fromNull(ended)
		u.Steps = append(u.Steps, st)
	}
	return u, wrap(op, rows.Err())
}

func (s *sqlStore) UpdateUpgrade(ctx context.Context, u Upgrade) error {
	op := fmt.Sprintf("update upgrade %d", u.ID)
	if !u.Status.Valid() {
		return wrap(op, fmt.Errorf("%w: upgrade status %q", ErrInvalid, u.Status))
	}
	n, err := s.exec(ctx, s.db, "UPDATE upgrades SET status = ?, current_step = ?, started_at = ?, ended_at = ?, error = ? WHERE id = ?",
		string(u.Status), u.CurrentStep, nullTime(u.StartedAt), nullTime(u.EndedAt), u.Error, u.ID)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	return wrap(op, err)
}

func (s *sqlStore) ListUpgrades(ctx context.Context, f UpgradeFilter) ([]Upgrade, error) {
	var where []string
	var args []any
	join := ""
	if f.App != "" || f.Env != "" {
		join = " JOIN releases r ON r.id = u.release_id"
		if f.App != "" {
			where, args = append(where, "r.app = ?"), append(args, f.App)
		}
		if f.Env != "" {
			where, args = append(where, "r.env = ?"), append(args, f.Env)
		}
	}
	if f.NodeID != 0 {
		where, args = append(where, "u.node_id = ?"), append(args, f.NodeID)
	}
	if f.ReleaseID != 0 {
		where, args = append(where, "u.release_id = ?"), append(args, f.ReleaseID)
	}
	rows, err := s.db.QueryContext(ctx, s.q("SELECT "+upgradeCols+" FROM upgrades u"+join+whereClause(where)+" ORDER BY u.id DESC"+limit(f.Limit)), args...)
	if err != nil {
		return nil, wrap("list upgrades", err)
	}
	defer rows.Close()
	out := []Upgrade{}
	for rows.Next() {
		u, err := scanUpgrade(rows)
		if err != nil {
			return nil, wrap("list upgrades", err)
		}
		out = append(out, u)
	}
	return out, wrap("list upgrades", rows.Err())
}

func (s *sqlStore) SaveStep(ctx context.Context, st Step) error {
	op := fmt.Sprintf("save step %s of upgrade %d", st.Name, st.UpgradeID)
	if err := need("step name", st.Name); err != nil {
		return wrap(op, err)
	}
	return wrap(op, s.saveStep(ctx, st, false))
}

// saveStep updates the step, or inserts it with the next sequence number.
// Two callers inserting the same new step race on the primary key; the loser
// retries and updates. With onlyCreate an existing step is left alone.
func (s *sqlStore) saveStep(ctx context.Context, st Step, onlyCreate bool) error {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		err = s.tx(ctx, func(tx *storeTx) error {
			if !onlyCreate {
				n, err := s.exec(ctx, tx, "UPDATE upgrade_steps SET status = ?, started_at = ?, ended_at = ? WHERE upgrade_id = ? AND name = ?",
					st.Status, nullTime(st.StartedAt), nullTime(st.EndedAt), st.UpgradeID, st.Name)
				if err != nil || n > 0 {
					return err
				}
			} else {
				var one int
				err := tx.QueryRowContext(ctx, s.q("SELECT 1 FROM upgrade_steps WHERE upgrade_id = ? AND name = ?"), st.UpgradeID, st.Name).Scan(&one)
				if err == nil || !errors.Is(err, sql.ErrNoRows) {
					return err
				}
			}
			var seq int64
			if err := tx.QueryRowContext(ctx, s.q("SELECT COALESCE(MAX(seq), 0) + 1 FROM upgrade_steps WHERE upgrade_id = ?"), st.UpgradeID).Scan(&seq); err != nil {
				return err
			}
			_, err := s.exec(ctx, tx, "INSERT INTO upgrade_steps (upgrade_id, seq, name, status, started_at, ended_at, log) VALUES (?, ?, ?, ?, ?, ?, '')",
				st.UpgradeID, seq, st.Name, st.Status, nullTime(st.StartedAt), nullTime(st.EndedAt))
			return err
		})
		if classify(err) != errUnique {
			return err
		}
	}
	return err
}

func (s *sqlStore) AppendStepLog(ctx context.Context, upgradeID int64, step, text string) error {
	op := fmt.Sprintf("append to log of step %s of upgrade %d", step, upgradeID)
	if err := need("step name", step); err != nil {
		return wrap(op, err)
	}
	concat := "log || ?"
	if s.dialect == MySQL {
		concat = "CONCAT(log, ?)"
	}
	update := "UPDATE upgrade_steps SET log = " + concat + " WHERE upgrade_id = ? AND name = ?"
	n, err := s.exec(ctx, s.db, update, text, upgradeID, step)
	if err != nil || n > 0 {
		return wrap(op, err)
	}
	if err := s.saveStep(ctx, Step{UpgradeID: upgradeID, Name: step, Status: "running", StartedAt: now()}, true); err != nil {
		return wrap(op, err)
	}
	_, err = s.exec(ctx, s.db, update, text, upgradeID, step)
	return wrap(op, err)
}

// Tokens.

const tokenCols = "id, kind, node, hash, note, created_at, expires_at, used_at, revoked, scope_apps, scope_envs, replace_node"

func scanToken(sc interface{ Scan(...any) error }) (Token, error) {
	var t Token
	var kind, apps, envs string
	var expires, used sql.NullTime
	err := sc.Scan(&t.ID, &kind, &t.Node, &t.Hash, &t.Note, &t.CreatedAt, &expires, &used, &t.Revoked, &apps, &envs, &t.Replace)
	t.Kind, t.CreatedAt, t.ExpiresAt, t.UsedAt = TokenKind(kind), t.CreatedAt.UTC(), fromNull(expires), fromNull(used)
	t.Apps, t.Envs = splitScope(apps), splitScope(envs)
	return t, err
}

// joinScope stores a scope list as one comma-separated column; names
// cannot hold commas (the server validates them).
func joinScope(names []string) (string, error) {
	for _, n := range names {
		if n == "" || strings.ContainsAny(n, ", ") {
			return "", fmt.Errorf("%w: scope name %q", ErrInvalid, n)
		}
	}
	return strings.Join(names, ","), nil
}

func splitScope(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func (s *sqlStore) CreateToken(ctx context.Context, t Token) (Token, error) {
	op := fmt.Sprintf("create %s token", t.Kind)
	if !t.Kind.Valid() {
		return Token{}, wrap(op, fmt.Errorf("%w: token kind %q", ErrInvalid, t.Kind))
	}
	if err := need("token hash", t.Hash); err != nil {
		return Token{}, wrap(op, err)
	}
	if t.Kind == TokenAgent && t.Node == "" {
		return Token{}, wrap(op, fmt.Errorf("%w: an agent token needs a node", ErrInvalid))
	}
	apps, err := joinScope(t.Apps)
	if err != nil {
		return Token{}, wrap(op, err)
	}
	envs, err := joinScope(t.Envs)
	if err != nil {
		return Token{}, wrap(op, err)
	}
	if t.Replace != "" && t.Kind != TokenJoin {
		return Token{}, wrap(op, fmt.Errorf("%w: only a join token replaces a node", ErrInvalid))
	}
	t.CreatedAt = norm(t.CreatedAt)
	t.ExpiresAt, t.UsedAt = normOrZero(t.ExpiresAt), normOrZero(t.UsedAt)
	id, err := s.insert(ctx, s.db, "INSERT INTO tokens (kind, node, hash, note, created_at, expires_at, used_at, revoked, scope_apps, scope_envs, replace_node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		string(t.Kind), t.Node, t.Hash, t.Note, t.CreatedAt, nullTime(t.ExpiresAt), nullTime(t.UsedAt), t.Revoked, apps, envs, t.Replace)
	if err != nil {
		return Token{}, wrap(op, err)
	}
	t.ID = id
	return t, nil
}

func (s *sqlStore) TokenByHash(ctx context.Context, hash string) (Token, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx, s.q("SELECT "+tokenCols+" FROM tokens WHERE hash = ?"), hash))
	return t, wrap("look up token", err)
}

func (s *sqlStore) ListTokens(ctx context.Context, kind TokenKind) ([]Token, error) {
	query, args := "SELECT "+tokenCols+" FROM tokens", []any{}
	if kind != "" {
		query, args = query+" WHERE kind = ?", append(args, string(kind))
	}
	return s.tokens(ctx, "list tokens", query+" ORDER BY id", args...)
}

func (s *sqlStore) AgentTokens(ctx context.Context, node string) ([]Token, error) {
	return s.tokens(ctx, "list agent tokens of node "+node, "SELECT "+tokenCols+" FROM tokens WHERE node = ? AND kind = ? ORDER BY id", node, string(TokenAgent))
}

func (s *sqlStore) tokens(ctx context.Context, op, query string, args ...any) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, wrap(op, err)
	}
	defer rows.Close()
	out := []Token{}
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, wrap(op, err)
		}
		out = append(out, t)
	}
	return out, wrap(op, rows.Err())
}

func (s *sqlStore) RevokeToken(ctx context.Context, id int64) error {
	n, err := s.exec(ctx, s.db, "UPDATE tokens SET revoked = ? WHERE id = ?", true, id)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	return wrap(fmt.Sprintf("revoke token %d", id), err)
}

func (s *sqlStore) RevokedTokens(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, s.q("SELECT COUNT(*) FROM tokens WHERE revoked = ?"), true).Scan(&n)
	return n, wrap("count revoked tokens", err)
}

func (s *sqlStore) ConsumeJoinToken(ctx context.Context, hash string, at time.Time) (Token, error) {
	const op = "consume join token"
	at = norm(at)
	// One conditional UPDATE: the database lets exactly one writer see
	// used_at IS NULL, whatever the number of replicas.
	n, err := s.exec(ctx, s.db, "UPDATE tokens SET used_at = ? WHERE hash = ? AND kind = ? AND used_at IS NULL AND revoked = ? AND (expires_at IS NULL OR expires_at > ?)",
		at, hash, string(TokenJoin), false, at)
	if err != nil {
		return Token{}, wrap(op, err)
	}
	t, err := s.TokenByHash(ctx, hash)
	if err != nil {
		return Token{}, wrap(op, err)
	}
	if t.Kind != TokenJoin {
		return Token{}, wrap(op, fmt.Errorf("%w: not a join token", ErrNotFound))
	}
	if n == 1 {
		return t, nil
	}
	if err := t.Check(at); err != nil {
		return Token{}, wrap(op, err)
	}
	return Token{}, wrap(op, ErrTokenUsed)
}

// Audit.

func (s *sqlStore) AppendAudit(ctx context.Context, e AuditEvent) (AuditEvent, error) {
	op := fmt.Sprintf("append audit event %s", e.Action)
	if err := errors.Join(need("actor", e.Actor), need("action", e.Action)); err != nil {
		return AuditEvent{}, wrap(op, err)
	}
	if len(e.Detail) == 0 {
		e.Detail = json.RawMessage("{}")
	}
	if !json.Valid(e.Detail) {
		return AuditEvent{}, wrap(op, fmt.Errorf("%w: detail is not JSON", ErrInvalid))
	}
	e.At = norm(e.At)
	id, err := s.insert(ctx, s.db, "INSERT INTO audit_events (at, actor, action, detail) VALUES (?, ?, ?, ?)", e.At, e.Actor, e.Action, string(e.Detail))
	if err != nil {
		return AuditEvent{}, wrap(op, err)
	}
	e.ID = id
	return e, nil
}

func (s *sqlStore) ListAudit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	var where []string
	var args []any
	if f.Actor != "" {
		where, args = append(where, "actor = ?"), append(args, f.Actor)
	}
	if f.Action != "" {
		where, args = append(where, "action = ?"), append(args, f.Action)
	}
	if f.BeforeID > 0 {
		where, args = append(where, "id < ?"), append(args, f.BeforeID)
	}
	rows, err := s.db.QueryContext(ctx, s.q("SELECT id, at, actor, action, detail FROM audit_events"+whereClause(where)+" ORDER BY id DESC"+limit(f.Limit)), args...)
	if err != nil {
		return nil, wrap("list audit events", err)
	}
	defer rows.Close()
	out := []AuditEvent{}
	for rows.Next() {
		var e AuditEvent
		var detail string
		if err := rows.Scan(&e.ID, &e.At, &e.Actor, &e.Action, &detail); err != nil {
			return nil, wrap("list audit events", err)
		}
		e.At, e.Detail = e.At.UTC(), json.RawMessage(detail)
		out = append(out, e)
	}
	return out, wrap("list audit events", rows.Err())
}
