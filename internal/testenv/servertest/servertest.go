// Package servertest serves a real drover control server for tests: a
// SQLite store in a temporary directory, served on a loopback listener the
// way `drover server` serves it (HTTPServer over Listener), until the test
// ends.
package servertest

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store"
)

// Options change how Start builds the server.
type Options struct {
	// Wrap returns the store the server sees; default the real one.
	Wrap func(store.Store) store.Store
	// Set adjusts the server (limits, waits) before it starts.
	Set func(*server.Server)
	// TLS, when not nil, serves https with it (server.Listener's TLS).
	TLS *tls.Config
}

// Server is a running control server.
type Server struct {
	Store store.Store // the real store under the server
	URL   string      // http://127.0.0.1:PORT (https with Options.TLS)
	Addr  string      // 127.0.0.1:PORT
	Admin string      // the first admin token
	// AdminFile is the admin token file, written 0600 in the data dir.
	AdminFile string

	// The running parts, for tests that stop them their own way (the
	// cleanup stops whatever is left): the API server, the http.Server
	// serving it, Stop ends the context Start ran the API server with,
	// Served is closed when the http.Server stopped serving.
	API    *server.Server
	HTTP   *http.Server
	Stop   context.CancelFunc
	Served <-chan struct{}
}

// Start serves a new SQLite-backed server until t ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	st, err := store.Open(ctx, filepath.Join(dir, "drover.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	path, err := server.EnsureAdminToken(ctx, st, dir)
	if err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := st
	if o.Wrap != nil {
		seen = o.Wrap(st)
	}
	s := server.New(seen, nil)
	if o.Set != nil {
		o.Set(s)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.HTTPServer()
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(s.Listener(ln, o.TLS)) }()
	t.Cleanup(func() { hs.Close(); s.Close(); <-done })
	addr := ln.Addr().String()
	scheme := "http://"
	if o.TLS != nil {
		scheme = "https://"
	}
	return &Server{Store: st, URL: scheme + addr, Addr: addr, Admin: strings.TrimSpace(string(token)), AdminFile: path,
		API: s, HTTP: hs, Stop: cancel, Served: done}
}
