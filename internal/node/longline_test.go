package node_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport/local"
)

// childRSS returns the largest resident set, in bytes, of this process's
// children that run bin (the `drover node serve` of a local transport).
func childRSS(bin string) int64 {
	var most int64
	ents, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil || exe != bin {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		var ppid string
		var rss int64
		for _, l := range strings.Split(string(status), "\n") {
			f := strings.Fields(l)
			switch {
			case len(f) >= 2 && f[0] == "PPid:":
				ppid = f[1]
			case len(f) >= 2 && f[0] == "VmRSS:":
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				rss = kb << 10
			}
		}
		if ppid == me && rss > most {
			most = rss
		}
	}
	return most
}

// TestHookPrintingHugeLine: a hook that prints one 200 MB line succeeds;
// the host cuts the line with a marker, so the deployer gets a result (not
// a transport error) and the host's memory stays bounded.
func TestHookPrintingHugeLine(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	a := apptest.New(t, apptest.Options{NoService: true, Extra: "" +
		"  loud: {when: prepare, commands: ['head -c 200000000 /dev/zero | tr \"\\0\" a; echo; echo END']}\n"})
	bin := apptest.DroverBinary(t)
	conn := &local.Conn{Binary: bin}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	held, err := node.Hold(ctx, conn, &node.Request{App: a.Config, Env: "test", Host: "local", Holder: &lock.Holder{Owner: "long@test"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = held.Release() })
	c := a.Repo.Head()
	req := &node.Request{Op: node.OpPrepare, App: a.Config, Env: "test", Host: "local", Roles: []string{"web", "db"},
		ID: release.NewID(time.Unix(1000, 0), c), Commit: c, Token: held.Holder.Token}

	var (
		mu      sync.Mutex
		peak    int64
		longest int
		lines   []string
	)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if r := childRSS(bin); r > 0 {
				mu.Lock()
				peak = max(peak, r)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	cctx, ccancel := context.WithTimeout(ctx, 120*time.Second)
	defer ccancel()
	resp, err := node.Call(cctx, conn, req, func(ev release.Event) {
		if ev.Kind != release.EventOutput {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		longest = max(longest, len(ev.Line))
		if len(ev.Line) > 200 {
			lines = append(lines, ev.Line[len(ev.Line)-100:])
		} else {
			lines = append(lines, ev.Line)
		}
	})
	close(stop)
	<-sampled
	if err != nil {
		t.Fatalf("prepare with a 200 MB line: transport error %v", err)
	}
	if !resp.OK {
		t.Fatalf("prepare failed: %s", resp.Error)
	}
	mu.Lock()
	defer mu.Unlock()
	if longest > release.MaxLine+100 {
		t.Errorf("an output event carried a line of %d bytes; lines are cut at %d", longest, release.MaxLine)
	}
	joined := strings.Join(lines, "\n")
	if !strings.Contains(joined, "[cut ") || !strings.Contains(joined, "END") {
		t.Errorf("want the cut marker and END in the output, got %q", joined)
	}
	if peak > 100<<20 {
		t.Errorf("drover node serve reached %d MB resident while the hook printed one long line", peak>>20)
	}
	t.Logf("peak RSS of drover node serve: %d MB", peak>>20)
}

// TestOversizedMessageIsSkipped: a line on the session longer than the
// deployer's message limit (a host of an older drover, which did not cut
// lines) is skipped; the result that follows it still arrives.
func TestOversizedMessageIsSkipped(t *testing.T) {
	host := filepath.Join(t.TempDir(), "host")
	script := "#!/bin/sh\ncat >/dev/null\n" +
		`printf '{"event":{"kind":"output","line":"'; head -c 17000000 /dev/zero | tr '\0' a; echo '"}}'` + "\n" +
		`echo '{"result":{"ok":true}}'` + "\n"
	if err := os.WriteFile(host, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := node.Call(ctx, &local.Conn{Binary: host}, &node.Request{Op: node.OpReleases}, nil)
	if err != nil {
		t.Fatalf("a 17 MB line before the result: %v", err)
	}
	if !resp.OK {
		t.Fatalf("result: %+v", resp)
	}
}
