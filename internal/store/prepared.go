package store

import (
	"context"
	"database/sql"
	"sync"
	"time"
)

// SQLite's driver parses and plans a statement on every call made on the
// database or a transaction, and keeps the plan only for a statement
// prepared with Prepare. A control server with ten thousand agents sends
// the same few dozen statements tens of thousands of times a minute (the
// token and node of every agent request, each upgrade's rows): parsing was
// an eighth of its CPU. So the store prepares each statement once and
// keeps it (database/sql prepares it again on each pooled connection the
// first time it runs there, and in a transaction reuses the connection's).
//
// PostgreSQL's driver (pgx) keeps its own cache of prepared statements per
// connection. MySQL and MariaDB count prepared statements against a
// server-wide limit shared with every other client, so they are not kept.

// maxPrepared bounds the statements kept; statements past it (the store
// builds a few from filters and limits) run unprepared.
const maxPrepared = 256

// maxPreparedLen is the longest statement kept: longer ones are the bulk
// writes (a 500-row INSERT of a rollout's nodes, whose last chunk's length
// varies with the fleet), rare, and large once compiled on every pooled
// connection.
const maxPreparedLen = 2048

// stmtCache holds the prepared statements of one database.
type stmtCache struct {
	db *sql.DB

	mu        sync.Mutex
	stmts     map[string]*sql.Stmt // nil once closed
	preparing map[string]bool      // prepared in the background now
	wg        sync.WaitGroup       // the background preparations
}

// get returns query prepared, or nil when it is not kept: the cache is
// full, or preparing failed (the caller runs the query unprepared and
// sees the error there).
func (c *stmtCache) get(ctx context.Context, query string) *sql.Stmt {
	if st, ok := c.kept(query); ok {
		return st
	}
	return c.prepare(ctx, query)
}

// kept returns query's statement when it is kept; ok is false when it is
// worth preparing (not kept, and room for it).
func (c *stmtCache) kept(query string) (st *sql.Stmt, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok = c.stmts[query]
	return st, ok || c.stmts == nil || len(query) > maxPreparedLen || len(c.stmts)+len(c.preparing) >= maxPrepared
}

// later prepares query in the background, once: a transaction holds its
// connection, and preparing on another could wait for the pool forever
// when every connection is in such a transaction.
func (c *stmtCache) later(query string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.preparing[query] || c.stmts == nil { // under way, or closed
		return
	}
	c.preparing[query] = true
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c.prepare(ctx, query)
	}()
}

func (c *stmtCache) prepare(ctx context.Context, query string) *sql.Stmt {
	st, err := c.db.PrepareContext(ctx, query)
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.preparing, query)
	if err != nil {
		return nil
	}
	if kept, ok := c.stmts[query]; ok || c.stmts == nil || len(c.stmts) >= maxPrepared {
		st.Close() // prepared meanwhile by another caller, closed, or full
		return kept
	}
	c.stmts[query] = st
	return st
}

// close closes the kept statements. No background preparation starts
// once stmts is nil (later), so none is added while Wait waits.
func (c *stmtCache) close() {
	c.mu.Lock()
	stmts := c.stmts
	c.stmts = nil
	c.mu.Unlock()
	c.wg.Wait()
	for _, st := range stmts {
		st.Close()
	}
}

// storeDB is the store's database: *sql.DB whose queries use the kept
// statements when stmts is set.
type storeDB struct {
	*sql.DB
	stmts *stmtCache
}

func newStoreDB(db *sql.DB, dialect string) *storeDB {
	d := &storeDB{DB: db}
	if dialect == SQLite {
		d.stmts = &stmtCache{db: db, stmts: map[string]*sql.Stmt{}, preparing: map[string]bool{}}
	}
	return d
}

func (d *storeDB) prepared(ctx context.Context, query string) *sql.Stmt {
	if d.stmts == nil {
		return nil
	}
	return d.stmts.get(ctx, query)
}

// ExecContext runs query as *sql.DB does, prepared when kept.
func (d *storeDB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := d.prepared(ctx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return d.DB.ExecContext(ctx, query, args...)
}

// QueryContext runs query as *sql.DB does, prepared when kept.
func (d *storeDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := d.prepared(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return d.DB.QueryContext(ctx, query, args...)
}

// QueryRowContext runs query as *sql.DB does, prepared when kept.
func (d *storeDB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := d.prepared(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return d.DB.QueryRowContext(ctx, query, args...)
}

// BeginTx starts a transaction whose queries use the kept statements.
func (d *storeDB) BeginTx(ctx context.Context, opts *sql.TxOptions) (*storeTx, error) {
	tx, err := d.DB.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &storeTx{Tx: tx, db: d}, nil
}

// Close closes the kept statements, then the database.
func (d *storeDB) Close() error {
	if d.stmts != nil {
		d.stmts.close()
	}
	return d.DB.Close()
}

// storeTx is a transaction of storeDB: its queries use the database's
// kept statements on the transaction's connection.
type storeTx struct {
	*sql.Tx
	db *storeDB
}

// stmt returns query's kept statement on the transaction's connection,
// or nil; a statement not kept yet is prepared in the background.
func (t *storeTx) stmt(ctx context.Context, query string) *sql.Stmt {
	c := t.db.stmts
	if c == nil {
		return nil
	}
	st, ok := c.kept(query)
	if !ok {
		c.later(query)
	}
	if st == nil {
		return nil
	}
	return t.Tx.StmtContext(ctx, st)
}

// ExecContext runs query as *sql.Tx does, prepared when kept.
func (t *storeTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := t.stmt(ctx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, query, args...)
}

// QueryContext runs query as *sql.Tx does, prepared when kept.
func (t *storeTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := t.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return t.Tx.QueryContext(ctx, query, args...)
}

// QueryRowContext runs query as *sql.Tx does, prepared when kept.
func (t *storeTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := t.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, query, args...)
}
