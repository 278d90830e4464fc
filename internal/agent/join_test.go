package agent

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/testenv/servertest"
)

// realServer serves a real control server until the test ends and returns
// its URL and an admin client.
func realServer(t *testing.T) (string, *api.Client) {
	t.Helper()
	srv := servertest.Start(t, servertest.Options{})
	admin, err := api.NewClient(srv.URL, srv.Admin, "")
	if err != nil {
		t.Fatal(err)
	}
	return srv.URL, admin
}

// TestJoinUnderLiveNameStopsWithTheFix: an agent whose join the server
// refuses because its node name is already joined (409) must stop at once
// and say how to replace the node, not retry forever as if the server
// were unreachable.
func TestJoinUnderLiveNameStopsWithTheFix(t *testing.T) {
	url, admin := realServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	newJoin := func() string {
		jt, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{TTL: "1h", Apps: []string{"shop"}})
		if err != nil {
			t.Fatal(err)
		}
		return jt.Token
	}
	cfgFor := func(join string) *config.Agent {
		dir := t.TempDir()
		return &config.Agent{Path: filepath.Join(dir, "agent.yml"), Server: url, JoinToken: join, StateDir: filepath.Join(dir, "state"), Node: "web1",
			Apps: []config.AgentApp{{App: "shop", Env: "production", Repo: dir, DeployTo: filepath.Join(dir, "srv")}}}
	}
	first := &Agent{Config: cfgFor(newJoin()), Wait: time.Second}
	if _, err := first.Once(ctx); err != nil && !strings.Contains(err.Error(), "desired") {
		t.Fatalf("first agent: %v", err)
	}
	second := &Agent{Config: cfgFor(newJoin()), Wait: time.Second, MaxBackoff: 200 * time.Millisecond}
	err := second.Run(ctx)
	if ctx.Err() != nil {
		t.Fatalf("the agent kept retrying a join the server refused for good (409); Run: %v", err)
	}
	if err == nil || !strings.Contains(err.Error(), "--replace web1") {
		t.Fatalf("Run = %v; want an error naming `--replace web1`", err)
	}
}
