package store

import (
	"context"
	"errors"
)

// MigrateTo migrates the database at url up to schema version only, so a
// test can fill an older schema and then check what a later migration does
// to existing data.
func MigrateTo(ctx context.Context, url string, version int64) error {
	t, err := ParseURL(url)
	if err != nil {
		return err
	}
	db, err := openDB(ctx, t)
	if err != nil {
		return err
	}
	p, err := provider(db, t.Dialect)
	if err == nil {
		_, err = p.UpTo(ctx, version)
	}
	return errors.Join(err, db.Close())
}
