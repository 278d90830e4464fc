package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/gitrepo"
	"github.com/drover/drover/internal/testenv/servertest"
)

// pullYML is a drover.yml for agents: environment demo with no hosts.
func pullYML(repo, strategy string) string {
	return `app: hello
repo: ` + repo + `
deploy_to: /srv/hello
environments:
  demo:
    strategy: ` + strategy + "\n"
}

// startServer serves a control server until t ends and returns it, an
// admin client and a context bounded to a minute.
func startServer(t *testing.T) (*servertest.Server, *api.Client, context.Context) {
	t.Helper()
	srv := servertest.Start(t, servertest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	admin, err := api.NewClient(srv.URL, srv.Admin, "")
	if err != nil {
		t.Fatal(err)
	}
	return srv, admin, ctx
}

// TestReleaseCreateWait: `drover release create --wait` resolves the spec
// in the repository, sends drover.yml as it is at that commit (tag v1's
// rolling strategy, not the canary the branch moved on to), prints the
// release and its rollout, follows the rollout across two agents and ends
// with the nodes done; -o json gives the final rollout. A --no-wait
// release while another deploy holds the lease fails, naming it.
func TestReleaseCreateWait(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	repo := gitrepo.New(t)
	v1 := repo.Commit("v1", map[string]string{"drover.yml": pullYML(repo.Dir, "{type: rolling, batch: 1}")})
	repo.Git("tag", "v1")
	repo.Commit("v2", map[string]string{"drover.yml": pullYML(repo.Dir, "{type: canary}")})

	srv, admin, ctx := startServer(t)
	jt, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{AnyApp: true, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	var agents []<-chan error
	for _, name := range []string{"web1", "web2"} {
		jt := jt
		if name == "web2" {
			if jt, err = admin.CreateJoinToken(ctx, api.CreateJoinToken{AnyApp: true}); err != nil {
				t.Fatal(err)
			}
		}
		j, err := admin.Join(ctx, api.Join{JoinToken: jt.Token, Node: name, Hostname: name, Apps: []api.NodeApp{{App: "hello", Env: "demo"}}})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := api.NewClient(srv.URL, j.Token, "")
		agents = append(agents, servertest.Agent(ctx, c, func(d api.DesiredApp) bool { return d.Rollout == 0 && d.Release != nil && d.Release.Commit == v1 }))
	}

	var out, errOut bytes.Buffer
	o := &ReleaseCreateOptions{ClientOptions: ClientOptions{Server: srv.URL, Token: srv.Admin, IO: IO{Out: &out, Err: &errOut}},
		App: "hello", Env: "demo", Spec: "tag:v1", Repo: repo.Dir, Wait: true, Poll: 20 * time.Millisecond}
	if err := ReleaseCreate(ctx, o); err != nil {
		t.Fatalf("release create --wait: %v\n%s%s", err, out.String(), errOut.String())
	}
	for _, want := range []string{"release 1: hello demo tag:v1 → " + v1 + "; rollout 1 ", "rollout 1: succeeded", "web1: activate", "web2: activate"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output does not say %q:\n%s", want, out.String())
		}
	}
	for i, errc := range agents {
		if err := <-errc; err != nil {
			t.Fatalf("agent %d: %v", i+1, err)
		}
	}
	ro, err := admin.Rollout(ctx, 1)
	if err != nil || ro.Strategy != "rolling" {
		t.Fatalf("rollout %+v %v, want the rolling strategy of drover.yml at tag v1", ro, err)
	}

	// -o json of rollout show is the API's rollout.
	out.Reset()
	if err := RolloutShow(ctx, &RolloutOptions{ClientOptions: ClientOptions{Server: srv.URL, Token: srv.Admin, IO: IO{Out: &out, Output: "json"}}, ID: 1}); err != nil {
		t.Fatal(err)
	}
	var shown api.Rollout
	if err := json.Unmarshal(out.Bytes(), &shown); err != nil || shown.ID != 1 || shown.State != "succeeded" || len(shown.Nodes) != 2 {
		t.Fatalf("rollout show -o json: %v\n%s", err, out.String())
	}
	// rollouts lists it with its node counts.
	out.Reset()
	if err := Rollouts(ctx, &RolloutsOptions{ClientOptions: ClientOptions{Server: srv.URL, Token: srv.Admin, IO: IO{Out: &out}}, App: "hello"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "succeeded") || !strings.Contains(out.String(), "2 done") {
		t.Errorf("rollouts:\n%s", out.String())
	}

	// Another deploy holds the lease: --no-wait fails naming it.
	tk, err := srv.Store.EnqueueTicket(ctx, store.Ticket{App: "hello", Env: "demo", Holder: "alice@laptop"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := srv.Store.TryAcquire(ctx, tk.ID, time.Now(), time.Hour); err != nil || !ok {
		t.Fatalf("hold the lease: %v %v", ok, err)
	}
	o = &ReleaseCreateOptions{ClientOptions: ClientOptions{Server: srv.URL, Token: srv.Admin, IO: IO{Out: &out, Err: &errOut}},
		App: "hello", Env: "demo", Spec: "tag:v1", Repo: repo.Dir, NoWait: true}
	err = ReleaseCreate(ctx, o)
	if !api.IsStatus(err, 409) || !strings.Contains(err.Error(), "alice@laptop") || !strings.Contains(err.Error(), "nothing was recorded") {
		t.Fatalf("--no-wait while alice deploys: %v", err)
	}
	// Status shows alice holding the lock.
	out.Reset()
	if err := Status(ctx, &StatusOptions{ClientOptions: ClientOptions{Server: srv.URL, Token: srv.Admin, IO: IO{Out: &out}}, App: "hello", Env: "demo"}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "hello/demo: lock held by alice@laptop") || !strings.Contains(out.String(), "queue: empty") {
		t.Errorf("status does not show the lock:\n%s", out.String())
	}
}

// TestReleaseCreateWaitFails: --wait ends with an error (exit 1) when the
// rollout fails, naming the rollout and the failure; -o json still prints
// the final rollout.
func TestReleaseCreateWaitFails(t *testing.T) {
	srv, admin, ctx := startServer(t)
	jt, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{AnyApp: true})
	if err != nil {
		t.Fatal(err)
	}
	j, err := admin.Join(ctx, api.Join{JoinToken: jt.Token, Node: "web1", Hostname: "web1", Apps: []api.NodeApp{{App: "hello", Env: "demo"}}})
	if err != nil {
		t.Fatal(err)
	}
	agentCtx, stopAgent := context.WithCancel(ctx)
	c, _ := api.NewClient(srv.URL, j.Token, "")
	agent := servertest.FailingAgent(agentCtx, c, func(api.DesiredApp) bool { return false })
	t.Cleanup(func() { stopAgent(); <-agent })

	var out bytes.Buffer
	sha := strings.Repeat("a", 40)
	o := &ReleaseCreateOptions{ClientOptions: ClientOptions{Server: srv.URL, Token: srv.Admin, IO: IO{Out: &out, Err: &out, Output: "json"}},
		App: "hello", Env: "demo", Spec: "commit:" + sha, Wait: true, Poll: 20 * time.Millisecond}
	err = ReleaseCreate(ctx, o)
	if !errors.Is(err, errRolloutFailed) || ExitCode(err) != ExitFailed || !strings.Contains(err.Error(), "rollout 1 of hello/demo failed") {
		t.Fatalf("release create --wait of a failing rollout: %v (exit %d)\n%s", err, ExitCode(err), out.String())
	}
	var ro api.Rollout
	if jerr := json.Unmarshal(out.Bytes(), &ro); jerr != nil || ro.State != "failed" || len(ro.Nodes) != 1 || ro.Nodes[0].Error != "make: exit 2" {
		t.Fatalf("-o json: %v\n%s", jerr, out.String())
	}
}

// TestReleaseCreateTogether: two `release create` at once on one machine
// share one repository mirror; each resolves its commit and sends
// drover.yml (its rollout takes the rolling strategy from it), neither
// falls back to the default strategy because the other held the mirror.
func TestReleaseCreateTogether(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	repo := gitrepo.New(t)
	srv, admin, ctx := startServer(t)
	for round := range 5 { // a race: give it a few chances
		var commits []string
		for _, name := range []string{"a", "b"} {
			commits = append(commits, repo.Commit(fmt.Sprintf("%s%d", name, round), map[string]string{
				"drover.yml": pullYML(repo.Dir, "{type: rolling, batch: 1}"), name: fmt.Sprint(round)}))
		}
		outs := make([]bytes.Buffer, len(commits))
		errs := make([]error, len(commits))
		var wg sync.WaitGroup
		for i, c := range commits {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = ReleaseCreate(ctx, &ReleaseCreateOptions{ClientOptions: ClientOptions{Server: srv.URL, Token: srv.Admin, IO: IO{Out: &outs[i], Err: &outs[i], Output: "json"}},
					App: "hello", Env: "demo", Spec: "commit:" + c, Repo: repo.Dir})
			}()
		}
		wg.Wait()
		for i := range commits {
			var rc api.ReleaseCreated
			if errs[i] != nil || json.Unmarshal(outs[i].Bytes(), &rc) != nil || rc.Rollout == nil {
				t.Fatalf("round %d: release create %s: %v\n%s", round, commits[i][:7], errs[i], outs[i].String())
			}
			if ro, _ := admin.Rollout(ctx, rc.Rollout.ID); rc.Commit != commits[i] || ro == nil || ro.Strategy != "rolling" {
				t.Fatalf("round %d: release create %s together with another: commit %q, rollout %+v; want drover.yml's rolling strategy\n%s",
					round, commits[i][:7], rc.Commit, ro, outs[i].String())
			}
		}
	}
}
