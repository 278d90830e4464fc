package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store"
)

// joinToken stores a join token with this scope and returns its secret.
func (e *env) joinToken(apps, envs []string, replace string) string {
	e.t.Helper()
	secret := server.NewSecret(store.TokenJoin)
	if _, err := e.st.CreateToken(context.Background(), store.Token{Kind: store.TokenJoin, Hash: server.HashToken(secret), ExpiresAt: time.Now().Add(time.Hour),
		Apps: apps, Envs: envs, Replace: replace}); err != nil {
		e.t.Fatal(err)
	}
	return secret
}

// wantStatus fails unless err is an API answer with code whose message
// holds every one of says.
func wantStatus(t *testing.T, what string, err error, code int, says ...string) {
	t.Helper()
	if !api.IsStatus(err, code) {
		t.Fatalf("%s: %v, want %d", what, err, code)
	}
	for _, s := range says {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s: message %q does not say %q", what, err, s)
		}
	}
}

// TestAgentTokenScope: a node joined with a token for hello/demo cannot
// reach any other app or environment, whatever it says in hello.
func TestAgentTokenScope(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.client(e.admin)
	anon := e.client("")
	demo := []api.NodeApp{{App: "hello", Env: "demo"}}
	shop := []api.NodeApp{{App: "shop", Env: "production"}}

	_, err := anon.Join(ctx, api.Join{JoinToken: e.joinToken([]string{"hello"}, []string{"demo"}, ""), Node: "web2", Hostname: "web2", Apps: shop})
	wantStatus(t, "join into an app outside the join token", err, 403, "shop/production", "--app shop")

	j, err := anon.Join(ctx, api.Join{JoinToken: e.joinToken([]string{"hello"}, []string{"demo"}, ""), Node: "web1", Hostname: "web1", Apps: demo})
	if err != nil {
		t.Fatal(err)
	}
	web1 := e.client(j.Token)
	wantStatus(t, "hello into another app", web1.Hello(ctx, api.Hello{Hostname: "web1", Apps: append(demo, shop...)}), 403, "shop/production", "--app shop", "--replace web1")
	wantStatus(t, "hello into another environment", web1.Hello(ctx, api.Hello{Hostname: "web1", Apps: []api.NodeApp{{App: "hello", Env: "staging"}}}), 403, "hello/staging")
	if err := web1.Hello(ctx, api.Hello{Hostname: "web1", Apps: demo}); err != nil {
		t.Fatalf("hello within scope: %v", err)
	}

	// A registration outside the scope (as one made by a replaced token)
	// is not readable with this token either.
	if _, err := e.st.RegisterNode(ctx, store.Node{Name: "web1", App: "shop", Env: "production"}); err != nil {
		t.Fatal(err)
	}
	rel, err := admin.CreateRelease(ctx, api.CreateRelease{App: "shop", Env: "production", Spec: "branch:main", Note: "secret plans"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := web1.Desired(ctx, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range d.Apps {
		if a.App != "hello" || a.Env != "demo" {
			t.Errorf("desired state shows %s/%s to a token scoped to hello/demo: %+v", a.App, a.Env, a.Release)
		}
	}
	_, err = web1.Resolve(ctx, rel.ID, sha)
	wantStatus(t, "resolve another app's release", err, 403, "shop/production")
	_, err = web1.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: "shop", Env: "production"})
	wantStatus(t, "start an upgrade of another app", err, 403, "shop/production")
	if got, _ := e.st.GetRelease(ctx, rel.ID); got.Commit != "" {
		t.Fatalf("an out-of-scope agent set the commit of %s/%s to %s", got.App, got.Env, got.Commit)
	}
}

// TestJoinTokenScopeRequired: an admin names the apps a join token is for,
// or says --any-app; the scope reaches the agent token.
func TestJoinTokenScopeRequired(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.client(e.admin)
	_, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{})
	wantStatus(t, "join token without scope", err, 400, "--app", "--any-app")
	_, err = admin.CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}, AnyApp: true})
	wantStatus(t, "--app and --any-app", err, 400, "contradict")
	_, err = admin.CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"../etc"}})
	wantStatus(t, "traversal app", err, 400, "../etc")

	jt, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello", "shop"}, Envs: []string{"demo"}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(jt.Apps, ",") != "hello,shop" || strings.Join(jt.Envs, ",") != "demo" {
		t.Fatalf("join token scope read back as %q %q", jt.Apps, jt.Envs)
	}
	j, err := e.client("").Join(ctx, api.Join{JoinToken: jt.Token, Node: "web1", Hostname: "web1", Apps: []api.NodeApp{{App: "hello", Env: "demo"}, {App: "shop", Env: "demo"}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.st.TokenByHash(ctx, server.HashToken(j.Token))
	if err != nil {
		t.Fatal(err)
	}
	if !tok.Allows("shop", "demo") || tok.Allows("shop", "production") || tok.Allows("blog", "demo") {
		t.Fatalf("agent token scope %q %q, want the join token's", tok.Apps, tok.Envs)
	}

	any, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{AnyApp: true})
	if err != nil {
		t.Fatal(err)
	}
	j, err = e.client("").Join(ctx, api.Join{JoinToken: any.Token, Node: "web2", Hostname: "web2", Apps: []api.NodeApp{{App: "blog", Env: "production"}}})
	if err != nil {
		t.Fatalf("join with an --any-app token: %v", err)
	}
	if err := e.client(j.Token).Hello(ctx, api.Hello{Hostname: "web2", Apps: []api.NodeApp{{App: "wiki", Env: "staging"}}}); err != nil {
		t.Fatalf("hello with an --any-app token: %v", err)
	}
}

// TestJoinLiveNodeName: a join token cannot take over a node that is
// joined, unless the admin made it to replace that node.
func TestJoinLiveNodeName(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	anon := e.client("")
	demo := []api.NodeApp{{App: "hello", Env: "demo"}}
	scope := []string{"hello"}
	j, err := anon.Join(ctx, api.Join{JoinToken: e.joinToken(scope, nil, ""), Node: "web1", Hostname: "web1", Apps: demo})
	if err != nil {
		t.Fatal(err)
	}
	web1 := e.client(j.Token)

	second := e.joinToken(scope, nil, "")
	_, err = anon.Join(ctx, api.Join{JoinToken: second, Node: "web1", Hostname: "evil", Apps: demo})
	wantStatus(t, "join as a live node", err, 409, "web1", "--replace web1", "revoke")
	if _, err := web1.Desired(ctx, -1, 0); err != nil {
		t.Fatalf("the live node's token after a refused takeover: %v", err)
	}
	// The refused join did not use up its token.
	if _, err := anon.Join(ctx, api.Join{JoinToken: second, Node: "web5", Hostname: "web5", Apps: demo}); err != nil {
		t.Fatalf("join as a new name with the token a takeover was refused: %v", err)
	}

	replace := e.joinToken(scope, nil, "web1")
	_, err = anon.Join(ctx, api.Join{JoinToken: replace, Node: "web2", Hostname: "web2", Apps: demo})
	wantStatus(t, "replace token used for another name", err, 403, "replace node web1")
	j, err = anon.Join(ctx, api.Join{JoinToken: replace, Node: "web1", Hostname: "web1-new", Apps: demo})
	if err != nil {
		t.Fatalf("join with a --replace web1 token: %v", err)
	}
	if _, err := web1.Desired(ctx, -1, 0); !api.IsStatus(err, 401) {
		t.Fatalf("the replaced node's old token: %v, want 401", err)
	}
	if _, err := e.client(j.Token).Desired(ctx, -1, 0); err != nil {
		t.Fatalf("the replacement's token: %v", err)
	}
}
