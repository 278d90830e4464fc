package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/servertest"
)

type env struct {
	t     *testing.T
	st    store.Store // the real store under the server
	url   string      // the server's base URL
	addr  string      // its listening address
	admin string
}

func newEnv(t *testing.T) *env {
	return startServer(t, serverOpts{set: func(s *server.Server) { s.MaxWait = 5 * time.Second }})
}

// serverOpts change how startServer builds the server.
type serverOpts struct {
	wrap func(store.Store) store.Store // the store the server sees; default the real one
	set  func(*server.Server)          // limits and waits, set before Start
}

// startServer serves a new SQLite-backed server on a real loopback
// listener (servertest), until the test ends.
func startServer(t *testing.T, o serverOpts) *env {
	t.Helper()
	srv := servertest.Start(t, servertest.Options{Wrap: o.wrap, Set: o.set})
	fi, err := os.Stat(srv.AdminFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file %v mode %v", err, fi.Mode())
	}
	return &env{t: t, st: srv.Store, url: srv.URL, addr: srv.Addr, admin: srv.Admin}
}

func readToken(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func (e *env) client(token string) *api.Client {
	c, err := api.NewClient(e.url, token, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// raw sends a request and returns the status code and body.
func (e *env) raw(method, path, token string, body io.Reader) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, body)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// join enrols a node for hello/demo and returns its agent client.
func (e *env) join(node string) *api.Client {
	e.t.Helper()
	ctx := context.Background()
	jt, err := e.client(e.admin).CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}})
	if err != nil {
		e.t.Fatal(err)
	}
	j, err := e.client("").Join(ctx, api.Join{JoinToken: jt.Token, Node: node, Hostname: node + ".test", Apps: []api.NodeApp{{App: "hello", Env: "demo", Roles: []string{"web"}}}})
	if err != nil {
		e.t.Fatal(err)
	}
	return e.client(j.Token)
}

const sha = "0123456789abcdef0123456789abcdef01234567"

func TestReleaseAndLongPoll(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent := e.join("web1")
	d, err := agent.Desired(ctx, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Apps) != 1 || d.Apps[0].Release != nil {
		t.Fatalf("desired before any release: %+v", d)
	}
	// A long-poll with the current version waits until a release appears.
	type result struct {
		d   *api.Desired
		err error
		at  time.Time
	}
	got := make(chan result, 1)
	// The release's creation wakes the poll (its rollout is queued, no
	// task yet); the agent polls on until its rollout task arrives.
	go func() {
		known := d.Version
		for {
			d2, err := agent.Desired(ctx, known, 30*time.Second)
			if err != nil || d2.Apps[0].Release != nil || d2.Version == known {
				got <- result{d2, err, time.Now()}
				return
			}
			known = d2.Version
		}
	}()
	select {
	case r := <-got:
		t.Fatalf("long-poll returned before any change: %+v %v", r.d, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	created := time.Now()
	rel, err := e.client(e.admin).CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha, Note: "first"})
	if err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || r.d.Apps[0].Release == nil || r.d.Apps[0].Release.ID != rel.ID || r.d.Apps[0].Release.Commit != sha {
		t.Fatalf("long-poll after release: %+v %v", r.d, r.err)
	}
	if lag := r.at.Sub(created); lag > 2*time.Second {
		t.Errorf("long-poll woke %s after the release", lag)
	}
	// A stale version answers at once.
	start := time.Now()
	if _, err := agent.Desired(ctx, 0, 30*time.Second); err != nil || time.Since(start) > 2*time.Second {
		t.Errorf("stale version did not answer at once: %v after %s", err, time.Since(start))
	}

	// Upgrade reporting, then status.
	up, err := agent.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: "hello", Env: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	step := api.Step{Name: "fetch", Status: "running", Started: time.Now()}
	if err := agent.Report(ctx, up.ID, api.Report{Status: api.StatusPreparing, Step: "fetch", Steps: []api.Step{step}}); err != nil {
		t.Fatal(err)
	}
	step.Status, step.Elapsed, step.Log = "ok", time.Second, "line one\n"
	if err := agent.Report(ctx, up.ID, api.Report{Status: api.StatusPreparing, Step: "fetch", Steps: []api.Step{step}}); err != nil {
		t.Fatal(err)
	}
	step.Log += "line two\n"
	if err := agent.Report(ctx, up.ID, api.Report{Status: api.StatusSucceeded, Step: "fetch", Steps: []api.Step{step}}); err != nil {
		t.Fatal(err)
	}
	ups, err := e.client(e.admin).Upgrades(ctx, "hello", "demo")
	if err != nil || len(ups) != 1 || ups[0].Status != "succeeded" || len(ups[0].Steps) != 1 || ups[0].Steps[0].Log != "line one\nline two\n" {
		t.Fatalf("upgrades: %+v %v", ups, err)
	}
	st, err := e.client(e.admin).Status(ctx, "hello", "")
	if err != nil || len(st) != 1 || st[0].Node != "web1" || st[0].Status != "succeeded" || st[0].Commit != sha || st[0].Stale {
		t.Fatalf("status: %+v %v", st, err)
	}
	// An agent that restarts mid-upgrade starts a new one; the old one is
	// closed as interrupted.
	up2, err := agent.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: "hello", Env: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: "hello", Env: "demo"}); err != nil {
		t.Fatal(err)
	}
	if u, err := e.st.GetUpgrade(ctx, up2.ID); err != nil || u.Status != store.UpgradeFailed || !strings.Contains(u.Error, "interrupted") {
		t.Errorf("interrupted upgrade: %+v %v", u, err)
	}
	// A finished upgrade takes no more reports.
	if err := agent.Report(ctx, up.ID, api.Report{Status: api.StatusFailed}); !api.IsStatus(err, http.StatusConflict) {
		t.Errorf("report after the end: %v", err)
	}
}

