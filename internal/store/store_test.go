package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// TestStore runs the conformance suite against every backend: SQLite always,
// PostgreSQL and MariaDB as real servers started by dbtest (skipped with the
// reason when they cannot run here, failed when CI=true).
func TestStore(t *testing.T) {
	for _, backend := range dbtest.Backends {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			runSuite(t, backend)
			t.Logf("%s: suite took %s", backend, time.Since(start).Round(time.Millisecond))
		})
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url, dialect, dsnHas string
		bad                  bool
	}{
		{url: "/var/lib/drover/drover.db", dialect: store.SQLite, dsnHas: "file:/var/lib/drover/drover.db?"},
		{url: "sqlite:///var/lib/drover/drover.db", dialect: store.SQLite, dsnHas: "file:/var/lib/drover/drover.db?"},
		{url: "drover.db", dialect: store.SQLite, dsnHas: "_txlock=immediate"},
		{url: "postgres://u:p@db:5432/drover", dialect: store.Postgres, dsnHas: "postgres://u:p@db:5432/drover"},
		{url: "postgresql://u@db/drover", dialect: store.Postgres},
		{url: "mysql://u:p@tcp(db:3306)/drover", dialect: store.MySQL, dsnHas: "u:p@tcp(db:3306)/drover?"},
		{url: "mysql://u:p@db/drover?tls=false", dialect: store.MySQL, dsnHas: "u:p@tcp(db:3306)/drover?"},
		{url: "mysql://u:p@tcp(db:3306)/drover", dialect: store.MySQL, dsnHas: "parseTime=true"},
		{url: "mysql://u:p@tcp(db:3306)/", bad: true},
		{url: "redis://x", bad: true},
		{url: "", bad: true},
	} {
		t.Run(tc.url, func(t *testing.T) {
			got, err := store.ParseURL(tc.url)
			if tc.bad {
				if err == nil {
					t.Fatalf("ParseURL(%q) = %+v, want an error", tc.url, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Dialect != tc.dialect || !strings.Contains(got.DSN, tc.dsnHas) {
				t.Fatalf("ParseURL(%q) = %+v, want dialect %s and DSN containing %q", tc.url, got, tc.dialect, tc.dsnHas)
			}
		})
	}
}

func TestSchemaSQL(t *testing.T) {
	for _, d := range []string{store.SQLite, store.Postgres, store.MySQL} {
		sql := store.SchemaSQL(d)
		for _, want := range []string{"CREATE TABLE releases", "CREATE TABLE drover_schema_version", "VALUES (1, "} {
			if !strings.Contains(sql, want) {
				t.Errorf("SchemaSQL(%s) lacks %q", d, want)
			}
		}
		if strings.Contains(sql, "+goose") || strings.Contains(sql, "DROP TABLE") {
			t.Errorf("SchemaSQL(%s) has goose annotations or the down migration", d)
		}
	}
	if store.SchemaSQL("oracle") != "" {
		t.Error("SchemaSQL of an unknown dialect is not empty")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