func TestResolveFirstWins(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a, b := e.join("web1"), e.join("web2")
	rel, err := e.client(e.admin).CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "branch:main"})
	if err != nil || rel.Commit != "" {
		t.Fatalf("create unresolved: %+v %v", rel, err)
	}
	first, err := a.Resolve(ctx, rel.ID, sha)
	if err != nil || first != sha {
		t.Fatalf("first resolve: %s %v", first, err)
	}
	other := strings.Repeat("b", 40)
	second, err := b.Resolve(ctx, rel.ID, other)
	if err != nil || second != sha {
		t.Fatalf("second resolver got %s, want the first's %s (%v)", second, sha, err)
	}
}

func TestSecurity(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	web1 := e.join("web1")
	_ = e.join("web2")
	rel, err := e.client(e.admin).CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha})
	if err != nil {
		t.Fatal(err)
	}
	up, err := web1.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: "hello", Env: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	web2Token := e.join("web3").Token
	// Revoke a second admin token to try it.
	revoked := server.NewSecret(store.TokenAdmin)
	tok, err := e.st.CreateToken(ctx, store.Token{Kind: store.TokenAdmin, Hash: server.HashToken(revoked)})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("a"), 10<<20)
	release := `{"app":"hello","env":"demo","spec":"tag:v2"}`
	bigJSON := append(append([]byte(`{"app":"hello","env":"demo","spec":"tag:v2","note":"`), big...), `"}`...)
	tests := []struct {
		name, method, path, token, body string
		raw                             []byte
		want                            int
	}{
		{"no token", "POST", "/api/v1/releases", "", release, nil, 401},
		{"garbage token", "POST", "/api/v1/releases", "drv_admin_nope", release, nil, 401},
		{"revoked admin", "POST", "/api/v1/releases", revoked, release, nil, 401},
		{"agent creates release", "POST", "/api/v1/releases", web1.Token, release, nil, 403},
		{"agent lists nodes", "GET", "/api/v1/nodes", web1.Token, "", nil, 403},
		{"another node reports", "POST", fmt.Sprintf("/api/v1/upgrades/%d/report", up.ID), web2Token, `{"status":"failed"}`, nil, 403},
		{"10 MB body", "POST", "/api/v1/releases", e.admin, "", big, 413},
		{"10 MB JSON note", "POST", "/api/v1/releases", e.admin, "", bigJSON, 413},
		{"malformed JSON", "POST", "/api/v1/releases", e.admin, `{"app": "hello",`, nil, 400},
		{"unknown field", "POST", "/api/v1/releases", e.admin, `{"app":"hello","env":"demo","spec":"tag:v2","sudo":true}`, nil, 400},
		{"traversal app", "POST", "/api/v1/releases", e.admin, `{"app":"../../etc","env":"demo","spec":"tag:v2"}`, nil, 400},
		{"traversal env", "POST", "/api/v1/releases", e.admin, `{"app":"hello","env":"a/../b","spec":"tag:v2"}`, nil, 400},
		{"bad spec", "POST", "/api/v1/releases", e.admin, `{"app":"hello","env":"demo","spec":"tag :v2"}`, nil, 400},
		{"join twice", "POST", "/api/v1/agents/join", "", `{"join_token":"drv_join_unknown","node":"x","hostname":"x","agent_version":"1","apps":[{"app":"hello","env":"demo"}]}`, nil, 401},
		{"join traversal node", "POST", "/api/v1/agents/join", "", `{"join_token":"x","node":"../root","hostname":"x","agent_version":"1","apps":[{"app":"hello","env":"demo"}]}`, nil, 400},
		{"unknown API path", "GET", "/api/v1/secrets", "", "", nil, 401},
	}
	before, _ := e.st.ListReleases(ctx, store.ReleaseFilter{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := io.Reader(strings.NewReader(tc.body))
			if tc.raw != nil {
				body = bytes.NewReader(tc.raw)
			}
			code, text := e.raw(tc.method, tc.path, tc.token, body)
			if code != tc.want {
				t.Fatalf("%s %s: %d %s, want %d", tc.method, tc.path, code, text, tc.want)
			}
			var eb api.Error
			if err := json.Unmarshal([]byte(text), &eb); err != nil || eb.Error == "" {
				t.Errorf("error body is not {error, detail}: %s", text)
			}
		})
	}
	after, _ := e.st.ListReleases(ctx, store.ReleaseFilter{})
	if len(after) != len(before) {
		t.Errorf("refused requests wrote releases: %d → %d", len(before), len(after))
	}
	u, err := e.st.GetUpgrade(ctx, up.ID)
	if err != nil || u.Status != store.UpgradePending {
		t.Errorf("another node changed web1's upgrade: %+v %v", u, err)
	}
	if code, _ := e.raw("GET", "/healthz", "", nil); code != 200 {
		t.Errorf("healthz without token: %d", code)
	}
	// A join token works once.
	jt, _ := e.client(e.admin).CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}})
	j := api.Join{JoinToken: jt.Token, Node: "web9", Hostname: "h", Apps: []api.NodeApp{{App: "hello", Env: "demo"}}}
	if _, err := e.client("").Join(ctx, j); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client("").Join(ctx, j); !api.IsStatus(err, 401) {
		t.Errorf("second use of a join token: %v", err)
	}
}

// releaseWakes creates a release of hello/demo through admin and waits up
// to 5 s for a long-poll, whose outcome got carries, to be answered.
func releaseWakes(t *testing.T, admin *api.Client, got <-chan error) {
	t.Helper()
	if _, err := admin.CreateRelease(context.Background(), api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("long-poll not answered within 5s of a release")
	}
}
